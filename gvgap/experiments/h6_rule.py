"""H6's decision rule: the dose–response law of the sample-complexity gap, and its design —
cells, sample sizes, margins and instance-seed blocks — fixed in code before the confirmatory
sweep (docs/theory.md "The sample-complexity constant").

Prediction. If the online advantage is the generation–verification gap the theory defines,
then wherever both sides' classes hold their targets, n·d → ΔC = C_offline − C_online as n
grows (d = regret(offline) − regret(online) on the same pairs; each C the exact regret
constant of the class a run used, :mod:`gvgap.theory.asymptotics`), and d ≈ 0 where ΔC = 0.

Rule (:func:`decide`), on the headline protocol (:data:`HEADLINE_PROTOCOL`, ``learned``):

- **Law cells**: (cell, n) with n ∈ :data:`DOSE_N` in the asymptotic regime — the larger
  constant per pair is small, max(C_off, C_on)/n ≤ :data:`REGIME_C` nats (the quadratic
  expansion of the regret), and D is expected to draw every (prompt, leaf) at least
  :data:`REGIME_COUNT` times (2n min ρ_x μ(ξ|x)) — and not flagged misspecified. Within a law
  cell, runs whose selected class does not hold its target (no constant) are left out and
  counted.
- **P1 (slope)**: over the law cells whose instance-level ΔC* > 0, the weighted least-squares
  slope through the origin of the cell means of n·d on the cell means of ΔC, with weights
  s_c/ΔC̄_c² (s_c seeds): inverse-variance weights when n·d has a common coefficient of
  variation around ΔC, fixed by the design rather than estimated from each cell's own
  outcomes (weights 1/SE² from the seeds favour the cells whose draws came out low, since
  regrets are right-skewed and a cell's mean and spread rise together, and so bias the
  slope down). Then b = Σ_c s_c (ȳ_c/x̄_c) / Σ_c s_c. Its 95 % interval is a percentile
  bootstrap that resamples runs within cells. P1 *holds* if the interval lies inside
  :data:`SLOPE_BAND`, *fails* if it misses the band, else is undetermined.
- **P2 (null)**: on the law cells whose instance-level ΔC* (the smallest classes holding the
  targets on each side) is 0, the advantage is what the law gives: the law residual of each
  run, (n·d − ΔC)/C̄_off (ΔC of the classes the run selected — under ``learned`` the two
  sides select from different ladders, so this is not an identity; C̄_off the cell's mean
  offline constant, the scale of n·regret), pooled over those cells, is equivalent to 0 by
  two one-sided signed-rank tests with margin :data:`P2_REL`. Holds if ``equivalent``, fails
  if ``greater`` or ``less``. Per cell, n·d/C̄_off against 0 with the same margin is
  reported beside it (Holm across the cells).
- **P3 (ranking, reported)**: at n ∈ :data:`RANK_N`, Spearman's ρ across cells between the
  mean d and the mean ΔC, and between the mean d and the mean dims-gap
  log(dim offline class / dim online class), with bootstrap intervals.
- **Misspecified cells** (reported apart, outside P1 and P2): more than
  :data:`MISSPEC_SHARE` of a cell's runs at some n ∈ DOSE_N used a class that does not hold
  its target, or a side's n·regret grows from the smallest to the largest n of DOSE_N by more
  than :data:`GROWTH` in the mean and significantly (one-sided Mann–Whitney, α = 0.05).
- **Positive control**: P1 under :data:`CONTROL_PROTOCOL` (``gift``: the online class is
  handed the generating features; fixed classes). It must hold — the law is detectable with
  these seeds when the verifier class is known — else the verdict is ``inconclusive``.

Verdict: ``supported`` if the control holds, P1 holds and P2 holds; ``against`` if the
control holds and P1 fails or P2 fails; ``inconclusive`` otherwise. The former threshold rule
on the dims-gap (gap ≥ 1.5 → advantage, ≤ 0.75 → none, at n = 16) is reported as secondary.

Seeds come from a power computation on a pilot block (:func:`plan_seeds`, run by
``gvgap reproduce`` before the confirmatory sweep): the most seeds P1's interval, the
control's interval and P2's equivalence need for 80 % power.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gvgap import inference
from gvgap.experiments.base import Verdict
from gvgap.experiments.h6_cells import (
    CellStats,
    cell_stats,
    law_cells,
    misspecified,
    run_table,
)
from gvgap.experiments.h6_design import (
    CONTROL_PROTOCOL,
    DOSE_N,
    HEADLINE,
    HEADLINE_PROTOCOL,
    N_BOOT,
    P2_REL,
    PILOT,
    PLANNED_P1_CELLS,
    PLANNED_P2_CELLS,
    RANK_N,
    SEED_BOUNDS,
    SLOPE_BAND,
    ZERO_DC,
)

if TYPE_CHECKING:  # pandas is needed only by verdict code, imported there
    import pandas as pd

# ---------------------------------------------------------------- P1, P2, P3


@dataclass(frozen=True)
class Slope:
    """P1: the slope of n·d on ΔC with its interval, and the decision."""

    value: float
    ci_low: float
    ci_high: float
    n_cells: int
    n_runs: int
    outcome: str  # holds | fails | undetermined | untested


def _wls(xs: np.ndarray, ys: np.ndarray, seeds: np.ndarray) -> float:
    """Slope through the origin with weights s_c / x_c²: Σ s_c y_c/x_c / Σ s_c."""
    return float(np.sum(seeds * ys / xs) / np.sum(seeds))


def slope(cells: list[CellStats], *, rng: np.random.Generator, band=SLOPE_BAND) -> Slope:
    """P1 on ``cells`` (law cells with ΔC > 0, restricted to their well-specified runs)."""
    cells = [c for c in cells if c.seeds >= 2 and np.isfinite(c.dc).any()]
    if not cells:
        return Slope(np.nan, np.nan, np.nan, 0, 0, "untested")
    seeds = np.array([c.seeds for c in cells], float)
    value = _wls(
        np.array([np.nanmean(c.dc) for c in cells]),
        np.array([np.nanmean(c.nd) for c in cells]),
        seeds,
    )
    xs, ys = [], []
    for c in cells:
        ok = np.isfinite(c.nd) & np.isfinite(c.dc)
        idx = rng.integers(ok.sum(), size=(N_BOOT, ok.sum()))
        xs.append(c.dc[ok][idx].mean(axis=1))
        ys.append(c.nd[ok][idx].mean(axis=1))
    boot = np.sum(seeds[:, None] * np.array(ys) / np.array(xs), axis=0) / seeds.sum()
    lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    if band[0] <= lo and hi <= band[1]:
        outcome = "holds"
    elif hi < band[0] or lo > band[1]:
        outcome = "fails"
    else:
        outcome = "undetermined"
    return Slope(value, lo, hi, len(cells), int(seeds.sum()), outcome)


@dataclass(frozen=True)
class NullTest:
    """P2: the pooled law-residual TOST and, per cell, n·d/C̄_off against 0 (reported)."""

    pooled: inference.Decision | None
    keys: list
    scales: list
    raw: list
    outcome: str  # holds | fails | undetermined | untested
    differing: int = 0  # runs whose two sides did not end identical (d ≠ 0)
    runs: int = 0


def null_test(cells: list[CellStats]) -> NullTest:
    """P2 on law cells with ΔC* = 0 (module docstring)."""
    cells = [c for c in cells if c.seeds >= 2]
    if not cells:
        return NullTest(None, [], [], [], "untested")
    scales = [max(float(np.nanmean(c.c_off)), 1e-12) for c in cells]
    resid = np.concatenate([(c.nd - c.dc) / s for c, s in zip(cells, scales)])
    pooled = inference.decide(resid, margin=P2_REL)
    raw = inference.decide_family([c.nd / s for c, s in zip(cells, scales)], margin=P2_REL)
    outcome = {"equivalent": "holds", "greater": "fails", "less": "fails"}.get(
        pooled.outcome, "undetermined"
    )
    nd = np.concatenate([c.nd / s for c, s in zip(cells, scales)])
    differing = int(np.sum(np.abs(nd) > ZERO_DC))
    keys = [(c.key, c.n) for c in cells]
    return NullTest(pooled, keys, scales, raw, outcome, differing, int(np.isfinite(nd).sum()))


def _finite_mean(x: np.ndarray) -> bool:
    """Whether the NaN-ignoring mean of ``x`` is finite (False, without a warning, when every
    value is NaN)."""
    return bool((~np.isnan(x)).any()) and bool(np.isfinite(np.nanmean(x)))


def rank_correlations(
    cells: list[CellStats], *, rng: np.random.Generator
) -> dict[str, dict[str, float]]:
    """P3: Spearman ρ of the cell means of d with ΔC and with the dims-gap, per n in
    :data:`RANK_N`, with percentile bootstrap intervals (runs resampled within cells)."""
    from scipy.stats import spearmanr

    out: dict[str, dict[str, float]] = {}
    for n in RANK_N:
        mine = [c for c in cells if c.n == n and c.seeds >= 2 and _finite_mean(c.dc)]
        if len(mine) < 3:
            continue
        d = np.array([np.nanmean(c.d) for c in mine])
        for name, x in (
            ("delta_C", np.array([np.nanmean(c.dc) for c in mine])),
            ("dims_gap", np.array([c.dims_gap for c in mine])),
        ):
            rho = float(spearmanr(d, x).statistic)
            boot = []
            for _ in range(N_BOOT // 4):  # resamples, not leaves
                db = np.array([np.nanmean(rng.choice(c.d, size=c.d.size)) for c in mine])
                boot.append(spearmanr(db, x).statistic)
            lo, hi = np.nanpercentile(boot, [2.5, 97.5])
            out[f"n={n} d~{name}"] = {"rho": rho, "ci_low": float(lo), "ci_high": float(hi)}
    return out


# ---------------------------------------------------------------- the verdict


#: The former rule, reported as secondary: dims-gap thresholds at n = RANK_N[0] with a TOST
#: margin on d (nats).
OLD_GAP_BIG, OLD_GAP_SMALL, OLD_MARGIN = 1.5, 0.75, 0.05


def secondary(cells: list[CellStats]) -> dict[str, Any]:
    """The former threshold rule on the dims-gap at n = RANK_N[0]: cells with mean dims-gap ≥
    OLD_GAP_BIG predicted ``greater``, ≤ OLD_GAP_SMALL ``equivalent`` (margin OLD_MARGIN on d),
    Holm across them; counts of predictions that held."""
    small = [c for c in cells if c.n == RANK_N[0] and c.seeds >= 2]
    pred = [
        "greater"
        if c.dims_gap >= OLD_GAP_BIG
        else "equivalent"
        if c.dims_gap <= OLD_GAP_SMALL
        else None
        for c in small
    ]
    tested = [(c, p) for c, p in zip(small, pred) if p is not None]
    if not tested:
        return {"held": 0, "tested": 0}
    decs = inference.decide_family([c.d for c, _ in tested], margin=OLD_MARGIN)
    held = sum(d.outcome == p for (_, p), d in zip(tested, decs))
    return {"held": int(held), "tested": len(tested)}


@dataclass(frozen=True)
class Decision:
    """Everything the rule computed on one table."""

    verdict: str
    held: bool | None
    p1: Slope
    p2: NullTest
    p3: dict
    control: Slope
    flagged: set
    cells: list
    headline: dict
    secondary: dict


def _positive(c: CellStats) -> bool:
    """The cell's mean ΔC is positive beyond rounding (ZERO_DC × its mean offline constant)."""
    dc = np.nanmean(c.dc) if np.isfinite(c.dc).any() else np.nan
    return bool(dc > ZERO_DC * max(float(np.nanmean(np.abs(c.c_off))), 1.0))


def decide(df: pd.DataFrame, *, seed: int = 0) -> Decision:
    """The rule of the module docstring on a tidy h6_gap table."""
    rng = np.random.default_rng(seed)
    runs = run_table(df, HEADLINE_PROTOCOL)
    ctrl_runs = run_table(df, CONTROL_PROTOCOL)
    cells = cell_stats(runs) if not runs.empty else []
    flagged = misspecified(cells, runs) if cells else set()
    law = law_cells(cells, flagged)
    p1 = slope([c for c in law if c.dc_star > 0 and _positive(c)], rng=rng)
    p2 = null_test([c for c in law if c.dc_star == 0])
    p3 = rank_correlations(cells, rng=rng)
    ccells = cell_stats(ctrl_runs) if not ctrl_runs.empty else []
    cflag = misspecified(ccells, ctrl_runs) if ccells else set()
    control = slope([c for c in law_cells(ccells, cflag) if _positive(c)], rng=rng)
    if control.outcome != "holds":
        verdict, held = "inconclusive", None
    elif p1.outcome == "fails" or p2.outcome == "fails":
        verdict, held = "against", False
    elif p1.outcome == "holds" and p2.outcome in ("holds", "untested"):
        verdict, held = "supported", True
    else:
        verdict, held = "inconclusive", None
    return Decision(
        verdict, held, p1, p2, p3, control, flagged, cells, headline_effect(df), secondary(cells)
    )


def headline_effect(df: pd.DataFrame, headline: dict | None = None) -> dict[str, float]:
    """Mean d [95% bootstrap CI] and seeds at ``headline`` (default :data:`HEADLINE`; NaN when
    the table lacks it)."""
    from gvgap.stats import at_cell, mean_ci

    head = HEADLINE if headline is None else headline
    runs = run_table(df, head["protocol"])
    if runs.empty or "cell" not in runs.columns:
        return {"effect": np.nan, "ci_low": np.nan, "ci_high": np.nan, "seeds": 0}
    at = at_cell(runs, {"cell": head["cell"], "n_pairs": head["n_pairs"]})
    m, lo, hi = mean_ci(at["d"].to_numpy(float), rng=np.random.default_rng(0))
    return {"effect": m, "ci_low": lo, "ci_high": hi, "seeds": int(at["d"].notna().sum())}


def _fmt_key(key: tuple) -> str:
    return "/".join(str(k) for k in key)


def describe(dec: Decision) -> str:
    """The detail string of the verdict record."""
    p1, c = dec.p1, dec.control
    parts = [
        f"P1 slope of n·d on ΔC ({HEADLINE_PROTOCOL}, n in {list(DOSE_N)}): {p1.value:.3g} "
        f"[{p1.ci_low:.3g}, {p1.ci_high:.3g}] over {p1.n_cells} cells / {p1.n_runs} runs, "
        f"band {list(SLOPE_BAND)}: {p1.outcome}",
        f"control ({CONTROL_PROTOCOL}): {c.value:.3g} [{c.ci_low:.3g}, {c.ci_high:.3g}] "
        f"{c.outcome}",
        f"P2 (ΔC* = 0: pooled (n·d − ΔC)/C̄_off, TOST margin {P2_REL:.2g}): "
        f"{dec.p2.outcome}"
        + (
            f" (mean {dec.p2.pooled.summary['mean']:.3g}, {dec.p2.pooled.summary['n']} runs, "
            f"{dec.p2.differing} of {dec.p2.runs} with d ≠ 0: the others selected isomorphic "
            "classes on both sides)"
            if dec.p2.pooled is not None
            else ""
        )
        + "; per cell n·d: "
        + "; ".join(
            f"{_fmt_key(k)}@n={n}: {r.summary['mean'] * s:.3g} ({r.outcome} vs 0, C̄_off {s:.3g})"
            for (k, n), s, r in zip(dec.p2.keys, dec.p2.scales, dec.p2.raw)
        ),
        "P3 Spearman: "
        + "; ".join(
            f"{k} {v['rho']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}]" for k, v in dec.p3.items()
        ),
    ]
    if dec.flagged:
        parts.append("misspecified (outside P1): " + ", ".join(sorted(map(_fmt_key, dec.flagged))))
    sec = dec.secondary
    parts.append(
        f"secondary (former rule: dims-gap ≥ {OLD_GAP_BIG} → advantage, ≤ {OLD_GAP_SMALL} → "
        f"none, n = {RANK_N[0]}): {sec['held']} of {sec['tested']} predictions held"
    )
    h = dec.headline
    parts.append(
        f"headline d at {HEADLINE['cell']}, n={HEADLINE['n_pairs']}: {h['effect']:.3g} "
        f"[{h['ci_low']:.3g}, {h['ci_high']:.3g}] ({h['seeds']} seeds)"
    )
    return " | ".join(parts)


def verdict(df: pd.DataFrame, *, claim: str) -> Verdict:
    """The h6_gap verdict record: effect = the P1 slope with its interval, positive control =
    the control's slope."""
    dec = decide(df)
    p1, c = dec.p1, dec.control
    return Verdict(
        claim,
        dec.verdict,
        p1.value,
        p1.ci_low,
        p1.ci_high,
        p1.n_runs,
        describe(dec),
        hypothesis="n·(regret offline − regret online) → ΔC, the exact sample-complexity gap",
        prediction_held=dec.held,
        positive_control={"effect": c.value, "ci_low": c.ci_low, "ci_high": c.ci_high},
    )


# ---------------------------------------------------------------- power


def slope_power(cv: float, n_cells: int, seeds: int, band=SLOPE_BAND) -> float:
    """Power of P1 when the slope is 1: the chance that b̂ ± 1.96 SE lies inside ``band`` with
    b̂ ~ N(1, SE²), SE = cv / √(n_cells · seeds) (each cell's n·d has standard deviation
    ``cv`` × ΔC across seeds; b̂ is the seed-weighted mean of the K cells' ȳ/ΔC). A normal
    approximation, for planning only."""
    from scipy.stats import norm

    se = cv / np.sqrt(max(n_cells, 1) * seeds)
    if not np.isfinite(se) or se <= 0:
        return 1.0 if se == 0 else 0.0
    hi = norm.cdf((band[1] - 1.96 * se - 1.0) / se)
    lo = norm.cdf((band[0] + 1.96 * se - 1.0) / se)
    return float(max(hi - lo, 0.0))


def _cv_eff(runs: pd.DataFrame, cells: list[str], n: int) -> float:
    """The coefficient of variation that sets P1's precision: per gap cell
    cv_c = sd(n·d)/|mean ΔC|, combined as the inverse-variance weights combine cells,
    cv_eff = (mean_c 1/cv_c²)^(−1/2)."""
    inv = []
    for cell in cells:
        g = runs[(runs["cell"] == cell) & (runs["n_pairs"] == n)]
        nd, dc = g["nd"].to_numpy(float), g["delta_C"].to_numpy(float)
        ok = np.isfinite(nd) & np.isfinite(dc)
        if ok.sum() > 1 and abs(dc[ok].mean()) > 0:
            inv.append((abs(dc[ok].mean()) / np.std(nd[ok], ddof=1)) ** 2)
    return float(1.0 / np.sqrt(np.mean(inv))) if inv else np.inf


def plan_seeds(pilot: pd.DataFrame) -> dict[str, Any]:
    """Seeds per verdict cell from the pilot block (:data:`PILOT`): the most any test of the
    rule needs for 80 % power —

    - P1 (:data:`HEADLINE_PROTOCOL`) and the control (P1 under :data:`CONTROL_PROTOCOL`): the
      slope's interval inside the band (:func:`slope_power`) over :data:`PLANNED_P1_CELLS`
      cells, each as precise as the pilot's gap cells (:func:`_cv_eff`);
    - P2: the pooled law residual equivalent to 0 (TOST, margin :data:`P2_REL`) over
      :data:`PLANNED_P2_CELLS` cells like the pilot's ΔC* = 0 cell —

    clipped to :data:`SEED_BOUNDS`.

    Returns:
        ``{"seeds", "power", "parts": {test: {"seeds", "power", ...}}}``; ``power`` is the least
        of the tests' powers at the chosen seeds.
    """
    *gap_cells, null_cell = PILOT["grid"]["cell"]
    (n,) = PILOT["grid"]["n_pairs"]
    parts: dict[str, dict[str, float]] = {}
    for name, protocol in (("P1", HEADLINE_PROTOCOL), ("control", CONTROL_PROTOCOL)):
        cv = _cv_eff(run_table(pilot, protocol), gap_cells, n)
        need = next(
            (
                k
                for k in inference.SEED_GRID
                if slope_power(cv, PLANNED_P1_CELLS, k) >= inference.TARGET_POWER
            ),
            inference.SEED_GRID[-1],
        )
        parts[name] = {"seeds": need, "cv": cv}
    runs = run_table(pilot, HEADLINE_PROTOCOL)
    null = runs[(runs["cell"] == null_cell) & (runs["n_pairs"] == n)]
    resid = ((null["nd"] - null["delta_C"]) / null["offline/C"].mean()).to_numpy(float)
    resid = resid[np.isfinite(resid)]
    plan = inference.seeds_for_power(resid, test="equivalent", margin=P2_REL)  # pooled runs
    parts["P2"] = {"seeds": int(np.ceil(plan.seeds / PLANNED_P2_CELLS)), "pooled_runs": plan.seeds}
    seeds = int(np.clip(max(p["seeds"] for p in parts.values()), *SEED_BOUNDS))
    for name in ("P1", "control"):
        parts[name]["power"] = slope_power(parts[name]["cv"], PLANNED_P1_CELLS, seeds)
    parts["P2"]["power"] = inference.power(
        resid,
        seeds * PLANNED_P2_CELLS,
        test="equivalent",
        margin=P2_REL,
        rng=np.random.default_rng(0),
    )
    power = float(min(p["power"] for p in parts.values()))
    return {"seeds": seeds, "power": power, "parts": parts}
