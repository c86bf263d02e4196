"""H6's per-run and per-cell tables: the paired differences d and n·d, the constants ΔC of
the classes each run used, the instance's ΔC*, the asymptotic regime and the
misspecification flags of :mod:`gvgap.experiments.h6_rule` (pure functions on tidy tables)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gvgap import inference
from gvgap.experiments.h6_design import (
    DOSE_N,
    GROWTH,
    HEADLINE_PROTOCOL,
    MISSPEC_SHARE,
    REGIME_C,
    REGIME_COUNT,
    ZERO_DC,
)

if TYPE_CHECKING:  # pandas is needed only by verdict code, imported there
    import pandas as pd


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

    from gvgap.stats import at_cell

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
        cell = dict(zip(keys, key))
        lo, hi = (at_cell(runs, {**cell, "n_pairs": c.n}) for c in (mine[0], mine[-1]))
        for side in ("offline/regret", "online/regret"):
            first = lo[side].to_numpy(float) * mine[0].n
            last = hi[side].to_numpy(float) * mine[-1].n
            grows = np.mean(last) > GROWTH * np.mean(first) and min(first.size, last.size) > 1
            if grows and mannwhitneyu(last, first, alternative="greater").pvalue < inference.ALPHA:
                flagged.add(key)
    return flagged


def law_cells(cells: list[CellStats], flagged: set) -> list[CellStats]:
    """The law cells of the module docstring, each restricted to its well-specified runs."""
    return [c.law() for c in cells if c.n in DOSE_N and c.regime and c.key not in flagged]


def dose_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, cell, n): mean ΔC of the runs' classes, mean n·d and d with bootstrap
    95 % intervals, seeds, and the cell's generator, β, ΔC*, dims-gap, whether it is a law
    cell (in the regime, not misspecified) and the law's prediction ΔC/n (the figures' table)."""
    import pandas as pd

    from gvgap.stats import at_cell, mean_ci

    rows = []
    for protocol in sorted(df["protocol"].unique()) if "protocol" in df else [None]:
        runs = run_table(df, protocol) if protocol else run_table(df, HEADLINE_PROTOCOL)
        if runs.empty:
            continue
        keys = cell_keys(runs)
        cells = cell_stats(runs)
        flagged = misspecified(cells, runs)
        for c in cells:
            at = at_cell(runs, {**dict(zip(keys, c.key)), "n_pairs": c.n})
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
