"""Run directory → figures, ``report.md`` and a self-contained ``report.html`` (docs/design.md
§4–5).

The report shows how the run was made (``manifest.json``), the theorem checks
(``verify.json``), the verdict table (``verdicts.json``: the paper's position, seeds, power,
the re-checks and seed blocks under it) and, per experiment, its claim, design note (docstring
markup rendered, :mod:`gvgap.report_doc`), figures and, per cell of the design, the tested
contrast with its controls and reported contrasts (mean paired difference, 95% bootstrap CI,
seeds) and, for small designs, each cell's per-pipeline summary (:mod:`gvgap.report_tables`).
Missing pieces are noted, not fatal. Figures are reused when ``figures/index.json`` was made
from the current ``results.parquet`` (same SHA-256), otherwise redrawn (:func:`write_plots`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from gvgap import figures
from gvgap.atomic import atomic_write
from gvgap.errors import UserError
from gvgap.report_doc import Doc, fmt_ci, fmt_value
from gvgap.report_tables import summary_section

RESULTS, VERDICTS, VERIFY, MANIFEST = (
    "results.parquet",
    "verdicts.json",
    "verify.json",
    "manifest.json",
)
FIGURES, INDEX = "figures", "index.json"
REQUIRED = ("experiment", "pipeline", "metric", "value")
# ---------------------------------------------------------------- reading a run directory


def results_path(run_dir: str | os.PathLike) -> Path:
    """``run_dir/results.parquet``.

    Raises:
        UserError: the directory or the file does not exist.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"run directory {str(root)!r} does not exist or is not a directory")
    path = root / RESULTS
    if not path.is_file():
        raise UserError(f"{str(path)!r} not found (run `gvgap sweep ... --out {root}` first)")
    return path


def load_results(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The tidy results table of a run directory, ``pipeline`` NaN → ``""``.

    Raises:
        UserError: missing directory/file, unreadable parquet or missing columns (naming it).
    """
    path = results_path(run_dir)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"cannot read {str(path)!r}: {type(exc).__name__}: {exc}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"{str(path)!r} lacks columns {missing} (docs/design.md §5 layout)")
    df["pipeline"] = df["pipeline"].fillna("").astype(str)
    return df


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> tuple[Any, str | None]:
    """``(content, None)``, or ``(None, reason)`` when missing or unreadable."""
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, ValueError) as exc:
        return None, f"{path.name} unreadable ({type(exc).__name__})"


def _modules() -> dict[str, ModuleType]:
    try:
        from gvgap.experiments.registry import EXPERIMENTS

        return dict(EXPERIMENTS)  # imports every module (the registry is lazy)
    except Exception as exc:  # a broken experiment module must not take the report down
        warnings.warn(f"experiment registry unavailable: {exc!r}", stacklevel=2)
        return {}


def experiment_frames(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One table per experiment (registry order first), all-NaN columns dropped."""
    order = list(_modules())
    present = list(dict.fromkeys(df["experiment"].dropna().astype(str)))
    ids = [e for e in order if e in present] + sorted(e for e in present if e not in order)
    return {
        eid: df[df["experiment"] == eid].dropna(axis=1, how="all").reset_index(drop=True)
        for eid in ids
    }


def _write_text(path: Path, text: str) -> None:
    """:func:`gvgap.atomic.atomic_write` of ``text`` (its directory created); an OSError
    becomes one UserError naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


def write_plots(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, pool: Any = None
) -> list[Path]:
    """Draw every figure of a run directory into ``out_dir`` (default ``run_dir/figures``).

    Per experiment in ``results.parquet``: its module's ``plot(df, ax)`` and the generic plots
    its columns allow (:func:`gvgap.figures.generic_specs`), each saved as PNG + PDF + JSON
    sidecar; then ``index.json`` (figures per experiment, failures with their error). With
    ``pool`` (a :class:`gvgap.sweep.executors.SharedPool`), one experiment per worker.

    Returns:
        the files written, ``index.json`` last.

    Raises:
        UserError: unreadable run directory or results, or an unwritable ``out_dir``.
    """
    df = load_results(run_dir)
    digest = _sha256(results_path(run_dir))
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / FIGURES
    paths, index = figures.write_figures(
        experiment_frames(df),
        out,
        modules=_modules(),
        extra_meta={"results_sha256": digest},
        pool=pool,
    )
    _write_text(out / INDEX, json.dumps({"results_sha256": digest, "experiments": index}))
    return [*paths, out / INDEX]


def _current_index(root: Path) -> dict[str, Any] | None:
    index, _ = read_json(root / FIGURES / INDEX)
    ok = isinstance(index, dict) and index.get("results_sha256") == _sha256(root / RESULTS)
    return index if ok else None


# ---------------------------------------------------------------- report sections


def manifest_section(doc: Doc, df: pd.DataFrame) -> None:
    """How it was run: the table's size, manifest scalars and the full manifest."""
    doc.heading(2, "How it was run")
    runs = df["run_id"].nunique() if "run_id" in df else "?"
    names = ", ".join(map(str, df["experiment"].dropna().unique())) or "(none)"
    doc.para(f"results.parquet: {len(df)} rows, {runs} runs; experiments: {names}.")
    manifest, why = read_json(doc.root / MANIFEST)
    if not isinstance(manifest, dict):
        doc.note(f"No manifest ({why or 'not a JSON object'}).")
        return
    scalars = [
        [k, fmt_value(v)] for k, v in manifest.items() if isinstance(v, (str, int, float, bool))
    ]
    doc.table(["field", "value"], scalars)
    for eid, why in (manifest.get("not_run") or {}).items():
        doc.note(f"{eid} was NOT RUN: {why}. It has no verdict in this report.")
    brief = {
        k: f"<{len(v)} entries; see {MANIFEST}>" if isinstance(v, dict) and len(v) > 20 else v
        for k, v in manifest.items()
    }
    text = json.dumps(brief, indent=1, default=str)
    doc.details("full manifest.json", text[:50_000] + ("\n…" if len(text) > 50_000 else ""))


def verify_section(doc: Doc) -> None:
    """The theorem-check table from ``verify.json``."""
    doc.heading(2, "Theorem checks (gvgap verify)")
    records, why = read_json(doc.root / VERIFY)
    records = [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
    if not records:
        doc.note(
            f"Skipped: {why or 'verify.json holds no records'} "
            f"(`gvgap verify --json {doc.root / VERIFY}` writes it)."
        )
        return
    keys = ("item", "name", "instances", "max_error", "tolerance")
    rows = [
        [fmt_value(r.get(k)) for k in keys] + ["PASS" if r.get("passed") else "FAIL"]
        for r in records
    ]
    doc.table(["item", "check", "instances", "max error", "tolerance", "result"], rows)
    n_pass = sum(r[-1] == "PASS" for r in rows)
    doc.para(f"{n_pass} of {len(rows)} checks pass.")


#: The verdict table's legend (one line).
VERDICT_LEGEND = (
    "Legend: the verdict is on the hypothesis (supported / against / inconclusive), not on "
    "the code; *consistent with paper* is yes when it is the verdict the paper reached, no "
    "when it is the other decided one, undecided when inconclusive; *effect* is the tested "
    "contrast in the cell that decided the verdict (mean paired difference; for h6_gap the "
    "P1 slope) and the positive control the same for the arm that shows the test can detect "
    "its effect (a control that does not detect makes the verdict inconclusive); *seeds* and "
    "*power* come from the power plan (the control's power at its pilot effect); *re-checks* "
    "counts the re-checks listed below whose verdict equals the main one."
)


def verdict_section(doc: Doc) -> dict[str, Any]:
    """The verdict table from ``verdicts.json`` with its legend, then every re-check and
    seed block; returns the records (``{}`` if none)."""
    doc.heading(2, "Verdicts")
    verdicts, why = read_json(doc.root / VERDICTS)
    if not isinstance(verdicts, dict) or not verdicts:
        doc.note(f"Skipped: {why or 'verdicts.json holds no verdicts'}.")
        return {}
    verdicts = {k: v if isinstance(v, dict) else {} for k, v in verdicts.items()}
    header = [
        "id",
        "hypothesis (or claim)",
        "verdict on the hypothesis",
        "paper's position",
        "consistent with paper",
        "effect [95% CI]",
        "positive control [95% CI]",
        "seeds",
        "power",
        "re-checks agreeing",
    ]
    rows = [
        [
            eid,
            v.get("hypothesis") or v.get("claim", ""),
            v.get("verdict", "?"),
            v.get("paper_position") or "–",
            v.get("consistent_with_paper") or "–",
            fmt_ci(v.get("effect"), v.get("ci_low"), v.get("ci_high")),
            _control(v.get("positive_control")),
            fmt_value(v.get("seeds") if v.get("seeds") is not None else v.get("n_runs")),
            _power(v.get("power")),
            _agreeing(v),
        ]
        for eid, v in verdicts.items()
    ]
    doc.table(header, rows)
    doc.para(VERDICT_LEGEND)
    recheck_section(doc, verdicts)
    return verdicts


def _power(p: Any) -> str:
    ok = isinstance(p, (int, float)) and not isinstance(p, bool) and np.isfinite(p)
    return f"{p:.2f}" if ok else "–"


def _agreeing(v: dict) -> str:
    checks = [c for c in v.get("robustness") or [] if isinstance(c, dict)]
    if not checks:
        return "–"
    return f"{sum(c.get('verdict') == v.get('verdict') for c in checks)} of {len(checks)}"


def _override(o: Any) -> str:
    return ", ".join(f"{k} = {fmt_value(x)}" for k, x in o.items()) if isinstance(o, dict) else "–"


def recheck_section(doc: Doc, verdicts: dict[str, dict]) -> None:
    """Each experiment's robustness re-checks (setting, verdict, effect, seeds, power) and the
    headline effect on each seed block, one table each."""
    have = {e: v for e, v in verdicts.items() if v.get("robustness") or v.get("stability")}
    if not have:
        return
    doc.heading(3, "Re-checks and seed blocks")
    doc.para(
        "Each re-check reruns an experiment with one setting changed, on its confirmatory seed "
        "block with the planned seeds, and is decided by the same rule; a seed block "
        "re-measures the headline effect on further instances."
    )
    for eid, v in have.items():
        checks = [c for c in v.get("robustness") or [] if isinstance(c, dict)]
        if checks:
            doc.para(f"**{eid}** (main verdict {v.get('verdict', '?')}), re-checks:")
            doc.table(
                ["setting changed", "verdict", "effect [95% CI]", "seeds", "power"],
                [
                    [
                        _override(c.get("override")),
                        c.get("verdict", "?"),
                        fmt_ci(c.get("effect"), c.get("ci_low"), c.get("ci_high")),
                        fmt_value(c.get("seeds")),
                        _power(c.get("power")),
                    ]
                    for c in checks
                ],
            )
        blocks = [b for b in v.get("stability") or [] if isinstance(b, dict)]
        if blocks:
            doc.para(f"**{eid}**, headline effect per seed block:")
            doc.table(
                ["first seed", "effect [95% CI]", "seeds"],
                [
                    [
                        fmt_value(b.get("seed_start")),
                        fmt_ci(b.get("effect"), b.get("ci_low"), b.get("ci_high")),
                        fmt_value(b.get("seeds")),
                    ]
                    for b in blocks
                ],
            )


def _control(pc: Any) -> str:
    """``effect [lo, hi]`` of a ``positive_control`` record, ``–`` when absent."""
    if not isinstance(pc, dict):
        return "–"
    return fmt_ci(pc.get("effect"), pc.get("ci_low"), pc.get("ci_high"))


def experiment_section(
    doc: Doc, eid: str, df: pd.DataFrame, verdict: dict | None, figs: list[dict]
) -> None:
    """Claim, design note (rendered), verdict, figures and per-cell tables of one
    experiment."""
    module = _modules().get(eid)
    doc.heading(3, eid)
    claim = getattr(module, "CLAIM", None) or (verdict or {}).get("claim")
    doc.para(f"**Claim.** {claim}" if claim else "No claim recorded.")
    if getattr(module, "NOTES", None):
        doc.para(f"paper_notes.md section: {module.NOTES}.")
    note = str(getattr(module, "DESIGN_NOTE", None) or "").strip()
    if note:  # a note with its own labelled paragraphs (Mechanism, Design, …) gets no lead
        doc.rich(note, lead="" if "**Design.**" in note else "**Design.** ")
    hypothesis = getattr(module, "HYPOTHESIS", None) or (verdict or {}).get("hypothesis")
    if hypothesis:
        doc.para(f"**Hypothesis.** {hypothesis}")
    if getattr(module, "PREDICTION", None):
        doc.para(f"**Prediction (if the hypothesis holds).** {module.PREDICTION}")
    if verdict:
        held = verdict.get("prediction_held")
        eff = fmt_ci(verdict.get("effect"), verdict.get("ci_low"), verdict.get("ci_high"))
        agree = verdict.get("consistent_with_paper")
        doc.para(
            f"**Verdict on the hypothesis: {verdict.get('verdict', '?')}**"
            + ("" if held is None else f" (prediction held: {fmt_value(held)})")
            + f"; effect {eff}"
            + (
                f"; positive control {_control(verdict['positive_control'])}"
                if isinstance(verdict.get("positive_control"), dict)
                else ""
            )
            + f"; {fmt_value(verdict.get('n_runs'))} runs"
            + (f"; consistent with the paper: {agree}" if agree else "")
            + "."
        )
        if verdict.get("detail"):
            doc.para(f"Detail: {verdict['detail']}")
    for entry in figs:
        if "error" in entry:
            doc.note(f"Figure {entry['name']} failed: {entry['error']}")
        else:
            doc.figure(doc.root / FIGURES / f"{entry['name']}.png", entry.get("caption", ""))
    summary_section(doc, df, module)


def write_report(run_dir: str | os.PathLike) -> list[Path]:
    """Write ``report.md`` and the self-contained ``report.html`` into ``run_dir``.

    Figures come from ``run_dir/figures`` when current, else :func:`write_plots` redraws them.

    Returns:
        ``[run_dir/report.md, run_dir/report.html]``.

    Raises:
        UserError: missing/unreadable run directory or results, or an unwritable directory.
    """
    from gvgap import __version__

    root = Path(run_dir)
    df = load_results(root)
    index = _current_index(root)
    if index is None:
        write_plots(root)
        index = _current_index(root) or {}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    title = f"gvgap report: {root.resolve().name}"
    doc = Doc(root)
    doc.heading(1, title)
    doc.para(f"Generated {now} by gvgap {__version__} (git {figures.git_sha() or 'unknown'}).")
    manifest_section(doc, df)
    verify_section(doc)
    verdicts = verdict_section(doc)
    doc.heading(2, "Experiments")
    frames = experiment_frames(df)
    if not frames:
        doc.note("results.parquet holds no experiment rows.")
    modules = _modules()
    for eid, frame in frames.items():
        figs = index.get("experiments", {}).get(eid, [])
        own = getattr(modules.get(eid), "report_section", None)  # an experiment's own section
        if callable(own):
            own(doc, frame, verdicts, figs)
            continue
        experiment_section(doc, eid, frame, verdicts.get(eid), figs)
    md, page = root / "report.md", root / "report.html"
    _write_text(md, doc.to_markdown())
    _write_text(page, doc.to_html(title))
    return [md, page]
