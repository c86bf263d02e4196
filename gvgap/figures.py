"""Figures of a run: which plots a results table gets, and saving them with provenance.

:func:`generic_specs` picks the :mod:`gvgap.plots` figures whose columns a table has;
:func:`render` draws one on a fresh Figure (one panel per other varying setting);
:func:`save_figure` writes PNG + PDF + a JSON sidecar (docs/design.md §1 ``figures/``).

The sidecar ``<name>.json`` records what is needed to regenerate and trust the figure: the
git SHA of the source tree, the gvgap version, the configuration and seeds it was drawn
from (the ``meta`` given) and the creation time. Every file is written to a temporary name in
the target directory and moved into place, so a reader never sees a partial file.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gvgap import plots, stats
from gvgap.atomic import atomic_write
from gvgap.errors import UserError
from gvgap.provenance import git_sha

#: Raster resolution of the PNG (dots per inch).
PNG_DPI = 160
FORMATS = ("png", "pdf")


def _version() -> str:
    from gvgap import __version__

    return __version__


def _jsonable(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays, paths and other objects."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def safe_name(name: str) -> str:
    """``name`` reduced to ``[A-Za-z0-9._-]`` (other characters become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if not cleaned:
        raise ValueError(f"figure name {name!r} has no usable characters")
    return cleaned


def sidecar(meta: dict[str, Any], files: list[str], seeds: Any = None) -> dict[str, Any]:
    """The sidecar record: provenance + ``meta`` (its ``seeds`` entry unless given)."""
    return {
        "files": files,
        "git_sha": git_sha(),
        "gvgap_version": _version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seeds": seeds if seeds is not None else meta.get("seeds"),
        "meta": meta,
    }


def save_figure(
    fig: Figure,
    out_dir: str | os.PathLike,
    name: str,
    *,
    meta: dict[str, Any],
    seeds: Any = None,
) -> list[Path]:
    """Write ``name.png`` (``PNG_DPI``), ``name.pdf`` and the ``name.json`` sidecar.

    Args:
        fig: the figure (pyplot or a bare :class:`matplotlib.figure.Figure`).
        out_dir: target directory, created if needed.
        name: file stem; characters outside ``[A-Za-z0-9._-]`` become ``_``.
        meta: what the figure shows and was drawn from (config, experiment, …); stored as is.
        seeds: the seeds behind the figure; default ``meta.get("seeds")``.

    Returns:
        the paths written: PNG, PDF, JSON.

    Raises:
        UserError: ``out_dir`` cannot be created or written.
    """
    out = Path(out_dir)
    stem = safe_name(name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for fmt in FORMATS:
            path = out / f"{stem}.{fmt}"
            atomic_write(path, partial(fig.savefig, format=fmt, dpi=PNG_DPI))
            paths.append(path)
        record = sidecar(meta, [p.name for p in paths], seeds)
        text = json.dumps(record, indent=1, default=_jsonable, allow_nan=True)
        path = out / f"{stem}.json"
        atomic_write(path, text)
    except OSError as exc:
        raise UserError(f"cannot write figures to {str(out)!r}: {exc.strerror or exc}") from None
    return [*paths, path]


# ---------------------------------------------------------------- which figures a table gets

#: Columns of results.parquet that are not Config fields.
TIDY_COLUMNS = ("run_id", "experiment", "seed", "instance_seed", "pipeline", "metric", "value")
#: A figure gets one panel per combination of the other varying settings, at most this many.
MAX_PANELS = 6
#: Candidates for the gap axis, best first (a column or the bare measured ``gap``; never the
#: nominal ``log_gap``).
GAP_AXES = ("gap", "horizon", "k")
ALL = "*"


@dataclass(frozen=True)
class FigureSpec:
    """One figure of an experiment.

    Attributes:
        name: file stem (``<experiment>__<kind>``).
        caption: one line for the report.
        draw: ``draw(df, ax) -> Axes`` on the experiment's tidy table.
        uses: columns the plot itself distinguishes; other varying Config fields (not
            determined by these) become panels. ``("*",)``: one panel of every run.
        sharey: the panels share one y axis (the default: a quantity compared across
            panels, e.g. an effect shrinking with n, must be read on one scale); False for
            plots whose y axis is categorical (heat maps).
    """

    name: str
    caption: str
    draw: Callable[[pd.DataFrame, Axes], Axes]
    uses: tuple[str, ...] = (ALL,)
    sharey: bool = True


def config_columns(df: pd.DataFrame) -> list[str]:
    """The Config-field columns of a tidy table (everything but ``TIDY_COLUMNS``)."""
    return [c for c in df.columns if c not in TIDY_COLUMNS]


def n_levels(df: pd.DataFrame, col: str | None) -> int:
    """Distinct non-null values of a column or bare metric (0 when absent)."""
    if not stats.has_column(df, col):
        return 0
    values = stats.with_column(df, col)[col].dropna()
    return int(values.astype(str).nunique())


def varying(df: pd.DataFrame) -> list[str]:
    """Config columns with at least two distinct values."""
    return [c for c in config_columns(df) if n_levels(df, c) >= 2]


def _first(df: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if n_levels(df, c) >= 2), None)


def generic_specs(eid: str, df: pd.DataFrame) -> list[FigureSpec]:
    """The :mod:`gvgap.plots` figures whose columns ``df`` has (docs/design.md §5 layout).

    Online-vs-offline figures need pipelines ``dpo`` and ``rlhf`` (or ``online_dpo``) with
    ``J_norm``; sample-complexity curves need a varying ``n_pairs``.
    """
    pipes = set(df["pipeline"].fillna("")) - {""}
    metrics = set(df["metric"])
    n = "n_pairs" if n_levels(df, "n_pairs") >= 2 else None
    gap, grid_gap = _first(df, GAP_AXES), _first(df, ("gap", "horizon", "k"))
    online = next((p for p in ("rlhf", "online_dpo") if p in pipes), None)
    specs: list[FigureSpec] = []

    def add(
        kind: str, caption: str, fn: Callable[..., Axes], uses: tuple, sharey=True, **kw: Any
    ) -> None:
        specs.append(FigureSpec(f"{eid}__{kind}", caption, partial(_call, fn, kw), uses, sharey))

    if online and "dpo" in pipes and "J_norm" in metrics:
        pair = {"online": online, "offline": "dpo"}
        if gap:
            add(
                "advantage_vs_gap",
                f"Paired J_norm advantage {online} − dpo vs gap size "
                f"({gap}), one curve per n; band = 95% bootstrap CI.",
                plots.advantage_vs_gap,
                (gap, "n_pairs", "rm_class"),
                gap_col=gap,
                **pair,
            )
        if grid_gap and n:
            add(
                "phase",
                f"Mean advantage {online} − dpo over {grid_gap} × n.",
                plots.phase_heatmap,
                (grid_gap, n),
                sharey=False,
                gap_col=grid_gap,
                **pair,
            )
        if n and n_levels(df, "epsilon") >= 2:
            add(
                "crossover",
                "Advantage vs n at several misspecification sizes ε.",
                plots.misspecification_crossover,
                (n, "epsilon", "rm_class"),
                **pair,
            )
        if n_levels(df, "horizon") >= 2 and gap != "horizon":
            add(
                "horizon",
                "Advantage vs horizon H at the smallest n.",
                plots.horizon_scaling,
                ("horizon", "n_pairs", "rm_class"),
                **pair,
            )
        if "J" in metrics:
            add(
                "equivalence",
                f"Per-run J of {online} (y) against dpo (x) on the same pairs, colour = the "
                "RM class where it varies; dashed line y = x (equal J; points above it: "
                f"{online} better).",
                plots.equivalence_scatter,
                (ALL,),
                **pair,
            )
    if n and "J_norm" in metrics and pipes & set(plots.PIPELINE_ORDER):
        sc_gap = _first(df, ("horizon", "gap", "k"))
        add(
            "sample_complexity",
            "Normalised J vs n per pipeline (colour) and gap (style).",
            plots.sample_complexity,
            (n, sc_gap or n, "pipeline"),
            gap_col=sc_gap,
        )
    return specs


def _call(fn: Callable[..., Axes], kw: dict[str, Any], df: pd.DataFrame, ax: Axes) -> Axes:
    return fn(df, ax, **kw)


def facets(df: pd.DataFrame, uses: tuple[str, ...]) -> tuple[list[dict[str, Any]], bool]:
    """Panels of a figure: one ``where`` dict per combination of the varying Config fields
    that ``uses`` neither names nor determines; at most ``MAX_PANELS``.

    Returns:
        ``(panels, truncated)``; ``[{}]`` for a single panel.
    """
    if ALL in uses:
        return [{}], False
    used = [c for c in dict.fromkeys(uses) if c and stats.has_column(df, c)]
    frame = df
    for c in used:
        frame = stats.with_column(frame, c)
    extra = []
    for c in varying(df):
        if c in used:
            continue
        spread = frame.groupby(used, dropna=False)[c].nunique() if used else [n_levels(df, c)]
        if max(spread, default=0) > 1:
            extra.append(c)
    if not extra:
        return [{}], False
    combos = frame[extra].drop_duplicates().dropna().sort_values(extra)
    panels = [dict(zip(extra, row)) for row in combos.itertuples(index=False)]
    return panels[:MAX_PANELS], len(panels) > MAX_PANELS


#: Characters per title line of a 6.4-inch panel at 10 pt (longer lines are wrapped).
TITLE_WIDTH = 60


def fit_title(title: str, width: int = TITLE_WIDTH) -> str:
    """``title`` with each of its lines wrapped to ``width`` characters, so that it fits
    above its panel."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) or line for line in title.split("\n"))


def _facet_value(v: Any) -> str:
    """A facet value for a title: integral floats as integers (``16.0`` → ``16``)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def render(spec: FigureSpec, df: pd.DataFrame) -> tuple[Figure, list[dict[str, Any]], bool]:
    """Draw ``spec`` on a new (pyplot-free) Figure, one panel per facet."""
    panels, truncated = facets(df, spec.uses)
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(6.4 * ncols, 4.4 * nrows), layout="constrained")
    share = spec.sharey and len(panels) > 1
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=share)).ravel()
    for ax, where in zip(axes, panels):
        spec.draw(stats.select(df, where), ax)
        title = ax.get_title()
        if where:
            facet = ", ".join(f"{k} = {_facet_value(v)}" for k, v in where.items())
            title = f"{title}\n{facet}"
        ax.set_title(fit_title(title), fontsize=min(ax.title.get_fontsize(), 10))
        if share:
            ax.yaxis.set_tick_params(labelleft=True)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig, panels, truncated


# ---------------------------------------------------------------- all figures of a run


def figure_meta(eid: str, df: pd.DataFrame) -> dict[str, Any]:
    """Sidecar content of an experiment's figure: run count, fixed/grid config, seeds."""
    grid_cols = varying(df)
    fixed = {c: df[c].dropna().iloc[0] for c in config_columns(df) if c not in grid_cols}
    grid = {c: sorted(df[c].dropna().unique().tolist(), key=str) for c in grid_cols}
    seeds = {
        c: sorted(df[c].dropna().unique().tolist()) for c in ("seed", "instance_seed") if c in df
    }
    return {
        "experiment": eid,
        "n_runs": int(df["run_id"].nunique()) if "run_id" in df else None,
        "config": {"fixed": fixed, "grid": grid},
        "seeds": seeds.get("seed"),
        "instance_seeds": seeds.get("instance_seed"),
    }


def experiment_specs(eid: str, df: pd.DataFrame, module: ModuleType | None) -> list[FigureSpec]:
    """The experiment module's own ``plot(df, ax)`` (if any) + the fitting generic plots."""
    own = []
    if module is not None and callable(getattr(module, "plot", None)):
        doc = (module.plot.__doc__ or "").strip()
        caption = " ".join(doc.split("\n\n")[0].split()) or f"{eid}: the experiment's figure."
        # columns the plot distinguishes: plot_uses(df) or PLOT_USES; the rest become facets
        fn = getattr(module, "plot_uses", None)
        uses = tuple(fn(df) if callable(fn) else getattr(module, "PLOT_USES", (ALL,)))
        own.append(FigureSpec(eid, caption, module.plot, uses))
        extra = getattr(module, "extra_figures", None)
        for kind, draw, extra_uses in extra(df) if callable(extra) else ():
            doc = " ".join((draw.__doc__ or "").strip().split("\n\n")[0].split())
            own.append(FigureSpec(f"{eid}__{kind}", doc or kind, draw, tuple(extra_uses)))
    return own + generic_specs(eid, df)


def experiment_figures(
    eid: str,
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    module: ModuleType | str | None,
    extra_meta: dict[str, Any] | None = None,
) -> tuple[list[Path], list[dict[str, Any]]]:
    """Render and save every figure of one experiment table (module-level, and ``module``
    may be given by name, so it can run on a pool worker).

    A figure whose drawing raises is skipped with a warning and listed with its error.

    Returns:
        ``(paths written, [{"name", "caption", "files"} or {"name", "error"}])``.
    """
    if isinstance(module, str):
        module = importlib.import_module(module)
    written: list[Path] = []
    entries: list[dict[str, Any]] = []
    base = {**figure_meta(eid, df), **(extra_meta or {})}
    for spec in experiment_specs(eid, df, module):
        try:
            fig, panels, truncated = render(spec, df)
        except Exception as exc:  # one bad figure must not lose the others
            warnings.warn(f"figure {spec.name} failed: {exc!r}", stacklevel=2)
            entries.append({"name": spec.name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        meta = {
            **base,
            "figure": spec.name,
            "caption": spec.caption,
            "panels": panels,
            "panels_truncated": truncated,
        }
        paths = save_figure(fig, out_dir, spec.name, meta=meta)
        written += paths
        entries.append(
            {"name": spec.name, "caption": spec.caption, "files": [p.name for p in paths]}
        )
    return written, entries


def write_figures(
    frames: dict[str, pd.DataFrame],
    out_dir: str | os.PathLike,
    *,
    modules: dict[str, ModuleType],
    extra_meta: dict[str, Any] | None = None,
    pool: Any = None,
) -> tuple[list[Path], dict[str, list[dict[str, Any]]]]:
    """Render and save every figure of every experiment table (:func:`experiment_figures`).

    Args:
        frames: experiment id → its tidy table.
        out_dir: target directory.
        modules: experiment id → module (for its ``plot``); ids not present get generic plots.
        extra_meta: merged into every sidecar's ``meta`` (e.g. the results file's hash).
        pool: anything with ``submit(fn, *args) -> Future`` (a
            :class:`gvgap.sweep.executors.SharedPool`): one experiment per task; default here.

    Returns:
        ``(paths written, {experiment: [{"name", "caption", "files"} or {"name", "error"}]})``.
    """
    if pool is None:
        jobs = [(eid, df, out_dir, modules.get(eid), extra_meta) for eid, df in frames.items()]
        results = [experiment_figures(*job) for job in jobs]
    else:  # modules by name: a worker imports its own
        jobs = [
            (eid, df, out_dir, modules[eid].__name__ if eid in modules else None, extra_meta)
            for eid, df in frames.items()
        ]
        results = [f.result() for f in [pool.submit(experiment_figures, *job) for job in jobs]]
    written = [path for paths, _ in results for path in paths]
    return written, {job[0]: entries for job, (_, entries) in zip(jobs, results, strict=True)}
