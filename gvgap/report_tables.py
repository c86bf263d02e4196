"""The per-experiment tables of the report (:func:`gvgap.report.write_report`): per cell of the
design, the contrasts an experiment names (test, positive control, reported) with their 95%
bootstrap intervals and seeds, and, for a small design, each cell's per-pipeline summary —
never pooled over cells."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from gvgap import figures, stats
from gvgap.report_doc import Doc, fmt_ci, fmt_value

#: Metrics summarised per pipeline (docs/design.md §5 shared names), in this order.
MAIN_METRICS = ("J_norm", "J", "reward", "kl_ref", "kl_opt", "win_rate")
#: At most this many bare metrics are summarised for an experiment without pipelines.
MAX_BARE_METRICS = 12
#: At most this many cells get a per-pipeline summary table (a larger design is summarised
#: by its contrast table alone).
MAX_SUMMARY_CELLS = 4
#: At most this many rows in a per-cell contrast table.
MAX_CONTRAST_ROWS = 240
#: Contrasts of an experiment that names none (``TEST``), first match wins: (a, b, metric).
DEFAULT_CONTRASTS = (("rlhf", "dpo", "J"), ("online", "offline", "J"), ("online_dpo", "dpo", "J"))


def cell_columns(df: pd.DataFrame) -> list[str]:
    """The Config columns that define the cells of a table: the varying ones, minus those
    determined by the others kept (a named design cell fixes its generator, tree, …), the
    columns with most levels considered first."""
    cols = sorted(figures.varying(df), key=lambda c: (-figures.n_levels(df, c), c))
    keep: list[str] = []
    for c in cols:
        if keep and (df.groupby(keep, dropna=False)[c].nunique(dropna=False) <= 1).all():
            continue
        keep.append(c)
    return keep


def _cell_label(cell: dict) -> str:
    return ", ".join(f"{k} = {fmt_value(v)}" for k, v in cell.items()) or "all runs"


def contrasts_of(module: ModuleType | None, df: pd.DataFrame) -> list[tuple[str, Any]]:
    """(role, contrast) pairs of an experiment: its TEST, CONTROL and REPORTED, or else the
    first of :data:`DEFAULT_CONTRASTS` whose pipelines and metric the table has."""
    from gvgap.experiments.hypothesis import Contrast

    test = getattr(module, "TEST", None)
    if test is not None:
        out = [("test", test)]
        if getattr(module, "CONTROL", None) is not None:
            out.append(("positive control", module.CONTROL))
        return out + [("reported", c) for c in getattr(module, "REPORTED", ())]
    pipes, metrics = set(df["pipeline"]), set(df["metric"])
    for a, b, metric in DEFAULT_CONTRASTS:
        if {a, b} <= pipes and metric in metrics:
            return [("compared", Contrast(f"{a} − {b}", a, b, metric))]
    return []


def contrast_table(
    df: pd.DataFrame, module: ModuleType | None
) -> tuple[list[str], list[list[str]], int]:
    """Per cell (:func:`cell_columns`) and contrast (:func:`contrasts_of`): the mean paired
    difference with its 95% bootstrap CI and the paired seeds behind it; a contrast without
    two pairs in a cell is left out (no empty rows). Returns (header, rows, rows cut)."""
    from gvgap.experiments import hypothesis

    contrasts = contrasts_of(module, df)
    if not contrasts:
        return [], [], 0
    rows = []
    for cell in hypothesis.cells_of(df, cell_columns(df)):
        sub = stats.at_cell(df, cell)
        for role, c in contrasts:
            d = hypothesis.paired(sub, c)
            if d.size >= 2:
                m, lo, hi = hypothesis.mean_ci(d)
                rows.append(
                    [_cell_label(cell), role, c.label, c.metric, fmt_ci(m, lo, hi), str(d.size)]
                )
    header = ["cell", "role", "contrast a − b", "metric", "mean [95% CI]", "seeds"]
    return header, rows[:MAX_CONTRAST_ROWS], max(len(rows) - MAX_CONTRAST_ROWS, 0)


def summary_table(df: pd.DataFrame, rng: np.random.Generator) -> tuple[list[str], list[list]]:
    """Mean [95% CI] over the runs of ``df`` (one cell; :func:`gvgap.stats.summarize`):
    pipelines × main metrics, pipelines without any of them left out; or, without
    pipelines, one row per bare metric with min/max."""
    piped = df[df["pipeline"] != ""]
    metrics = [m for m in MAIN_METRICS if m in set(piped["metric"])]
    if metrics:
        t = stats.summarize(piped[piped["metric"].isin(metrics)], ["pipeline", "metric"], rng=rng)
        cell = {(r.pipeline, r.metric): fmt_ci(r.mean, r.ci_low, r.ci_high) for r in t.itertuples()}
        n = t.groupby("pipeline")["n"].max()
        pipes = [p for p in dict.fromkeys(piped["pipeline"]) if p in n.index]
        rows = [[p, *(cell.get((p, m), "–") for m in metrics), fmt_value(n.get(p))] for p in pipes]
        return ["pipeline", *metrics, "n runs"], rows
    bare = df[df["pipeline"] == ""]
    names = list(dict.fromkeys(bare["metric"]))[:MAX_BARE_METRICS]
    t = stats.summarize(bare[bare["metric"].isin(names)], ["metric"], rng=rng)
    ext = bare.groupby("metric")["value"].agg(["min", "max"])
    rows = [
        [
            r.metric,
            fmt_ci(r.mean, r.ci_low, r.ci_high),
            fmt_value(ext.at[r.metric, "min"]),
            fmt_value(ext.at[r.metric, "max"]),
            fmt_value(r.n),
        ]
        for r in t.itertuples()
    ]
    return ["metric", "mean [95% CI]", "min", "max", "n"], rows


def summary_section(doc: Doc, df: pd.DataFrame, module: ModuleType | None) -> None:
    """Per cell of the design: the contrasts (test, control, reported) with CIs and seeds,
    then, for a design of at most :data:`MAX_SUMMARY_CELLS` cells, each cell's per-pipeline
    summary — never pooled over cells (protocols, n, …)."""
    from gvgap.experiments import hypothesis

    header, rows, cut = contrast_table(df, module)
    if rows:
        doc.para(
            "Contrasts per cell (mean paired difference a − b over the seeds, 95% bootstrap "
            "CI; the test decides the verdict, the positive control must detect its effect, "
            "reported contrasts are not evidence):"
        )
        doc.table(header, rows)
        if cut:
            doc.note(f"{cut} more rows left out (results.parquet holds them).")
    cells = hypothesis.cells_of(df, cell_columns(df))
    if len(cells) > MAX_SUMMARY_CELLS:
        doc.para(
            f"Per-pipeline summaries are not shown for the {len(cells)} cells of this design "
            "(results.parquet holds every run)."
        )
        return
    for cell in cells:
        header, rows = summary_table(stats.at_cell(df, cell), np.random.default_rng(0))
        if rows:
            doc.para(f"Summary at {_cell_label(cell)} (mean [95% bootstrap CI] over the seeds):")
            doc.table(header, rows)
