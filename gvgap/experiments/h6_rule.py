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

from gvgap import inference as I
from gvgap.experiments.base import Verdict

if TYPE_CHECKING:  # pandas is needed only by verdict code, imported there
    import pandas as pd

# ---------------------------------------------------------------- design, fixed in code

#: Instance-seed blocks. DEV: every sweep run while developing (seeds from 0). PILOT: the
#: power pilot. CONFIRM: the confirmatory sweep of the verdict (``gvgap reproduce``), never
#: run before the rule below was fixed. STABILITY: the headline effect re-measured on two
#: more independent blocks.
DEV_BLOCK = 0
PILOT_BLOCK = 1_000_000
CONFIRM_BLOCK = 2_000_000
STABILITY_BLOCKS = (3_000_000, 4_000_000)

#: Named design cells (Config overrides). Uniform π_ref and m = 1 unless named: the gap of
#: the verifier class (dense, planning, additive r*), of β (planning at β = 0.1, 3), of π_ref
#: (additive r* with a Dirichlet π_ref: π* inherits π_ref's dependence on the whole prefix),
#: of pooling (m = 4 prompts sharing r*), and cells with ΔC* = 0 (r* in the window span that
#: also holds π*: the same class on both sides).
CELLS: dict[str, dict[str, Any]] = {
    "dense_2x4": {"generator": "dense", "tree": "2x4"},
    "dense7_2x4": {"generator": "dense", "tree": "2x4", "k": 7},
    "dense_3x3": {"generator": "dense", "tree": "3x3"},
    "dense_3x5": {"generator": "dense", "tree": "3x5"},
    "sum_mod_2x4": {"generator": "sum_mod", "tree": "2x4"},
    "sum_mod_2x4_b0.1": {"generator": "sum_mod", "tree": "2x4", "beta": 0.1},
    "sum_mod_2x4_b3": {"generator": "sum_mod", "tree": "2x4", "beta": 3.0},
    "sum_mod_2x12": {"generator": "sum_mod", "tree": "2x12"},
    "additive_2x4": {"generator": "additive", "tree": "2x4"},
    "last_first_3x3": {"generator": "last_first", "tree": "3x3"},
    "additive_3x3_dir1": {
        "generator": "additive",
        "tree": "3x3",
        "ref": "random",
        "ref_concentration": 1.0,
    },
    "additive_3x3_dir0.1": {
        "generator": "additive",
        "tree": "3x3",
        "ref": "random",
        "ref_concentration": 0.1,
    },
    "additive_full_2x4_m4": {"generator": "additive_full", "tree": "2x4", "n_prompts": 4},
    "dense_2x4_m4_own": {
        "generator": "dense",
        "tree": "2x4",
        "n_prompts": 4,
        "shared_reward": False,
    },
    "additive_full_2x4": {"generator": "additive_full", "tree": "2x4"},
    "window1_full_3x3": {"generator": "window1_full", "tree": "3x3"},
    "additive_full_2x4_m4_own": {
        "generator": "additive_full",
        "tree": "2x4",
        "n_prompts": 4,
        "shared_reward": False,
    },
}
#: The cells of the verdict (QUICK). The full SETTINGS add dense r* with k = 7, additive r*
#: with a Dirichlet(0.1) π_ref (never in the asymptotic regime at n ≤ 4096: its rarest leaves
#: have μ ≈ 1e-6) and the 4096-leaf planning cell (``sims/h6_big.toml``: C ≈ 7e3, so the law
#: needs n ≳ 10⁵ there).
VERDICT_CELLS = tuple(
    c for c in CELLS if c not in ("dense7_2x4", "additive_3x3_dir0.1", "sum_mod_2x12")
)
#: Law cells × n the dev block (seeds 0–15) had in P1 and in P2 (for the power plan's counts).
PLANNED_P1_CELLS = 11
PLANNED_P2_CELLS = 8
#: Sample sizes of P1/P2 (the asymptotic regime) and of P3 (small n).
DOSE_N = (1024, 4096)
RANK_N = (16, 64)
#: P1 holds when the slope's 95 % interval lies inside this band.
SLOPE_BAND = (0.67, 1.5)
#: P2's equivalence margin on the law residual n·d − ΔC, as a fraction of the cell's mean
#: offline constant (the same ±1/3 relative tolerance as P1's band).
P2_REL = 1.0 / 3.0
#: A side whose mean n·regret grows by more than this factor over DOSE_N (and significantly)
#: is misspecified.
GROWTH = 1.5
#: A cell with more than this share of runs on a class that misses its target is misspecified.
MISSPEC_SHARE = 0.2
#: Asymptotic regime of the law cells: max(C_off, C_on)/n at most this (nats) ...
REGIME_C = 0.05
#: ... and the rarest (prompt, leaf) expected at least this many times among D's 2n draws.
REGIME_COUNT = 5.0
#: ΔC* (and a cell's mean ΔC) counts as 0 below this, relative to the largest C of the cell:
#: isomorphic classes give ΔC at the rounding level (≈ 1e-15 C).
ZERO_DC = 1e-9
HEADLINE_PROTOCOL = "learned"
CONTROL_PROTOCOL = "gift"
#: The small-n headline effect (d at this cell), reported with its stability across blocks.
HEADLINE = {"cell": "dense_2x4", "n_pairs": 16, "protocol": HEADLINE_PROTOCOL}
#: Seeds of the pilot block, and bounds of the powered seed count (at least 20: P1 weights
#: cells by standard errors estimated from their seeds, and its interval is a percentile
#: bootstrap over them — both unreliable with fewer runs per cell).
PILOT_SEEDS = 12
SEED_BOUNDS = (20, 40)
#: Bootstrap resamples of the slope and rank-correlation intervals.
N_BOOT = 2000

_GRID = {"cell": list(VERDICT_CELLS), "n_pairs": [*RANK_N, *DOSE_N]}
SETTINGS = {
    "seeds": 20,
    "seed_start": CONFIRM_BLOCK,
    "fixed": {"lam_grid": "short"},
    "grid": {
        "cell": [c for c in CELLS if c != "sum_mod_2x12"],
        "n_pairs": [16, 64, 256, 1024, 4096],
        "protocol": ["learned", "well_specified", "gift"],
    },
}
#: The confirmatory sweep of ``gvgap reproduce --quick`` (its seeds replaced by the power
#: plan there; ``gvgap sweep h6_gap --quick`` runs it with these seeds on the same block).
QUICK = {
    "seeds": 20,
    "seed_start": CONFIRM_BLOCK,
    "fixed": {"lam_grid": "short"},
    "grid": {**_GRID, "protocol": [HEADLINE_PROTOCOL, CONTROL_PROTOCOL]},
}
#: The pilot of the power computation: two gap cells (the noisiest and a quiet one) and a
#: ΔC* = 0 cell, at the smallest n of P1, under both protocols the rule reads.
PILOT = {
    "seeds": PILOT_SEEDS,
    "seed_start": PILOT_BLOCK,
    "fixed": {"lam_grid": "short"},
    "grid": {
        "cell": ["dense_2x4", "sum_mod_2x4", "additive_full_2x4"],
        "n_pairs": [DOSE_N[0]],
        "protocol": [HEADLINE_PROTOCOL, CONTROL_PROTOCOL],
    },
}
#: h6's re-checks are the stability blocks of the headline cell (the grid itself spans β,
#: π_ref, m and sharing).
ROBUSTNESS: list[dict] = []
ROBUST_SEEDS = 20

# ---------------------------------------------------------------- per-run table

#: Per-run values the rule reads.
RUN_VALUES = (
    "offline/regret",
    "online/regret",
    "delta_C",
    "delta_C_star",
    "offline/C",
    "online/C",
    "offline/contains",
    "online/contains",
    "dims_gap",
    "gap",
    "rarest_count",
)
#: Columns that are not part of a design cell's identity.
NOT_CELL = ("run_id", "seed", "instance_seed", "n_pairs", "protocol", *RUN_VALUES)


def run_table(df: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """One row per run of ``protocol``: its cell fields, n, ``d``, ``nd`` = n·d and the
    :data:`RUN_VALUES`."""
    from gvgap.stats import runs_wide

    sub = df[df["protocol"] == protocol] if "protocol" in df.columns else df
    wide = runs_wide(sub, RUN_VALUES)
    if wide.empty:
        return wide
    wide["d"] = wide["offline/regret"] - wide["online/regret"]
    wide["nd"] = wide["n_pairs"] * wide["d"]
    return wide


def cell_columns(runs: pd.DataFrame) -> list[str]:
    """The identity columns of a design cell (every Config column that varies or is set)."""
    return [c for c in runs.columns if c not in NOT_CELL and c not in ("d", "nd")]


def cell_keys(runs: pd.DataFrame) -> list[str]:
    """The cell columns that vary in ``runs`` (``cell`` alone when the design names cells)."""
    if "cell" in runs.columns and runs["cell"].astype(str).str.len().gt(0).all():
        return ["cell"]
    cols = cell_columns(runs)
    return [c for c in cols if runs[c].astype(str).nunique() > 1] or cols[:1]


@dataclass(frozen=True)
class CellStats:
    """One (cell, n) of the rule: per run n·d, d, ΔC (NaN where a class misses its target) and
    the offline constant; the cell's ΔC*, dims-gap, gap, regime and misspecified share."""

    key: tuple
    n: int
    nd: np.ndarray
    d: np.ndarray
    dc: np.ndarray
    c_off: np.ndarray
    dc_star: float
    dims_gap: float
    gap: float
    regime: bool
    misspec_share: float

    @property
    def seeds(self) -> int:
        return int(np.isfinite(self.nd).sum())

    def law(self) -> CellStats:
        """The cell restricted to the runs whose classes hold their targets (finite ΔC)."""
        ok = np.isfinite(self.dc) & np.isfinite(self.nd)
        return CellStats(
            self.key,
            self.n,
            self.nd[ok],
            self.d[ok],
            self.dc[ok],
            self.c_off[ok],
            self.dc_star,
            self.dims_gap,
            self.gap,
            self.regime,
            self.misspec_share,
        )


def cell_stats(runs: pd.DataFrame) -> list[CellStats]:
    """Per (cell, n): the arrays and summaries the rule reads (cells sorted by key, n)."""
    keys = cell_keys(runs)
    out = []
    for key, g in runs.groupby([*keys, "n_pairs"], sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        n = int(key[-1])
        c = g[["offline/C", "online/C"]].to_numpy(float)
        scale = np.nanmax(np.abs(c), initial=1.0)
        dcs = g["delta_C_star"].to_numpy(float)
        dc_star = float(np.nanmean(dcs)) if np.isfinite(dcs).any() else np.nan
        if np.isfinite(dc_star) and np.all(np.abs(dcs) <= ZERO_DC * scale):
            dc_star = 0.0
        inside = (g["offline/contains"] > 0.5) & (g["online/contains"] > 0.5)
        worst = np.where(
            np.isfinite(c).any(axis=1),
            np.nanmax(np.where(np.isfinite(c), c, -np.inf), axis=1),
            np.nan,
        )
        regime = bool(
            np.isfinite(worst).any()
            and np.nanmean(worst) / n <= REGIME_C
            and g["rarest_count"].min() >= REGIME_COUNT
        )
        dc = np.where(inside, g["delta_C"].to_numpy(float), np.nan)
        out.append(
            CellStats(
                key[:-1],
                n,
                g["nd"].to_numpy(float),
                g["d"].to_numpy(float),
                dc,
                g["offline/C"].to_numpy(float),
                dc_star,
                float(np.nanmean(g["dims_gap"])),
                float(np.nanmedian(g["gap"])),
                regime,
                float(1.0 - inside.mean()),
            )
        )
    return out


def misspecified(cells: list[CellStats], runs: pd.DataFrame) -> set[tuple]:
    """Cells (keys) flagged misspecified over :data:`DOSE_N` (module docstring)."""
    from scipy.stats import mannwhitneyu

    flagged = set()
    dose = [c for c in cells if c.n in DOSE_N]
    keys = cell_keys(runs)
    for key in {c.key for c in dose}:
        mine = sorted((c for c in dose if c.key == key), key=lambda c: c.n)
        if any(c.misspec_share > MISSPEC_SHARE for c in mine):
            flagged.add(key)
            continue
        if len(mine) < 2:
            continue
        for side in ("offline/regret", "online/regret"):
            first = _at(runs, keys, key, mine[0].n)[side].to_numpy(float) * mine[0].n
            last = _at(runs, keys, key, mine[-1].n)[side].to_numpy(float) * mine[-1].n
            grows = np.mean(last) > GROWTH * np.mean(first) and min(first.size, last.size) > 1
            if grows and mannwhitneyu(last, first, alternative="greater").pvalue < I.ALPHA:
                flagged.add(key)
    return flagged


def _at(runs: pd.DataFrame, keys: list[str], key: tuple, n: int) -> pd.DataFrame:
    mask = runs["n_pairs"] == n
    for k, v in zip(keys, key):
        mask &= runs[k].astype(str) == str(v)
    return runs[mask]


def law_cells(cells: list[CellStats], flagged: set) -> list[CellStats]:
    """The law cells of the module docstring, each restricted to its well-specified runs."""
    return [c.law() for c in cells if c.n in DOSE_N and c.regime and c.key not in flagged]


def dose_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, cell, n): mean ΔC of the runs' classes, mean n·d and d with bootstrap
    95 % intervals, seeds, and the cell's generator, β, ΔC*, dims-gap, whether it is a law
    cell (in the regime, not misspecified) and the law's prediction ΔC/n (the figures' table)."""
    import pandas as pd

    from gvgap.stats import mean_ci

    rows = []
    for protocol in sorted(df["protocol"].unique()) if "protocol" in df else [None]:
        runs = run_table(df, protocol) if protocol else run_table(df, HEADLINE_PROTOCOL)
        if runs.empty:
            continue
        keys = cell_keys(runs)
        cells = cell_stats(runs)
        flagged = misspecified(cells, runs)
        for c in cells:
            at = _at(runs, keys, c.key, c.n)
            rng = np.random.default_rng(0)
            nd, lo, hi = mean_ci(c.nd, rng=rng)
            d, dlo, dhi = mean_ci(c.d, rng=rng)
            dc = float(np.nanmean(c.dc)) if np.isfinite(c.dc).any() else np.nan
            rows.append(
                {
                    "protocol": protocol,
                    **dict(zip(keys, c.key)),
                    "generator": at["generator"].iloc[0] if "generator" in at else "",
                    "beta": float(at["beta"].iloc[0]) if "beta" in at else np.nan,
                    "n_pairs": c.n,
                    "delta_C": dc,
                    "delta_C_star": c.dc_star,
                    "nd": nd,
                    "nd_low": lo,
                    "nd_high": hi,
                    "d": d,
                    "d_low": dlo,
                    "d_high": dhi,
                    "predicted_d": dc / c.n,
                    "dims_gap": c.dims_gap,
                    "seeds": c.seeds,
                    "law": c.n in DOSE_N and c.regime and c.key not in flagged,
                    "misspecified": c.key in flagged,
                }
            )
    return pd.DataFrame(rows)


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

    pooled: I.Decision | None
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
    pooled = I.decide(resid, margin=P2_REL)
    raw = I.decide_family([c.nd / s for c, s in zip(cells, scales)], margin=P2_REL)
    outcome = {"equivalent": "holds", "greater": "fails", "less": "fails"}.get(
        pooled.outcome, "undetermined"
    )
    nd = np.concatenate([c.nd / s for c, s in zip(cells, scales)])
    differing = int(np.sum(np.abs(nd) > ZERO_DC))
    keys = [(c.key, c.n) for c in cells]
    return NullTest(pooled, keys, scales, raw, outcome, differing, int(np.isfinite(nd).sum()))


def rank_correlations(
    cells: list[CellStats], *, rng: np.random.Generator
) -> dict[str, dict[str, float]]:
    """P3: Spearman ρ of the cell means of d with ΔC and with the dims-gap, per n in
    :data:`RANK_N`, with percentile bootstrap intervals (runs resampled within cells)."""
    from scipy.stats import spearmanr

    out: dict[str, dict[str, float]] = {}
    for n in RANK_N:
        mine = [c for c in cells if c.n == n and c.seeds >= 2 and np.isfinite(np.nanmean(c.dc))]
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
    decs = I.decide_family([c.d for c, _ in tested], margin=OLD_MARGIN)
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
    from gvgap.stats import mean_ci

    head = HEADLINE if headline is None else headline
    runs = run_table(df, head["protocol"])
    if runs.empty or "cell" not in runs.columns:
        return {"effect": np.nan, "ci_low": np.nan, "ci_high": np.nan, "seeds": 0}
    at = runs[(runs["cell"] == head["cell"]) & (runs["n_pairs"] == head["n_pairs"])]
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
            (k for k in I.SEED_GRID if slope_power(cv, PLANNED_P1_CELLS, k) >= I.TARGET_POWER),
            I.SEED_GRID[-1],
        )
        parts[name] = {"seeds": need, "cv": cv}
    runs = run_table(pilot, HEADLINE_PROTOCOL)
    null = runs[(runs["cell"] == null_cell) & (runs["n_pairs"] == n)]
    resid = ((null["nd"] - null["delta_C"]) / null["offline/C"].mean()).to_numpy(float)
    resid = resid[np.isfinite(resid)]
    plan = I.seeds_for_power(resid, test="equivalent", margin=P2_REL)  # pooled runs
    parts["P2"] = {"seeds": int(np.ceil(plan.seeds / PLANNED_P2_CELLS)), "pooled_runs": plan.seeds}
    seeds = int(np.clip(max(p["seeds"] for p in parts.values()), *SEED_BOUNDS))
    for name in ("P1", "control"):
        parts[name]["power"] = slope_power(parts[name]["cv"], PLANNED_P1_CELLS, seeds)
    parts["P2"]["power"] = I.power(
        resid,
        seeds * PLANNED_P2_CELLS,
        test="equivalent",
        margin=P2_REL,
        rng=np.random.default_rng(0),
    )
    power = float(min(p["power"] for p in parts.values()))
    return {"seeds": seeds, "power": power, "parts": parts}
