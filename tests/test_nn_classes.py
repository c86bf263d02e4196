"""Neural policy and reward classes on tiny trees: π_ref at initialisation (zero head + π_ref
offset), exact normalisation, tree consistency of the one-pass outputs, autograd VJPs against
finite differences, scalar-head RM initialisation, local RM. (Causality and the equality with
whole-sequence attention: ``test_nn_stacked.py``.)"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import random_env  # noqa: E402
from nn_helpers import placement  # noqa: E402

from gvgap import theory as theory  # noqa: E402
from gvgap.nn.adapter import NumpyPolicy, NumpyReward  # noqa: E402
from gvgap.nn.policies import MLPPolicy, TransformerPolicy  # noqa: E402
from gvgap.nn.rewards import LocalRM, ScalarHeadRM  # noqa: E402

NEURAL = [
    lambda env, seed: MLPPolicy(
        env.n_prompts,
        env.vocab,
        env.horizon,
        width=8,
        depth=2,
        logpi_ref=env.logpi_ref,
        placement=placement(),
        seed=seed,
    ),
    lambda env, seed: TransformerPolicy(
        env.n_prompts,
        env.vocab,
        env.horizon,
        width=8,
        depth=2,
        heads=2,
        logpi_ref=env.logpi_ref,
        placement=placement(),
        seed=seed,
    ),
]


def _perturbed(make, env, seed=0, scale=0.5):
    pol = make(env, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return pol


@pytest.mark.parametrize("make", NEURAL)
@pytest.mark.parametrize(("vocab", "horizon"), [(2, 1), (3, 3)])
def test_initial_policy_is_pi_ref(make, vocab, horizon):
    # zero head ⇒ logits = log π_ref(·|s), and log_softmax of normalised log-probs is itself
    env = random_env(1, vocab=vocab, horizon=horizon, n_prompts=2)
    lp = make(env, 0).leaf_logp()
    assert np.max(np.abs(lp.detach().cpu().numpy() - env.logp_ref)) < 1e-12


@pytest.mark.parametrize("make", NEURAL)
def test_one_pass_outputs_are_a_consistent_tree(make):
    """Leaf law normalised; node log-probs = the tree conditionals of the leaf law
    (docs/theory.md §2)."""
    env = random_env(2, vocab=3, horizon=3, n_prompts=2)
    pol = _perturbed(make, env)
    lp = pol.leaf_logp().detach().cpu().numpy()
    assert np.allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-12)
    cond = theory.leaf_to_node_logp(lp, 3, 3)
    for a, b in zip(pol.node_logp(), cond):
        assert np.max(np.abs(a.detach().cpu().numpy() - b)) < 1e-12
    assert len({round(float(x), 6) for x in lp.ravel()}) > 3  # not constant: the net moved


@pytest.mark.parametrize("make", NEURAL)
def test_vjp_matches_finite_differences(make):
    env = random_env(4, vocab=2, horizon=3)
    cls = NumpyPolicy(_perturbed(make, env, scale=0.2))
    rng = np.random.default_rng(4)
    theta = cls.init_params()
    g = rng.normal(size=env.logp_ref.shape)
    d = rng.normal(size=theta.size)
    eps = 1e-6
    fd = np.sum(g * cls.leaf_logp(theta + eps * d)) - np.sum(g * cls.leaf_logp(theta - eps * d))
    assert abs(fd / (2 * eps) - cls.vjp(theta, g) @ d) < 1e-6


def test_mlp_features_are_injective():
    """Distinct states (leaves) get distinct one-hot feature sets."""
    pol = MLPPolicy(2, 3, 3, width=4, depth=1, placement=placement())
    tix = pol.tree_index()
    feats = pol.features(tix).cpu().numpy()
    real = np.concatenate([np.arange(p) < c for p, (_, c) in zip(tix.padded, tix.tree.ranges)])
    rows = {tuple(r) for r in feats[real]}
    assert len(rows) == real.sum() == 2 * (1 + 3 + 9)
    rm = ScalarHeadRM(2, 3, 2, arch="mlp", width=4, depth=1, placement=placement())
    lf = rm.features(rm.tree_index()).cpu().numpy()[:18]
    assert len({tuple(r) for r in lf}) == 18


@pytest.mark.parametrize("arch", ["transformer", "mlp"])
def test_scalar_rm_starts_at_zero_and_has_gradients(arch):
    rm = ScalarHeadRM(2, 2, 3, arch=arch, width=8, depth=1, heads=2, placement=placement())
    r = rm.leaf_reward()
    assert r.shape == (2, 8) and float(r.detach().abs().max()) == 0.0
    cls = NumpyReward(rm)
    g = np.random.default_rng(0).normal(size=(2, 8))
    assert np.linalg.norm(cls.vjp(cls.init_params(), g)) > 0  # the head's gradient


def test_rm_from_policy_backbone_copies_then_decouples():
    env = random_env(5, vocab=2, horizon=3)
    pol = _perturbed(NEURAL[1], env)
    rm = ScalarHeadRM(1, 2, 3, width=8, body=pol.body, placement=placement())
    for a, b in zip(rm.body.parameters(), pol.body.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        next(rm.body.parameters()).add_(1.0)
    assert not torch.equal(next(rm.body.parameters()), next(pol.body.parameters()))
    # same capacity as the policy up to the head: V-way head vs scalar head
    n_pol = sum(p.numel() for p in pol.parameters())
    n_rm = sum(p.numel() for p in rm.parameters())
    assert n_pol - n_rm == (2 - 1) * (8 + 1)


@pytest.mark.parametrize("make", NEURAL)
def test_local_rm_is_beta_log_ratio(make):
    env = random_env(6, vocab=2, horizon=2)
    pol = _perturbed(make, env)
    r = LocalRM(pol, env.logp_ref, beta=0.3).leaf_reward().detach().cpu().numpy()
    lp = pol.leaf_logp().detach().cpu().numpy()
    assert np.max(np.abs(r - 0.3 * (lp - env.logp_ref))) < 1e-14
    # soft-optimal policy for the local reward is the policy itself (docs/theory.md §3)
    assert np.max(np.abs(theory.soft_optimal(env.logpi_ref, r, 0.3) - lp)) < 1e-10
