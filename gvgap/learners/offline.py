"""Offline pipelines: SFT, DPO, IPO, reference-free local RM, SPIN (docs/theory.md §3).

All are maximum-likelihood-type fits over a policy class Π, written as
f(θ) = loss(log P_θ on the data) + λ Ω(r_θ), with Ω the centred squared norm in reward
coordinates r_θ = β (log P_θ − log P_ref) (``losses.centred_sq``), so that with isomorphic
classes the offline and online optima coincide exactly after regularisation.
"""

from __future__ import annotations

import weakref

import numpy as np

from gvgap import losses, theory
from gvgap.data import Demos, Preferences
from gvgap.envs.features import block_features, position_window
from gvgap.envs.tree_env import TreeEnv
from gvgap.errors import check_range
from gvgap.learners.feature_basis import feature_basis
from gvgap.learners.newton import bt_newton_linear, bt_newton_tabular
from gvgap.learners.optim import GTOL, minimize
from gvgap.learners.result import Result
from gvgap.policies import TabularPolicy
from gvgap.policies.markov import MarkovPolicy
from gvgap.rewards import LinearReward

PREF_LOSSES = ("dpo", "ipo", "ipo_mean")


def scatter(values: np.ndarray, prompt: np.ndarray, leaf: np.ndarray, shape) -> np.ndarray:
    """Σ of per-row values into a leaf array ``shape = (m, N)`` (the adjoint of gather)."""
    m, n = shape
    return np.bincount(prompt * n + leaf, weights=values, minlength=m * n).reshape(shape)


def check_lam(lam: float) -> float:
    """λ as a float, or UserError: the regulariser strength must be finite and ≥ 0."""
    return float(check_range("lam", float(lam), 0.0))


def check_weight(total_weight: float) -> float:
    """Σw of a data set, or ValueError if it carries no mass (the mean loss is undefined)."""
    if not total_weight > 0.0:
        raise ValueError(f"the data carry no weight (total weight {total_weight}); nothing to fit")
    return total_weight


def _reg(lam: float, r: np.ndarray, total_weight: float) -> tuple[float, np.ndarray]:
    """(λ / Σw) Ω(r): a prior of strength λ against the *summed* data log-likelihood (MAP),
    written against the weighted-mean loss; it fades as data grow, so every pipeline stays
    consistent, and it is identical across pipelines fitted on the same data."""
    if lam == 0.0:
        return 0.0, 0.0
    v, g = losses.centred_sq(r)
    scale = lam / total_weight
    return scale * v, scale * g


def on_policy_kl(coef: float, lp: np.ndarray, env: TreeEnv) -> tuple[float, np.ndarray]:
    """α E_x KL(P‖P_ref) and its gradient w.r.t. log P: α ρ P (log P − log P_ref + 1)."""
    if coef == 0.0:
        return 0.0, 0.0
    p = np.exp(lp)
    diff = lp - env.logp_ref
    value = float(env.rho @ (p * diff).sum(axis=1))
    return coef * value, coef * env.rho[:, None] * p * (diff + 1.0)


def preference_fit(
    policy,
    env: TreeEnv,
    data: Preferences,
    *,
    lam: float = 0.0,
    loss: str = "dpo",
    beta: float | None = None,
    tau: float | None = None,
    logp_ref_loss: np.ndarray | None = None,
    kl_coef: float = 0.0,
    theta0: np.ndarray | None = None,
    gtol: float = GTOL,
) -> Result:
    """Offline preference optimisation over ``policy`` (DPO / IPO families).

    Args:
        policy: a policy class (``gvgap.policies``).
        env: supplies π_ref (``env.logp_ref``) and β (``env.beta`` unless ``beta`` given).
        data: preference pairs.
        lam: λ of the reward-coordinate regulariser (λ/Σw) Ω(β(log P_θ − log P_ref)).
        loss: ``"dpo"`` (sigmoid on summed log-ratios), ``"ipo"`` (summed), ``"ipo_mean"``
            (token-mean, divides log-ratios by H).
        tau: IPO's τ (default β).
        logp_ref_loss: the reference inside the loss (default π_ref; SPIN uses π_t).
        kl_coef: α of an explicit *on-policy* term α E_x KL(P_θ ‖ P_ref), computed exactly
            on the tree (H2: regularise offline DPO the way online RL does).
        theta0: warm start (default ``policy.init_params()``).

    Returns:
        :class:`Result` with ``r_hat`` = β (log P_θ − log P_ref).
    """
    if loss not in PREF_LOSSES:
        raise ValueError(f"loss must be one of {PREF_LOSSES}, got {loss!r}")
    lam = check_lam(lam)
    check_weight(float(data.weight.sum()))
    beta = env.beta if beta is None else beta
    if _reward_coordinates_apply(policy, loss, lam, logp_ref_loss, kl_coef):
        return _dpo_tabular(policy, env, data, lam=lam, beta=beta, theta0=theta0, gtol=gtol)
    if _window_coordinates_apply(policy, loss, lam, logp_ref_loss, kl_coef):
        return _dpo_markov(policy, env, data, lam=lam, beta=beta, gtol=gtol)
    tau = beta if tau is None else tau
    ref = env.logp_ref if logp_ref_loss is None else logp_ref_loss
    p, c, r, w = data.prompt, data.chosen, data.rejected, data.weight
    ref_c, ref_r = ref[p, c], ref[p, r]
    shape = env.logp_ref.shape
    w_total = float(w.sum())

    def fg(theta):
        lp = policy.leaf_logp(theta)
        if loss == "dpo":
            v, (dc, dr) = losses.dpo_loss(lp[p, c], lp[p, r], ref_c, ref_r, beta, w)
        else:
            length = env.horizon if loss == "ipo_mean" else 1.0
            v, (dc, dr) = losses.ipo_loss(lp[p, c], lp[p, r], ref_c, ref_r, tau, w, length)
        g_leaf = scatter(dc, p, c, shape) + scatter(dr, p, r, shape)
        rv, rg = _reg(lam, beta * (lp - env.logp_ref), w_total)
        kv, kg = on_policy_kl(kl_coef, lp, env)
        return v + rv + kv, policy.vjp(theta, g_leaf + beta * rg + kg)

    opt = minimize(fg, policy.init_params() if theta0 is None else theta0, gtol=gtol)
    lp = policy.leaf_logp(opt.x)
    return Result.from_opt(loss, lp, beta * (lp - env.logp_ref), opt, lam)


def _reward_coordinates_apply(policy, loss, lam, logp_ref_loss, kl_coef) -> bool:
    """Tabular DPO with λ > 0 against π_ref and no extra KL term is a BT fit in leaf-reward
    coordinates (exact fast path); everything else goes through the generic optimiser."""
    return (
        type(policy) is TabularPolicy
        and loss == "dpo"
        and lam > 0.0
        and logp_ref_loss is None
        and kl_coef == 0.0
    )


def _window_coordinates_apply(policy, loss, lam, logp_ref_loss, kl_coef) -> bool:
    """markovJ DPO with a uniform base, λ > 0, against π_ref, no extra KL term: a BT fit over
    the window<J> features (exact fast path, :func:`_dpo_markov`)."""
    return (
        type(policy) is MarkovPolicy
        and loss == "dpo"
        and lam > 0.0
        and logp_ref_loss is None
        and kl_coef == 0.0
        and policy.uniform_base
    )


#: The window<J> reward class of each Markov policy object (one basis per λ path).
_WINDOWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def window_reward(policy: MarkovPolicy) -> LinearReward:
    """R(markovJ) for a uniform base: window<J> features with one weight vector per prompt
    (block features e_x ⊗ φ), built once per policy object."""
    rc = _WINDOWS.get(policy)
    if rc is None:
        phi = position_window(
            theory.leaf_tokens(policy.vocab, policy.horizon), policy.vocab, policy.order
        )
        feats = block_features(phi, policy.n_prompts) if policy.n_prompts > 1 else phi[None]
        rc = _WINDOWS[policy] = LinearReward(feats)
    return rc


def _dpo_markov(policy, env: TreeEnv, data: Preferences, *, lam, beta, gtol) -> Result:
    """DPO over markovJ with a uniform base, exactly. Its local rewards β log π_θ/π_ref span
    window<J> per prompt modulo constants, and soft RL on a window<J> reward returns a member
    of markovJ (the soft value of a prefix depends on its last J tokens only; docs/theory.md),
    so the DPO problem is the BT problem over window<J> in reward coordinates with the same
    (λ/Σw)Ω: r̂ by Newton (:func:`~gvgap.learners.newton.bt_newton_linear`), π̂ = π*_{r̂} by
    soft value iteration, θ read off π̂. ``grad_norm`` is ‖∇f‖ in those coordinates."""
    rc = window_reward(policy)
    fit = bt_newton_linear(
        rc.features,
        feature_basis(rc),
        data.prompt,
        data.chosen,
        data.rejected,
        data.weight,
        lam,
        None,
        gtol,
    )
    return _dpo_result(
        env, rc.leaf_reward(fit.x), fit, lam, beta, "newton_window_coordinates", policy
    )


def _dpo_tabular(policy, env: TreeEnv, data: Preferences, *, lam, beta, theta0, gtol) -> Result:
    """DPO over the tabular class, exactly: the tabular class reaches every leaf reward modulo
    per-prompt constants through r = β(log P_θ − log P_ref), and the DPO objective is the BT
    objective of that r (``losses.dpo_loss``) plus (λ/Σw)Ω(r). So r̂ = the tabular BT fit
    (:func:`~gvgap.learners.newton.bt_newton_tabular`, Newton + sparse CG, warm-started at
    θ0's implicit reward) and π̂ = π*_{r̂} by soft value iteration (log P̂ = log P_ref + r̂/β −
    log Z). ``grad_norm`` is ‖∇f‖ in leaf-reward coordinates."""
    r0 = None
    if theta0 is not None:
        r0 = beta * (policy.leaf_logp(np.asarray(theta0, float)) - env.logp_ref)
    fit = bt_newton_tabular(
        data.prompt, data.chosen, data.rejected, data.weight, env.logp_ref.shape, lam, r0, gtol
    )
    return _dpo_result(env, fit.x, fit, lam, beta, "newton_reward_coordinates")


def _dpo_result(env, r, fit, lam, beta, solver, markov=None) -> Result:
    """The DPO Result of a BT fit in reward coordinates r ``(m, N)``: π̂ = π*_r by soft value
    iteration, r̂ = r − β log Z = β(log P̂ − log P_ref) (without cancellation), θ the node
    log-probabilities (tabular) or, for a ``markov`` policy, each context's logit row."""
    sv = theory.soft_value_iteration(env.logpi_ref, r, beta)
    lp = theory.node_to_leaf_logp(sv.logpi)
    r_hat = r - beta * sv.log_z[:, None]
    if markov is None:
        theta = np.concatenate([a.ravel() for a in sv.logpi])
    else:
        theta = np.zeros(markov.n_params)
        for idx, logpi in zip(markov.index, sv.logpi):  # every state of a context: one row
            theta[idx.ravel()] = logpi.ravel()
    extra = {"n_iter": fit.n_iter, "solver": solver}
    return Result("dpo", lp, r_hat, theta, fit.fun, fit.grad_norm, fit.converged, lam, extra)


def dpo(policy, env: TreeEnv, data: Preferences, **kw) -> Result:
    """DPO (:func:`preference_fit` with ``loss="dpo"``)."""
    return preference_fit(policy, env, data, loss="dpo", **kw)


def ipo(policy, env: TreeEnv, data: Preferences, *, mean: bool = False, **kw) -> Result:
    """IPO, summed (``ipo``) or token-mean (``ipo_mean``) log-ratios."""
    return preference_fit(policy, env, data, loss="ipo_mean" if mean else "ipo", **kw)


def sft(
    policy,
    env: TreeEnv,
    demos: Demos,
    *,
    lam: float = 0.0,
    theta0: np.ndarray | None = None,
    gtol: float = GTOL,
) -> Result:
    """SFT / MLE: minimise −mean log P_θ(ξ_i|x_i) + (λ/Σw) Ω(β(log P_θ − log P_ref)) over Π."""
    lam = check_lam(lam)
    p, leaf, w = demos.prompt, demos.leaf, demos.weight
    shape = env.logp_ref.shape
    w_total = check_weight(float(w.sum()))
    beta = env.beta

    def fg(theta):
        lp = policy.leaf_logp(theta)
        v, d = losses.sft_nll(lp[p, leaf], w)
        rv, rg = _reg(lam, beta * (lp - env.logp_ref), w_total)
        return v + rv, policy.vjp(theta, scatter(d, p, leaf, shape) + beta * rg)

    opt = minimize(fg, policy.init_params() if theta0 is None else theta0, gtol=gtol)
    lp = policy.leaf_logp(opt.x)
    return Result.from_opt("sft", lp, beta * (lp - env.logp_ref), opt, lam)


def spin_pairs(demos: Demos, logp_t: np.ndarray) -> Preferences:
    """SPIN's exact-expectation pairs: demonstration ξ_i (chosen) vs every ξ' ~ π_t(·|x_i)
    (rejected), weight w_i P_t(ξ'|x_i). Rows: n_demos × N."""
    n_leaves = logp_t.shape[1]
    prompt = np.repeat(demos.prompt, n_leaves)
    chosen = np.repeat(demos.leaf, n_leaves)
    rejected = np.tile(np.arange(n_leaves), len(demos))
    weight = np.repeat(demos.weight, n_leaves) * np.exp(logp_t[demos.prompt]).ravel()
    keep = weight > 0
    return Preferences(prompt[keep], chosen[keep], rejected[keep], weight[keep])


def spin(
    policy,
    env: TreeEnv,
    demos: Demos,
    *,
    lam: float = 0.0,
    iters: int = 50,
    tol: float = 1e-9,
    theta0: np.ndarray | None = None,
    gtol: float = GTOL,
) -> Result:
    """SPIN (Chen et al. 2024), exact-expectation variant.

    π_{t+1} = argmin_θ E_i E_{ξ'~π_t} −log σ(β[log π_θ(ξ_i)/π_t(ξ_i) − log π_θ(ξ')/π_t(ξ')])
    + λ Ω(β(log P_θ − log P_ref)), iterated from ``theta0`` (default π_ref) until
    max |Δ log P| < tol. At a fixed point π_t = π the gradient is
    −(β/2) ∇ mean log π(ξ_i) + λ ∇Ω, so fixed points are the SFT optima with λ_SFT = 2λ/β
    (docs/theory.md §3, claim 6).
    """
    lam = check_lam(lam)
    theta = policy.init_params() if theta0 is None else theta0
    lp = policy.leaf_logp(theta)
    history = []
    res = None
    for _ in range(iters):
        res = preference_fit(
            policy, env, spin_pairs(demos, lp), lam=lam, logp_ref_loss=lp, theta0=theta, gtol=gtol
        )
        delta = float(np.max(np.abs(res.logp - lp)))
        history.append(delta)
        theta, lp = res.params, res.logp
        if delta < tol:
            break
    return Result.from_loop(
        "spin",
        res,
        converged=res.converged and history[-1] < tol,
        lam=lam,
        extra={"deltas": history},
    )
