"""Verdict and plot helpers of the neural experiment (paired differences against a baseline,
the inconclusive Verdict, CI error bars)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gvgap.experiments.base import Verdict

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd


def paired_vs(
    df: pd.DataFrame,
    pipelines,
    *,
    by: list[str],
    rng: np.random.Generator,
    baseline: str = "dpo",
    metric: str = "J_norm",
    column: str = "pipeline",
) -> pd.DataFrame:
    """Paired ``pipeline − baseline`` difference of ``metric`` per setting (95% bootstrap CI)
    for every pipeline present, tagged in ``column``; empty frame when none is present."""
    import pandas as pd

    from gvgap.stats import paired_difference

    present = set(df["pipeline"].unique())
    parts = [
        paired_difference(
            df, metric=metric, a_pipeline=p, b_pipeline=baseline, by=by, rng=rng
        ).assign(**{column: p})
        for p in pipelines
        if p in present
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def inconclusive(claim: str, detail: str) -> Verdict:
    """The verdict when the table lacks the runs the headline needs."""
    nan = float("nan")
    return Verdict(claim, "inconclusive", nan, nan, nan, 0, detail)


def errorbar_ci(ax, x, g: pd.DataFrame, **kw):
    """``mean`` of ``g`` against ``x`` with its 95% CI as asymmetric error bars."""
    kw.setdefault("capsize", 3)
    return ax.errorbar(x, g["mean"], yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]], **kw)
