"""H2 — does online win because it regularises on-policy, where offline regularises only on
the data? (docs/theory.md §4 H2, §11)

**Mechanism.** DPO's implicit reward r_θ = β log π_θ/π_ref is pinned only where D shows a
completion: the completions D never shows are left free (their mass moves only through
normalisation). Online RL pays β KL(P_θ‖P_ref) *on-policy*, on every completion the policy
puts mass on. H2 says this difference of support — not the classes, not the data — is why
online wins.

**Design.** One instance and one data set D of n pairs from μ = π_ref with true BT labels.
The *estimator is held fixed* (tabular DPO on D, converged); only where its regulariser acts
changes, at equal distance from π_ref:

- ``dpo_data`` — DPO regularised on the data, as practised:
  (λ/Σw)(1/2m) Σ_{(x,ξ) ∈ supp D} r_θ(x,ξ)², λ chosen by held-out BT likelihood on the shared
  split (docs/theory.md §11), refitted on D — no access to r*;
- ``dpo_onpolicy`` — the same DPO with its regularisation moved on-policy: the data term at
  the grid's smallest λ (a floor both arms share, which keeps the optimum finite) plus the
  exact on-policy term α KL(P_θ‖P_ref), α found by root-finding so that KL(π‖π_ref) equals
  that of ``dpo_data`` (bare metric ``kl_match_err``: the largest relative mismatch kept,
  ≤ ``MATCH_RTOL``; ``n_unmatched`` counts the pairs whose target KL the on-policy arm cannot
  reach, which are not recorded).

**Test.** ``dpo_onpolicy − dpo_data`` in J at equal KL(π‖π_ref): H2 predicts ``greater``. An
outcome ``equivalent`` or ``less`` is against H2: putting the regulariser on-policy does not
make the offline estimator better.

**Positive control** (the same mechanism, spiked in): the data-only objective depends on the
completions D never shows only through their total mass, so its optima form a set
(docs/theory.md §3); ``dpo_data`` is the member closest to π_ref (unseen mass ∝ π_ref). The
control ``spike_data`` is another member of the same set — the unseen mass moved onto the
unseen completions of lower r* (:func:`worst_completion`), which the data term cannot tell
apart — against the on-policy arm at *its* KL (``spike_on − spike_data``, expected
``greater``): where the off-data mass is left to chance, regularising on-policy must show.

Reported beside (not evidence): online soft RL on the RM at the KL of ``dpo_data``
(``rlhf_tab_matched``, tabular RM: R = R(Π), only the regularisation differs;
``rlhf_matched``, the linear R_sim RM: the class effect of H6 on top), gvgap's full-support
DPO (λ Ω over every completion) against ``dpo_data``, RLHF (RM + exact soft RL at β) and the
paper's online DPO round (N = 25, T = 0.1, best vs worst by the R_sim RM) from π_ref and from
DPO, with win rate. TOST margin ``MARGIN`` in J units; seeds from the power plan.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import brentq

from gvgap import losses, theory
from gvgap.envs.tree_env import TreeEnv
from gvgap.experiments import common, hypothesis, hypothesis_plots
from gvgap.experiments.base import Verdict
from gvgap.learners import Result, minimize, online_dpo_round, select_lambda
from gvgap.learners.offline import on_policy_kl, scatter
from gvgap.learners.optim import GTOL
from gvgap.policies.classes import SoftOptimalPolicy

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

ID = "h2_regularisation"
HYPOTHESIS = (
    "H2: offline PFT loses because it regularises to π_ref only on the data; online "
    "regularises on-policy."
)
PREDICTION = (
    "The same DPO with its regulariser moved from the data to the policy (α KL(P_θ‖P_ref)) "
    "reaches a higher J at the same KL(π‖π_ref): dpo_onpolicy − dpo_data greater than 0."
)
CLAIM = (
    "At equal KL from π_ref, moving DPO's regulariser from the data to the policy's own "
    "samples does not raise J, while it does against a bad off-data member of the data-only "
    "optima (positive control): where offline regularises is not why online wins (H2 against)."
)
NOTES = "H2"
DESIGN_NOTE = __doc__
#: What the paper concludes about H2, and the verdict on the hypothesis that agrees with it.
PAPER_POSITION = (
    "against as sole explanation: on-policy regularisation alone does not account for the "
    "online advantage"
)
PAPER_EXPECTS = "against"

#: TOST margin δ in J units: 0.05 ≈ 3 % of J(π*) − J(π_ref) and 4 % of the online advantage
#: RLHF − DPO (≈ 1.2 J) H2 is meant to explain (dev block, H = 4): smaller is practically nil.
MARGIN = 0.05
#: The outcome H2 predicts for the test, and the one the positive control must show.
PREDICTED = "greater"
CONTROL_EXPECTED = "greater"
#: The headline cell, fixed before reading results.
HEADLINE = {"vocab": 3, "horizon": 4, "n_pairs": 16}
TEST = hypothesis.Contrast("on-policy − on-data regulariser, equal KL", "dpo_onpolicy", "dpo_data")
CONTROL = hypothesis.Contrast("the same vs the worst data-only optimum", "spike_on", "spike_data")
REPORTED = [
    hypothesis.Contrast("online, tabular RM, equal KL − dpo_data", "rlhf_tab_matched", "dpo_data"),
    hypothesis.Contrast("online, R_sim RM, equal KL − dpo_data", "rlhf_matched", "dpo_data"),
    hypothesis.Contrast("full-support Ω DPO − dpo_data", "dpo", "dpo_data"),
    hypothesis.Contrast("rlhf (R_sim RM, β) − dpo_data", "rlhf", "dpo_data"),
    hypothesis.Contrast("online DPO round from SFT − dpo", "round_sft", "dpo"),
    hypothesis.Contrast("online DPO round from DPO − dpo", "round_dpo", "dpo"),
    hypothesis.Contrast("on-policy − on-data regulariser", "dpo_onpolicy", "dpo_data", "win_rate"),
    hypothesis.Contrast("online DPO round from DPO − dpo", "round_dpo", "dpo", "win_rate"),
]
#: Bracket of log α for the KL match (α from 1e-12 to 1e4).
LOG_ALPHA = (-12.0 * np.log(10.0), 4.0 * np.log(10.0))
#: L-BFGS iterations of a fit before Newton polishing takes over: with a peaked π_ref the
#: on-policy term has curvature ∝ P on rarely drawn leaves, where L-BFGS needs thousands of
#: iterations and Newton steps (81 parameters at the headline) a handful.
LBFGS_ITERS = 400
#: Gradient tolerance of the fits inside the KL root-finding (the fit at the root is polished
#: to the learners' default 1e-9).
ROOT_GTOL = 1e-7
#: Largest relative KL mismatch of a matched pair; beyond it the pair is not recorded and
#: counted in ``n_unmatched`` (a target KL above what the on-policy arm reaches at α → 0).
MATCH_RTOL = 1e-6


@dataclass(frozen=True)
class Config(common.ProblemConfig):
    """One h2_regularisation setting.

    Shared problem fields: :class:`common.ProblemConfig`.

    Attributes:
        n_pairs: |D| (default 16 here).
        round_samples: N of the online DPO round (paper: 25).
        temperature: T of the online DPO round (paper: 0.1).
    """

    n_pairs: int = 16
    round_samples: int = 25
    temperature: float = 0.1

    def validate(self) -> None:
        """Raise UserError naming the first bad field."""
        super().validate()
        common.check_range("round_samples", self.round_samples, 2)
        common.check_range("temperature", self.temperature, 0.0, lo_open=True)


SMOKE = Config(vocab=2, horizon=3, n_pairs=20, lam_grid="short")
#: The full sweep, the confirmatory sweep of ``gvgap reproduce --quick`` (its seeds replaced by
#: the power plan), its power pilot (the headline cell on its own seed block) and the overrides
#: under which the verdict is re-checked (another V, H; β; random π_ref).
SETTINGS, QUICK, PILOT, ROBUSTNESS = hypothesis.sweeps(HEADLINE)

build_env = common.build_env


def plan_seeds(pilot: pd.DataFrame) -> dict:
    """Seeds of the confirmatory sweep and of each re-check (:func:`hypothesis.plan_seeds`)."""
    return hypothesis.plan_seeds(sys.modules[__name__], pilot)


def dpo_data_only(
    policy, env: TreeEnv, data, *, lam: float, kl_coef: float = 0.0, theta0=None, gtol=GTOL
) -> Result:
    """DPO regularised on the data, plus optionally on-policy, converged:
    DPO loss + (λ/Σw)(1/2m) Σ_{supp D} r_θ² + α E_x KL(P_θ‖P_ref) (α = ``kl_coef``).

    supp D = the (prompt, completion) cells D shows (chosen or rejected); completions D never
    shows are not regularised by the data term (their mass is set only through
    normalisation, and by the on-policy term when α > 0). With α = 0 the objective depends
    on the unseen completions only through their total mass, so its minimisers form a set
    (docs/theory.md §3); the member returned is the one closest to π_ref in KL
    (:func:`min_kl_completion`: unseen mass shared in proportion to π_ref), the α → 0 limit of
    the on-policy arm, whatever the optimiser's path. With α > 0 the minimiser already shares
    the unseen mass that way.
    """
    p, c, r, w = data.prompt, data.chosen, data.rejected, data.weight
    shape = env.logp_ref.shape
    seen = np.zeros(shape)
    seen[p, c] = seen[p, r] = 1.0
    scale = lam / float(w.sum()) / shape[0]
    beta = env.beta

    def fg(theta):
        lp = policy.leaf_logp(theta)
        v, (dc, dr) = losses.dpo_loss(lp[p, c], lp[p, r], env.logp_ref[p, c], env.logp_ref[p, r],
                                      beta, w)  # fmt: skip
        rew = beta * (lp - env.logp_ref) * seen
        kv, kg = on_policy_kl(kl_coef, lp, env)
        g = scatter(dc, p, c, shape) + scatter(dr, p, r, shape) + scale * beta * rew + kg
        return v + 0.5 * scale * float((rew**2).sum()) + kv, policy.vjp(theta, g)

    x0 = policy.init_params() if theta0 is None else theta0
    opt = minimize(fg, x0, gtol=gtol, maxiter=LBFGS_ITERS)
    lp = policy.leaf_logp(opt.x)
    if kl_coef == 0.0:
        lp = min_kl_completion(lp, env.logp_ref, seen > 0)
    return Result.from_opt("dpo_data", lp, beta * (lp - env.logp_ref), opt, lam)


def min_kl_completion(logp: np.ndarray, logp_ref: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Leaf log-probabilities equal to ``logp`` on the ``seen`` cells and, per prompt, the
    unseen cells' total mass M shared in proportion to π_ref: log M + log π_ref −
    log Σ_unseen π_ref (the law with the same seen probabilities closest to π_ref in KL)."""
    from scipy.special import logsumexp

    out = np.array(logp, dtype=np.float64, copy=True)
    for x in range(out.shape[0]):
        un = ~seen[x]
        if not un.any() or un.all():
            continue
        out[x, un] = logsumexp(logp[x, un]) + logp_ref[x, un] - logsumexp(logp_ref[x, un])
    return out


def kl_ref(env: TreeEnv, logp: np.ndarray) -> float:
    """E_x KL(P‖P_ref) of leaf log-probabilities ``logp``."""
    return theory.kl(logp, env.logp_ref, env.rho)


def onpolicy_at_kl(pol, env: TreeEnv, data, lam_floor: float, target: float, theta0) -> Result:
    """``dpo_data_only`` at λ = ``lam_floor`` with the on-policy α chosen so that
    KL(π‖π_ref) = ``target``: Brent's method on log α over :data:`LOG_ALPHA`, each fit
    started at ``theta0`` to ``ROOT_GTOL`` (a warm start from an extreme solution stalls on
    saturated logits), the fit at the root polished to the default gradient tolerance. KL
    falls from the floor's KL (α → 0) to 0 (α → ∞); a target at or above the floor's KL
    returns α = 0."""

    def fit(log_a: float, gtol: float = ROOT_GTOL) -> Result:
        return dpo_data_only(pol, env, data, lam=lam_floor, kl_coef=float(np.exp(log_a)),
                             theta0=theta0, gtol=gtol)  # fmt: skip

    free = dpo_data_only(pol, env, data, lam=lam_floor, theta0=theta0)
    if target >= kl_ref(env, free.logp):
        return free

    def gap(log_a: float) -> float:
        return np.log(kl_ref(env, fit(log_a).logp)) - np.log(target)

    lo, hi = LOG_ALPHA
    if gap(lo) <= 0:
        return fit(lo, GTOL)
    if gap(hi) >= 0:
        return fit(hi, GTOL)
    root = brentq(gap, lo, hi, xtol=1e-7, rtol=1e-7, maxiter=100)
    return fit(root, GTOL)


def worst_completion(
    logp: np.ndarray, logp_ref: np.ndarray, r_star: np.ndarray, seen: np.ndarray
) -> np.ndarray:
    """Leaf log-probabilities equal to ``logp`` on the ``seen`` cells, with each prompt's
    unseen mass shared, in proportion to π_ref, by its unseen completions whose r* is at most
    their median: a bad member, in J, of the set of data-only DPO optima that share
    ``logp``'s seen probabilities (neither the DPO loss nor the data term can tell it from the
    min-KL member)."""
    from scipy.special import logsumexp

    out = np.array(logp, dtype=np.float64, copy=True)
    for x in range(out.shape[0]):
        un = np.flatnonzero(~seen[x])
        if un.size < 2:
            continue
        low = un[r_star[x, un] <= np.median(r_star[x, un])]
        mass = logsumexp(logp[x, un])
        out[x, un] = -np.inf
        out[x, low] = mass + logp_ref[x, low] - logsumexp(logp_ref[x, low])
    return out


def leaf_class(env: TreeEnv) -> SoftOptimalPolicy:
    """The tabular policy class in reward coordinates, log P = log P_ref + r/β − log Z with one
    free r per (prompt, completion): the same class as the node-logit tabular policy (on a
    tree every full-support law is one autoregressive policy, docs/theory.md §2), and about
    ten times faster to fit (no tree pass per gradient)."""
    return SoftOptimalPolicy(common.reward_class("tabular", env), env.logp_ref, env.beta, env.vocab,
                             env.horizon)  # fmt: skip


def data_vs_onpolicy(pol, env, data, grid, split_seed) -> tuple[Result, Result, float]:
    """(``dpo_data`` with λ selected on the held-out split, the on-policy arm at its KL, the
    relative KL mismatch), both over the policy class ``pol``."""
    dd = select_lambda(
        lambda d, lam: dpo_data_only(pol, env, d, lam=lam), data, split_seed=split_seed, grid=grid
    )[0]
    target = kl_ref(env, dd.logp)
    on = onpolicy_at_kl(pol, env, data, min(grid), target, dd.params)
    err = abs(kl_ref(env, on.logp) - target) / max(target, 1e-12)
    return dd, on, err


def run(
    cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator
) -> dict[str, float]:
    """On-data vs on-policy regularisation of DPO at equal KL (and against a bad member of the
    data-only optima), online soft RL at the same KL, full-support DPO, RLHF and the online
    DPO round."""
    env, data, grid, split_seed = common.prepare(cfg, rng, instance_rng)
    pol = common.tabular_policy(env)
    off = common.fit_dpo(env, data, grid, split_seed)
    on = common.fit_rlhf(env, data, "linear", grid, split_seed)
    tab = common.fit_rlhf(env, data, "tabular", grid, split_seed)
    leaf = leaf_class(env)
    dd, dpo_on, err = data_vs_onpolicy(leaf, env, data, grid, split_seed)
    seen = np.zeros(env.logp_ref.shape, bool)
    seen[data.prompt, data.chosen] = seen[data.prompt, data.rejected] = True
    spike = dataclasses.replace(dd, logp=worst_completion(dd.logp, env.logp_ref, env.r_star, seen))
    target = kl_ref(env, spike.logp)
    s_on = onpolicy_at_kl(leaf, env, data, min(grid), target, dd.params)
    s_err = abs(kl_ref(env, s_on.logp) - target) / max(target, 1e-12)
    out = {
        **hypothesis.metric_rows("dpo", env, off),
        **hypothesis.metric_rows("rlhf", env, on),
        **hypothesis.metric_rows("dpo_data", env, dd),
        **hypothesis.metric_rows("spike_data", env, spike),
        "kl_match_err": 0.0,
        "n_unmatched": 0.0,
    }
    for name, res, e in (("dpo_onpolicy", dpo_on, err), ("spike_on", s_on, s_err)):
        if e > MATCH_RTOL:  # the target KL is beyond the on-policy arm's range: no pair
            out["n_unmatched"] += 1.0
            continue
        out.update(hypothesis.metric_rows(name, env, res))
        out["kl_match_err"] = max(out["kl_match_err"], e)
    target = kl_ref(env, dd.logp)
    for name, r in (("rlhf_matched", on.r_hat), ("rlhf_tab_matched", tab.r_hat)):
        matched = common.match_kl(env, r, target)
        if matched is None:
            out["n_unmatched"] += 1.0
            continue
        m = env.metrics(matched[0])
        out.update({f"{name}/{k}": float(v) for k, v in m.items()})
        out[f"{name}/beta_eff"] = float(matched[1])
    kw = {"lam": off.lam, "n_prompts": cfg.n_pairs, "n_samples": cfg.round_samples,
          "temperature": cfg.temperature}  # fmt: skip
    out.update(hypothesis.metric_rows("round_sft", env, online_dpo_round(pol, env, on.r_hat, **kw)))
    rd = online_dpo_round(pol, env, on.r_hat, theta0=off.params, **kw)
    out.update(hypothesis.metric_rows("round_dpo", env, rd))
    return out


def verdict(df: pd.DataFrame) -> Verdict:
    """:func:`hypothesis.module_verdict`: test dpo_onpolicy − dpo_data (J at equal KL,
    predicted ``greater``), positive control spike_on − spike_data (expected ``greater``)."""
    return hypothesis.module_verdict(
        sys.modules[__name__],
        df,
        predicted=PREDICTED,
        control_expected=CONTROL_EXPECTED,
        by=["vocab", "horizon", "n_pairs"],
    )


#: Title of the figures.
TITLE = "H2: on-policy vs on-data regulariser, equal KL"


def plot(df: pd.DataFrame, ax=None):
    """The test (DPO regularised on-policy − on the data, at equal KL), its positive control
    (the same against a bad member of the data-only optima) and the reported contrasts, in J
    (mean paired difference, 95% bootstrap CI) at the headline cell."""
    return hypothesis_plots.plot_contrasts(
        hypothesis.headline_rows(df, HEADLINE), TEST, CONTROL, REPORTED, title=TITLE, ax=ax
    )


def extra_figures(df: pd.DataFrame) -> list[tuple]:
    """The reported contrasts in metrics other than J, one figure per metric."""
    return hypothesis_plots.contrast_figures(sys.modules[__name__], df, title=TITLE)
