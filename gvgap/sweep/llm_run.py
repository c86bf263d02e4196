"""``gvgap llm run FILE.toml --out DIR [--workers N]`` (docs/design.md §4): the ``llm``
experiment's sweep with every stage checkpointed — in this process, or N runs side by side on a
process pool (CPU; each run on one thread, so the numbers do not depend on N or the core
count) — then its verdicts, figures and report.

The file is an ordinary sweep file (``[sweep] experiment = "llm"``, ``[fixed]``, ``[grid]``;
:mod:`gvgap.sweep.spec`), validated whole before anything is written. The directory is the
sweep store (:mod:`gvgap.sweep.store`): manifest with provenance, its lock (a second run on
the same ``--out`` is refused on one line), one hashed record per finished run and
``results.parquet``; on top of it, ``stages/<run_id>/`` holds each run's finished stages and
mid-stage checkpoints (:mod:`gvgap.llm.pipeline`), so a killed run resumes at its first
unfinished stage and a corrupted stage is reported and re-run. It ends with ``verdicts.json``
(one record per task — its first grid cell; the other cells under ``robustness`` —
:func:`gvgap.experiments.llm.task_verdicts`), the figures and
``report.md`` / ``report.html`` (:func:`gvgap.report.write_report`). Data parallel under
``torchrun`` / ``accelerate launch`` with no flag: every rank runs the stages, rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

from gvgap.errors import UserError, check_choice

EXPERIMENT = "llm"
VERDICTS = "verdicts.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"gvgap llm: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``gvgap llm`` parser."""
    p = _Parser(prog="gvgap llm", description="LLM-scale pipeline with a known gold reward")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run (or resume) an llm sweep file into --out")
    r.add_argument("file", help="sweep .toml with [sweep] experiment = 'llm' (sims/llm_tiny.toml)")
    r.add_argument("--out", required=True)
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs side by side on the CPU, one thread each (default: the CPU count; "
        "1 on CUDA); the numbers do not depend on it",
    )
    r.add_argument("--stop-after", default=None, help=argparse.SUPPRESS)
    h = sub.add_parser(
        "hf", help="the pipeline on a local HF causal LM + a preference jsonl, through TRL"
    )
    h.add_argument("--model", required=True, help="local model + tokenizer directory")
    h.add_argument("--data", required=True, help="jsonl rows {prompt, chosen, rejected}")
    h.add_argument("--out", required=True)
    for name, kind in HF_OPTIONS.items():
        h.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    return p


#: Options of ``gvgap llm hf`` (fields of :class:`gvgap.llm.hf.HFConfig`).
HF_OPTIONS = {
    "beta": float,
    "lr": float,
    "batch_size": int,
    "rm_steps": int,
    "dpo_steps": int,
    "online_samples": int,
    "online_temperature": float,
    "max_new_tokens": int,
    "val_fraction": float,
    "seed": int,
    "device": str,
}


def run_hf_cli(args: argparse.Namespace) -> int:
    """``gvgap llm hf``: validate, run the TRL route, print its metrics."""
    from gvgap.llm.hf import HFConfig, run_hf

    opts = {k: getattr(args, k) for k in HF_OPTIONS if getattr(args, k) is not None}
    metrics = run_hf(HFConfig(model=args.model, data=args.data, **opts), args.out)
    for key, value in sorted(metrics.items()):
        print(f"{key}\t{value:.6g}")
    return 0


def is_main() -> bool:
    """True on rank 0 (the only process that writes), also under torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def load(file: str) -> Any:
    """The validated sweep of ``file`` (experiment ``llm``), every device checked.

    Raises:
        UserError: one line naming the field (nothing is written).
    """
    from gvgap.nn.device import resolve
    from gvgap.sweep.spec import spec_from_toml

    try:
        spec = spec_from_toml(file)
    except UserError as exc:
        if "unknown table 'llm'" in str(exc):
            raise UserError(
                f"{file}: the [llm] table is replaced by a sweep file: [sweep] experiment = "
                '"llm", seeds, instance_seed; [fixed] fields; [grid] task = [...]'
            ) from None
        raise
    if spec.experiment != EXPERIMENT:
        raise UserError(
            f"{file}: gvgap llm run runs experiment 'llm', not {spec.experiment!r} "
            "(use gvgap sweep)"
        )
    for cfg in spec.configs:
        resolve(cfg["device"], cfg["dtype"])
    return spec


def llm_workers(workers: int | None, spec: Any, pending: int, stop_after: str | None) -> int:
    """Processes to run ``pending`` runs in: ``workers`` (default: the CPU count), at most one
    per run; 1 on CUDA, under torchrun and with ``--stop-after``.

    Raises:
        UserError: ``--workers`` below 1, or above 1 where runs share one device.
    """
    from gvgap.nn.device import resolve
    from gvgap.sweep.executors import resolve_workers

    n = resolve_workers(workers)
    cuda = any(resolve(c["device"], c["dtype"]).is_cuda for c in spec.configs)
    if cuda or int(os.environ.get("WORLD_SIZE", "1")) > 1 or stop_after is not None:
        if workers is not None and n > 1:
            why = (
                "--stop-after runs in this process"
                if stop_after is not None
                else (
                    "these runs share one device (CUDA or torchrun); use torchrun for data parallel"
                )
            )
            raise UserError(f"--workers: {n} asked for, but {why}; use 1")
        return 1
    return max(1, min(n, pending))


def _pool_run(config: dict, seed: int, inst: int, root: str) -> tuple[dict, float]:
    """One run's stages under ``root`` in a pool worker: (metrics, seconds)."""
    from gvgap.llm.config import LLMConfig
    from gvgap.llm.pipeline import run_stages

    start = time.perf_counter()
    metrics = run_stages(LLMConfig(**config), seed, inst, Path(root))
    return {k: float(v) for k, v in metrics.items()}, time.perf_counter() - start


def _execute(
    pending: list, configs: list, store: Any, main: bool, bar: Any, stop_after: str | None,
    workers: int,
) -> Iterator[tuple[Any, dict, float]]:  # fmt: skip
    """(run, metrics, seconds) of every pending run, in this process (``workers`` 1: the bar
    advances per stage) or on a process pool (per finished run)."""
    from gvgap.experiments.llm import run_seeds
    from gvgap.llm.pipeline import run_stages, stage_units
    from gvgap.sweep.executors import shared_pool

    if workers == 1:
        for run, cfg in zip(pending, configs, strict=True):
            seed, inst = run_seeds(*run.rngs())
            start = time.perf_counter()
            metrics = run_stages(
                cfg, seed, inst, store.root / "stages" / run.run_id,
                write=main, progress=bar, stop_after=stop_after,
            )  # fmt: skip
            yield run, metrics, time.perf_counter() - start
        return
    with shared_pool(workers) as pool:
        futures = {}
        for run, cfg in zip(pending, configs, strict=True):
            seed, inst = run_seeds(*run.rngs())
            root = str(store.root / "stages" / run.run_id)
            futures[pool.submit(_pool_run, run.config, seed, inst, root)] = (run, cfg)
        handed: set = set()
        for fut in as_completed(futures):
            if fut.exception() is not None:  # hand back the runs already finished, then raise
                for other in futures:
                    if other not in handed and other.done() and other.exception() is None:
                        yield futures[other][0], *other.result()
                raise fut.exception()
            handed.add(fut)
            run, cfg = futures[fut]
            bar.update(sum(stage_units(cfg).values()))
            yield run, *fut.result()


def run_llm(
    file: str,
    out: str | os.PathLike,
    stop_after: str | None = None,
    progress: Any = None,
    workers: int | None = None,
) -> Any:
    """Run every pending run of ``file`` into ``out``; return the tidy results.

    ``workers`` runs side by side on the CPU (:func:`llm_workers`); every run computes on one
    thread, so the numbers are the same for any ``workers``.

    Raises:
        UserError: bad file, foreign or locked ``out``, bad ``--workers`` (before anything is
            written there).
        StopRunError: the ``stop_after`` hook fired (after that stage was stored).
    """
    from gvgap.llm.config import LLMConfig
    from gvgap.llm.pipeline import STAGES, stage_units
    from gvgap.sweep.progress import make_progress
    from gvgap.sweep.runner import _check_out, _report_problems
    from gvgap.sweep.store import RunStore

    spec = load(file)
    if stop_after is not None:
        check_choice("--stop-after", stop_after, tuple(dict(STAGES)))
    n_workers = llm_workers(workers, spec, len(spec.runs()), stop_after)
    store = RunStore(_check_out(out))
    store.check(spec)
    runs = spec.runs()
    main = is_main()
    if main:
        store.prepare()
    with store.lock() if main else contextlib.nullcontext():
        records, problems = store.scan()
        _report_problems(problems, {r.run_id for r in runs})
        done = {r["run_id"] for r in records}
        pending = [r for r in runs if r.run_id not in done]
        if main:
            store.write_manifest(spec, runs)
        configs = [LLMConfig(**r.config) for r in pending]
        total = sum(sum(stage_units(c).values()) for c in configs)
        workers = min(n_workers, max(1, len(pending)))
        with make_progress(total, 0, EXPERIMENT, progress, unit="step") as bar:
            for run, metrics, elapsed in _execute(
                pending, configs, store, main, bar, stop_after, workers
            ):
                if main:
                    record = {"run_id": run.run_id, **run.key()}
                    record["metrics"] = {k: float(v) for k, v in metrics.items()}
                    record["elapsed_s"] = elapsed
                    store.write_run(record)
        if not main:
            return None
        df = store.consolidate(EXPERIMENT)
        write_outputs(store.root, df)
    return df


def stored_runs(out: str | os.PathLike) -> Iterator[Any]:
    """Each finished run of a ``gvgap llm run`` directory, read-only, as the runner over its
    stored stages (:class:`gvgap.llm.pipeline._Runner`: ``cfg``, ``task``, ``seed``, ``p``,
    ``models[name]`` loads a stage model, ``pairs()`` the stored preference pairs,
    ``instance_seed`` the run's instance block)."""
    from gvgap.experiments.llm import run_seeds
    from gvgap.llm.config import LLMConfig
    from gvgap.llm.pipeline import StageStore, _Runner
    from gvgap.llm.tasks import make_task
    from gvgap.nn.device import resolve
    from gvgap.sweep.spec import RunSpec

    for path in sorted((Path(out) / "runs").glob("*.json")):
        rec = json.loads(path.read_text())
        run = RunSpec(rec["experiment"], rec["config"], rec["seed"], rec["instance_seed"])
        cfg = LLMConfig(**rec["config"])
        seed, inst = run_seeds(*run.rngs())
        store = StageStore(Path(out) / "stages" / run.run_id, write=False)
        runner = _Runner(
            cfg, make_task(cfg, inst), seed, resolve(cfg.device, cfg.dtype), store, None, None
        )
        runner.data["pairs"], _ = store.load_info("pairs")
        runner.instance_seed = rec["instance_seed"]  # the block, for grouping by cell
        yield runner


def write_outputs(root: Path, df: Any) -> list[Path]:
    """``verdicts.json`` (per task), figures and the report of an llm sweep directory."""
    from gvgap.atomic import atomic_write
    from gvgap.experiments.llm import task_verdicts
    from gvgap.report import write_report

    verdicts = task_verdicts(df)
    text = json.dumps(verdicts, indent=1, sort_keys=True, default=float)
    atomic_write(root / VERDICTS, text)
    return [root / VERDICTS, *write_report(root)]


def print_table(df: Any, verdicts_path: Path) -> None:
    """The paper's table and the per-task verdicts on stdout."""
    from gvgap.llm.report import markdown_table, robustness_rows, table

    header, rows = markdown_table(table(df))
    print("win rate vs pi_ref samples (gold BT), mean +- SE over seeds")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    verdicts = json.loads(verdicts_path.read_text())
    for key, v in verdicts.items():
        print(
            f"{key}: {v['verdict']} (effect {v['effect']:+.4f} [{v['ci_low']:+.4f}, "
            f"{v['ci_high']:+.4f}], control {v['positive_control']['effect']:+.4f}, "
            f"{v['seeds']} seeds)"
        )
        cells = [c for c in v.get("robustness") or [] if isinstance(c, dict)]
        if cells:
            head, rows = robustness_rows(cells)
            print(f"  other cells of {key}: " + " | ".join(head))
            for row in rows:
                print("  " + " | ".join(row))


def main(argv: Sequence[str] | None = None) -> int:
    """``gvgap llm …``; raises UserError (the top-level CLI prints it and exits 2)."""
    from gvgap.llm.pipeline import StopRunError

    args = build_parser().parse_args(argv)
    if args.command == "hf":
        return run_hf_cli(args)
    try:
        df = run_llm(args.file, args.out, stop_after=args.stop_after, workers=args.workers)
    except StopRunError as stop:
        print(f"gvgap: stopped after stage {stop}; run again to resume", file=sys.stderr)
        return 0
    if df is not None:
        print_table(df, Path(args.out) / VERDICTS)
    return 0
