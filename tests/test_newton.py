"""Exact reward-coordinate Newton fits (learners/newton.py): hand-derived optima, agreement with
the generic L-BFGS path, and robustness over β, π_ref concentration and λ (issue 8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import random_env
from scipy.optimize import brentq

from gvgap import learners
from gvgap.data import sample_pairs
from gvgap.envs import make_family
from gvgap.errors import UserError
from gvgap.experiments.common import ProblemConfig, fit_dpo, fit_online_dpo, fit_rlhf, prepare
from gvgap.learners.newton import RTOL, bt_newton_tabular
from gvgap.policies import TabularPolicy
from gvgap.rewards import LinearReward, TabularReward

AGREE = 1e-8  # Newton vs converged L-BFGS (gtol 1e-11): objective and leaf log-probabilities


class _GenericTabular(TabularPolicy):
    """Same class, but not *exactly* TabularPolicy: routed through the generic optimiser."""


class _GenericLinear(LinearReward):
    """Same class, routed through the generic optimiser."""


class _GenericTabularReward(TabularReward):
    """Same class, routed through the generic optimiser."""


@pytest.fixture(scope="module")
def env():
    """2 prompts × 8 leaves, random π_ref, 3 Gaussian features."""
    return random_env(3, vocab=2, horizon=3, n_prompts=2, beta=0.7, n_features=3)


@pytest.fixture(scope="module")
def prefs(env):
    """30 BT-labelled pairs from π_ref."""
    return sample_pairs(env.logp_ref, env.r_star, env.rho, 30, np.random.default_rng(5))


def test_single_pair_matches_hand_derived_optimum():
    """One prompt, two leaves, one pair (0 ≻ 1), w = 1, m = 1 ⇒ μ = λ. With Δ = r0 − r1 and
    centred r = (Δ/2, −Δ/2): f = softplus(−Δ) + (λ/2)(Δ²/4 + Δ²/4) = softplus(−Δ) + λΔ²/4,
    stationary where σ(−Δ) = λΔ/2 (solved here by bisection)."""
    lam = 0.3
    delta = brentq(lambda d: 1.0 / (1.0 + math.exp(d)) - lam * d / 2.0, 0.0, 50.0, xtol=1e-15)
    fit = bt_newton_tabular(
        np.array([0]), np.array([0]), np.array([1]), np.array([1.0]), (1, 2), lam
    )
    np.testing.assert_allclose(fit.x, [[delta / 2, -delta / 2]], atol=1e-12)
    assert fit.converged and fit.grad_norm <= 1e-12
    expected = math.log1p(math.exp(-delta)) + lam * delta**2 / 4
    assert abs(fit.fun - expected) <= 1e-14


@pytest.mark.parametrize("lam", [1e-3, 0.1, 10.0])
def test_tabular_dpo_agrees_with_lbfgs(env, prefs, lam):
    """Newton in leaf-reward coordinates + soft VI = L-BFGS over the logits, to 1e-8."""
    fast = learners.dpo(TabularPolicy(2, 2, 3, init=env.logpi_ref), env, prefs, lam=lam)
    slow = learners.dpo(
        _GenericTabular(2, 2, 3, init=env.logpi_ref), env, prefs, lam=lam, gtol=1e-11
    )
    assert fast.extra["solver"] == "newton_reward_coordinates"
    assert "solver" not in slow.extra
    assert fast.converged and slow.converged
    assert abs(fast.loss - slow.loss) <= AGREE
    np.testing.assert_allclose(fast.logp, slow.logp, atol=AGREE)
    # the implicit reward: same up to rounding (both are β(log P − log P_ref))
    np.testing.assert_allclose(fast.r_hat, slow.r_hat, atol=1e-7)


@pytest.mark.parametrize("lam", [1e-3, 1.0])
def test_tabular_rm_agrees_with_lbfgs(env, prefs, lam):
    """The tabular RM by Newton + CG equals the generic fit (r̂ centred per prompt)."""
    shape = env.logp_ref.shape
    fast = learners.fit_reward(TabularReward(*shape), prefs, shape, lam=lam)
    slow = learners.fit_reward(_GenericTabularReward(*shape), prefs, shape, lam=lam, gtol=1e-11)
    assert fast.converged and abs(fast.loss - slow.loss) <= AGREE
    np.testing.assert_allclose(fast.r_hat, slow.r_hat, atol=1e-7)


@pytest.mark.parametrize("n_pairs", [4, 30])  # n < rank (Woodbury) and n > rank (Cholesky)
def test_linear_rm_agrees_with_lbfgs(n_pairs):
    """Linear RM by Newton (Cholesky of the k×k or n×n system) = the generic fit, including a
    rank-deficient feature map (a duplicated column and a per-prompt constant column)."""
    env = random_env(7, vocab=2, horizon=4, n_prompts=2, beta=1.0, n_features=6)
    feats = env.features.copy()
    feats[..., 1] = feats[..., 0]  # duplicated column: flat direction in w
    feats[..., 2] = np.arange(2)[:, None]  # constant within each prompt: no effect on r mod c
    prefs = sample_pairs(env.logp_ref, env.r_star, env.rho, n_pairs, np.random.default_rng(2))
    shape = env.logp_ref.shape
    for lam in (1e-4, 1.0):
        fast = learners.fit_reward(LinearReward(feats), prefs, shape, lam=lam)
        slow = learners.fit_reward(_GenericLinear(feats), prefs, shape, lam=lam, gtol=1e-11)
        assert fast.converged and fast.grad_norm <= 1e-9
        assert abs(fast.loss - slow.loss) <= AGREE
        centred = lambda r: r - r.mean(axis=1, keepdims=True)  # noqa: E731
        np.testing.assert_allclose(centred(fast.r_hat), centred(slow.r_hat), atol=1e-6)


def test_warm_start_reaches_the_same_optimum(env, prefs):
    """A warm start (λ path) changes the iterations, not the optimum."""
    shape = env.logp_ref.shape
    rc = LinearReward(env.features)
    cold = learners.fit_reward(rc, prefs, shape, lam=1e-2)
    warm = learners.fit_reward(
        rc, prefs, shape, lam=1e-2, w0=learners.fit_reward(rc, prefs, shape, lam=1.0).params
    )
    np.testing.assert_allclose(cold.r_hat, warm.r_hat, atol=1e-10)


def test_linear_vjp_is_phi_transpose_g(env):
    """BLAS Φᵀg equals the explicit sum Σ_x Σ_ξ φ(x,ξ) g(x,ξ)."""
    rc = LinearReward(env.features)
    g = np.random.default_rng(0).standard_normal(env.logp_ref.shape)
    np.testing.assert_allclose(rc.vjp(None, g), np.einsum("xnk,xn->k", env.features, g), rtol=1e-13)


def test_relative_tolerance_is_tight():
    """The stated relative stopping rule."""
    assert RTOL <= 1e-10


@pytest.mark.parametrize("lam", [math.inf, math.nan, -1.0])
def test_bad_lambda_is_refused(env, prefs, lam):
    """λ must be finite and ≥ 0: one UserError naming lam, in every learner."""
    shape = env.logp_ref.shape
    pol = TabularPolicy(2, 2, 3, init=env.logpi_ref)
    calls = [
        lambda: learners.dpo(pol, env, prefs, lam=lam),
        lambda: learners.fit_reward(LinearReward(env.features), prefs, shape, lam=lam),
        lambda: learners.rlhf(TabularReward(*shape), env, prefs, lam=lam),
        lambda: learners.online_dpo_exact(pol, env, env.r_star, lam=lam, iters=1),
    ]
    for call in calls:
        with pytest.raises(UserError, match="lam"):
            call()


@pytest.mark.parametrize("beta", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("conc", [1e-3, 1e-2, 1.0])
def test_every_pipeline_runs_over_beta_and_concentration(beta, conc):
    """β ∈ [1e-3, 1e3], Dirichlet π_ref concentration ≥ 1e-3: no crash, no NaN, certified."""
    cfg = ProblemConfig(
        vocab=2,
        horizon=3,
        beta=beta,
        ref="random",
        ref_concentration=conc,
        n_pairs=16,
        lam_grid="short",
    )
    env, data, grid, split = prepare(cfg, np.random.default_rng(0), np.random.default_rng(1))
    fits = [fit_dpo(env, data, grid, split), fit_dpo(env, data, grid, split, loss="ipo")]
    fits += [fit_rlhf(env, data, name, grid, split) for name in ("linear", "tabular")]
    fits.append(fit_online_dpo(env, fits[2].r_hat, iters=3))
    for res in fits:
        assert np.all(np.isfinite(res.logp)), res.pipeline
        assert np.isfinite(res.grad_norm)
        assert all(np.isfinite(v) for v in env.metrics(res.logp).values()), res.pipeline
    assert fits[0].converged and fits[2].converged and fits[3].converged


def test_online_dpo_stops_when_no_pair_has_weight():
    """A policy so peaked that every draw ties yields no pairs: the loop stops there (the
    ZeroDivisionError of issue 8 at β = 1e-3). The exact pair law resolves the tied-draw
    complement (mass ~1e-200 here, issue 19); below NO_PAIRS it is a numerical zero."""
    env = make_family("linear", rng=np.random.default_rng(1), vocab=2, horizon=3, beta=1e-3)
    pol = TabularPolicy(1, 2, 3, init=env.logpi_ref)
    peaked = learners.soft_rl(env, env.r_star)  # β = 1e-3: P* puts all mass (to 1e-200) on argmax
    res = learners.online_dpo_exact(
        pol, env, env.r_star, lam=1e-2, pairs="best_worst", theta0=peaked.params, iters=5
    )
    assert res.converged and np.all(np.isfinite(res.logp))
    np.testing.assert_allclose(res.logp, peaked.logp, atol=1e-12)


def test_full_span_linear_rm_is_the_tabular_fit():
    """k ≥ N Gaussian features span every centred reward (rank m(N − 1)): the linear RM is
    solved as the tabular fit and mapped back; it agrees with L-BFGS on w and with the tabular
    RM on r̂ (mod per-prompt constants)."""
    env = random_env(11, vocab=2, horizon=3, n_prompts=1, beta=1.0, n_features=10)
    prefs = sample_pairs(env.logp_ref, env.r_star, env.rho, 20, np.random.default_rng(4))
    shape = env.logp_ref.shape
    fast = learners.fit_reward(LinearReward(env.features), prefs, shape, lam=0.05)
    slow = learners.fit_reward(_GenericLinear(env.features), prefs, shape, lam=0.05, gtol=1e-11)
    tab = learners.fit_reward(TabularReward(*shape), prefs, shape, lam=0.05)
    assert fast.converged and abs(fast.loss - slow.loss) <= AGREE
    centred = lambda r: r - r.mean(axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centred(fast.r_hat), centred(slow.r_hat), atol=1e-6)
    np.testing.assert_allclose(centred(fast.r_hat), centred(tab.r_hat), atol=1e-10)


def test_warm_path_results_are_bit_identical_across_history():
    """λ selection with warm starts is deterministic: the same call gives the same bits,
    whatever ran before it in the process (warm starts never leak between calls)."""
    cfg = ProblemConfig(vocab=2, horizon=4, n_pairs=40, k=4)
    env, data, grid, split = prepare(cfg, np.random.default_rng(3), np.random.default_rng(4))
    first = fit_rlhf(env, data, "linear", grid, split)
    fit_dpo(env, data, grid, split)  # unrelated history in between
    fit_rlhf(env, data, "tabular", grid, split)
    again = fit_rlhf(env, data, "linear", grid, split)
    assert first.lam == again.lam
    np.testing.assert_array_equal(first.r_hat, again.r_hat)
    np.testing.assert_array_equal(first.logp, again.logp)


def test_sparse_cg_path_matches_the_dense_cholesky_path(env, prefs, monkeypatch):
    """Above DENSE_MAX touched leaves the Newton system is solved by Jacobi-PCG on the sparse
    pair Laplacian; forced here (DENSE_MAX = 0) it reaches the dense path's certified optimum."""
    from gvgap.learners import newton

    args = (prefs.prompt, prefs.chosen, prefs.rejected, prefs.weight, env.logp_ref.shape, 0.3)
    dense = newton.bt_newton_tabular(*args, gtol=1e-11)
    monkeypatch.setattr(newton, "DENSE_MAX", 0)
    sparse = newton.bt_newton_tabular(*args, gtol=1e-11)
    assert dense.converged and sparse.converged and sparse.grad_norm <= 1e-11
    np.testing.assert_allclose(sparse.x, dense.x, atol=1e-9)
    assert abs(sparse.fun - dense.fun) <= 1e-13


# ---------------------------------------------------------------- issue 19: true certificates


def _scaled_problem():
    """1 prompt × 16 leaves, 4 Gaussian features, 20 BT pairs (issue 19's reproducer shape)."""
    env = random_env(0, vocab=2, horizon=4, n_prompts=1, n_features=4)
    prefs = sample_pairs(env.logp_ref, env.r_star, env.rho, 20, np.random.default_rng(0))
    return env.features, prefs


@pytest.mark.parametrize("scales", [(1e-3, 1.0, 1e3, 1.0), (1e-6, 1.0, 1e6, 1.0)])
def test_linear_rm_fit_does_not_depend_on_column_scaling(scales):
    """Issue 19: Φ·diag(s) spans the same rewards as Φ, so the fit must be the same. The rank
    was decided on the Gram's pivots relative to its largest diagonal, which dropped the
    down-scaled column (loss 0.579 vs 0.417 here, and ‖∇‖ 3e-18 reported while the gradient
    on the span was 8e-2). Checked against the gradient on the whole span from a 40-digit
    orthonormal basis (tests/mp_reference.py)."""
    from mp_reference import bt_linear_gradient_on_span

    phi, prefs = _scaled_problem()
    plain = learners.fit_reward(LinearReward(phi), prefs, (1, 16), lam=1e-3)
    scaled = learners.fit_reward(LinearReward(phi * np.array(scales)), prefs, (1, 16), lam=1e-3)
    assert plain.converged and scaled.converged
    assert abs(scaled.loss - plain.loss) <= 1e-12
    centred = lambda r: r - r.mean(axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centred(scaled.r_hat), centred(plain.r_hat), atol=1e-9)
    args = (phi, prefs.prompt, prefs.chosen, prefs.rejected, prefs.weight, 1e-3)
    assert bt_linear_gradient_on_span(*args, scaled.r_hat) <= 1e-9
    assert scaled.extra["rank"] == plain.extra["rank"] == 4


def test_linear_rm_certificate_covers_the_dropped_directions(monkeypatch):
    """``converged`` only if the gradient on the whole feature span is below gtol: with a rank
    tolerance forced so high that a real direction is dropped, the fit over the rest converges
    but the certificate says no and reports the gradient along the dropped direction. With the
    stated tolerance, an exactly duplicated column and a per-prompt constant are dropped (they
    span nothing: σ at rounding level, zero gradient along them) and the fit is certified."""
    from gvgap.learners import feature_basis

    phi, prefs = _scaled_problem()
    dup = np.concatenate([phi, phi[..., :1], np.full((*phi.shape[:2], 1), 3.0)], axis=-1)
    fit = learners.fit_reward(LinearReward(dup), prefs, (1, 16), lam=1e-3)
    assert fit.converged and fit.extra["rank"] == 4
    assert fit.extra["sigma_dropped"] <= 1e-13 and fit.extra["grad_dropped"] <= 1e-15
    monkeypatch.setattr(feature_basis, "RANK_EPS_FACTOR", 1e14)  # σ ≤ ~0.2 is null: drops one
    trunc = learners.fit_reward(LinearReward(phi), prefs, (1, 16), lam=1e-3)
    assert trunc.extra["rank"] == 3 and trunc.extra["sigma_dropped"] > 1e-2
    assert trunc.extra["grad_dropped"] > 1e-6 and not trunc.converged


def test_linear_rm_rank_of_window_features_is_exact_under_rescaling():
    """The rank decision is relative to the data: window<J> indicators (exact linear
    dependencies within each position block) get the rank of numpy's matrix_rank, also with
    their columns rescaled by e^{±14}."""
    from gvgap.envs import features
    from gvgap.learners.feature_basis import FeatureBasis
    from gvgap.theory.tree import leaf_tokens

    rng = np.random.default_rng(0)
    for vocab, horizon, order, m in [(2, 4, 1, 1), (3, 3, 1, 3), (2, 5, 2, 2), (3, 4, 3, 1)]:
        phi = features.position_window(leaf_tokens(vocab, horizon), vocab, order)
        feats = phi[None] if m == 1 else features.block_features(phi, m)
        centred = (feats - feats.mean(axis=1, keepdims=True)).reshape(-1, feats.shape[-1])
        want = np.linalg.matrix_rank(centred, tol=1e-9)
        assert FeatureBasis.of(feats).rank == want
        scales = np.exp(rng.uniform(-14, 14, feats.shape[-1]))
        assert FeatureBasis.of(feats * scales).rank == want


def test_default_newton_stop_reaches_the_quadratic_convergence_floor(monkeypatch):
    """Issue 19: m = 2, N = 27, 58 pairs, λ = 1e-4 (a grid value). At the gradient test the
    error is ‖H⁻¹∇f‖ ≈ ‖∇f‖/μ (here ~2e-7); the default stop now takes full Newton steps on
    to the rounding floor. Reference: Newton in 40-digit arithmetic (tests/mp_reference.py);
    without the polishing steps (POLISH_STEPS = 0) the same test fails."""
    from mp_reference import bt_tabular_optimum

    from gvgap.learners import newton

    env = random_env(0, vocab=3, horizon=3, n_prompts=2)
    prefs = sample_pairs(env.logp_ref, env.r_star, env.rho, 58, np.random.default_rng(0))
    args = (prefs.prompt, prefs.chosen, prefs.rejected, prefs.weight, (2, 27), 1e-4)
    fit = bt_newton_tabular(*args)
    ref = bt_tabular_optimum(*args, fit.x, iters=3)
    floor = 1e-13 * (1.0 + np.abs(ref).max())
    assert fit.converged and np.abs(fit.x - ref).max() <= 10 * floor
    monkeypatch.setattr(newton, "POLISH_STEPS", 0)
    early = bt_newton_tabular(*args)
    assert early.converged and np.abs(early.x - ref).max() > 1e4 * floor


def test_full_span_fit_does_not_depend_on_column_scaling():
    """The full-span path (pivoted Cholesky of the column-normalised Gram, no SVD) is scale-free
    too: a column scaled by 1e-6 and one by 1e6 leave the span, the path and the fit as they
    were; the certificate is the whole centred gradient at the returned w."""
    env = random_env(11, vocab=2, horizon=3, n_prompts=1, beta=1.0, n_features=10)
    prefs = sample_pairs(env.logp_ref, env.r_star, env.rho, 20, np.random.default_rng(4))
    scales = np.ones(10)
    scales[[2, 7]] = [1e-6, 1e6]
    plain = learners.fit_reward(LinearReward(env.features), prefs, (1, 8), lam=0.05)
    scaled = learners.fit_reward(LinearReward(env.features * scales), prefs, (1, 8), lam=0.05)
    assert plain.converged and scaled.converged and scaled.extra["rank"] == 7
    centred = lambda r: r - r.mean(axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centred(scaled.r_hat), centred(plain.r_hat), atol=1e-9)
