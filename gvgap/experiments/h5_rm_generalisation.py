"""H5 — do global RMs generalise better out of distribution? (docs/theory.md §4 H5, §6.13, §7)

**Mechanism.** H5 says a global RM (a scalar head on its own, here the linear R_sim RM) ranks
completions *outside* the distribution it was trained on better than a local RM (DPO's
implicit reward β log π_DPO/π_ref), and that this is why RL on it wins. At equal data the
global simple RM is also far better *in* distribution (a sample-efficiency effect: H6), so a
comparison at equal n cannot isolate out-of-distribution (OOD) generalisation: the two must
be compared at matched in-distribution fit — and the match must be made the way a
practitioner could, without r*.

**Design.** One instance; a nested pool of pairs from μ = π_ref with true BT labels whose
first n pairs are D, and a separate held-out set of ``n_val`` pairs from μ (BT-sampled labels,
never trained on). Reward models, all with the shared λ protocol on D:

- ``rm_linear``: the global linear RM on D;
- ``rm_local``: the local RM, DPO's implicit reward, on D;
- ``rm_local_matched``: the local RM given more pairs — the first n·f pairs of the pool for
  the smallest f ∈ ``FACTORS`` whose *held-out BT log-likelihood* reaches the linear RM's on
  the same held-out pairs (λ fixed at D's selected λ; bare metrics ``match_factor`` and
  ``matched`` = 1 if reached). No r* enters the match;
- ``rm_reffree``: the reference-free local RM (β log π, docs/theory.md §5), on D.

Read-outs, exact: pairwise ranking accuracy against r* (ties ½) in distribution (``acc_ref``,
pairs from μ) and out of distribution (``acc_opt``: pairs from π*; ``acc_bon``: pairs from the
RM's own best-of-``HEAD_N`` output), best-of-N from π_ref reranked by each RM (pipelines
``bon_<rm>``, N = ``HEAD_N``), the exact expected validation likelihood ``val_lik`` (the
geometric mean per fresh μ pair of σ(r̂(ξ⁺) − r̂(ξ⁻)); the paper's 0.526 / 0.567 / 0.593 are of
this kind) and the held-out estimate the match used (``heldout_ll``).

**Test.** OOD accuracy at matched held-out likelihood, ``acc_opt(rm_linear) −
acc_opt(rm_local_matched)``: H5 predicts ``greater``. An outcome ``equivalent`` or ``less`` is
against H5: the global RM's OOD edge is its in-distribution sample efficiency (H6).

**Positive control** (the same mechanism, by more data): ``acc_opt(rm_local_matched) −
acc_opt(rm_local)`` — more pairs must raise the local RM's OOD accuracy, so the test can see
OOD differences (expected ``greater``).

The tabular-vs-local identity (the same regularised BT problem) is a theorem (``gvgap verify``
items 3–4) and is not used. Beside it: the in-distribution accuracy gap left at the match,
RLHF with the linear RM and the paper's online DPO round (N = 25, T = 0.1) from π_ref and from
DPO, with win rate. TOST margin ``MARGIN`` in accuracy units; seeds from the power plan.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import expit

from gvgap.data import Preferences
from gvgap.experiments import common, hypothesis, hypothesis_plots
from gvgap.experiments.base import Verdict
from gvgap.learners import (
    best_of_n,
    dpo,
    fit_reward,
    online_dpo_round,
    select_lambda,
    val_bt_loglik,
)
from gvgap.losses import bt_rows
from gvgap.rewards import LocalReward
from gvgap.theory.metrics import pairwise_accuracy

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

ID = "h5_rm_generalisation"
HYPOTHESIS = "H5: global reward models generalise better out of distribution than local ones."
PREDICTION = (
    "At matched held-out BT likelihood (no r* in the match), the global linear RM ranks pairs "
    "from π* more accurately than the local (DPO implicit) RM: acc_opt linear − "
    "local_matched greater than 0."
)
CLAIM = (
    "Matched on held-out likelihood, the global simple RM does not rank out-of-distribution "
    "pairs better than the local RM given more pairs, while more pairs do raise OOD accuracy "
    "(positive control): the global RM's OOD edge is a symptom of its sample efficiency (H6)."
)
NOTES = "H5"
DESIGN_NOTE = __doc__
#: What the paper concludes about H5, and the verdict on the hypothesis that agrees with it.
PAPER_POSITION = (
    "a symptom explained by H6: global RMs generalise better because the simple verifier "
    "is learnt from less data, not as a separate mechanism"
)
PAPER_EXPECTS = "against"

#: TOST margin δ in accuracy units.
MARGIN = 0.01
#: The outcome H5 predicts for the test, and the one the positive control must show.
PREDICTED = "greater"
CONTROL_EXPECTED = "greater"
#: The headline cell, fixed before reading results.
HEADLINE = {"vocab": 3, "horizon": 4, "n_pairs": 16}
#: Data multipliers tried for the matched local RM (nested pool of max(FACTORS)·n pairs).
FACTORS: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256)
#: Best-of-N size of the headline comparison (exact law).
HEAD_N = 16
#: Relative tolerance below which fitted rewards are snapped to a tie.
TIE_TOL = 1e-5
TEST = hypothesis.Contrast(
    "OOD acc linear − matched local", "rm_linear", "rm_local_matched", "acc_opt"
)
CONTROL = hypothesis.Contrast(
    "OOD acc matched local − local", "rm_local_matched", "rm_local", "acc_opt"
)
REPORTED = [
    hypothesis.Contrast(
        "ID acc linear − matched local", "rm_linear", "rm_local_matched", "acc_ref"
    ),
    hypothesis.Contrast(
        "held-out ll linear − matched local", "rm_linear", "rm_local_matched", "heldout_ll"
    ),
    hypothesis.Contrast(
        "own-BoN acc linear − matched local", "rm_linear", "rm_local_matched", "acc_bon"
    ),
    hypothesis.Contrast("BoN linear − matched local", "bon_linear", "bon_local_matched"),
    hypothesis.Contrast("BoN linear − local", "bon_linear", "bon_local"),
    hypothesis.Contrast("val lik global − DPO implicit", "rm_linear", "rm_local", "val_lik"),
    hypothesis.Contrast(
        "val lik ref-free local − DPO implicit", "rm_reffree", "rm_local", "val_lik"
    ),
    hypothesis.Contrast("rlhf − dpo", "rlhf", "dpo"),
    hypothesis.Contrast("online DPO round from SFT − dpo", "round_sft", "dpo"),
    hypothesis.Contrast("online DPO round from DPO − dpo", "round_dpo", "dpo"),
    hypothesis.Contrast("online DPO round from DPO − dpo", "round_dpo", "dpo", "win_rate"),
]


@dataclass(frozen=True)
class Config(common.ProblemConfig):
    """One h5_rm_generalisation setting.

    Shared problem fields: :class:`common.ProblemConfig`.

    Attributes:
        n_pairs: |D| (default 16 here), the data every RM but the matched one is fitted on.
        n_val: held-out pairs from μ on which the match compares BT log-likelihoods.
        round_samples: N of the online DPO round (paper: 25).
        temperature: T of the online DPO round (paper: 0.1).
    """

    n_pairs: int = 16
    n_val: int = 256
    round_samples: int = 25
    temperature: float = 0.1

    def validate(self) -> None:
        """Raise UserError naming the first bad field."""
        super().validate()
        common.check_range("n_val", self.n_val, 2, 1_000_000)
        common.check_range("round_samples", self.round_samples, 2)
        common.check_range("temperature", self.temperature, 0.0, lo_open=True)


SMOKE = Config(vocab=2, horizon=3, n_pairs=12, lam_grid="short", round_samples=5)
#: The full sweep, the confirmatory sweep of ``gvgap reproduce --quick`` (its seeds replaced by
#: the power plan), its power pilot (the headline cell on its own seed block) and the overrides
#: under which the verdict is re-checked (another V, H; β; random π_ref).
SETTINGS, QUICK, PILOT, ROBUSTNESS = hypothesis.sweeps(HEADLINE)

build_env = common.build_env


def plan_seeds(pilot: pd.DataFrame) -> dict:
    """Seeds of the confirmatory sweep and of each re-check (:func:`hypothesis.plan_seeds`)."""
    return hypothesis.plan_seeds(sys.modules[__name__], pilot)


def bon_pipeline(rm: str, n: int) -> str:
    """Pipeline name of best-of-``n`` reranked by ``rm``: ``bon_<rm>_n<n>``."""
    return f"bon_{rm}_n{n}"


def parse_bon(pipeline: str) -> tuple[str, int] | None:
    """``(rm, N)`` of a best-of-N pipeline name, or None."""
    m = re.fullmatch(r"bon_(\w+?)_n(\d+)", str(pipeline))
    return (m.group(1), int(m.group(2))) if m else None


def snap_ties(r: np.ndarray, tol: float = TIE_TOL) -> np.ndarray:
    """Per prompt, merge values whose consecutive sorted gaps are ≤ tol·max(1, range) into one
    level (the level's minimum), so that numerically tied rewards tie exactly."""
    out = np.array(r, dtype=np.float64, copy=True)
    for x in range(out.shape[0]):
        order = np.argsort(out[x], kind="stable")
        v = out[x, order]
        eps = tol * max(1.0, float(v[-1] - v[0]))
        new_level = np.concatenate([[True], np.diff(v) > eps])
        starts = np.flatnonzero(new_level)
        out[x, order] = v[starts][np.cumsum(new_level) - 1]
    return out


def val_loglik(r_hat: np.ndarray, r_star: np.ndarray, logq: np.ndarray, rho: np.ndarray) -> float:
    """Expected BT log-likelihood of r̂ on a fresh pair ξ, ξ' ~ q with a true BT label:
    Σ_x ρ Σ_{ξ,ξ'} q(ξ)q(ξ') σ(r*(ξ) − r*(ξ')) log σ(r̂(ξ) − r̂(ξ'))."""
    q = np.exp(logq)
    ys = expit(r_star[:, :, None] - r_star[:, None, :])
    ll = -bt_rows(r_hat[:, :, None] - r_hat[:, None, :])  # log σ(Δ̂)
    return float(rho @ np.einsum("ma,mb,mab->m", q, q, ys * ll))


def _rm_rows(name: str, r: np.ndarray, env, dists: dict) -> dict[str, float]:
    """Accuracies under each distribution and the validation likelihood of one RM."""
    out = {
        f"{name}/acc_{q}": pairwise_accuracy(r, env.r_star, lq, env.rho) for q, lq in dists.items()
    }
    ll = val_loglik(r, env.r_star, env.logp_ref, env.rho)
    out[f"{name}/val_loglik"], out[f"{name}/val_lik"] = ll, float(np.exp(ll))
    return out


def nested_pool(env, data: Preferences, n_total: int, rng: np.random.Generator) -> Preferences:
    """The matched local RM's pool: D followed by ``n_total − |D|`` fresh pairs from μ = π_ref
    (true BT labels), so that its first n·f pairs are D plus (f − 1)·n more (nested in f)."""
    extra = common.draw_pairs(env, n_total - len(data), rng)
    return Preferences.concat([data, extra])


def run(
    cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator
) -> dict[str, float]:
    """RMs on D (and the matched local RM on more pairs): exact ID / OOD accuracy, best-of-N,
    validation likelihood; RLHF and the online DPO round beside."""
    env, data, grid, split_seed = common.prepare(cfg, rng, instance_rng)
    pool = nested_pool(env, data, cfg.n_pairs * max(FACTORS), rng)
    heldout = common.draw_pairs(env, cfg.n_val, rng)
    pol = common.tabular_policy(env)
    off = common.fit_dpo(env, data, grid, split_seed)
    lin = common.fit_rlhf(env, data, "linear", grid, split_seed)
    rf = LocalReward(pol, None, env.beta)
    reffree = select_lambda(
        lambda d, lam: fit_reward(rf, d, env.logp_ref.shape, lam=lam),
        data, split_seed=split_seed, grid=grid,
    )[0]  # fmt: skip
    r_lin = snap_ties(lin.r_hat)
    ll_lin = val_bt_loglik(r_lin, heldout)
    matched, factor = off, 1
    for f in FACTORS:
        both = pool.subset(np.arange(cfg.n_pairs * f))
        matched, factor = dpo(pol, env, both, lam=off.lam, theta0=off.params), f
        if val_bt_loglik(snap_ties(matched.r_hat), heldout) >= ll_lin:
            break
    rewards = {
        "linear": r_lin,
        "local": snap_ties(off.r_hat),
        "local_matched": snap_ties(matched.r_hat),
        "reffree": snap_ties(reffree.r_hat),
    }
    out = {}
    for name, res in (("dpo", off), ("rlhf", lin)):
        out.update(hypothesis.metric_rows(name, env, res))
    for rm, r in rewards.items():
        bon = best_of_n(env, r, HEAD_N)
        out.update(hypothesis.metric_rows(f"bon_{rm}", env, bon))
        dists = {"ref": env.logp_ref, "opt": env.logp_star, "bon": bon.logp}
        out.update(_rm_rows(f"rm_{rm}", r, env, dists))
        out[f"rm_{rm}/heldout_ll"] = val_bt_loglik(r, heldout)
    kw = {"lam": off.lam, "n_prompts": cfg.n_pairs, "n_samples": cfg.round_samples,
          "temperature": cfg.temperature}  # fmt: skip
    out.update(
        hypothesis.metric_rows("round_sft", env, online_dpo_round(pol, env, lin.r_hat, **kw))
    )
    rd = online_dpo_round(pol, env, lin.r_hat, theta0=off.params, **kw)
    out.update(hypothesis.metric_rows("round_dpo", env, rd))
    out["match_factor"] = float(factor)
    out["matched"] = float(out["rm_local_matched/heldout_ll"] >= ll_lin)
    return out


def verdict(df: pd.DataFrame) -> Verdict:
    """:func:`hypothesis.module_verdict`: test acc_opt linear − matched local (predicted
    ``greater``), positive control acc_opt matched local − local (expected ``greater``)."""
    return hypothesis.module_verdict(
        sys.modules[__name__],
        df,
        predicted=PREDICTED,
        control_expected=CONTROL_EXPECTED,
        by=["vocab", "horizon", "n_pairs"],
        extra=_match_note,
    )


def _match_note(head: pd.DataFrame) -> str:
    """How often (and with how much more data) the local RM reached the linear RM's held-out
    likelihood, in the decided cell's rows ``head``."""
    m = head.loc[head["metric"] == "matched", "value"]
    f = head.loc[head["metric"] == "match_factor", "value"]
    if not len(m):
        return "no match records."
    return (
        f"Matched held-out likelihood in {m.mean():.0%} of runs (median data factor "
        f"{f.median():g})."
    )


#: Title of the figures.
TITLE = "H5: OOD accuracy at matched held-out likelihood"


def plot(df: pd.DataFrame, ax=None):
    """The test (OOD ranking accuracy, linear RM − local RM matched on held-out likelihood),
    its positive control (matched local − local on D) and the reported accuracy contrasts
    (mean paired difference, 95% bootstrap CI) at the headline cell."""
    return hypothesis_plots.plot_contrasts(
        hypothesis.headline_rows(df, HEADLINE), TEST, CONTROL, REPORTED, title=TITLE, ax=ax
    )


def extra_figures(df: pd.DataFrame) -> list[tuple]:
    """The reported contrasts in metrics other than the test's, one figure per metric."""
    return hypothesis_plots.contrast_figures(sys.modules[__name__], df, title="H5")
