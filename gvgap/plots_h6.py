"""The h6 surface figure (``h6_gap.plot``): paired regret differences per generator, tree and
protocol on one panel; the other swept fields become facets (``h6_gap.plot_uses``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from gvgap.plots import _axes, _rng, _zero_line
from gvgap.stats import paired_difference, with_column

#: Protocol markers of :func:`h6_surface` (categorical, told apart at a glance).
H6_PROTOCOL_STYLE = {
    "well_specified": ("o", "-"),
    "common": ("s", "--"),
    "non_oracle": ("^", ":"),
}


def _tree_key(tree: str) -> tuple:
    """Order trees "VxH" by output size V^H, then horizon H (non-matching names last)."""
    try:
        v, h = (int(p) for p in str(tree).lower().split("x"))
    except ValueError:
        return (float("inf"), 0, str(tree))
    return (v**h, h, str(tree))


def _level_key(value: object) -> tuple:
    """Numbers in numeric order (k = 1, 2, 4, 16, not 1, 16, 2, 4), then names."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def h6_surface(df: pd.DataFrame, ax: Axes | None = None, *, metric: str = "regret") -> Axes:
    """H6 surface on one panel: paired ``metric`` difference offline − online (mean, 95%
    bootstrap CI; positive = online better) per generator (x, ordered by its median measured
    gap, printed under the name), tree V×H (colour, categorical palette) and protocol (marker
    and line style). Series are dodged horizontally so none hides another; the legend gives
    the seeds per point. Other varying fields must be facets (``h6_gap.plot_uses``)."""
    ax = _axes(ax)
    by = [c for c in ("generator", "tree", "protocol") if c in df.columns]
    adv = paired_difference(
        df, metric=metric, a_pipeline="offline", b_pipeline="online", by=by, rng=_rng(None)
    )
    if adv.empty:
        ax.set_title("H6: no paired offline/online runs")
        return ax
    gap = with_column(df, "gap")
    gaps = gap.groupby("generator")["gap"].median() if "generator" in gap else pd.Series()
    lo = gap.groupby("generator")["gap"].min() if "generator" in gap else pd.Series()
    hi = gap.groupby("generator")["gap"].max() if "generator" in gap else pd.Series()
    gens = sorted(adv["generator"].unique(), key=lambda g: (gaps.get(g, np.nan), g))
    trees = sorted(adv["tree"].unique(), key=_tree_key) if "tree" in adv else [None]
    prots = [p for p in H6_PROTOCOL_STYLE if "protocol" in adv and p in set(adv["protocol"])]
    prots = prots or [None]
    colors = dict(zip(trees, sns.color_palette("colorblind", len(trees))))
    n_series = len(trees) * len(prots)
    width = 0.8 / max(n_series, 1)
    for j, (tree, prot) in enumerate((t, p) for t in trees for p in prots):
        g = adv
        g = g if tree is None else g[g["tree"] == tree]
        g = g if prot is None else g[g["protocol"] == prot]
        if g.empty:
            continue
        g = g.set_index("generator").reindex(gens).dropna(subset=["mean"])
        x = np.array([gens.index(v) for v in g.index]) + (j - (n_series - 1) / 2) * width
        marker, ls = H6_PROTOCOL_STYLE.get(prot, ("o", "-"))
        n_seeds = int(g["n"].min()) if "n" in g else 0
        ax.errorbar(
            x,
            g["mean"],
            yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]],
            color=colors[tree],
            marker=marker,
            ls=ls,
            capsize=2,
            label=", ".join(str(v) for v in (tree, prot) if v is not None) + f" ({n_seeds} seeds)",
        )

    def tick(g: str) -> str:
        a, b = lo.get(g, np.nan), hi.get(g, np.nan)
        return f"{g}\ngap {a:.2f}" + (f"–{b:.2f}" if b - a > 5e-3 else "")

    ax.set_xticks(range(len(gens)), [tick(g) for g in gens], fontsize=8)
    _zero_line(ax)
    ax.set_xlabel("generator of r* (ordered by measured gap log(dim Π_min / dim R_min))")
    ax.set_ylabel(f"{metric}(offline) − {metric}(online)  (nats; 95% CI)")
    ax.set_title("H6: online advantage vs the measured gap")
    # below the axes, so that no series is hidden under the legend
    ax.legend(
        fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.22), title="V×H, protocol"
    )
    return ax


def h6_curves(
    df: pd.DataFrame, ax: Axes | None = None, *, line: str | None, metric: str = "regret"
) -> Axes:
    """Paired ``metric`` difference offline − online vs n (log x, ticks at the n present), one
    line per level of ``line`` (categorical palette, mean with 95% bootstrap CI)."""
    from gvgap.plots import _log_ticks

    ax = _axes(ax)
    by = [c for c in ("n_pairs", line) if c]
    adv = paired_difference(
        df, metric=metric, a_pipeline="offline", b_pipeline="online", by=by, rng=_rng(None)
    )
    key = _tree_key if line == "tree" else _level_key
    levels = sorted(adv[line].unique(), key=key) if line else [None]
    colors = dict(zip(levels, sns.color_palette("colorblind", len(levels))))
    for lv in levels:
        g = (adv if line is None else adv[adv[line] == lv]).sort_values("n_pairs")
        ax.errorbar(
            g["n_pairs"],
            g["mean"],
            yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]],
            color=colors[lv],
            marker="o",
            capsize=2,
            label=f"{line}={lv} ({int(g['n'].min())} seeds)" if line else "all runs",
        )
    _log_ticks(ax, adv["n_pairs"].unique())
    _zero_line(ax)
    ax.set_xlabel("preference pairs n")
    ax.set_ylabel(f"{metric}(offline) − {metric}(online)  (nats; 95% CI)")
    ax.set_title("H6: online advantage vs n")
    ax.legend(fontsize=7, framealpha=0.6)
    return ax
