"""The h6 figures: the dose–response law (n·d against ΔC, d against n with ΔC/n, the small-n
ranking against the dims-gap) on ``h6_rule.dose_table``, and the surface / n-curves of
paired regret differences for user sweeps over generators (``h6_gap.plot``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from gvgap.plots import _axes, _rng, _zero_line, plt_line
from gvgap.stats import paired_difference, with_column

#: Protocol markers of :func:`h6_surface` (categorical, told apart at a glance).
H6_PROTOCOL_STYLE = {
    "learned": ("o", "-"),
    "well_specified": ("D", "-."),
    "gift": ("s", "--"),
    "gift_tabular": ("P", "--"),
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
    bootstrap CI; positive = online better) per generator and tree V×H (x: one category per
    pair, so no category pools trees of different measured gaps; ordered by the median
    measured gap, printed under it with its range over instances when it varies) and protocol
    (colour and marker, categorical). Series are dodged horizontally so none hides another;
    the legend gives the seeds per point. Other varying fields must be facets
    (``h6_gap.plot_uses``)."""
    ax = _axes(ax)
    keys = [c for c in ("generator", "tree") if c in df.columns]
    by = [*keys, *(["protocol"] if "protocol" in df.columns else [])]
    adv = paired_difference(
        df, metric=metric, a_pipeline="offline", b_pipeline="online", by=by, rng=_rng(None)
    )
    if adv.empty or not keys:
        ax.set_title("H6: no paired offline/online runs")
        return ax
    gap = with_column(df, "gap")
    spans: dict[tuple, tuple[float, float, float]] = {}
    if "gap" in gap:
        for key, g in gap.groupby(keys)["gap"]:
            key = key if isinstance(key, tuple) else (key,)
            spans[key] = (float(g.min()), float(g.median()), float(g.max()))

    def cat(row) -> tuple:
        return tuple(row[k] for k in keys)

    cats = sorted({cat(r) for _, r in adv.iterrows()},
                  key=lambda c: (spans.get(c, (0.0, 0.0, 0.0))[1], str(c)))  # fmt: skip
    prots = [p for p in H6_PROTOCOL_STYLE if "protocol" in adv and p in set(adv["protocol"])]
    prots = prots or [None]
    colors = dict(zip(prots, sns.color_palette("colorblind", len(prots))))
    width = 0.8 / max(len(prots), 1)
    for j, prot in enumerate(prots):
        g = adv if prot is None else adv[adv["protocol"] == prot]
        if g.empty:
            continue
        x = (
            np.array([cats.index(cat(r)) for _, r in g.iterrows()])
            + (j - (len(prots) - 1) / 2) * width
        )
        marker, _ = H6_PROTOCOL_STYLE.get(prot, ("o", "-"))
        ax.errorbar(
            x,
            g["mean"],
            yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]],
            color=colors[prot],
            marker=marker,
            ls="none",
            capsize=2,
            label=f"{prot or 'all runs'} ({int(g['n'].min())} seeds)",
        )

    def tick(c: tuple) -> str:
        name = " ".join(str(v) for v in c)
        if c not in spans:
            return name
        lo, med, hi = spans[c]
        spread = f" ({lo:.2f}–{hi:.2f})" if hi - lo > 5e-3 else ""
        return f"{name}\ngap {med:.2f}{spread}"

    ax.set_xticks(range(len(cats)), [tick(c) for c in cats], fontsize=7)
    _zero_line(ax)
    ax.set_xlabel("generator and tree V×H (ordered by measured gap log(dim Π_min / dim R_min))")
    ax.set_ylabel(f"{metric}(offline) − {metric}(online)  (nats; 95% CI)")
    ax.set_title("H6: online advantage vs the measured gap")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3,
              title="protocol")  # fmt: skip
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


# ---------------------------------------------------------------- the dose–response law

#: Markers of β in the dose–response figures (categorical).
BETA_MARKERS = {0.1: "v", 0.3: "<", 1.0: "o", 3.0: "s"}


def _gen_colors(gens) -> dict:
    return dict(zip(sorted(gens), sns.color_palette("colorblind", max(len(set(gens)), 1))))


def dose_response(
    table: pd.DataFrame,
    ax: Axes | None = None,
    *,
    protocol: str = "learned",
    n_values: tuple[int, ...] = (1024, 4096),
    band: tuple[float, float] = (0.67, 1.5),
) -> Axes:
    """n·d against ΔC on log–log axes (``h6_rule.dose_table``): one point per (cell, n) of
    ``protocol`` at ``n_values`` with ΔC > 0 — mean n·d with its 95 % bootstrap interval —
    colour = generator of r*, marker = β, filled = a law cell of the rule (asymptotic regime,
    not misspecified), hollow = reported only. The identity n·d = ΔC (solid) and the P1 band
    (slopes 0.67 and 1.5, dotted) are drawn; means ≤ 0 sit on the lower edge as ×. Cells with
    ΔC* = 0 are P2's, not drawn here."""
    ax = _axes(ax)
    t = table[(table["protocol"] == protocol) & table["n_pairs"].isin(n_values)]
    t = t[(t["delta_C_star"] > 0) & (t["delta_C"] > 0)]
    if t.empty:
        ax.set_title(f"H6 dose–response ({protocol}): no cell with ΔC > 0")
        return ax
    colors = _gen_colors(t["generator"].unique())
    pos = t["nd"] > 0
    floor = 0.5 * float(t.loc[pos, "nd_low"].clip(lower=1e-3).min()) if pos.any() else 0.1
    for _, r in t.iterrows():
        c = colors[r["generator"]]
        y = r["nd"] if r["nd"] > 0 else floor
        marker = BETA_MARKERS.get(r["beta"], "D") if r["nd"] > 0 else "x"
        lo = max(r["nd"] - max(r["nd_low"], floor * 0.5), 0.0) if r["nd"] > 0 else 0.0
        hi = max(r["nd_high"] - r["nd"], 0.0) if r["nd"] > 0 else 0.0
        ax.errorbar(
            [r["delta_C"]],
            [y],
            yerr=[[lo], [hi]],
            marker=marker,
            color=c,
            mfc=c if r["law"] else "white",
            ls="none",
            capsize=2,
            alpha=0.9,
        )
    xs = np.geomspace(t["delta_C"].min() * 0.7, t["delta_C"].max() * 1.4, 50)
    ax.plot(xs, xs, color="k", lw=1.0, label="n·d = ΔC")
    for b in band:
        ax.plot(xs, b * xs, color="k", lw=0.7, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ΔC = C(offline class) − C(online class)  (exact, per run, mean over seeds)")
    ax.set_ylabel("n · (regret offline − regret online)  (mean, 95% CI)")
    ax.set_title(f"H6 law ({protocol}), n = {', '.join(map(str, n_values))}", fontsize=10)
    handles = [plt_line(colors[g], "o", str(g)) for g in sorted(colors)] + [
        plt_line("0.4", m, f"β = {b:g}") for b, m in BETA_MARKERS.items() if b in set(t["beta"])
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower right", framealpha=0.6)
    return ax


def d_against_n(table: pd.DataFrame, ax: Axes | None = None, *, protocol: str = "learned") -> Axes:
    """d against n per cell of ``protocol`` (log–log; ``h6_rule.dose_table``): mean d with its
    95 % bootstrap interval (solid, colour per cell), and the law's prediction ΔC/n from the
    runs' own classes (dashed, same colour). The cells of P1 only (ΔC* > 0, a law cell at some
    n of the rule); means ≤ 0 sit on the lower edge."""
    ax = _axes(ax)
    t = table[(table["protocol"] == protocol) & (table["delta_C_star"] > 0)]
    key = "cell" if "cell" in t else "generator"
    law = set(t.loc[t["law"], key])
    t = t[t[key].isin(law)]
    cells = sorted(law, key=str)
    if not cells:
        ax.set_title(f"H6 ({protocol}): no law cell with ΔC* > 0")
        return ax
    palette = sns.color_palette("colorblind" if len(cells) <= 10 else "tab20", len(cells))
    colors = dict(zip(cells, palette))
    pos = t["d"] > 0
    floor = 0.5 * float(t.loc[pos, "d"].min()) if pos.any() else 1e-4
    for cell in cells:
        g = t[t[key] == cell].sort_values("n_pairs")
        y = g["d"].where(g["d"] > 0, floor)
        lo = (g["d"] - g["d_low"].clip(lower=floor * 0.5)).clip(lower=0.0).where(g["d"] > 0, 0.0)
        hi = (g["d_high"] - g["d"]).clip(lower=0.0).where(g["d"] > 0, 0.0)
        ax.errorbar(
            g["n_pairs"],
            y,
            yerr=[lo, hi],
            color=colors[cell],
            marker="o",
            capsize=2,
            label=f"{cell} ({int(g['seeds'].min())} seeds)",
        )
        pred = g["predicted_d"].where(g["predicted_d"] > 0)
        ax.plot(g["n_pairs"], pred, color=colors[cell], ls="--", lw=1.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("preference pairs n")
    ax.set_ylabel("d = regret(offline) − regret(online)  (nats; mean, 95% CI)")
    ax.set_title(f"H6 ({protocol}): d against n; dashed: ΔC/n", fontsize=10)
    ax.legend(fontsize=6, ncol=2, framealpha=0.6)
    return ax


def rank_scatter(
    table: pd.DataFrame, ax: Axes | None = None, *, n: int = 16, protocol: str = "learned"
) -> Axes:
    """The small-n ranking (P3, reported): mean d at ``n`` per cell against the cells' mean
    dims-gap log(dim offline class / dim online class) (the former proxy of the gap); colour =
    generator, marker = β, 95 % bootstrap intervals; ΔC printed beside each point."""
    ax = _axes(ax)
    t = table[(table["protocol"] == protocol) & (table["n_pairs"] == n)]
    if t.empty:
        ax.set_title(f"H6 ({protocol}): no cell at n = {n}")
        return ax
    colors = _gen_colors(t["generator"].unique())
    for _, r in t.iterrows():
        c = colors[r["generator"]]
        ax.errorbar(
            [r["dims_gap"]],
            [r["d"]],
            yerr=[[r["d"] - r["d_low"]], [r["d_high"] - r["d"]]],
            marker=BETA_MARKERS.get(r["beta"], "D"),
            color=c,
            ls="none",
            capsize=2,
        )
        if np.isfinite(r["delta_C"]):
            ax.annotate(
                f"{r['delta_C']:.3g}",
                (r["dims_gap"], r["d"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
    _zero_line(ax)
    ax.set_xlabel("dims-gap log(dim offline class / dim online class)  (mean over seeds)")
    ax.set_ylabel(f"d at n = {n}  (nats; mean, 95% CI)")
    ax.set_title(f"H6 ({protocol}) at n = {n}: d against the dims-gap (labels: ΔC)", fontsize=10)
    handles = [plt_line(colors[g], "o", str(g)) for g in sorted(colors)]
    ax.legend(handles=handles, fontsize=7, framealpha=0.6)
    return ax
