"""H1 — do on-policy samples carry information absent from D? (THEORY §3 corollary, §4, §6.7)

Design: one problem instance and one preference dataset D of n pairs from π_ref labelled by
the true BT model. Offline DPO over the tabular class Π (shared λ protocol, converged) gives
π_off. Every online pipeline then *starts at π_off* and may only add what on-policy sampling
adds. What is varied is the reward model that labels the on-policy samples: (a) a local RM
r̂ ∈ R(Π), BT-fitted on the same D with the same λ protocol (``local_rm="fit"``) or read off
π_off as its implicit reward β log π_off/π_ref (``local_rm="implicit"``); (b) a linear R_sim
RM fitted on the same D. Held fixed: the instance, D, the λ grid and split, the starting
policy, the policy class and exact (enumerated, converged) optimisation. For each RM we run
RLHF (exact soft RL on r̂) and online DPO in exact expectation on on-policy pairs drawn from
π_t and soft-labelled σ(r̂(a) − r̂(b)) (``online_dpo_*``), iterated to a fixed point, and
record ΔJ_norm = J_norm(pipeline) − J_norm(π_off). The relabelled pairs cover every
completion, so the relabelling loss needs no regulariser (``online_lam=0``): its minimiser is
r̂ itself, and re-applying λ each round would shrink r̂ again, changing the objective rather
than adding information. This isolates H1: with r̂ ∈ R(Π) the theorem says the fixed point
is π_off, so any ΔJ_norm ≠ 0 would be information from on-policy samples (prediction: none,
ΔJ_norm ≈ 1e-7 or less; ``h3_optimisation`` runs the same loop from π_ref and it returns to
π_off). The R_sim contrast moves to π*_{r̂_sim}: a change that comes from
the RM's inductive bias, not from the samples — it is the same with or without sampling
(RLHF needs none). Secondary pipelines ``online_dpo_bw_*`` label best-vs-worst of n on-policy
samples with hard labels (the paper's loop, THEORY §5); they need λ > 0 and use offline DPO's
selected λ for both labellers (it regularises the policy's implicit reward, as in DPO). Hard
best-vs-worst labels are not a BT relabelling of r̂ — they keep only r̂'s ranking and
sharpen toward its argmax — so their fixed point differs from π_off even with a local RM:
that change is a different objective, not information, and the verdict does not use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gvgap.experiments import analysis as A
from gvgap.experiments import common as C
from gvgap.experiments.base import Verdict
from gvgap.learners import Result, online_dpo_exact, soft_rl

ID = "h1_on_policy_signal"
CLAIM = (
    "Starting online DPO / RLHF from the offline DPO optimum with an RM from R(Π) leaves "
    "J unchanged: on-policy samples carry no information absent from D (an R_sim RM "
    "does change J)."
)
NOTES = "H1"
DESIGN_NOTE = __doc__

#: |ΔJ_norm| below this is "no change": far above the exact pipelines' numerical error
#: (≈ 1e-7 or less with converged fits) and far below any effect we would call one.
NO_CHANGE_MARGIN = 1e-3
#: Stopping tolerance of the online loops on max |Δ log P| between iterations.
LOOP_TOL = 1e-7
#: The pipeline the verdict reads (THEORY §6 item 7: BT-relabelled exact online DPO).
HEADLINE = "online_dpo_local"
LOCAL_RMS = ("fit", "implicit")
#: Online pipelines, local RM then R_sim RM (the plot's order).
PIPELINES = (
    "online_dpo_local",
    "rlhf_local",
    "online_dpo_bw_local",
    "online_dpo_rsim",
    "rlhf_rsim",
    "online_dpo_bw_rsim",
)


@dataclass(frozen=True)
class Config(C.ProblemConfig):
    """One h1_on_policy_signal setting.

    Shared problem fields: :class:`common.ProblemConfig`.

    Attributes:
        n_pairs: |D| (default 30 here).
        local_rm: ``fit`` (BT-fit a local RM on D) or ``implicit`` (π_off's implicit reward).
        online_lam: λ inside the BT-relabelled online loop; 0 = exact relabelling; negative =
            re-apply the RM's selected λ every round.
        best_worst: also run the best-vs-worst online loops (secondary pipelines).
        online_samples: samples per prompt for the best-vs-worst pairs.
        iters: maximum online iterations (each optimised to convergence).
    """

    n_pairs: int = 30
    local_rm: str = "fit"
    online_lam: float = 0.0
    best_worst: bool = True
    online_samples: int = 8
    iters: int = 30

    def validate(self) -> None:
        """Raise UserError naming the first bad field."""
        super().validate()
        C.check_choice("local_rm", self.local_rm, LOCAL_RMS)
        C.check_loop(self)


SMOKE = Config(vocab=2, horizon=3, n_pairs=16, lam_grid="short", online_samples=4, iters=10)
SETTINGS = {
    "seeds": 20,
    "fixed": {"vocab": 3, "k": 3},
    "grid": {"horizon": [2, 3, 4, 5], "n_pairs": [10, 30, 100, 1000], "local_rm": ["fit"]},
}
QUICK = {
    "seeds": 6,
    "fixed": {"vocab": 3, "k": 3, "lam_grid": "short", "n_pairs": 30},
    "grid": {"horizon": [2, 3, 4]},
}
#: Config overrides under which the verdict is re-checked (V, H, β, random π_ref, implicit RM).
ROBUSTNESS: list[dict] = [
    *C.robustness((2, 5), (4, 3)),
    {"local_rm": "implicit", "n_pairs": 100},
]


#: The problem instance (drawn only from ``instance_rng``).
build_env = C.build_env


def _loop(env, r_hat: np.ndarray, start: Result, *, lam: float, pairs: str, cfg: Config) -> Result:
    """Online DPO (exact expectation) from ``start`` labelled by ``r_hat``."""
    return online_dpo_exact(
        C.tabular_policy(env),
        env,
        r_hat,
        lam=lam,
        iters=cfg.iters,
        pairs=pairs,
        n_samples=cfg.online_samples,
        tol=LOOP_TOL,
        theta0=start.params,
    )


def _rows(name: str, env, res: Result, off: Result, j_off: float) -> dict[str, float]:
    """Shared metrics plus the change from π_off: ΔJ_norm and E_x TV(P, P_off)."""
    out = C.metric_row(name, env, res)
    out[f"{name}/dJ_norm"] = out[f"{name}/J_norm"] - j_off
    tv = 0.5 * np.abs(np.exp(res.logp) - np.exp(off.logp)).sum(axis=1)
    out[f"{name}/tv_start"] = float(env.rho @ tv)
    if "deltas" in res.extra:
        out[f"{name}/iters"] = float(len(res.extra["deltas"]))
        out[f"{name}/loop_delta"] = float(res.extra["deltas"][-1])
    return out


def _local_rm(cfg: Config, env, data, grid, split_seed: int, off: Result) -> Result:
    """RLHF with a local RM r̂ ∈ R(Π): fitted on D, or π_off's implicit reward."""
    if cfg.local_rm == "fit":
        return C.fit_rlhf(env, data, "local", grid, split_seed)
    rl = soft_rl(env, off.r_hat)
    return dataclasses.replace(rl, pipeline="rlhf", r_hat=off.r_hat, lam=off.lam)


def run(
    cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator
) -> dict[str, float]:
    """π_off, then every online pipeline started at π_off, for a local and an R_sim RM."""
    env, data, grid, split_seed = C.prepare(cfg, rng, instance_rng)
    off = C.fit_dpo(env, data, grid, split_seed)
    out = C.metric_row("dpo", env, off)
    j_off = out["dpo/J_norm"]
    rms = {
        "local": _local_rm(cfg, env, data, grid, split_seed, off),
        "rsim": C.fit_rlhf(env, data, "linear", grid, split_seed),
    }
    for tag, rm in rms.items():
        lam_bt = cfg.online_lam if cfg.online_lam >= 0 else rm.lam
        out.update(_rows(f"rlhf_{tag}", env, rm, off, j_off))
        bt = _loop(env, rm.r_hat, off, lam=lam_bt, pairs="bt", cfg=cfg)
        out.update(_rows(f"online_dpo_{tag}", env, bt, off, j_off))
        if cfg.best_worst:
            bw = _loop(env, rm.r_hat, off, lam=off.lam, pairs="best_worst", cfg=cfg)
            out.update(_rows(f"online_dpo_bw_{tag}", env, bw, off, j_off))
    out["max_grad_norm"] = max(v for k, v in out.items() if k.endswith("/grad_norm"))
    out.update(C.gap_metrics(env))
    return out


def _settings(df: pd.DataFrame) -> list[str]:
    """Config fields that vary across the table (the settings to compare separately)."""
    return A.varying_fields(Config, df)


def changes(
    df: pd.DataFrame,
    *,
    rng: np.random.Generator,
    pipelines: tuple[str, ...] = PIPELINES,
    metric: str = "J_norm",
) -> pd.DataFrame:
    """Paired ``pipeline − dpo`` difference of ``metric`` per setting, with 95% bootstrap CI.

    Returns:
        one row per (pipeline, setting) with ``pipeline``, the varying Config fields,
        ``mean``, ``ci_low``, ``ci_high``, ``n`` (and the stats module's other columns).
    """
    return A.paired_vs(df, pipelines, by=_settings(df), rng=rng, metric=metric)


def verdict(df: pd.DataFrame) -> Verdict:
    """From the BT-relabelled local-RM loop (``HEADLINE``), worst setting first: against iff
    every setting's 95% CI of ΔJ_norm lies inside ±NO_CHANGE_MARGIN; supported iff the worst
    setting's CI lies above +NO_CHANGE_MARGIN (samples improved J); else inconclusive."""
    ch = changes(df, rng=np.random.default_rng(0))
    head = ch[ch["pipeline"] == HEADLINE] if not ch.empty else ch
    if head.empty:
        return A.inconclusive(CLAIM, f"no {HEADLINE} runs")
    worst = head.loc[np.maximum(head["ci_high"].abs(), head["ci_low"].abs()).idxmax()]
    if worst["ci_low"] >= -NO_CHANGE_MARGIN and worst["ci_high"] <= NO_CHANGE_MARGIN:
        label = "against"
    elif worst["ci_low"] > NO_CHANGE_MARGIN:
        label = "supported"
    else:
        label = "inconclusive"

    def mean_of(p: str) -> str:
        g = ch[ch["pipeline"] == p]
        if g.empty:
            return "n/a"
        return f"{g['mean'].mean():+.3g} (max |.| {g['mean'].abs().max():.3g})"

    detail = (
        f"ΔJ_norm vs π_off, mean over settings: online_dpo_local {mean_of(HEADLINE)}, "
        f"rlhf_local {mean_of('rlhf_local')}, best-vs-worst local "
        f"{mean_of('online_dpo_bw_local')} (hard labels, not BT relabelling); R_sim "
        f"contrast: online_dpo_rsim {mean_of('online_dpo_rsim')}, rlhf_rsim "
        f"{mean_of('rlhf_rsim')}, best-vs-worst R_sim {mean_of('online_dpo_bw_rsim')}; "
        f"margin ±{NO_CHANGE_MARGIN}"
    )
    return A.verdict_at(CLAIM, label, worst, df, detail)


def plot(df: pd.DataFrame, ax=None):
    """ΔJ_norm vs π_off per online pipeline (symlog), one series per setting, ±margin band."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    ch = changes(df, rng=np.random.default_rng(0))
    order = [p for p in PIPELINES if not ch.empty and p in set(ch["pipeline"])]
    by = [c for c in ch.columns if c in _settings(df)]
    groups = ch.groupby(by) if by else [((), ch)]
    width = 0.8 / max(1, len(groups))
    for i, (key, g) in enumerate(groups):
        g = g.set_index("pipeline").reindex(order)
        x = np.arange(len(order)) + (i - (len(groups) - 1) / 2) * width
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{b}={v}" for b, v in zip(by, key)) or "all runs"
        A.errorbar_ci(ax, x, g, ls="none", marker="o", label=label)
    ax.axhspan(-NO_CHANGE_MARGIN, NO_CHANGE_MARGIN, color="0.85", label="no-change margin")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_yscale("symlog", linthresh=NO_CHANGE_MARGIN)
    ax.set_xticks(np.arange(len(order)), order, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel("pipeline started at π_off (RM: local ∈ R(Π) | R_sim)")
    ax.set_ylabel("ΔJ_norm vs offline DPO optimum (95% CI)")
    ax.set_title("H1: information from on-policy samples")
    ax.legend(fontsize=7)
    return ax
