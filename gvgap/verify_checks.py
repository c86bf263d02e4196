"""One function per numerically testable claim of docs/theory.md §6 (items 1–8) plus a control.

Each check draws one random instance from ``rng`` and returns the instance's error (a float;
the suite compares the maximum over instances with the check's tolerance). Optimum *sets*
(docs/theory.md §3): with λ = 0 and partial coverage the likelihood is flat off the data, so two
pipelines may return different members; there the error is the larger of (i) the gap between
the two pipelines' objective values, each evaluated at the other's output, and (ii) the
disagreement on the identified part (reward margins of the data pairs). With λ > 0 (strictly
convex in reward coordinates) or full coverage the optimum is unique and the error is the
max-abs difference of the output leaf probabilities.
"""

from __future__ import annotations

import numpy as np

from gvgap import theory
from gvgap.data import Demos, Preferences, soft_labels
from gvgap.envs.tree_env import TreeEnv, make_env
from gvgap.learners import dpo, fit_reward, maxent_irl, online_dpo_exact, rlhf, sft, spin
from gvgap.losses import bt_rows
from gvgap.policies import LogLinearPolicy, SoftOptimalPolicy, TabularPolicy, markov_features
from gvgap.rewards import LinearReward, LocalReward, TabularReward

LAMBDAS = (0.0, 1e-3, 1e-1)
#: Gradient-norm tolerance of every fit in the suite (tighter than the library default, so
#: that optimisation error stays far below TOL_OPTIMUM even at λ = 1e-3).
GTOL = 1e-11


# ------------------------------------------------------------------ random instances


def random_env(
    rng: np.random.Generator, *, uniform_ref: bool = False, beta: float | None = None, k: int = 0
) -> TreeEnv:
    """V ∈ {2,3}, H ∈ {1,2,3}, m ∈ {1,2,3}, β log-uniform on [0.2, 3], Dirichlet or uniform
    π_ref, r* ~ N(0, 1.5²); optional k random dense features (for R_sim checks)."""
    vocab, horizon, m = int(rng.integers(2, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    n = vocab**horizon
    beta = float(np.exp(rng.uniform(np.log(0.2), np.log(3.0)))) if beta is None else beta
    ref = "uniform" if uniform_ref or rng.random() < 0.25 else "random"
    feats = rng.normal(size=(m, n, k)) if k else None
    return make_env(
        vocab=vocab,
        horizon=horizon,
        n_prompts=m,
        beta=beta,
        r_star=1.5 * rng.normal(size=(m, n)),
        ref=ref,
        ref_concentration=float(rng.choice([0.5, 1.0, 5.0])),
        features=feats,
        rng=rng,
    )


def random_soft_pairs(env: TreeEnv, rng: np.random.Generator, full: bool = False) -> Preferences:
    """A random set of distinct pairs (from a handful up to all: partial → full coverage),
    each with both orientations weighted by the true BT probability (soft labels), so the
    BT likelihood has a finite optimum even at λ = 0."""
    m, n = env.r_star.shape
    x, a, b = np.nonzero(np.triu(np.ones((m, n, n), bool), k=1))
    if not full:
        keep = rng.random(x.size) < rng.uniform(0.1, 1.0)
        keep[rng.integers(x.size)] = True
        x, a, b = x[keep], a[keep], b[keep]
    return soft_labels(x, a, b, env.r_star)


def random_demos(env: TreeEnv, rng: np.random.Generator, full: bool) -> Demos:
    """Demonstrations as weighted leaves: all leaves (full coverage) or a random subset."""
    m, n = env.r_star.shape
    x, leaf = np.divmod(np.arange(m * n), n)
    keep = np.ones(x.size, bool) if full else rng.random(x.size) < rng.uniform(0.1, 0.8)
    keep[rng.integers(x.size)] = True
    return Demos(x[keep], leaf[keep], rng.uniform(0.2, 1.0, size=int(keep.sum())))


def _pmax(lp1: np.ndarray, lp2: np.ndarray) -> float:
    return float(np.max(np.abs(np.exp(lp1) - np.exp(lp2))))


def bt_objective(r: np.ndarray, data: Preferences) -> float:
    """Unregularised BT negative log-likelihood L_D(r) (weighted mean)."""
    return float(data.weight @ bt_rows(data.margin(r)) / data.weight.sum())


def optimum_set_error(r1: np.ndarray, r2: np.ndarray, data: Preferences) -> float:
    """Set comparison at λ = 0: objective values and identified margins must agree."""
    value_gap = abs(bt_objective(r1, data) - bt_objective(r2, data))
    return max(value_gap, float(np.max(np.abs(data.margin(r1) - data.margin(r2)))))


# ------------------------------------------------------------------ claims 1–2


def check_gibbs(rng: np.random.Generator) -> float:
    """Claim 1: E_π r − β KL(π‖ref) = β log Z − β KL(π‖π*) for a random π; soft VI equals
    enumeration; Σ_h per-token KL = trajectory KL."""
    env = random_env(rng)
    logits = rng.normal(size=env.r_star.shape) * 2
    lp = theory.log_normalize_leaf(logits)
    lhs = env.objective(lp)
    rhs = env.j_star - env.beta * theory.kl(lp, env.logp_star, env.rho)
    brute = theory.soft_optimal_leaf_logp(env.logp_ref, env.r_star, env.beta)
    node_lp = theory.leaf_to_node_logp(lp, env.vocab, env.horizon)
    kl_tok = theory.per_token_kl(node_lp, env.logpi_ref, env.rho)
    return max(
        abs(lhs - rhs),
        float(np.max(np.abs(brute - env.logp_star))),
        abs(kl_tok - theory.kl(lp, env.logp_ref, env.rho)),
        float(
            np.max(
                np.abs(
                    env.soft_star.log_z
                    - theory.log_partition_leaf(env.logp_ref, env.r_star, env.beta)
                )
            )
        ),
    )


def check_local_normalisation(rng: np.random.Generator) -> float:
    """Claim 2: Σ_ξ P_ref e^{r_π/β} = 1 and soft RL on r_π returns π."""
    env = random_env(rng)
    pol = TabularPolicy(env.n_prompts, env.vocab, env.horizon)
    lp = pol.leaf_logp(rng.normal(size=pol.n_params) * 2)
    r_pi = theory.local_reward(lp, env.logp_ref, env.beta)
    log_z = theory.log_partition_leaf(env.logp_ref, r_pi, env.beta)
    back = theory.soft_optimal(env.logpi_ref, r_pi, env.beta)
    return max(float(np.max(np.abs(log_z))), _pmax(back, lp))


# ------------------------------------------------------------------ claims 3–4: DPO ≡ RLHF


def _dpo_vs_rlhf(env: TreeEnv, rng: np.random.Generator, reference_free: bool) -> float:
    data = random_soft_pairs(env, rng, full=rng.random() < 0.2)
    lam = float(rng.choice(LAMBDAS))
    pol = TabularPolicy(env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref)
    if reference_free:  # r_π = β log π: local RM without reference (uniform π_ref ⇒ same optima)
        local = LocalReward(pol, None, env.beta)
        off = fit_reward(local, data, env.logp_ref.shape, lam=lam, w0=pol.init_params(), gtol=GTOL)
        off_logp = pol.leaf_logp(off.params)
    else:
        off_logp = dpo(pol, env, data, lam=lam, gtol=GTOL).logp
    on = rlhf(TabularReward(*env.r_star.shape), env, data, lam=lam, gtol=GTOL)
    if lam > 0:
        return _pmax(off_logp, on.logp)
    return optimum_set_error(theory.local_reward(off_logp, env.logp_ref, env.beta), on.r_hat, data)


def check_isomorphic_reference_free(rng: np.random.Generator) -> float:
    """Claim 3: reference-free local RM (r_π = β log π, uniform π_ref) ≡ global RM + soft RL."""
    return _dpo_vs_rlhf(random_env(rng, uniform_ref=True), rng, reference_free=True)


def check_isomorphic_kl_ref(rng: np.random.Generator) -> float:
    """Claim 4: DPO with KL to a random π_ref ≡ tabular RM + soft RL, any D (sets at λ = 0)."""
    return _dpo_vs_rlhf(random_env(rng), rng, reference_free=False)


# ------------------------------------------------------------------ claims 5–6: SFT


def check_sft_irl(rng: np.random.Generator) -> float:
    """Claim 5: SFT over Π ≡ MaxEnt-IRL over R(Π) + soft RL (λ > 0, or λ = 0 with full
    coverage, where both must equal the normalised demonstration weights)."""
    env = random_env(rng)
    full = rng.random() < 0.3
    demos = random_demos(env, rng, full)
    lam = 0.0 if full else float(rng.choice(LAMBDAS[1:]))
    pol = TabularPolicy(env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref)
    a = sft(pol, env, demos, lam=lam, gtol=GTOL)
    b = maxent_irl(TabularReward(*env.r_star.shape), env, demos, lam=lam, gtol=GTOL)
    err = _pmax(a.logp, b.logp)
    if full:
        target = np.zeros_like(env.r_star)
        target[demos.prompt, demos.leaf] = demos.weight
        target /= target.sum(axis=1, keepdims=True)
        err = max(err, float(np.max(np.abs(np.exp(a.logp) - target))))
    return err


def check_spin_fixed_point(rng: np.random.Generator) -> float:
    """Claim 6: the SFT optimum (λ_SFT = 2λ/β) is a fixed point of the exact SPIN step."""
    env = random_env(rng)
    demos = random_demos(env, rng, full=False)
    lam = float(rng.choice(LAMBDAS[1:]))
    pol = TabularPolicy(env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref)
    s = sft(pol, env, demos, lam=2 * lam / env.beta, gtol=GTOL)
    step = spin(pol, env, demos, lam=lam, iters=1, theta0=s.params, gtol=GTOL)
    return _pmax(step.logp, s.logp)


# ------------------------------------------------------------------ claims 7–8


def check_relabel(rng: np.random.Generator) -> float:
    """Claim 7: online DPO on on-policy pairs relabelled by r̂ = r_{π_DPO} ∈ R(Π) returns the
    offline optimum (no information gained)."""
    env = random_env(rng)
    data = random_soft_pairs(env, rng)
    pol = TabularPolicy(env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref)
    off = dpo(pol, env, data, lam=float(rng.choice(LAMBDAS[1:])), gtol=GTOL)
    on = online_dpo_exact(pol, env, off.r_hat, lam=0.0, iters=3, gtol=GTOL)
    return _pmax(on.logp, off.logp)


def check_rsim(rng: np.random.Generator) -> float:
    """Claim 8: RLHF with a linear R_sim RM ≡ offline MLE (DPO) restricted to Π(R_sim)."""
    env = random_env(rng, k=int(rng.integers(1, 4)))
    data = random_soft_pairs(env, rng)
    lam = float(rng.choice(LAMBDAS))
    rc = LinearReward(env.features)
    on = rlhf(rc, env, data, lam=lam, gtol=GTOL)
    cls = SoftOptimalPolicy(rc, env.logp_ref, env.beta, env.vocab, env.horizon)
    off = dpo(cls, env, data, lam=lam, gtol=GTOL)
    z = env.features[data.prompt, data.chosen] - env.features[data.prompt, data.rejected]
    if lam > 0 or np.linalg.matrix_rank(z) == rc.n_params:
        return _pmax(off.logp, on.logp)
    return optimum_set_error(off.r_hat, on.r_hat, data)


def check_control_non_isomorphic(rng: np.random.Generator) -> float:
    """Control: DPO over a log-linear (position×token + bigram) class vs RLHF with a 2-feature
    linear RM differ when R ≠ R(Π). Returns the max-abs leaf-probability difference."""
    env = random_env(rng, k=2)
    while env.horizon < 2:
        env = random_env(rng, k=2)
    data = random_soft_pairs(env, rng)
    feats = markov_features(env.n_prompts, env.vocab, env.horizon, "position_bigram")
    off = dpo(LogLinearPolicy(feats, offset=env.logpi_ref), env, data, lam=1e-3)
    on = rlhf(LinearReward(env.features), env, data, lam=1e-3)
    return _pmax(off.logp, on.logp)
