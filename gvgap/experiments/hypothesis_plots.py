"""Figures of the H1–H5 verdict rule (:mod:`gvgap.experiments.hypothesis`): the test contrast,
its positive control and the reported-only contrasts, one metric per axis, each a mean paired
difference with its 95% bootstrap CI at the headline cell."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gvgap.experiments.hypothesis import Contrast, headline_rows, mean_ci, paired

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

#: Colour, marker and legend text of each role of a contrast in :func:`plot_contrasts`
#: (a categorical palette: the test, its positive control and reported contrasts apart).
ROLE_STYLE = {
    "test": ("#0072B2", "o", "test (decides the verdict)"),
    "control": ("#D55E00", "s", "positive control"),
    "reported": ("0.45", "D", "reported only (not evidence)"),
}
#: Characters per line of a wrapped title or tick label.
WRAP = 48


#: Short names of the metrics on a contrast axis (the caption and LABELS give the rest).
SHORT_LABELS = {
    "J": "J (E r* − β KL)",
    "win_rate": "win rate vs π_ref",
    "acc_ref": "accuracy, pairs from π_ref",
    "acc_opt": "accuracy, pairs from π*",
    "acc_bon": "accuracy, pairs from own BoN",
    "val_lik": "validation likelihood",
    "heldout_ll": "held-out BT log-lik. / pair",
    "kl_to_opt": "KL(P_SGD ‖ P_conv) (nats)",
    "kl_off_path": "KL(P_SGD ‖ own path) (nats)",
    "shortfall": "J shortfall",
    "stop_reg": "shortfall along the path",
    "stop_opt": "shortfall off the path",
}


def metric_label(metric: str) -> str:
    """The y-axis label of a paired difference in ``metric`` (short enough to fit)."""
    return f"a − b in {SHORT_LABELS.get(metric, metric)}\n(mean, 95% bootstrap CI)"


def plot_contrasts(
    df: pd.DataFrame,
    test: Contrast,
    control: Contrast,
    reported: Sequence[Contrast] = (),
    *,
    title: str,
    metric: str | None = None,
    ax=None,
):
    """Mean paired difference (95% bootstrap CI) of each contrast in one ``metric`` (default
    the test's): one metric per axis. The test, its positive control and the reported-only
    contrasts are told apart by colour, marker and legend; each tick names the contrast and
    the paired seeds behind it. Contrasts in other metrics belong to other figures
    (:func:`contrast_figures`)."""
    import textwrap

    import matplotlib.pyplot as plt

    from gvgap.plots import plt_line

    ax = ax or plt.gca()
    metric = metric or test.metric
    roles = [("test", test), ("control", control), *(("reported", c) for c in reported)]
    roles = [(r, c) for r, c in roles if c.metric == metric]
    ticks, used = [], []
    for r, c in roles:
        d = paired(df, c)
        m, lo, hi = mean_ci(d)
        if not np.isfinite(m):
            continue
        i = len(ticks)
        color, marker, _ = ROLE_STYLE[r]
        err = [[max(m - lo, 0.0)], [max(hi - m, 0.0)]] if np.isfinite(lo) else None
        ax.errorbar([i], [m], yerr=err, marker=marker, ls="none", capsize=3, color=color,
                    ms=8 if r == "test" else 6)  # fmt: skip
        ticks.append(textwrap.fill(f"{c.label} ({len(d)} seeds)", 28))
        used.append(r)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel(metric_label(metric))
    ax.set_title(textwrap.fill(title, WRAP), fontsize=10)
    handles = [plt_line(ROLE_STYLE[r][0], ROLE_STYLE[r][1], ROLE_STYLE[r][2])
               for r in ROLE_STYLE if r in used]  # fmt: skip
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.7)
    return ax


def contrast_figures(module, df: pd.DataFrame, *, title: str) -> list[tuple]:
    """One further figure per metric of ``module.REPORTED`` other than the test's
    (``extra_figures``: ``(kind, plot(df, ax), uses)``), so that no axis mixes metrics."""
    head_cell = getattr(module, "HEAD_CELL", module.HEADLINE)
    metrics = [c.metric for c in module.REPORTED if c.metric != module.TEST.metric]
    out = []
    for metric in dict.fromkeys(metrics):
        if not len(paired(df, next(c for c in module.REPORTED if c.metric == metric))):
            continue

        def draw(frame: pd.DataFrame, ax=None, metric=metric):
            return plot_contrasts(
                headline_rows(frame, head_cell), module.TEST, module.CONTROL, module.REPORTED,
                title=f"{title} ({metric})", metric=metric, ax=ax,
            )  # fmt: skip

        draw.__doc__ = (
            f"Reported contrasts (not evidence) in {metric}: mean paired difference a − b with "
            "its 95% bootstrap CI at the headline cell."
        )
        out.append((f"contrasts_{metric}", draw, ("*",)))
    return out
