"""Run directory → figures, ``report.md`` and a self-contained ``report.html`` (DESIGN §4–5).

The report shows how the run was made (``manifest.json``), the theorem checks
(``verify.json``), the verdict table (``verdicts.json``) and, per experiment, its claim, design
note, figures and a summary table (mean and 95% bootstrap CI per pipeline). Missing pieces are
noted, not fatal. Figures are reused when ``figures/index.json`` was made from the current
``results.parquet`` (same SHA-256), otherwise redrawn (:func:`write_plots`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from gvgap import figures as F
from gvgap import stats
from gvgap.errors import UserError
from gvgap.report_doc import Doc

RESULTS, VERDICTS, VERIFY, MANIFEST = (
    "results.parquet",
    "verdicts.json",
    "verify.json",
    "manifest.json",
)
FIGURES, INDEX = "figures", "index.json"
#: Metrics summarised per pipeline (DESIGN §5 shared names), in this order.
MAIN_METRICS = ("J_norm", "J", "reward", "kl_ref", "kl_opt", "win_rate")
#: At most this many bare metrics are summarised for an experiment without pipelines.
MAX_BARE_METRICS = 12
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
        raise UserError(f"{str(path)!r} lacks columns {missing} (DESIGN §5 layout)")
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


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


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
    paths, index = F.write_figures(
        experiment_frames(df),
        out,
        modules=_modules(),
        extra_meta={"results_sha256": digest},
        pool=pool,
    )
    _atomic_text(out / INDEX, json.dumps({"results_sha256": digest, "experiments": index}))
    return [*paths, out / INDEX]


def _current_index(root: Path) -> dict[str, Any] | None:
    index, _ = read_json(root / FIGURES / INDEX)
    ok = isinstance(index, dict) and index.get("results_sha256") == _sha256(root / RESULTS)
    return index if ok else None


# ---------------------------------------------------------------- report sections


def _fmt(x: Any) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{x:.3g}" if np.isfinite(x) else "–"
    return "–" if x is None else str(x)


def _ci(mean: Any, lo: Any, hi: Any) -> str:
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


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
    scalars = [[k, _fmt(v)] for k, v in manifest.items() if isinstance(v, (str, int, float, bool))]
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
        [_fmt(r.get(k)) for k in keys] + ["PASS" if r.get("passed") else "FAIL"] for r in records
    ]
    doc.table(["item", "check", "instances", "max error", "tolerance", "result"], rows)
    n_pass = sum(r[-1] == "PASS" for r in rows)
    doc.para(f"{n_pass} of {len(rows)} checks pass.")


def verdict_section(doc: Doc) -> dict[str, Any]:
    """The verdict table from ``verdicts.json``; returns the records (``{}`` if none)."""
    doc.heading(2, "Verdicts")
    verdicts, why = read_json(doc.root / VERDICTS)
    if not isinstance(verdicts, dict) or not verdicts:
        doc.note(f"Skipped: {why or 'verdicts.json holds no verdicts'}.")
        return {}
    verdicts = {k: v if isinstance(v, dict) else {} for k, v in verdicts.items()}
    robust = any("robust" in v for v in verdicts.values())
    header = [
        "id",
        "hypothesis (or claim)",
        "verdict on the hypothesis",
        "prediction held",
        "effect",
        "95% CI",
        "positive control [95% CI]",
        "n_runs",
        *(["robust"] * robust),
    ]
    rows = [
        [
            eid,
            v.get("hypothesis") or v.get("claim", ""),
            v.get("verdict", "?"),
            _fmt(v.get("prediction_held")),
            _fmt(v.get("effect")),
            f"[{_fmt(v.get('ci_low'))}, {_fmt(v.get('ci_high'))}]",
            _control(v.get("positive_control")),
            _fmt(v.get("n_runs")),
            *([_fmt(v.get("robust"))] if robust else []),
        ]
        for eid, v in verdicts.items()
    ]
    doc.table(header, rows)
    doc.para(
        "Each verdict is on the hypothesis (supported / against / inconclusive), not on the "
        "code: a hypothesis the paper argues against is expected to come out *against*. "
        "“Prediction held” says whether the test's outcome is the one the hypothesis "
        "predicts; the positive control is the effect that shows the test can detect what it "
        "looks for (a control whose CI includes 0 makes the verdict inconclusive)."
    )
    return verdicts


def _control(pc: Any) -> str:
    """``effect [lo, hi]`` of a ``positive_control`` record, ``–`` when absent."""
    if not isinstance(pc, dict):
        return "–"
    return _ci(pc.get("effect"), pc.get("ci_low"), pc.get("ci_high"))


def summary_table(df: pd.DataFrame, rng: np.random.Generator) -> tuple[list[str], list[list]]:
    """Mean [95% CI] pooled over all settings and seeds (:func:`gvgap.stats.summarize`):
    pipelines × main metrics, or, without pipelines, one row per bare metric with min/max."""
    piped = df[df["pipeline"] != ""]
    metrics = [m for m in MAIN_METRICS if m in set(piped["metric"])]
    if metrics:
        t = stats.summarize(piped[piped["metric"].isin(metrics)], ["pipeline", "metric"], rng=rng)
        cell = {(r.pipeline, r.metric): _ci(r.mean, r.ci_low, r.ci_high) for r in t.itertuples()}
        n = t.groupby("pipeline")["n"].max()
        pipes = list(dict.fromkeys(piped["pipeline"]))
        rows = [[p, *(cell.get((p, m), "–") for m in metrics), _fmt(n.get(p))] for p in pipes]
        return ["pipeline", *metrics, "n runs"], rows
    bare = df[df["pipeline"] == ""]
    names = list(dict.fromkeys(bare["metric"]))[:MAX_BARE_METRICS]
    t = stats.summarize(bare[bare["metric"].isin(names)], ["metric"], rng=rng)
    ext = bare.groupby("metric")["value"].agg(["min", "max"])
    rows = [
        [
            r.metric,
            _ci(r.mean, r.ci_low, r.ci_high),
            _fmt(ext.at[r.metric, "min"]),
            _fmt(ext.at[r.metric, "max"]),
            _fmt(r.n),
        ]
        for r in t.itertuples()
    ]
    return ["metric", "mean [95% CI]", "min", "max", "n"], rows


def experiment_section(
    doc: Doc, eid: str, df: pd.DataFrame, verdict: dict | None, figs: list[dict]
) -> None:
    """Claim, design note, verdict, figures and summary table of one experiment."""
    module = _modules().get(eid)
    doc.heading(3, eid)
    claim = getattr(module, "CLAIM", None) or (verdict or {}).get("claim")
    doc.para(f"**Claim.** {claim}" if claim else "No claim recorded.")
    if getattr(module, "NOTES", None):
        doc.para(f"paper_notes.md section: {module.NOTES}.")
    note = str(getattr(module, "DESIGN_NOTE", None) or "").strip()
    for i, part in enumerate(p for p in note.split("\n\n") if p.strip()):
        doc.para(("**Design.** " if i == 0 else "") + " ".join(part.split()))
    hypothesis = getattr(module, "HYPOTHESIS", None) or (verdict or {}).get("hypothesis")
    if hypothesis:
        doc.para(f"**Hypothesis.** {hypothesis}")
    if getattr(module, "PREDICTION", None):
        doc.para(f"**Prediction (if the hypothesis holds).** {module.PREDICTION}")
    if verdict:
        held = verdict.get("prediction_held")
        eff = _ci(verdict.get("effect"), verdict.get("ci_low"), verdict.get("ci_high"))
        doc.para(
            f"**Verdict on the hypothesis: {verdict.get('verdict', '?')}**"
            + ("" if held is None else f" (prediction held: {_fmt(held)})")
            + f"; effect {eff}"
            + (
                f"; positive control {_control(verdict['positive_control'])}"
                if isinstance(verdict.get("positive_control"), dict)
                else ""
            )
            + f"; {_fmt(verdict.get('n_runs'))} runs. {verdict.get('detail', '')}"
        )
    for entry in figs:
        if "error" in entry:
            doc.note(f"Figure {entry['name']} failed: {entry['error']}")
        else:
            doc.figure(doc.root / FIGURES / f"{entry['name']}.png", entry.get("caption", ""))
    header, rows = summary_table(df, np.random.default_rng(0))
    if rows:
        doc.para("Summary, pooled over all settings and seeds (mean [95% bootstrap CI]):")
        doc.table(header, rows)


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
    doc.para(f"Generated {now} by gvgap {__version__} (git {F.git_sha() or 'unknown'}).")
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
    _atomic_text(md, doc.to_markdown())
    _atomic_text(page, doc.to_html(title))
    return [md, page]
