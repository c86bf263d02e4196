"""Sweep specifications: TOML files or an experiment's SETTINGS, expanded into runs (docs/design.md
§5).

A sweep file::

    [sweep]
    experiment = "c1_gibbs"   # an id from gvgap.experiments.registry
    seeds = 5                 # seeds 0..4 (default 1)
    seed_start = 0            # optional: seeds seed_start .. seed_start + seeds - 1 (a block)
    instance_seed = 7         # optional: fix the problem instance across seeds
    [fixed]                   # overrides of any Config field
    n_prompts = 2
    [grid]                    # values per Config field; the runs are the cartesian product
    vocab = [2, 3]
    horizon = [1, 2, 4]

Every configuration is built and validated (``Config.validate()``) while loading, so a bad
value is reported before anything runs or is written.

Run identity and randomness (docs/design.md §3). A run is (experiment, full config, seed,
instance_seed); its id hashes the canonical JSON of these four, so it is the same on any
machine and executor. Its generators are derived with :class:`numpy.random.SeedSequence`:

- ``rng`` (data, learners) from ``[seed, H(experiment, config)]``: every grid point and seed
  gets its own stream;
- ``instance_rng`` (r*, features, π_ref) from ``[instance_seed, INSTANCE_STREAM]`` only, so all
  the pipelines and grid points that share an instance seed see the same problem draws.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gvgap.errors import INT64_MAX, UserError, check_int, did_you_mean, short_repr

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

#: Keys allowed in the ``[sweep]`` table.
SWEEP_KEYS = ("experiment", "seeds", "seed_start", "instance_seed", "description")
#: Keys of a SETTINGS-shaped dict.
DATA_KEYS = ("seeds", "seed_start", "instance_seed", "fixed", "grid")
#: Top-level tables allowed in a sweep file.
TABLES = ("sweep", "fixed", "grid")
#: Most seeds in one sweep (seeds 0..MAX_SEEDS-1).
MAX_SEEDS = 10_000
#: Largest seed / instance seed: results.parquet stores them as int64.
MAX_SEED = INT64_MAX
#: Most grid cells (configurations) in one sweep, counted before the grid is expanded.
MAX_CELLS = 10_000
#: Most runs (cells × seeds) in one sweep.
MAX_RUNS = 200_000
#: Largest sweep file read (bytes): sweep files are a few lines; this bounds what a wrong
#: path (a huge log, a disk image) can make the loader read.
MAX_SWEEP_FILE_BYTES = 1 << 20
#: Second entropy word of every instance stream (keeps it disjoint from the run streams).
INSTANCE_STREAM = 0x1A57A9CE


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: the byte string that run ids hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_record(cfg: Any) -> dict[str, Any]:
    """A Config as a JSON-typed dict (what run records and run ids hold)."""
    return json.loads(canonical_json(dataclasses.asdict(cfg)))


def digest(obj: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


@dataclass(frozen=True)
class RunSpec:
    """One run: an experiment, a full validated config, and its two seeds.

    Attributes:
        experiment: experiment id.
        config: every Config field by name (JSON types), as validated.
        seed: data / learner seed.
        instance_seed: problem-instance seed.
    """

    experiment: str
    config: dict[str, Any]
    seed: int
    instance_seed: int

    @property
    def run_id(self) -> str:
        """Stable id: 16 hex digits of SHA-256 over the canonical JSON of the run."""
        return digest(self.key())[:16]

    def key(self) -> dict[str, Any]:
        """The identifying record of the run (what :attr:`run_id` hashes)."""
        return {
            "experiment": self.experiment,
            "config": self.config,
            "seed": self.seed,
            "instance_seed": self.instance_seed,
        }

    def config_entropy(self) -> int:
        """A 128-bit integer from (experiment, config): the second word of the run stream."""
        return int(digest({"experiment": self.experiment, "config": self.config})[:32], 16)

    def rngs(self) -> tuple[Any, Any]:
        """``(rng, instance_rng)`` for this run, derived with SeedSequence (module docstring)."""
        import numpy as np

        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.config_entropy()]))
        inst = np.random.default_rng(np.random.SeedSequence([self.instance_seed, INSTANCE_STREAM]))
        return rng, inst


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the grid as data plus the runs it expands to.

    Attributes:
        experiment: experiment id.
        seeds: number of seeds (seeds ``seed_start .. seed_start + seeds - 1``).
        fixed: overrides applied to every run.
        grid: values per field; runs are the cartesian product in the given field order.
        instance_seed: fixed instance seed, or None for ``instance_seed = seed``.
        source: where the spec came from (a file path or ``<id>:SETTINGS``).
        configs: the validated full configs, in grid order.
        seed_start: first seed (a block of instance seeds never used elsewhere, e.g. the
            confirmatory block of an experiment's verdict).
    """

    experiment: str
    seeds: int
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    instance_seed: int | None
    source: str
    configs: tuple[dict[str, Any], ...] = field(repr=False)
    seed_start: int = 0

    def runs(self) -> list[RunSpec]:
        """Every run, config-major then seed, without duplicates."""
        out: dict[str, RunSpec] = {}
        for cfg in self.configs:
            for seed in range(self.seed_start, self.seed_start + self.seeds):
                inst = seed if self.instance_seed is None else self.instance_seed
                run = RunSpec(self.experiment, cfg, seed, inst)
                out.setdefault(run.run_id, run)
        return list(out.values())

    def to_json(self) -> dict[str, Any]:
        """The spec as written to the manifest (``seed_start`` only when not 0)."""
        out = {
            "experiment": self.experiment,
            "seeds": self.seeds,
            "instance_seed": self.instance_seed,
            "fixed": self.fixed,
            "grid": self.grid,
            "source": self.source,
        }
        return out | ({"seed_start": self.seed_start} if self.seed_start else {})


# ---------------------------------------------------------------- validation helpers


def check_size(where: str, n_cells: int, seeds: int) -> None:
    """Refuse more than :data:`MAX_CELLS` grid cells or :data:`MAX_RUNS` runs (one line)."""
    if n_cells > MAX_CELLS:
        raise UserError(
            f"{where} [grid] has {n_cells} cells (the product of its list lengths) > the limit "
            f"{MAX_CELLS}; split the sweep into several files"
        )
    if n_cells * seeds > MAX_RUNS:
        raise UserError(
            f"{where} seeds: {n_cells} cells x {seeds} seeds = {n_cells * seeds} runs > the "
            f"limit {MAX_RUNS}; use fewer seeds or cells"
        )


def _experiment_module(eid: Any, where: str) -> ModuleType:
    from gvgap.experiments.registry import get_experiment

    prefix = f"{where} " if where else ""
    if not isinstance(eid, str) or not eid:
        raise UserError(f"{prefix}experiment must be an experiment id string, got {eid!r}")
    try:
        return get_experiment(eid)
    except UserError as exc:
        raise UserError(f"{prefix}{exc}") from None


def _check_table(where: str, table: Any, kind: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise UserError(
            f"{where} [{kind}] must be a table of field = value, got {short_repr(table)}"
        )
    return table


def _check_grid(where: str, grid: dict[str, Any], fixed: dict[str, Any]) -> None:
    for name, values in grid.items():
        if name in fixed:
            raise UserError(f"{where} field {name!r} is in both [fixed] and [grid]; keep one")
        if not isinstance(values, list):
            raise UserError(
                f"{where} [grid] {name} must be a list of values, got {short_repr(values)}"
            )
        if not values:
            raise UserError(f"{where} [grid] {name} is an empty list; give at least one value")


def _coerced(module: ModuleType, where: str, kind: str, name: str, value: Any) -> Any:
    from gvgap.experiments.base import coerce_value

    try:
        return coerce_value(module.Config, name, value)
    except UserError as exc:
        raise UserError(f"{where} [{kind}] {exc}") from None


def _expand(module: ModuleType, where: str, fixed: dict, grid: dict) -> tuple[dict, ...]:
    """Validated full configs of the cartesian product, in grid order."""
    from gvgap.experiments.base import make_config

    fixed = {k: _coerced(module, where, "fixed", k, v) for k, v in fixed.items()}
    axes = {}
    for name, values in grid.items():
        vals = [_coerced(module, where, "grid", name, v) for v in values]
        if len({canonical_json(v) for v in vals}) < len(vals):
            raise UserError(f"{where} [grid] {name} lists a value twice: {values!r}")
        axes[name] = vals
    configs = []
    for combo in itertools.product(*axes.values()):
        overrides = {**fixed, **dict(zip(axes, combo))}
        try:
            cfg = make_config(module.Config, overrides)
        except UserError as exc:
            raise UserError(f"{where} {exc} (setting {canonical_json(overrides)})") from None
        configs.append(config_record(cfg))
    return tuple(configs)


def spec_from_data(eid: Any, data: dict[str, Any], source: str) -> SweepSpec:
    """Validate a sweep given as data (``seeds``, ``instance_seed``, ``fixed``, ``grid``).

    Args:
        eid: experiment id.
        data: a SETTINGS-shaped dict.
        source: where the data came from, used in error messages.

    Raises:
        UserError: naming the offending field.
    """
    where = f"{source}:"
    module = _experiment_module(eid, where)
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        hint = did_you_mean(unknown[0], DATA_KEYS)
        raise UserError(
            f"{where} unknown key {unknown[0]!r}{hint}; allowed: {', '.join(DATA_KEYS)}"
        )
    seeds = check_int(f"{where} seeds", data.get("seeds", 1), 1, MAX_SEEDS)
    start = check_int(f"{where} seed_start", data.get("seed_start", 0), 0, MAX_SEED - seeds)
    inst = data.get("instance_seed")
    inst = None if inst is None else check_int(f"{where} instance_seed", inst, 0)
    fixed = _check_table(where, data.get("fixed", {}), "fixed")
    grid = _check_table(where, data.get("grid", {}), "grid")
    _check_grid(where, grid, fixed)
    check_size(where, math.prod(len(v) for v in grid.values()), seeds)
    configs = _expand(module, where, fixed, grid)
    grid = {k: [json.loads(canonical_json(v)) for v in vs] for k, vs in grid.items()}
    return SweepSpec(eid, seeds, dict(fixed), grid, inst, source, configs, start)


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed sweep file. Only a regular file of at most ``MAX_SWEEP_FILE_BYTES`` is read:
    a device, FIFO or socket (``/dev/zero``: endless; a FIFO: blocks) is refused before it is
    opened, and the size is checked again on the open file."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise UserError(f"sweep file {path}: not a regular file (a device, FIFO or directory)")
        with path.open("rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # replaced since the check
                raise UserError(f"sweep file {path}: not a regular file")
            data = fh.read(MAX_SWEEP_FILE_BYTES + 1)
        if len(data) > MAX_SWEEP_FILE_BYTES:
            raise UserError(
                f"sweep file {path}: larger than {MAX_SWEEP_FILE_BYTES} bytes; not a sweep file"
            )
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"sweep file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: invalid TOML (not UTF-8 text): {exc}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid sweep file: values nested too deeply") from None
    except OSError as exc:
        raise UserError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None


def spec_from_toml(path: str | Path) -> SweepSpec:
    """Load and validate a sweep TOML file.

    Raises:
        UserError: unreadable file, bad TOML, unknown table / key / field, bad value.
    """
    path = Path(path)
    doc = _read_toml(path)
    unknown = sorted(set(doc) - set(TABLES))
    if unknown:
        hint = did_you_mean(unknown[0], TABLES)
        raise UserError(f"{path}: unknown table {unknown[0]!r}{hint}; allowed: {', '.join(TABLES)}")
    sweep = _check_table(f"{path}:", doc.get("sweep"), "sweep") if "sweep" in doc else {}
    bad = sorted(set(sweep) - set(SWEEP_KEYS))
    if bad:
        hint = did_you_mean(bad[0], SWEEP_KEYS)
        raise UserError(
            f"{path}: unknown [sweep] key {bad[0]!r}{hint}; allowed: {', '.join(SWEEP_KEYS)}"
        )
    if "experiment" not in sweep:
        raise UserError(f'{path}: [sweep] experiment is missing; add experiment = "<id>"')
    data = {k: v for k, v in sweep.items() if k in ("seeds", "seed_start", "instance_seed")}
    data.update(fixed=doc.get("fixed", {}), grid=doc.get("grid", {}))
    return spec_from_data(sweep["experiment"], data, str(path))


def _is_file_target(target: str) -> bool:
    return target.endswith(".toml") or "/" in target or Path(target).is_file()


def load_spec(target: str, seeds: int | None = None, quick: bool = False) -> SweepSpec:
    """A sweep from an experiment id (its ``SETTINGS``, or ``QUICK``) or a ``.toml`` path.

    Args:
        target: experiment id or path to a sweep file.
        seeds: if given, replaces the number of seeds.
        quick: use the experiment's ``QUICK`` grid (experiment ids only; refused for files).

    Raises:
        UserError: anything invalid, naming the field; nothing has run or been written.
    """
    if seeds is not None:
        check_int("--seeds", seeds, 1, MAX_SEEDS)
    if _is_file_target(str(target)):
        if quick:
            raise UserError(
                f"--quick applies to experiment ids only (their QUICK grid), not to the sweep "
                f"file {target}; drop --quick or give an experiment id"
            )
        spec = spec_from_toml(target)
    else:
        module = _experiment_module(target, "")
        name = "QUICK" if quick and hasattr(module, "QUICK") else "SETTINGS"
        if not hasattr(module, name):
            raise UserError(f"experiment {target!r} defines no {name}; pass a sweep .toml file")
        spec = spec_from_data(target, getattr(module, name), f"{target}:{name}")
    if seeds is not None:
        check_size(f"{spec.source}:", len(spec.configs), seeds)
        spec = dataclasses.replace(spec, seeds=seeds)
    return spec
