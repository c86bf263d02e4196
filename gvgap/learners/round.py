"""The paper's online DPO (docs/theory.md §5, §7): rounds of sampling, RM ranking and DPO.

One round from the current policy π_t:

1. temper the policy per token, π_t^T(a|s) ∝ π_t(a|s)^{1/T} (node logits divided by T);
2. draw N completions per prompt from π_t^T; the best and the worst by the RM r̂ become the
   pair (chosen, rejected); prompts whose N samples all tie under r̂ give no pair;
3. DPO on those pairs with the reference policy π_ref inside the loss (the SFT model, as in
   the paper), started from π_t, to convergence (``preference_fit``).

The pairs come either from their exact law (``exact=True``: the law of (best, worst) of N
i.i.d. samples, :func:`gvgap.data.best_worst_pair_weights`, scaled to ``n_prompts`` pairs so
that the loss and its λ prior weigh as a sampled round of ``n_prompts`` prompts would) or from
``n_prompts`` sampled prompts (``exact=False``; ties broken uniformly at random). ``rounds``
iterates the round (the iterated variant). The paper's defaults are N = 25, T = 0.1.

Which limit the exact round is. Its pair weights are the expected pair counts of a sampled
round, so the sampled loss converges to the exact one; the *fits* converge as n_prompts → ∞
when the prior per pair, μ = λ/(m Σw), is held fixed, i.e. λ grows with n_prompts (error
~ n^{-1/2}; tests/test_round.py). At fixed λ they need not (issue 19: max |ΔP| 1.1e-2 → 1.9e-1
as prompts go 2e3 → 2e5): μ → 0, and with hard best-vs-worst labels the exact round fits
every pair of probability P ≳ λ/(m n_prompts) hard, while a sample of n_prompts prompts holds
such a pair only once P ≳ 1/n_prompts. For λ < m there is a band of pairs at every n, fitted
by the exact round and mostly absent from a sampled one; the peaked T = 0.1 law makes such
pairs common. So at fixed λ an exact round models a round whose rare pairs all occur at their
expected frequency, not any finite sampled round.
"""

from __future__ import annotations

import numpy as np

from gvgap import theory
from gvgap.data import Preferences, best_worst_pair_weights, expected_pairs
from gvgap.envs.tree_env import TreeEnv
from gvgap.learners.offline import preference_fit
from gvgap.learners.online import NO_PAIRS, best_worst_sample
from gvgap.learners.optim import GTOL
from gvgap.learners.result import Result

#: The paper's samples per prompt and sampling temperature (docs/theory.md §5).
N_SAMPLES = 25
TEMPERATURE = 0.1


def tempered_leaf_logp(node_logp, temperature: float) -> np.ndarray:
    """Leaf log-probabilities of the per-token tempered policy π^T(a|s) ∝ π(a|s)^{1/T}.

    Args:
        node_logp: per-depth node log-probabilities ``[h]`` of shape ``(m, V^h, V)``.
        temperature: T > 0 (T = 1 returns the policy itself).

    Returns:
        ``(m, V^H)`` log P^T(ξ|x) = Σ_h log π^T(a_h|s_h).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return theory.node_to_leaf_logp(tuple(theory.log_softmax(z / temperature) for z in node_logp))


def round_pairs(
    logp_sample: np.ndarray,
    r_hat: np.ndarray,
    rho: np.ndarray,
    *,
    n_samples: int,
    n_prompts: int,
    exact: bool = True,
    rng: np.random.Generator | None = None,
) -> Preferences:
    """The (best, worst)-by-r̂ pairs of one round from the sampling law ``logp_sample``.

    Exact: rows (x, best, worst) weighted ``n_prompts`` × P(x, best, worst), which is the
    expectation of the sampled round's pair counts (the large-n limit of sampled rounds at a
    fixed prior per pair, module doc). Sampled: ``n_prompts`` prompts x ~ ρ.
    """
    if exact:
        w = n_prompts * best_worst_pair_weights(logp_sample, r_hat, n_samples, rho)
        return expected_pairs(w)
    if rng is None:
        raise ValueError("a sampled round needs rng")
    return best_worst_sample(logp_sample, r_hat, rho, n_prompts, n_samples, rng)


def online_dpo_round(
    policy,
    env: TreeEnv,
    r_hat: np.ndarray,
    *,
    lam: float,
    n_prompts: int,
    n_samples: int = N_SAMPLES,
    temperature: float = TEMPERATURE,
    rounds: int = 1,
    theta0: np.ndarray | None = None,
    exact: bool = True,
    rng: np.random.Generator | None = None,
    gtol: float = GTOL,
) -> Result:
    """The paper's online DPO: ``rounds`` rounds of sample → rank by r̂ → DPO (module doc).

    Args:
        policy: the policy class (tabular for the hypothesis experiments).
        env: supplies π_ref (the DPO reference: the SFT model) and β.
        r_hat: ``(m, N)`` the RM that ranks the samples (global or local).
        lam: λ of DPO's reward-coordinate regulariser (hard labels need λ > 0).
        n_prompts: prompts per round (the label budget of one round).
        n_samples: N, samples per prompt.
        temperature: T of the per-token tempered sampling policy.
        rounds: number of rounds (1 = the paper's single round).
        theta0: the start π_0 (default ``policy.init_params()``: π_ref = SFT; pass the DPO
            solution's parameters for "online DPO from DPO").
        exact: exact law of the pairs (True) or sampled prompts (False, needs ``rng``).

    Returns:
        :class:`Result` (pipeline ``online_dpo_round``); ``extra`` holds ``n_pairs`` (total
        pair weight per round) and ``deltas`` (max |Δ log P| per round). A round whose
        samples all tie leaves the policy unchanged.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    theta = policy.init_params() if theta0 is None else np.asarray(theta0, float)
    lp = policy.leaf_logp(theta)
    res, n_pairs, deltas = None, [], []
    for _ in range(rounds):
        lp_t = tempered_leaf_logp(policy.node_logp(theta), temperature)
        data = round_pairs(
            lp_t, r_hat, env.rho, n_samples=n_samples, n_prompts=n_prompts, exact=exact, rng=rng
        )
        n_pairs.append(float(data.weight.sum()))
        if n_pairs[-1] <= NO_PAIRS * n_prompts:  # e.g. T → 0: all N samples coincide
            deltas.append(0.0)
            continue
        res = preference_fit(policy, env, data, lam=lam, theta0=theta, gtol=gtol)
        deltas.append(float(np.max(np.abs(res.logp - lp))))
        theta, lp = res.params, res.logp
    extra = {"n_pairs": n_pairs, "deltas": deltas}
    if res is None:
        r = env.beta * (lp - env.logp_ref)
        return Result("online_dpo_round", lp, r, theta, float("nan"), 0.0, True, lam, extra)
    return Result.from_loop("online_dpo_round", res, converged=res.converged, lam=lam, extra=extra)
