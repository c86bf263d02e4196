"""The neural surface of ``h6_neural``: online − offline against the measured capacity
asymmetry and n, as a table (the verdict's detail) and a figure (``h6_neural.plot``).

A *cell* is one setting of the cell columns (family, π_ref, tree, network, n). Per cell:
the paired differences d_i = J(rlhf) − J(dpo) over seeds (mean, 95% bootstrap CI), the
positive control oracle − dpo, and the medians over seeds of the measured capacities
(``offline/capacity_residual`` in nats, ``online/capacity_residual`` as a fraction,
``capacity_asymmetry`` in J units). Nothing is averaged over a cell column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from gvgap.plots import _axes, _zero_line

_SHORT = {"ref_concentration": "conc", "n_pairs": "n"}


def _value(v) -> str:
    """A cell value as written in a label: integral floats without ".0" (pandas widens
    integer columns with NaN to float)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


CAPACITY = (
    ("offline", "capacity_residual", "cap_off"),
    ("online", "capacity_residual", "cap_on"),
    ("", "capacity_asymmetry", "asym"),
)


def cell_table(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per cell: the cell columns, ``d`` (array of paired J(rlhf) − J(dpo)),
    ``mean, lo, hi``, ``ctrl`` (mean oracle − dpo), ``n`` (seeds) and the capacity medians
    ``cap_off, cap_on, asym``."""
    from gvgap.stats import mean_ci, paired_diffs

    keys = [k for k in keys if k in df.columns]
    rows = []
    groups = df.groupby(keys, sort=True) if keys else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        d = paired_diffs(g, "rlhf", "dpo", "J")
        if d.size == 0:
            continue
        m, lo, hi = mean_ci(d, rng=np.random.default_rng(0))
        row = {**dict(zip(keys, key)), "d": d, "mean": m, "lo": lo, "hi": hi, "n": d.size}
        row["ctrl"] = float(np.mean(paired_diffs(g, "oracle", "dpo", "J"))) if d.size else np.nan
        for pipe, metric, name in CAPACITY:
            sel = g[(g["pipeline"].fillna("") == pipe) & (g["metric"] == metric)]
            row[name] = float(sel["value"].median()) if len(sel) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x[ok], y[ok]).statistic)


def surface_text(df: pd.DataFrame, keys: Sequence[str]) -> str:
    """The surface as one line per cell (the verdict's detail) and, per n, the Spearman
    correlation across cells of the asymmetry with the mean online − offline (descriptive)."""
    cells = cell_table(df, keys)
    if cells.empty:
        return ""
    varying = [k for k in keys if k in cells.columns and cells[k].nunique() > 1]
    parts = []
    for _, c in cells.iterrows():
        name = "/".join(f"{k}={_value(c[k])}" for k in varying) or "all"
        parts.append(
            f"{name}: capacity off {c['cap_off']:.3g} nats, on {c['cap_on']:.3g}, asymmetry "
            f"{c['asym']:+.3g}; rlhf − dpo {c['mean']:+.3g} [{c['lo']:+.3g}, {c['hi']:+.3g}] "
            f"({c['n']} seeds), oracle − dpo {c['ctrl']:+.3g}"
        )
    text = "Surface (medians over seeds; J units): " + "; ".join(parts) + "."
    if "n_pairs" in cells.columns:
        rhos = [
            f"n={_value(n)}: {_spearman(g['asym'].to_numpy(), g['mean'].to_numpy()):+.2f} "
            f"({len(g)} cells)"
            for n, g in cells.groupby("n_pairs")
        ]
        text += " Spearman(asymmetry, online − offline) across cells, " + ", ".join(rhos) + "."
    return text


def neural_surface(df: pd.DataFrame, keys: Sequence[str], ax: Axes | None = None) -> Axes:
    """Online − offline (J, mean and 95% CI over seeds) against the measured capacity
    asymmetry (median per cell), one point per cell: marker by family and π_ref, colour by
    n; the positive control oracle − dpo of each cell as a grey cross."""
    import seaborn as sns

    ax = _axes(ax)
    cells = cell_table(df, keys)
    if cells.empty:
        ax.set_title("h6_neural: no paired rlhf/dpo runs")
        return ax
    ns = sorted(cells["n_pairs"].unique()) if "n_pairs" in cells else [None]
    colors = dict(zip(ns, sns.color_palette("viridis", len(ns))))
    kinds = cells[[k for k in ("family", "ref") if k in cells]].drop_duplicates()
    markers = dict(zip(map(tuple, kinds.to_numpy()), "osD^vP*X"))
    other = [k for k in keys if k in cells and k not in ("family", "ref", "n_pairs")]
    other = [k for k in other if cells[k].nunique() > 1]
    seen = set()
    for _, c in cells.iterrows():
        kind = tuple(c[k] for k in ("family", "ref") if k in cells)
        n = c["n_pairs"] if "n_pairs" in cells else None
        label = f"{'/'.join(map(str, kind))}, n={_value(n)}"
        err = [[max(c["mean"] - c["lo"], 0.0)], [max(c["hi"] - c["mean"], 0.0)]]
        ax.errorbar(
            [c["asym"]],
            [c["mean"]],
            yerr=err if np.isfinite(c["lo"]) else None,
            marker=markers.get(kind, "o"),
            color=colors[n],
            ls="none",
            capsize=3,
            label=None if label in seen else f"{label} ({c['n']} seeds)",
        )
        ax.plot([c["asym"]], [c["ctrl"]], marker="x", color="0.6", ls="none")
        if other:
            text = ", ".join(f"{_SHORT.get(k, k)}={_value(c[k])}" for k in other)
            ax.annotate(text, (c["asym"], c["mean"]), fontsize=6)
        seen.add(label)
    ax.plot([], [], marker="x", color="0.6", ls="none", label="oracle − dpo (control)")
    _zero_line(ax)
    ax.axvline(0.0, color="0.8", lw=0.8)
    ax.set_xlabel("capacity asymmetry: β·KL floor of policy net − J cost of RM net")
    ax.set_ylabel("J(rlhf) − J(dpo)  (95% CI)")
    ax.set_title("h6_neural: online − offline vs measured capacity asymmetry")
    ax.legend(fontsize=6)
    return ax
