"""Verdict and plot helpers shared by the hypothesis experiments (paired differences,
picking the headline setting, Verdict records, CI error bars)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from gvgap.experiments.base import Verdict

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd


def fmt(v) -> str:
    """A setting value for labels: ``%g`` for numbers, ``str`` otherwise."""
    return f"{v:g}" if isinstance(v, (int, float, np.number)) else str(v)


def ci_text(row: pd.Series) -> str:
    """``mean [ci_low, ci_high]`` to three significant digits."""
    return f"{row['mean']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"


def varying_fields(config_cls: type, df: pd.DataFrame) -> list[str]:
    """Config fields that vary across the table (the settings to compare separately)."""
    names = [f.name for f in dataclasses.fields(config_cls)]
    return [c for c in names if c in df.columns and df[c].nunique(dropna=False) > 1]


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


def pick_setting(frame: pd.DataFrame, picks) -> pd.DataFrame:
    """Rows at the headline setting: for each ``(column, max|min)`` present, in order, keep
    the rows where the column takes that extreme."""
    for col, pick in picks:
        if col in frame.columns and not frame.empty:
            frame = frame[frame[col] == pick(frame[col])]
    return frame


def inconclusive(claim: str, detail: str) -> Verdict:
    """The verdict when the table lacks the runs the headline needs."""
    nan = float("nan")
    return Verdict(claim, "inconclusive", nan, nan, nan, 0, detail)


def verdict_at(claim: str, label: str, row: pd.Series, df: pd.DataFrame, detail: str) -> Verdict:
    """A Verdict whose effect and CI are the headline ``row``'s, over ``df``'s runs."""
    return Verdict(
        claim,
        label,
        float(row["mean"]),
        float(row["ci_low"]),
        float(row["ci_high"]),
        int(df["run_id"].nunique()),
        detail,
    )


def errorbar_ci(ax, x, g: pd.DataFrame, **kw):
    """``mean`` of ``g`` against ``x`` with its 95% CI as asymmetric error bars."""
    kw.setdefault("capsize", 3)
    return ax.errorbar(x, g["mean"], yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]], **kw)
