"""Sweeps: grid expansion and run ids (spec), executors (in-process and process pool:
executors; Ray: ray_executor), the result store with atomic per-run files and resume (store),
and the driver (runner, which picks the executor)."""

from gvgap.sweep.runner import run_single, run_sweep
from gvgap.sweep.spec import RunSpec, SweepSpec, load_spec
from gvgap.sweep.store import RunStore

__all__ = ["RunSpec", "RunStore", "SweepSpec", "load_spec", "run_single", "run_sweep"]
