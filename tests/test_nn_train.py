"""Torch training on tiny trees: exact-expectation fits reach the numpy learners' optima,
exact RL reaches soft value iteration, the λ protocol runs unchanged, sampled RL improves J
reproducibly under a seeded torch.Generator, Results carry loss, grad norm and steps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import random_env  # noqa: E402
from nn_helpers import placement  # noqa: E402

from gvgap import learners  # noqa: E402
from gvgap import theory as theory  # noqa: E402
from gvgap.data import sample_pairs  # noqa: E402
from gvgap.nn import train as train  # noqa: E402
from gvgap.nn.policies import TorchTabularPolicy, TransformerPolicy  # noqa: E402
from gvgap.nn.rewards import ScalarHeadRM, TorchLinearReward  # noqa: E402
from gvgap.policies import TabularPolicy  # noqa: E402
from gvgap.rewards import LinearReward  # noqa: E402


def _setup(seed=0, n=30, **kw):
    env = random_env(seed, vocab=2, horizon=2, **kw)
    data = sample_pairs(env.logp_ref, env.r_star, env.rho, n, np.random.default_rng(seed))
    return env, data


def _tab(env):
    return TorchTabularPolicy(
        env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref, placement=placement()
    )


def test_exact_dpo_reaches_numpy_optimum():
    env, data = _setup()
    ref = learners.dpo(TabularPolicy(1, 2, 2, init=env.logpi_ref), env, data, lam=0.5)
    res = train.preference_fit(_tab(env), env, data, lam=0.5, steps=100, lr=0.05, polish=200)
    assert res.converged and res.grad_norm <= train.GTOL
    assert np.max(np.abs(res.logp - ref.logp)) < 1e-5
    assert abs(res.loss - ref.loss) < 1e-9
    assert res.extra["steps"] == 100 + res.extra["lbfgs_iters"]


def test_exact_rm_fit_reaches_numpy_optimum():
    env, data = _setup(1, n_features=3)
    ref = learners.fit_reward(LinearReward(env.features), data, env.logp_ref.shape, lam=0.1)
    res = train.fit_reward(
        TorchLinearReward(env.features, placement()), data, lam=0.1, steps=50, lr=0.05
    )
    assert np.max(np.abs(res.r_hat - ref.r_hat)) < 1e-6 and res.converged


def test_exact_sft_reaches_empirical_law():
    # SFT over the full class with λ = 0: P̂ = empirical frequencies of the demos
    from gvgap.data import Demos

    env = random_env(2, vocab=2, horizon=2)
    demos = Demos(np.zeros(4, int), np.array([0, 0, 1, 3]), np.ones(4))
    res = train.sft(_tab(env), env, demos, steps=200, lr=0.1, polish=0)
    p = np.exp(res.logp[0])
    assert np.allclose(p[[0, 1, 3]], [0.5, 0.25, 0.25], atol=1e-2) and p[2] < 1e-2


def test_exact_rl_is_soft_value_iteration():
    env, _ = _setup(3)
    r = np.random.default_rng(3).normal(size=env.logp_ref.shape)
    res = train.rl_exact(_tab(env), env, r, steps=100, lr=0.05)
    star = theory.soft_optimal(env.logpi_ref, r, env.beta)
    assert np.max(np.abs(res.logp - star)) < 1e-6 and res.extra["kl_proj"] < 1e-10


def test_transformer_rl_projection_is_exact_on_a_tiny_tree():
    env, _ = _setup(4)
    pol = TransformerPolicy(
        1, 2, 2, width=8, depth=1, heads=2, logpi_ref=env.logpi_ref, placement=placement()
    )
    res = train.rl_exact(pol, env, env.r_star, steps=300, lr=0.03)
    assert res.extra["kl_proj"] < 1e-4
    assert env.metrics(res.logp)["J_norm"] > 0.99


def test_lambda_protocol_runs_on_torch_fits():
    _env, data = _setup(5, n=40)
    rm = ScalarHeadRM(1, 2, 2, arch="mlp", width=8, depth=1, placement=placement())
    res, scores = learners.select_lambda(
        lambda d, lam: train.fit_reward(rm, d, lam=lam, steps=30, lr=0.05, polish=20),
        data,
        split_seed=0,
        grid=(0.01, 1.0),
    )
    assert set(scores) == {0.01, 1.0} and res.lam in scores
    assert np.isfinite(res.grad_norm) and res.extra["steps"] >= 30


def test_minibatch_dpo_is_seeded_and_learns():
    env, data = _setup(6, n=60)
    kw = dict(lam=0.1, steps=60, lr=0.05, batch_size=8, polish=0)
    a = train.preference_fit(_tab(env), env, data, seed=1, **kw)
    b = train.preference_fit(_tab(env), env, data, seed=1, **kw)
    c = train.preference_fit(_tab(env), env, data, seed=2, **kw)
    assert np.array_equal(a.logp, b.logp) and not np.array_equal(a.logp, c.logp)
    init = train.preference_fit(_tab(env), env, data, lam=0.1, steps=0, polish=0)
    assert a.loss < init.loss


@pytest.mark.parametrize("baseline", ["rloo", "mean"])
def test_sampled_rl_improves_and_is_seeded(baseline):
    env, _ = _setup(7)
    kw = dict(n_samples=4, prompts_per_step=8, steps=150, lr=0.05, baseline=baseline)
    a = train.rl_sampled(_tab(env), env, env.r_star, seed=3, **kw)
    b = train.rl_sampled(_tab(env), env, env.r_star, seed=3, **kw)
    assert np.array_equal(a.logp, b.logp)
    assert env.metrics(a.logp)["J_norm"] > 0.8 and np.isfinite(a.grad_norm)


def test_input_module_is_not_changed():
    env, data = _setup(8)
    pol = _tab(env)
    before = [p.detach().clone() for p in pol.parameters()]
    train.preference_fit(pol, env, data, steps=5, polish=0)
    assert all(torch.equal(a, b) for a, b in zip(before, pol.parameters()))


def test_select_lambda_many_is_select_lambda_per_dataset():
    """The batched protocol picks the same λ and refits the same way as select_lambda, on
    exact numpy fits (linear RM, Newton): same splits, scores and tie rule (equal to
    round-off: select_lambda warm-starts its Newton path, which moves the last bits)."""
    from gvgap.learners.select import select_lambda_many

    env = random_env(9, vocab=2, horizon=3, n_features=3)
    datas = [
        sample_pairs(env.logp_ref, env.r_star, env.rho, n, np.random.default_rng(n))
        for n in (12, 30, 50)
    ]
    cls = LinearReward(env.features)
    shape = env.logp_ref.shape
    grid = (1e-3, 1e-1, 10.0)

    def one(d, lam):
        return learners.fit_reward(cls, d, shape, lam=lam)

    many = select_lambda_many(
        lambda owners, ds, lams: [one(d, lam) for d, lam in zip(ds, lams)],
        datas,
        split_seeds=[3, 4, 5],
        grid=grid,
    )
    for d, s, (res, scores) in zip(datas, (3, 4, 5), many):
        ref, ref_scores = learners.select_lambda(one, d, split_seed=s, grid=grid)
        assert res.lam == ref.lam and scores.keys() == ref_scores.keys()
        assert all(abs(scores[k] - ref_scores[k]) < 1e-8 for k in scores)
        assert np.max(np.abs(res.r_hat - ref.r_hat)) < 1e-7
