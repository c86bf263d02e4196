"""Plots of tidy results (docs/design.md §5 layout): ``fn(df, ax=None, **kw) -> Axes``; no file I/O.

Every function takes the column names it uses as keyword arguments, so one function serves
any experiment whose table has the quantities. A keyword column may also name a *bare metric*
(pipeline ``""``, e.g. the gap descriptor ``log_gap`` that ``h6_gap`` records per run),
joined onto the runs by ``run_id`` (:func:`gvgap.stats.with_column`). Online − offline
differences are paired on seeds and Config (:func:`gvgap.stats.paired_difference`); every
curve shows the mean with a 95% bootstrap CI band. Saving is :func:`gvgap.figures.save_figure`'s
job.

Example (inside an experiment module)::

    from gvgap import plots

    def plot(df, ax=None):
        return plots.advantage_vs_gap(df, ax, gap_col="horizon", n_col="n_pairs")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from gvgap.stats import has_column, pair_runs, paired_difference, select, summarize, with_column

#: Axis labels (quantity and unit) of known columns and metrics.
LABELS: dict[str, str] = {
    "gap": "measured gap log(dim Π_min / dim R_min)",
    "log_gap": "log(#params of Π / #params of R_sim)  (nominal gap)",
    "horizon": "horizon H (tokens per completion)",
    "k": "verifier complexity k (features of R_sim)",
    "n_pairs": "preference pairs n",
    "epsilon": "misspecification ε (r* ∉ R_sim)",
    "vocab": "vocabulary size V",
    "J": "J(π) = E_π r* − β KL(π‖π_ref)",
    "J_norm": "normalised J  (0 = π_ref, 1 = π*)",
    "reward": "E_π r*",
    "kl_ref": "KL(π‖π_ref)  (nats)",
    "kl_opt": "KL(π‖π*)  (nats)",
    "win_rate": "win rate vs π_ref (true BT)",
    "regret": "regret J(π*) − J(π)",
    "acc_ref": "pairwise accuracy vs r* on pairs from π_ref",
    "acc_opt": "pairwise accuracy vs r* on pairs from π*",
    "acc_bon": "pairwise accuracy vs r* on pairs from the RM's best-of-N",
    "val_lik": "held-out BT likelihood per pair (geometric mean)",
    "kl_to_opt": "KL(P_SGD ‖ P_converged)  (nats)",
}
#: One colour per pipeline, the same in every figure.
PIPELINE_ORDER = ("sft", "dpo", "ipo", "rlhf", "online_dpo", "bon", "spin")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
#: Smallest colour half-range of :func:`phase_heatmap` (metric units; J_norm is in [0, 1]).
MIN_COLOR_SPAN = 0.05


def label(col: str) -> str:
    """Axis label of a column or metric (its name when unknown)."""
    return LABELS.get(col, col)


def plt_line(color: Any, marker: str, text: str):
    """A legend handle: a marker of ``color`` labelled ``text``."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker=marker, ls="none", label=text)


def _axes(ax: Axes | None) -> Axes:
    """``ax``, or the axes of a new figure (never the current one: a plot drawn onto a
    leftover figure would mix two figures' data)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.figure().add_subplot()


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng(0)


def advantage_table(
    df: pd.DataFrame,
    *,
    by: Sequence[str],
    online: str = "rlhf",
    offline: str = "dpo",
    metric: str = "J_norm",
    where: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
) -> pd.DataFrame:
    """Paired ``metric(online) − metric(offline)`` per setting ``by`` (columns or bare metrics).

    Returns:
        :func:`gvgap.stats.paired_difference`'s frame: ``[*by, mean, ci_low, ci_high, n, …]``.
    """
    for col in by:
        df = with_column(df, col)
    df = select(df, where)
    return paired_difference(
        df, metric=metric, a_pipeline=online, b_pipeline=offline, by=list(by), rng=_rng(rng)
    )


def _levels(frame: pd.DataFrame, col: str | None) -> list[Any]:
    return [None] if col is None else sorted(frame[col].dropna().unique().tolist())


def _band(ax: Axes, g: pd.DataFrame, x: str, **style: Any) -> None:
    """One curve: mean with markers and its CI as a shaded band."""
    g = g.sort_values(x)
    (line,) = ax.plot(g[x], g["mean"], **style)
    ax.fill_between(g[x], g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.2, lw=0)


def _curves(
    ax: Axes,
    table: pd.DataFrame,
    x: str,
    line: str | None,
    style: str | None,
    colors: Mapping[Any, Any] | None = None,
) -> None:
    """One band per (line level, style level): colour by ``line``, line style by ``style``."""
    lines, styles = _levels(table, line), _levels(table, style)
    if colors is None:  # a categorical palette: every level told apart at a glance
        pal = "colorblind" if len(lines) <= 10 else "tab20"
        colors = dict(zip(lines, sns.color_palette(pal, len(lines))))
    else:
        lines = [lv for lv in colors if lv in lines]
    for lv in lines:
        for j, sv in enumerate(styles):
            g = table
            g = g if line is None else g[g[line] == lv]
            g = g if style is None else g[g[style] == sv]
            if g.empty:
                continue
            parts = [
                str(v) if c == "pipeline" else f"{c}={v}"
                for c, v in ((line, lv), (style, sv))
                if c is not None
            ]
            _band(
                ax,
                g,
                x,
                color=colors[lv],
                ls=LINESTYLES[j % 4],
                marker=MARKERS[j % 6],
                label=", ".join(parts) or "all runs",
            )


def _tick(v: Any) -> str:
    """A short tick label: integers as is, other numbers to 3 significant digits."""
    if isinstance(v, (float, np.floating)):
        return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"
    return str(v)


def _log_ticks(ax: Axes, values: Sequence[Any]) -> None:
    """Log x axis with plain-number ticks at the values present."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    vals = sorted({float(v) for v in values if np.isfinite(v) and v > 0})
    if vals and len(vals) <= 12:
        ax.set_xticks(vals, [_tick(v) for v in vals])
        ax.xaxis.set_minor_formatter(NullFormatter())


def _zero_line(ax: Axes, y: float = 0.0) -> None:
    ax.axhline(y, color="0.2", lw=0.8, zorder=0, label="_nolegend_")


def advantage_lines(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    x: str,
    line: str | None = None,
    style: str | None = None,
    online: str = "rlhf",
    offline: str = "dpo",
    metric: str = "J_norm",
    where: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
    logx: bool = False,
    title: str | None = None,
) -> Axes:
    """Paired advantage Δ = metric(online) − metric(offline) against ``x``, 95% CI bands.

    Δ per setting is the mean over runs of the paired differences (same seeds and Config),
    :func:`gvgap.stats.paired_difference`; a horizontal line marks Δ = 0.

    Args:
        df: tidy results with ``run_id, seed, instance_seed, pipeline, metric, value`` and the
            columns named below (or bare metrics of those names).
        ax: axes to draw on (default: the current axes).
        x: x-axis column (numeric).
        line: one colour per level (ignored if absent); style: one line style per level.
        online, offline: pipelines A and B of Δ = A − B; metric: the metric compared.
        where: ``{column: value or list}`` row filter applied first.
        rng: bootstrap generator (default ``default_rng(0)``: figures are reproducible).
        logx: log-scaled x with plain ticks; title: axes title.
    """
    ax = _axes(ax)
    line = line if line != x and has_column(df, line) else None
    style = style if style not in (x, line) and has_column(df, style) else None
    by = [c for c in (x, line, style) if c is not None]
    table = advantage_table(
        df, by=by, online=online, offline=offline, metric=metric, where=where, rng=rng
    )
    _curves(ax, table, x, line, style)
    _zero_line(ax)
    if logx:
        _log_ticks(ax, table[x])
    ax.set_xlabel(label(x))
    ax.set_ylabel(f"Δ {metric} = {online} − {offline}\n(mean, 95% CI)")
    ax.set_title(title or f"{online} − {offline} advantage vs {x}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return ax


def advantage_vs_gap(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    gap_col: str = "gap",
    n_col: str = "n_pairs",
    style_col: str | None = "rm_class",
    **kw: Any,
) -> Axes:
    """Headline (docs/theory.md §6.9–10): Δ J_norm (online − offline) vs gap size, one curve per n.

    ``gap_col``: a column (``horizon``, ``k``) or bare metric (``log_gap`` =
    log(#params Π / #params R_sim)); ``style_col`` (e.g. ``rm_class``) gets line styles.
    Other keywords (``online``, ``offline``, ``metric``, ``where``, ``rng``, ``logx``,
    ``title``) go to :func:`advantage_lines`.
    """
    kw.setdefault("title", "online advantage vs generation–verification gap")
    return advantage_lines(df, ax, x=gap_col, line=n_col, style=style_col, **kw)


def misspecification_crossover(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    n_col: str = "n_pairs",
    eps_col: str = "epsilon",
    style_col: str | None = None,
    **kw: Any,
) -> Axes:
    """docs/theory.md §6.15: Δ vs n (log x), one curve per ε; a crossover is where a curve meets 0.

    Keywords as in :func:`advantage_lines`.
    """
    kw.setdefault("title", "misspecification: online advantage vs n at several ε")
    kw.setdefault("logx", True)
    return advantage_lines(df, ax, x=n_col, line=eps_col, style=style_col, **kw)


def horizon_scaling(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    horizon_col: str = "horizon",
    n_col: str = "n_pairs",
    n: float | None = None,
    line_col: str | None = "rm_class",
    **kw: Any,
) -> Axes:
    """docs/theory.md §6.11: Δ vs horizon at one fixed n (default: the smallest), a curve per
    ``line_col`` level. Keywords as in :func:`advantage_lines`."""
    if n is None and n_col in df.columns:
        n = df[n_col].min()
    where = dict(kw.pop("where", None) or {})
    if n is not None:
        where[n_col] = n
    kw.setdefault("title", f"horizon scaling at {n_col} = {n}")
    return advantage_lines(df, ax, x=horizon_col, line=line_col, where=where, **kw)


def _pipelines(df: pd.DataFrame, metric: str, pipelines: Sequence[str] | None) -> list[str]:
    present = set(df.loc[df["metric"] == metric, "pipeline"].fillna("")) - {""}
    if pipelines is not None:
        return [p for p in pipelines if p in present]
    known = [p for p in PIPELINE_ORDER if p in present]
    return known or sorted(present)


def pipeline_colors(pipelines: Sequence[str]) -> dict[str, Any]:
    """Fixed colours: pipelines in ``PIPELINE_ORDER`` keep theirs in every figure."""
    tab = sns.color_palette("tab10", 10)
    out = {}
    for i, p in enumerate(pipelines):
        idx = PIPELINE_ORDER.index(p) if p in PIPELINE_ORDER else len(PIPELINE_ORDER) + i
        out[p] = tab[idx % 10]
    return out


def sample_complexity(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    n_col: str = "n_pairs",
    gap_col: str | None = "horizon",
    metric: str = "J_norm",
    pipelines: Sequence[str] | None = None,
    where: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
) -> Axes:
    """Sample-complexity curves: mean ``metric`` vs n (log x) with 95% bootstrap CI bands,
    one colour per pipeline (default: those of ``PIPELINE_ORDER`` present, else all with
    ``metric``; variants such as ``dpo_l0.1`` only when named) and one line style per
    ``gap_col`` level (ignored when absent); J_norm gets reference lines at 0 and 1."""
    ax = _axes(ax)
    gap_col = gap_col if gap_col != n_col and has_column(df, gap_col) else None
    for col in (n_col, gap_col):
        df = with_column(df, col) if col else df
    df = select(df, where)
    pipes = _pipelines(df, metric, pipelines)
    sub = df[(df["metric"] == metric) & df["pipeline"].isin(pipes)]
    by = ["pipeline", *([gap_col] if gap_col else []), n_col]
    table = summarize(sub, by, rng=_rng(rng))
    _curves(ax, table, n_col, "pipeline", gap_col, pipeline_colors(pipes))
    if metric == "J_norm":
        for y in (0.0, 1.0):
            _zero_line(ax, y)
    _log_ticks(ax, table[n_col])
    ax.set_xlabel(label(n_col))
    ax.set_ylabel(f"{label(metric)}\n(mean, 95% CI)")
    ax.set_title(f"sample complexity: {metric} vs {n_col}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    return ax


def equivalence_scatter(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    offline: str = "dpo",
    online: str = "rlhf",
    metric: str = "J",
    hue_col: str | None = "rm_class",
    where: Mapping[str, Any] | None = None,
) -> Axes:
    """Per-run ``metric`` of offline (x) vs online (y), coloured by ``hue_col``; y = x line.

    With isomorphic classes the theorem (docs/theory.md §3) puts every point on the diagonal.
    """
    ax = _axes(ax)
    hue_col = hue_col if has_column(df, hue_col) else None
    df = select(with_column(df, hue_col) if hue_col else df, where)
    keep = [hue_col] if hue_col else []
    pairs = pair_runs(df, metric=metric, a_pipeline=online, b_pipeline=offline, keep=keep)
    sns.scatterplot(data=pairs, x="value_b", y="value_a", hue=hue_col, ax=ax, s=18, alpha=0.7)
    vals = pairs[["value_a", "value_b"]].to_numpy(dtype=float)
    if np.isfinite(vals).any():
        lo, hi = np.nanmin(vals), np.nanmax(vals)
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel(f"{metric} of {offline} (offline)")
    ax.set_ylabel(f"{metric} of {online} (online)")
    ax.set_title(f"equivalence: {online} vs {offline}, one point per run")
    ax.legend(fontsize=7, title=hue_col)
    return ax


def _annotations(piv: pd.DataFrame, lo: pd.DataFrame, hi: pd.DataFrame, tol: float) -> np.ndarray:
    """Cell text: the mean, starred when its 95% CI excludes [−tol, tol]."""
    star = (lo.to_numpy(dtype=float) > tol) | (hi.to_numpy(dtype=float) < -tol)
    text = [
        f"{m + 0.0:.2f}".replace("-0.00", "0.00") if np.isfinite(m) else ""
        for m in piv.to_numpy(dtype=float).ravel()
    ]
    return np.array([t + ("*" if s and t else "") for t, s in zip(text, star.ravel())]).reshape(
        piv.shape
    )


def phase_heatmap(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    gap_col: str = "horizon",
    n_col: str = "n_pairs",
    online: str = "rlhf",
    offline: str = "dpo",
    metric: str = "J_norm",
    where: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
    annotate: bool = True,
    tol: float = 1e-6,
    vmax: float | None = None,
) -> Axes:
    """Phase diagram: mean paired advantage over the gap × n grid.

    A cell is starred when its 95% CI excludes [−tol, tol] (``tol`` keeps round-off-level
    differences, e.g. of the isomorphic control, from counting as effects). The colour scale
    spans ±``vmax``; by default max(|mean|) but at least ``MIN_COLOR_SPAN``, so round-off
    never looks like an effect.
    """
    ax = _axes(ax)
    table = advantage_table(
        df,
        by=[gap_col, n_col],
        online=online,
        offline=offline,
        metric=metric,
        where=where,
        rng=rng,
    )
    grids = [
        table.pivot(index=gap_col, columns=n_col, values=v).sort_index(ascending=False)
        for v in ("mean", "ci_low", "ci_high")
    ]
    for g in grids:
        g.index = [_tick(v) for v in g.index]
        g.columns = [_tick(v) for v in g.columns]
    piv = grids[0].astype(float)
    if vmax is None:
        finite = np.abs(piv.to_numpy())[np.isfinite(piv.to_numpy())]
        vmax = max(float(finite.max()) if finite.size else 0.0, MIN_COLOR_SPAN)
    sns.heatmap(
        piv,
        ax=ax,
        cmap="vlag",
        center=0.0,
        vmin=-vmax,
        vmax=vmax,
        annot=_annotations(*grids, tol) if annotate else False,
        fmt="",
        annot_kws={"fontsize": 7},
        cbar_kws={"label": f"Δ {metric} = {online} − {offline}"},
    )
    ax.set_xlabel(label(n_col))
    ax.set_ylabel(label(gap_col))
    ax.set_title(f"mean advantage ({online} − {offline}); * = 95% CI excludes 0")
    return ax
