"""The result store of a sweep directory (docs/design.md §5).

Layout of ``DIR``::

    manifest.json      gvgap version, git SHA, the specs run here, every planned run
    runs/<run_id>.json one finished run (config, seeds, metrics), written atomically
    results.parquet    the tidy table of every finished run, rebuilt from runs/

Atomicity: every file is written by :func:`gvgap.atomic.atomic_write` (a hidden temporary file
in the same directory, moved into place with :func:`os.replace`), so a reader (or a resumed
sweep) sees either the old file or the new one, never a part. A crash, SIGKILL or full disk
loses at most the runs in flight; leftover temporary files are removed on the next start.

Integrity: each run file carries ``sha256``, a hash of its canonical JSON (experiment, config,
seeds, metrics), and its name is the run id that (experiment, config, seeds) hash to. On
resume a file that fails either check (edited, truncated, renamed, another experiment) is
reported on one line and its run is re-run (:meth:`RunStore.scan`).

One spec per directory: a sweep whose spec differs from the ones recorded in the manifest is
refused unless ``append`` is given; the manifest then lists every spec run there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gvgap.atomic import atomic_write
from gvgap.errors import UserError
from gvgap.provenance import git_sha
from gvgap.sweep.spec import RunSpec, SweepSpec, canonical_json, digest

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.json"
RESULTS = "results.parquet"
RUNS = "runs"
LOCK = ".lock"
#: Keys every run record has.
RECORD_KEYS = ("run_id", "experiment", "config", "seed", "instance_seed", "metrics")
#: Columns of results.parquet around the Config fields.
ID_COLUMNS = ("run_id", "experiment")
SEED_COLUMNS = ("seed", "instance_seed")
VALUE_COLUMNS = ("pipeline", "metric", "value")


def split_metric(key: str) -> tuple[str, str]:
    """``"dpo/J"`` → ``("dpo", "J")``; a bare ``"J"`` → ``("", "J")`` (split on the first /)."""
    pipeline, sep, metric = key.partition("/")
    return (pipeline, metric) if sep else ("", key)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def provenance() -> dict[str, str | None]:
    """gvgap version and the git SHA of the source tree (None when not in a git checkout)."""
    try:
        version = importlib.metadata.version("gvgap")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"gvgap_version": version, "git_sha": git_sha()}


def tidy_frame(records: list[dict[str, Any]], fields: list[str]) -> pd.DataFrame:
    """The tidy table: one row per run and metric, sorted deterministically.

    Args:
        records: run records (see :func:`gvgap.sweep.executors.execute_chunk`).
        fields: Config field names in column order (keys missing from it are appended sorted).

    Returns:
        columns ``run_id, experiment, <fields>, seed, instance_seed, pipeline, metric, value``.
    """
    import pandas as pd

    extra = sorted({k for r in records for k in r["config"]} - set(fields))
    fields = [*fields, *extra]
    columns = [*ID_COLUMNS, *fields, *SEED_COLUMNS, *VALUE_COLUMNS]
    rows = []
    for rec in records:
        base = [rec["run_id"], rec["experiment"], *(rec["config"].get(f) for f in fields)]
        base += [rec["seed"], rec["instance_seed"]]
        for key, value in sorted(rec["metrics"].items()):
            rows.append([*base, *split_metric(key), float(value)])
    df = pd.DataFrame(rows, columns=columns)
    df["value"] = df["value"].astype("float64")
    order = [*fields, *SEED_COLUMNS, "run_id", "pipeline", "metric"]
    return df.sort_values(order, kind="mergesort", ignore_index=True)


def spec_key(spec: dict[str, Any]) -> str:
    """What makes two specs the same sweep: everything but where they were read from."""
    return canonical_json({k: v for k, v in spec.items() if k != "source"})


def describe(spec: dict[str, Any]) -> str:
    """A spec on one short line: seeds, fixed values and grid axes."""
    parts = [f"seeds={spec.get('seeds')}"]
    parts += [f"{k}={v}" for k, v in (spec.get("fixed") or {}).items()]
    parts += [f"{k} in {v}" for k, v in (spec.get("grid") or {}).items()]
    text = ", ".join(parts)
    return text if len(text) <= 160 else text[:157] + "..."


def os_reason(exc: OSError) -> str:
    """An OSError as a few words (its strerror, else its type)."""
    return exc.strerror or type(exc).__name__


def record_problem(rec: Any, stem: str) -> str | None:
    """None for a valid run record stored as ``<stem>.json``, else what is wrong with it.

    Valid: the :data:`RECORD_KEYS`, numeric metrics, a file name equal to the run id that
    (experiment, config, seed, instance_seed) hash to, and a ``sha256`` equal to the hash of
    everything else in the record (a file without one is corrupt: deleting the hash must not
    let an edited value through, issue 19).
    """
    if not isinstance(rec, dict) or any(k not in rec for k in RECORD_KEYS):
        return "not a run record (keys missing)"
    seeds = (rec["seed"], rec["instance_seed"])
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in seeds):
        return "its seed or instance_seed is not an integer in [0, 2**63 - 1]"
    metrics = rec["metrics"]
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        return "its metrics are not numbers"
    try:
        run = RunSpec(rec["experiment"], rec["config"], rec["seed"], rec["instance_seed"])
        ok = run.run_id == stem == rec["run_id"]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        return "its experiment, config or seeds do not match its run id (edited or renamed?)"
    if "sha256" not in rec:
        return "it has no sha256 (edited by hand, or written before checksums)"
    body = {k: v for k, v in rec.items() if k != "sha256"}
    if rec["sha256"] != digest(body):
        return "its content does not match its sha256 (edited by hand?)"
    return None


class RunStore:
    """A sweep directory: manifest, one file per finished run, consolidated results."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.root = Path(out_dir)
        self.runs_dir = self.root / RUNS

    # ------------------------------------------------------------ opening

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, None when there is none.

        Raises:
            UserError: the manifest exists but cannot be read as JSON.
        """
        path = self.root / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UserError(f"--out {self.root}: cannot read {MANIFEST}: {exc}") from None

    def check(self, spec: SweepSpec, append: bool = False) -> None:
        """Make sure ``spec`` may write here; reads only (:meth:`prepare` creates the dirs).

        A directory without a manifest is accepted when it holds no run files (a start that
        was interrupted before its first run) or only valid run files of this experiment.

        Raises:
            UserError: naming --out, when the directory holds a sweep of another experiment,
                a different spec of this one (without ``append``), or results not made here.
        """
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root}: exists and is not a directory")
        manifest = self.read_manifest() if self.root.is_dir() else None
        if manifest is None:
            self._check_orphans(spec)
            return
        if not isinstance(manifest, dict) or manifest.get("experiment") != spec.experiment:
            other = manifest.get("experiment") if isinstance(manifest, dict) else None
            raise UserError(
                f"--out {self.root} holds a sweep of {other!r}, not "
                f"{spec.experiment!r}; refusing to mix them (choose another --out)"
            )
        known = [
            spec_key(e.get("spec", {})) for e in manifest.get("specs", []) if isinstance(e, dict)
        ]
        if known and spec_key(spec.to_json()) not in known and not append:
            raise UserError(
                f"--out {self.root} holds a different sweep of {spec.experiment} "
                f"({describe(manifest['specs'][-1].get('spec', {}))}); to add this one "
                f"({describe(spec.to_json())}) pass --append (gvgap sweep), else choose another "
                "--out"
            )

    def _check_orphans(self, spec: SweepSpec) -> None:
        """No manifest: refuse unless the run files (if any) are valid runs of ``spec``'s
        experiment and there is no results.parquet without them."""
        records, problems = self.scan()
        foreign = [r for r in records if r["experiment"] != spec.experiment]
        if foreign or problems or ((self.root / RESULTS).exists() and not records):
            raise UserError(
                f"--out {self.root} holds results but no {MANIFEST} (not a gvgap sweep of "
                f"{spec.experiment}); refusing to overwrite (choose another --out)"
            )

    def footprint(self) -> tuple[Path | None, set[str] | None]:
        """What :meth:`prepare` and the sweep may add here: the outermost missing directory on
        the way to ``DIR`` (None when ``DIR`` exists) and the names already in ``DIR``."""
        missing = None
        for path in [self.root, *self.root.parents]:
            if path.exists():
                break
            missing = path
        try:
            names = {p.name for p in self.root.iterdir()} if missing is None else set()
        except OSError:  # unreadable: prepare() will say so; nothing will be undone
            names = None
        return missing, names

    def discard_if_unused(self, footprint: tuple[Path | None, set[str] | None]) -> None:
        """Undo what a sweep added when it stored no run (refused after :meth:`prepare`, e.g.
        Ray would not start, or interrupted first): its manifest, lock and empty ``runs/``,
        then the directories it created (the ``footprint`` taken before :meth:`prepare`).
        Whatever was there before, or a directory holding a run now, is left as it was."""
        created, before = footprint
        if before is None or any(self.runs_dir.glob("*.json")):
            return
        with contextlib.suppress(OSError):
            for name in (MANIFEST, LOCK, RESULTS):
                if name not in before:
                    (self.root / name).unlink(missing_ok=True)
            if RUNS not in before and self.runs_dir.is_dir():
                for tmp in self.runs_dir.glob(".*.tmp"):
                    tmp.unlink()
                self.runs_dir.rmdir()
            if created is None:
                return
            for path in [self.root, *self.root.parents]:
                path.rmdir()  # OSError (not empty) stops the walk
                if path == created:
                    break

    def prepare(self) -> None:
        """Create ``DIR/runs`` and probe that it is writable.

        Raises:
            UserError: naming --out, when it cannot be created or written.
        """
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            probe = self.runs_dir / ".write-probe"
            atomic_write(probe, b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"--out {self.root}: cannot write there ({os_reason(exc)})") from None

    def write_manifest(self, spec: SweepSpec, runs: list[RunSpec]) -> dict[str, Any]:
        """Merge ``spec`` and its runs into the manifest (a union with earlier sweeps here)."""
        old = self.read_manifest() or {}
        prov = provenance()
        entry = {"spec": spec.to_json(), **prov, "started": _now()}
        specs = list(old.get("specs", []))
        if all(spec_key(s.get("spec", {})) != spec_key(entry["spec"]) for s in specs):
            specs.append(entry)
        planned = dict(old.get("runs", {}))
        planned.update({r.run_id: r.key() for r in runs})
        manifest = {
            "format": 1,
            "experiment": spec.experiment,
            **prov,
            "created": old.get("created", _now()),
            "updated": _now(),
            "specs": specs,
            "n_runs": len(planned),
            "runs": planned,
        }
        atomic_write(self.root / MANIFEST, json.dumps(manifest, indent=1).encode())
        return manifest

    # ------------------------------------------------------------ runs

    def _read_run(self, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)`` for a valid run file, else ``(None, what is wrong)``."""
        try:
            rec = json.loads(path.read_text())
        except OSError as exc:
            return None, f"unreadable ({os_reason(exc)})"
        except (ValueError, RecursionError):
            return None, "not valid JSON (truncated or corrupt)"
        return (rec, None) if (why := record_problem(rec, path.stem)) is None else (None, why)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for one sweep; removes temporary files a crash left behind.

        The lock (``flock`` on ``DIR/.lock``, POSIX) dies with its process, so a killed
        sweep never blocks the next one.

        Raises:
            UserError: another sweep is running in this directory.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            fcntl = None
        with (self.root / LOCK).open("a") as fh:
            if fcntl is not None:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise UserError(
                        f"--out {self.root}: another sweep is running there; wait for it"
                    ) from None
            for tmp in [*self.root.glob(".*.tmp"), *self.runs_dir.glob(".*.tmp")]:
                tmp.unlink(missing_ok=True)
            yield

    def scan(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Every valid run record (file-name order) and ``{run_id: problem}`` for the others."""
        if not self.runs_dir.is_dir():
            return [], {}
        records, problems = [], {}
        for path in sorted(self.runs_dir.glob("*.json")):
            rec, why = self._read_run(path)
            if rec is None:
                problems[path.stem] = why
            else:
                records.append(rec)
        return records, problems

    def records(self) -> list[dict[str, Any]]:
        """Every valid finished run, in file-name order."""
        return self.scan()[0]

    def write_run(self, record: dict[str, Any]) -> None:
        """Store one finished run with its ``sha256``, atomically."""
        body = {k: v for k, v in record.items() if k != "sha256"}
        path = self.runs_dir / f"{record['run_id']}.json"
        atomic_write(path, json.dumps({**body, "sha256": digest(body)}, sort_keys=True).encode())

    # ------------------------------------------------------------ results

    def consolidate(self, experiment: str) -> pd.DataFrame:
        """Rebuild ``results.parquet`` from every finished run of ``experiment``; return it."""
        from gvgap.experiments.registry import get_experiment

        fields = [f.name for f in dataclasses.fields(get_experiment(experiment).Config)]
        records = [r for r in self.records() if r.get("experiment") == experiment]
        df = tidy_frame(records, fields)
        atomic_write(self.root / RESULTS, lambda tmp: df.to_parquet(tmp, index=False))
        return df
