"""Online pipelines: BT reward fitting, exact soft RL, RLHF, MaxEnt-IRL, online DPO
(exact-expectation and sampled), policy gradient, best-of-N (docs/theory.md §3, §5)."""

from __future__ import annotations

import numpy as np

from gvgap import losses, theory
from gvgap.data import (
    Demos,
    Preferences,
    best_worst_pair_weights,
    expected_pairs,
    on_policy_pair_weights,
    sample_leaves,
    sample_prompts,
)
from gvgap.envs.tree_env import TreeEnv
from gvgap.learners.feature_basis import feature_basis
from gvgap.learners.newton import bt_newton_linear, bt_newton_tabular
from gvgap.learners.offline import _reg, check_lam, check_weight, preference_fit, scatter, sft
from gvgap.learners.optim import GTOL, minimize
from gvgap.learners.result import Result
from gvgap.policies import SoftOptimalPolicy, TabularPolicy
from gvgap.rewards import LinearReward, TabularReward

#: A pair law of total mass (per prompt) below this forms no pair: a numerical zero, e.g. a
#: policy so peaked that all its draws tie (T → 0, β → 0); the exact law resolves such masses
#: (1e-200 and below) and a DPO fit on them would be all prior.
NO_PAIRS = 1e-12


def fit_reward(
    reward_class,
    data: Preferences,
    shape: tuple[int, int],
    *,
    lam: float = 0.0,
    w0: np.ndarray | None = None,
    gtol: float = GTOL,
) -> Result:
    """Bradley–Terry maximum likelihood over a reward class:
    r̂ = argmin_w −mean log σ(r_w(ξ⁺) − r_w(ξ⁻)) + (λ/Σw) Ω(r_w).

    For λ > 0 the tabular and linear classes are fitted exactly by Newton in reward
    coordinates (:mod:`gvgap.learners.newton`; ``grad_norm`` = ‖∇f‖ there; a linear fit's
    ``extra`` reports its rank, ``sigma_dropped`` and ``grad_dropped``, and ``converged``
    covers the whole feature span); other classes and λ = 0 by the generic optimiser."""
    lam = check_lam(lam)
    p, c, r, w = data.prompt, data.chosen, data.rejected, data.weight
    w_total = check_weight(float(w.sum()))
    if lam > 0.0 and type(reward_class) is TabularReward:
        fit = bt_newton_tabular(p, c, r, w, shape, lam, w0, gtol)
        return _rm_result(reward_class, fit.x.ravel(), fit, lam)
    if lam > 0.0 and type(reward_class) is LinearReward:
        basis = feature_basis(reward_class)
        fit = bt_newton_linear(reward_class.features, basis, p, c, r, w, lam, w0, gtol)
        span = {"rank": basis.rank, "sigma_dropped": basis.sigma_dropped}
        return _rm_result(reward_class, fit.x, fit, lam, {**span, "grad_dropped": fit.grad_dropped})

    def fg(wt):
        rew = reward_class.leaf_reward(wt)
        v, d = losses.bt_nll(rew[p, c] - rew[p, r], w)
        rv, rg = _reg(lam, rew, w_total)
        return v + rv, reward_class.vjp(wt, scatter(d, p, c, shape) - scatter(d, p, r, shape) + rg)

    opt = minimize(fg, reward_class.init_params() if w0 is None else w0, gtol=gtol)
    return Result.from_opt("rm", None, reward_class.leaf_reward(opt.x), opt, lam)


def _rm_result(reward_class, params: np.ndarray, fit, lam: float, extra=None) -> Result:
    """A Newton-fitted RM as a :class:`Result` (``extra``: a linear fit's rank, the size of its
    dropped feature directions ``sigma_dropped`` and the gradient along them)."""
    return Result(
        "rm",
        None,
        reward_class.leaf_reward(params),
        params,
        fit.fun,
        fit.grad_norm,
        fit.converged,
        lam,
        {"n_iter": fit.n_iter, "solver": "newton_reward_coordinates", **(extra or {})},
    )


def soft_rl(env: TreeEnv, r: np.ndarray, policy=None, *, theta0=None, gtol: float = GTOL) -> Result:
    """Exact soft RL: argmax_π E_π[r] − β KL(P_π ‖ P_ref) over Π.

    ``policy=None`` (or tabular): soft value iteration, exact. Otherwise the reverse-KL
    projection of P*_r onto the class (docs/theory.md §3 Gibbs identity), by converged L-BFGS.
    """
    if policy is None or isinstance(policy, TabularPolicy):
        sv = theory.soft_value_iteration(env.logpi_ref, r, env.beta)
        lp = theory.node_to_leaf_logp(sv.logpi)
        return Result(
            "soft_rl",
            lp,
            r,
            np.concatenate([a.ravel() for a in sv.logpi]),
            -env.beta * float(env.rho @ sv.log_z),
            0.0,
            True,
        )

    def fg(theta):
        lp = policy.leaf_logp(theta)
        v, g = losses.reverse_kl_objective(lp, r, env.logp_ref, env.beta, env.rho)
        return v, policy.vjp(theta, g)

    opt = minimize(fg, policy.init_params() if theta0 is None else theta0, gtol=gtol)
    return Result(
        "soft_rl", policy.leaf_logp(opt.x), r, opt.x, opt.fun, opt.grad_norm, opt.converged
    )


def rlhf(
    reward_class,
    env: TreeEnv,
    data: Preferences,
    *,
    lam: float = 0.0,
    policy=None,
    gtol: float = GTOL,
) -> Result:
    """Two-stage online PFT: fit r̂ ∈ R by BT-MLE, then exact soft RL on r̂ over Π."""
    rm = fit_reward(reward_class, data, env.logp_ref.shape, lam=lam, gtol=gtol)
    rl = soft_rl(env, rm.r_hat, policy, gtol=gtol)
    return Result.two_stage(rm, rl, lam)


def maxent_irl(
    reward_class, env: TreeEnv, demos: Demos, *, lam: float = 0.0, gtol: float = GTOL
) -> Result:
    """MaxEnt inverse RL + soft RL: fit r ∈ R maximising Σ log P*_r(ξ_i) (+ λ Ω(r)), then
    return soft value iteration on r̂ (docs/theory.md §3, SFT version)."""
    cls = SoftOptimalPolicy(reward_class, env.logp_ref, env.beta, env.vocab, env.horizon)
    irl = sft(cls, env, demos, lam=lam, gtol=gtol)
    r_hat = reward_class.leaf_reward(irl.params)
    rl = soft_rl(env, r_hat)
    return Result(
        "irl", rl.logp, r_hat, irl.params, irl.loss, irl.grad_norm, irl.converged, lam, {"irl": irl}
    )


def online_dpo_exact(
    policy,
    env: TreeEnv,
    r_hat: np.ndarray,
    *,
    lam: float = 0.0,
    iters: int = 30,
    pairs: str = "bt",
    n_samples: int = 2,
    tol: float = 1e-9,
    theta0=None,
    gtol: float = GTOL,
) -> Result:
    """Online DPO in exact expectation: each iteration draws (in expectation) on-policy pairs
    from π_t, labels them with the RM r̂, and minimises DPO on them to convergence.

    ``pairs="bt"``: two samples, soft BT labels σ(r̂(a) − r̂(b)); ``pairs="best_worst"``:
    best vs worst of ``n_samples`` by r̂ (exact law, :func:`data.best_worst_pair_weights`).
    Stops when max |Δ log P| < tol, or when π_t yields a pair mass ≤ ``NO_PAIRS`` (a collapsed
    policy: every draw ties up to that mass, so there is nothing to learn and π_t is a fixed
    point).
    """
    lam = check_lam(lam)
    theta = policy.init_params() if theta0 is None else theta0
    lp = policy.leaf_logp(theta)
    deltas, res = [], None
    for _ in range(iters):
        if pairs == "bt":
            data = expected_pairs(on_policy_pair_weights(lp, env.rho), r_hat)
        elif pairs == "best_worst":
            data = expected_pairs(best_worst_pair_weights(lp, r_hat, n_samples, env.rho))
        else:
            raise ValueError(f"pairs must be 'bt' or 'best_worst', got {pairs!r}")
        if not float(data.weight.sum()) > NO_PAIRS:
            deltas.append(0.0)
            break
        res = preference_fit(policy, env, data, lam=lam, theta0=theta, gtol=gtol)
        deltas.append(float(np.max(np.abs(res.logp - lp))))
        theta, lp = res.params, res.logp
        if deltas[-1] < tol:
            break
    if res is None:  # π_0 itself yields no pairs
        r0 = env.beta * (lp - env.logp_ref)
        return Result("online_dpo", lp, r0, theta, float("nan"), 0.0, True, lam, {"deltas": deltas})
    return Result.from_loop(
        "online_dpo",
        res,
        converged=res.converged and deltas[-1] < tol,
        lam=lam,
        extra={"deltas": deltas},
    )


def best_worst_sample(
    logp: np.ndarray,
    r_hat: np.ndarray,
    rho: np.ndarray,
    n_prompts: int,
    n_samples: int,
    rng: np.random.Generator,
) -> Preferences:
    """Sampled online-DPO pairs: for each of ``n_prompts`` prompts x ~ ρ draw ``n_samples``
    completions from π, chosen = best and rejected = worst by r̂ (ties broken uniformly at
    random); prompts whose samples all tie are dropped."""
    x = sample_prompts(rho, n_prompts, rng)
    leaves = sample_leaves(logp, np.repeat(x, n_samples), rng).reshape(n_prompts, n_samples)
    score = r_hat[x[:, None], leaves]
    tiebreak = rng.random(score.shape)
    order = np.lexsort((tiebreak, score), axis=1)
    rows = np.arange(n_prompts)
    best, worst = leaves[rows, order[:, -1]], leaves[rows, order[:, 0]]
    keep = score[rows, order[:, -1]] > score[rows, order[:, 0]]
    return Preferences(x[keep], best[keep], worst[keep], np.ones(int(keep.sum())))


def online_dpo_sampled(
    policy,
    env: TreeEnv,
    r_hat: np.ndarray,
    rng: np.random.Generator,
    *,
    lam: float = 0.0,
    iters: int = 10,
    prompts_per_iter: int = 64,
    n_samples: int = 8,
    accumulate: bool = True,
    theta0=None,
    gtol: float = GTOL,
) -> Result:
    """Online DPO as run at LLM scale (docs/theory.md §5): per iteration, ``n_samples`` on-policy
    samples for each of ``prompts_per_iter`` prompts, best-vs-worst by r̂, DPO to convergence
    (on all pairs gathered so far if ``accumulate``, else on the new batch), warm-started."""
    theta = policy.init_params() if theta0 is None else theta0
    lp = policy.leaf_logp(theta)
    buffer: list[Preferences] = []
    res = None
    for _ in range(iters):
        batch = best_worst_sample(lp, r_hat, env.rho, prompts_per_iter, n_samples, rng)
        if len(batch) == 0:
            continue
        buffer = [*buffer, batch] if accumulate else [batch]
        res = preference_fit(
            policy, env, Preferences.concat(buffer), lam=lam, theta0=theta, gtol=gtol
        )
        theta, lp = res.params, res.logp
    if res is None:
        return Result(
            "online_dpo",
            lp,
            env.beta * (lp - env.logp_ref),
            theta,
            float("nan"),
            0.0,
            True,
            lam,
            {"n_pairs": 0},
        )
    return Result.from_loop(
        "online_dpo",
        res,
        converged=res.converged,
        lam=lam,
        extra={"n_pairs": int(sum(len(b) for b in buffer))},
    )


def policy_gradient(
    policy,
    env: TreeEnv,
    r_hat: np.ndarray,
    *,
    theta0=None,
    gtol: float = GTOL,
) -> Result:
    """Exact policy gradient on J_r̂(θ) = E_θ r̂ − β KL (the expectation computed on the tree,
    so the REINFORCE estimator's mean), run to convergence; equals :func:`soft_rl` over Π.

    Over the tabular class the logit gradient ∂J/∂θ_{s,a} = d(s) π(a|s) A(s,a) vanishes to
    rounding wherever the visit probability d(s) π(a|s) is tiny, so ‖∇_θ J‖ ≤ gtol does not
    certify stationarity (issue 19: P = 7e-12 returned where P* = 3.9e-6, ‖∇_θ‖ = 6.6e-10).
    The certificate there is the gradient in leaf log-probability coordinates per unit mass,
    ‖g̃‖ (:func:`_natural_gradient`, zero exactly at the stationary points of J over every
    full-support law), and the L-BFGS result is polished by natural-gradient steps
    log P ← log P + g̃/β (renormalised) until ‖g̃‖ ≤ gtol; a unit step lands on the stationary
    point, so one or two are taken. ``extra["natural_steps"]`` counts them.
    """
    if not isinstance(policy, TabularPolicy):
        res = soft_rl(env, r_hat, policy, theta0=theta0, gtol=gtol)
        return Result("pg", res.logp, r_hat, res.params, res.loss, res.grad_norm, res.converged)
    res = soft_rl(env, r_hat, _AsGeneric(policy), theta0=theta0, gtol=gtol)
    theta, lp = res.params, res.logp
    g = _natural_gradient(lp, r_hat, env)
    steps = 0
    while not np.linalg.norm(g) <= gtol and steps < NATURAL_STEPS:
        steps += 1
        nxt = theory.log_normalize_leaf(lp + g / env.beta)
        theta = policy.params_from_node_logp(theory.leaf_to_node_logp(nxt, env.vocab, env.horizon))
        lp = policy.leaf_logp(theta)
        g = _natural_gradient(lp, r_hat, env)
    loss = losses.reverse_kl_objective(lp, r_hat, env.logp_ref, env.beta, env.rho)[0]
    gn = float(np.linalg.norm(g))
    extra = {"natural_steps": steps, "logit_grad_norm": res.grad_norm}
    return Result("pg", lp, r_hat, theta, loss, gn, gn <= gtol, 0.0, extra)


#: Natural-gradient polishing steps of the tabular policy gradient, at most.
NATURAL_STEPS = 5


def _natural_gradient(logp: np.ndarray, r: np.ndarray, env: TreeEnv) -> np.ndarray:
    """g̃(x, ξ) = ∂J/∂log P(ξ|x) / (ρ(x) P(ξ|x)) on the leaf simplex: with
    a = r − β(log P − log P_ref), g̃ = a − E_P[a] per prompt (the natural gradient of J under
    the Fisher metric; J is stationary over full-support laws iff g̃ = 0, i.e. P = P*_r).
    Prompts with ρ(x) = 0 do not enter J: their rows are 0. Shape ``(m, N)``."""
    a = r - env.beta * (logp - env.logp_ref)
    g = a - (np.exp(logp) * a).sum(axis=1, keepdims=True)
    return np.where(env.rho[:, None] > 0, g, 0.0)


class _AsGeneric:
    """Wraps a tabular class so :func:`soft_rl` optimises it by gradient, not by soft VI."""

    def __init__(self, policy):
        self._p = policy
        self.n_params = policy.n_params

    def __getattr__(self, name):
        return getattr(self._p, name)


def best_of_n(
    env: TreeEnv, r_hat: np.ndarray, n: int, base_logp: np.ndarray | None = None
) -> Result:
    """Best-of-n reranking of samples from ``base_logp`` (default π_ref) by r̂: exact law."""
    lp = theory.best_of_n_logp(env.logp_ref if base_logp is None else base_logp, r_hat, n)
    return Result("bon", lp, r_hat, np.array([n], float), float("nan"), 0.0, True, 0.0, {"n": n})
