"""The result store of a sweep directory (DESIGN §5).

Layout of ``DIR``::

    manifest.json      gvgap version, git SHA, the specs run here, every planned run
    runs/<run_id>.json one finished run (config, seeds, metrics), written atomically
    results.parquet    the tidy table of every finished run, rebuilt from runs/

Atomicity: every file is written to a hidden temporary file in the same directory and moved
into place with :func:`os.replace`, so a reader (or a resumed sweep) sees either the old file
or the new one, never a part. A crash or SIGKILL loses at most the runs in flight; leftover
temporary files are removed and unreadable run files are re-run on the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gvgap.errors import UserError
from gvgap.provenance import git_sha
from gvgap.sweep.spec import RunSpec, SweepSpec, canonical_json

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.json"
RESULTS = "results.parquet"
RUNS = "runs"
LOCK = ".lock"
#: Columns of results.parquet around the Config fields.
ID_COLUMNS = ("run_id", "experiment")
SEED_COLUMNS = ("seed", "instance_seed")
VALUE_COLUMNS = ("pipeline", "metric", "value")


def split_metric(key: str) -> tuple[str, str]:
    """``"dpo/J"`` → ``("dpo", "J")``; a bare ``"J"`` → ``("", "J")`` (split on the first /)."""
    pipeline, sep, metric = key.partition("/")
    return (pipeline, metric) if sep else ("", key)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory + os.replace."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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

    def check(self, spec: SweepSpec) -> None:
        """Make sure ``spec`` may write here, creating the directory; writes nothing else.

        Raises:
            UserError: naming --out, when the directory cannot be created or written, holds
                a sweep of another experiment, or holds results without a manifest.
        """
        manifest = self.read_manifest() if self.root.is_dir() else None
        if manifest is not None and manifest.get("experiment") != spec.experiment:
            raise UserError(
                f"--out {self.root} holds a sweep of {manifest.get('experiment')!r}, not "
                f"{spec.experiment!r}; refusing to mix them (choose another --out)"
            )
        if manifest is None and ((self.root / RESULTS).exists() or self.runs_dir.exists()):
            raise UserError(
                f"--out {self.root} holds results but no {MANIFEST}; refusing to overwrite"
            )
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.runs_dir / ".write-probe", b"")
            (self.runs_dir / ".write-probe").unlink()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UserError(f"--out {self.root}: cannot write there ({reason})") from None

    def write_manifest(self, spec: SweepSpec, runs: list[RunSpec]) -> dict[str, Any]:
        """Merge ``spec`` and its runs into the manifest (a union with earlier sweeps here)."""
        old = self.read_manifest() or {}
        prov = provenance()
        entry = {"spec": spec.to_json(), **prov, "started": _now()}
        specs = list(old.get("specs", []))
        if all(canonical_json(s["spec"]) != canonical_json(entry["spec"]) for s in specs):
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

    def _read_run(self, path: Path) -> dict[str, Any] | None:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(rec, dict) and rec.get("run_id") == path.stem and "metrics" in rec
        return rec if ok else None

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

    def records(self) -> list[dict[str, Any]]:
        """Every readable finished run, in file-name order."""
        if not self.runs_dir.is_dir():
            return []
        found = (self._read_run(p) for p in sorted(self.runs_dir.glob("*.json")))
        return [r for r in found if r is not None]

    def done_ids(self) -> set[str]:
        """Ids of the finished runs (unreadable run files do not count)."""
        return {r["run_id"] for r in self.records()}

    def write_run(self, record: dict[str, Any]) -> None:
        """Store one finished run, atomically."""
        path = self.runs_dir / f"{record['run_id']}.json"
        atomic_write(path, json.dumps(record, sort_keys=True).encode())

    # ------------------------------------------------------------ results

    def consolidate(self, experiment: str) -> pd.DataFrame:
        """Rebuild ``results.parquet`` from every finished run of ``experiment``; return it."""
        from gvgap.experiments.registry import get_experiment

        fields = [f.name for f in dataclasses.fields(get_experiment(experiment).Config)]
        records = [r for r in self.records() if r.get("experiment") == experiment]
        df = tidy_frame(records, fields)
        tmp = self.root / f".{RESULTS}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            df.to_parquet(tmp, index=False)
            os.replace(tmp, self.root / RESULTS)
        finally:
            tmp.unlink(missing_ok=True)
        return df
