"""numpy ≡ torch parity in float64 (≤ 1e-10): every loss and its gradients, the tabular and
log-linear policy classes and the tabular / linear / local reward classes (values and VJPs),
and the full training objectives at a common parameter point."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import random_env  # noqa: E402
from nn_helpers import placement  # noqa: E402

from gvgap import losses  # noqa: E402
from gvgap.data import sample_pairs  # noqa: E402
from gvgap.learners.offline import _reg, scatter  # noqa: E402
from gvgap.nn import losses as nn_losses  # noqa: E402
from gvgap.nn import train as train  # noqa: E402
from gvgap.nn.adapter import NumpyPolicy, NumpyReward  # noqa: E402
from gvgap.nn.policies import TorchLogLinearPolicy, TorchTabularPolicy  # noqa: E402
from gvgap.nn.rewards import LocalRM, TorchLinearReward, TorchTabularReward  # noqa: E402
from gvgap.policies import LogLinearPolicy, TabularPolicy, markov_features  # noqa: E402
from gvgap.rewards import LinearReward, LocalReward  # noqa: E402

TOL = 1e-10


def _t(a, grad=False):
    pl = placement()
    return torch.tensor(np.asarray(a), dtype=pl.dtype, device=pl.device, requires_grad=grad)


def _n(t):
    return t.detach().cpu().numpy()


def _inputs(seed, n=7):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=2.0, size=n) for _ in range(4)], rng.uniform(0.1, 2.0, n)


@pytest.mark.parametrize("seed", [0, 1])
def test_bt_and_sft_parity(seed):
    (a, b, _, _), w = _inputs(seed)
    v, g = losses.bt_nll(a, w)
    ta = _t(a, True)
    tv = nn_losses.bt_nll(ta, _t(w))
    tv.backward()
    assert abs(float(tv.detach()) - v) <= TOL and np.max(np.abs(_n(ta.grad) - g)) <= TOL
    v, g = losses.sft_nll(b, w)
    tb = _t(b, True)
    tv = nn_losses.sft_nll(tb, _t(w))
    tv.backward()
    assert abs(float(tv.detach()) - v) <= TOL and np.max(np.abs(_n(tb.grad) - g)) <= TOL


@pytest.mark.parametrize(("kind", "length"), [("dpo", 1.0), ("ipo", 1.0), ("ipo", 3.0)])
def test_preference_loss_parity(kind, length):
    (c, r, rc, rr), w = _inputs(2)
    tc, tr = _t(c, True), _t(r, True)
    if kind == "dpo":
        v, (gc, gr) = losses.dpo_loss(c, r, rc, rr, 0.7, w)
        tv = nn_losses.dpo_loss(tc, tr, _t(rc), _t(rr), 0.7, _t(w))
    else:
        v, (gc, gr) = losses.ipo_loss(c, r, rc, rr, 0.7, w, length)
        tv = nn_losses.ipo_loss(tc, tr, _t(rc), _t(rr), 0.7, _t(w), length)
    tv.backward()
    assert abs(float(tv.detach()) - v) <= TOL
    assert np.max(np.abs(_n(tc.grad) - gc)) <= TOL and np.max(np.abs(_n(tr.grad) - gr)) <= TOL


def test_centred_sq_and_reverse_kl_parity():
    env = random_env(3, vocab=2, horizon=3, n_prompts=2)
    rng = np.random.default_rng(3)
    r = rng.normal(size=env.logp_ref.shape)
    v, g = losses.centred_sq(r)
    tr = _t(r, True)
    tv = nn_losses.centred_sq(tr)
    tv.backward()
    assert abs(float(tv.detach()) - v) <= TOL and np.max(np.abs(_n(tr.grad) - g)) <= TOL
    lp = env.logp_star
    v, g = losses.reverse_kl_objective(lp, r, env.logp_ref, 0.5, env.rho)
    tlp = _t(lp, True)
    tv = nn_losses.reverse_kl_objective(tlp, _t(r), _t(env.logp_ref), 0.5, _t(env.rho))
    tv.backward()
    assert abs(float(tv.detach()) - v) <= TOL and np.max(np.abs(_n(tlp.grad) - g)) <= TOL


def _policy_pair(kind, env, rng):
    m, V, H = env.n_prompts, env.vocab, env.horizon
    if kind == "tabular":
        return TabularPolicy(m, V, H), NumpyPolicy(
            TorchTabularPolicy(m, V, H, placement=placement())
        )
    feats = markov_features(m, V, H, "position_bigram")
    return (
        LogLinearPolicy(feats, offset=env.logpi_ref),
        NumpyPolicy(TorchLogLinearPolicy(feats, offset=env.logpi_ref, placement=placement())),
    )


@pytest.mark.parametrize("kind", ["tabular", "loglinear"])
def test_policy_class_parity(kind):
    """Same θ layout: leaf log-probs, node log-probs and VJPs agree to 1e-10."""
    env = random_env(4, vocab=3, horizon=3, n_prompts=2)
    rng = np.random.default_rng(4)
    ref, tor = _policy_pair(kind, env, rng)
    assert tor.n_params == ref.n_params
    theta = rng.normal(size=ref.n_params)
    g = rng.normal(size=env.logp_ref.shape)
    assert np.max(np.abs(tor.leaf_logp(theta) - ref.leaf_logp(theta))) <= TOL
    for a, b in zip(tor.node_logp(theta), ref.node_logp(theta)):
        assert np.max(np.abs(a - b)) <= TOL
    assert np.max(np.abs(tor.vjp(theta, g) - ref.vjp(theta, g))) <= TOL


def test_reward_class_parity():
    env = random_env(5, vocab=2, horizon=3, n_prompts=2, n_features=4)
    rng = np.random.default_rng(5)
    g = rng.normal(size=env.logp_ref.shape)
    lin, tlin = (
        LinearReward(env.features),
        NumpyReward(TorchLinearReward(env.features, placement())),
    )
    w = rng.normal(size=4)
    assert np.max(np.abs(tlin.leaf_reward(w) - lin.leaf_reward(w))) <= TOL
    assert np.max(np.abs(tlin.vjp(w, g) - lin.vjp(w, g))) <= TOL
    tab = NumpyReward(TorchTabularReward(2, env.n_leaves, placement()))
    w = rng.normal(size=tab.n_params)
    assert np.max(np.abs(tab.leaf_reward(w) - w.reshape(2, -1))) <= TOL
    assert np.max(np.abs(tab.vjp(w, g) - g.ravel())) <= TOL
    pol = TorchTabularPolicy(2, 2, 3, placement=placement())
    loc = NumpyReward(LocalRM(pol, env.logp_ref, beta=0.7))
    ref_loc = LocalReward(TabularPolicy(2, 2, 3), env.logp_ref, beta=0.7)
    theta = rng.normal(size=loc.n_params)
    assert np.max(np.abs(loc.leaf_reward(theta) - ref_loc.leaf_reward(theta))) <= TOL
    assert np.max(np.abs(loc.vjp(theta, g) - ref_loc.vjp(theta, g))) <= TOL


def test_training_objective_parity():
    """At a random θ (steps=0, no polish) the torch DPO objective with the λ-regulariser and
    its gradient norm equal the numpy learner's f(θ) and ‖∇f(θ)‖ (offline.preference_fit)."""
    env = random_env(6, vocab=2, horizon=3, n_prompts=2)
    rng = np.random.default_rng(6)
    data = sample_pairs(env.logp_ref, env.r_star, env.rho, 12, rng)
    tab = TabularPolicy(2, 2, 3)
    theta = rng.normal(size=tab.n_params)
    tor = TorchTabularPolicy(2, 2, 3, init=tab.unflatten(theta), placement=placement())
    res = train.preference_fit(tor, env, data, lam=0.3, steps=0, polish=0)
    lp = tab.leaf_logp(theta)
    p, c, r, w = data.prompt, data.chosen, data.rejected, data.weight
    v, (dc, dr) = losses.dpo_loss(
        lp[p, c], lp[p, r], env.logp_ref[p, c], env.logp_ref[p, r], 1.0, w
    )
    rv, rg = _reg(0.3, lp - env.logp_ref, float(w.sum()))
    g = tab.vjp(theta, scatter(dc, p, c, lp.shape) + scatter(dr, p, r, lp.shape) + rg)
    assert abs(res.loss - (v + rv)) <= TOL
    assert abs(res.grad_norm - np.linalg.norm(g)) <= TOL
