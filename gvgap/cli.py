"""Command-line interface (docs/design.md §4). Every command's work lives in a library module;
this file parses arguments and turns :class:`~gvgap.errors.UserError` into one line + exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
from collections.abc import Sequence

from gvgap.errors import UserError, check_int

EXIT_USAGE = 2
#: Exit code of an environment failure (disk full, permission) outside input validation.
EXIT_ENV = 1
#: Most random instances per verify check.
MAX_INSTANCES = 100_000


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line with exit code 2 (its default code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"gvgap: error: {message}\n")


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_list(args: argparse.Namespace) -> int:
    from gvgap.envs.families import FAMILIES
    from gvgap.experiments.registry import EXPERIMENTS

    print("experiments:")
    for eid, mod in EXPERIMENTS.items():
        print(f"  {eid:<22} {mod.CLAIM}")
    print("problem families:")
    for name, fam in FAMILIES.items():
        print(f"  {name:<22} {fam.summary}")
    print("fields of an experiment (type, default, allowed values, meaning): gvgap show ID")
    return 0


def _check_path(flag: str, path: str | None) -> None:
    """A non-empty path whose components fit NAME_MAX (255 bytes) and whose whole fits
    PATH_MAX (an empty one would mean the current directory)."""
    if path is None:
        return
    if not path.strip():
        raise UserError(f"{flag}: empty path; give a file or directory name")
    from gvgap.sweep.runner import NAME_MAX, PATH_MAX

    if any(len(part.encode()) > NAME_MAX for part in path.split(os.sep)):
        raise UserError(f"{flag}: a path component is longer than {NAME_MAX} bytes")
    if len(os.path.abspath(path).encode()) > PATH_MAX - 64:
        raise UserError(f"{flag}: path too long (> {PATH_MAX - 64} bytes)")


def cmd_verify(args: argparse.Namespace) -> int:
    check_int("--seed", args.seed, 0)  # ≤ int64 max: results store seeds as int64
    check_int("--instances", args.instances, 1, MAX_INSTANCES)
    _check_path("--json", args.json)
    if args.json is not None and os.path.isdir(args.json):
        raise UserError(f"--json {args.json}: is a directory; give a file name")
    from gvgap.verify import check_json_target, run_verify

    if args.json is not None:
        check_json_target(args.json)
    _work_begins()
    return run_verify(instances=args.instances, seed=args.seed, json_path=args.json)


def cmd_run(args: argparse.Namespace) -> int:
    from gvgap.sweep.runner import run_single

    check_int("--seed", args.seed, 0)  # ≤ int64 max: results store seeds as int64
    metrics = run_single(args.id, _parse_sets(args.set), seed=args.seed, echo=sys.stderr)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from gvgap.experiments.registry import get_experiment
    from gvgap.sweep.show import format_show

    print(format_show(args.id, get_experiment(args.id)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from gvgap.sweep.runner import run_sweep
    from gvgap.sweep.spec import load_spec

    _check_path("--out", args.out)
    spec = load_spec(args.target, seeds=args.seeds, quick=args.quick)
    import pandas  # noqa: F401 (imported before the work begins: see _work_begins)

    _work_begins()
    df = run_sweep(
        spec,
        args.out,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        append=args.append,
    )
    n_runs = df["run_id"].nunique() if "run_id" in df.columns else 0
    print(f"{args.out}/results.parquet: {n_runs} runs, {len(df)} rows")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    _check_path("DIR", args.dir)
    _check_path("--out", args.out)
    from gvgap.report import write_plots

    _work_begins()
    for path in write_plots(args.dir, args.out):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _check_path("DIR", args.dir)
    from gvgap.report import write_report

    _work_begins()
    for path in write_report(args.dir):
        print(path)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    _check_path("--out", args.out)
    import gvgap.report  # noqa: F401 (matplotlib, before the work begins: see _work_begins)
    from gvgap.reproduce import reproduce

    _work_begins()
    return reproduce(
        args.out,
        quick=args.quick,
        executor=args.executor,
        workers=args.workers,
        experiments=args.experiments,
    )


def cmd_llm(args: argparse.Namespace) -> int:
    from gvgap.sweep.llm_run import main as llm_main  # lazy: torch only when it runs

    _work_begins()
    return llm_main(args.llm_args)


def build_parser() -> argparse.ArgumentParser:
    """The ``gvgap`` argument parser."""
    p = _Parser(prog="gvgap", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"gvgap {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("list", help="experiments and problem families")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser(
        "show", help="every Config field of an experiment: type, default, allowed, meaning"
    )
    s.add_argument("id", help="experiment id (gvgap list)")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("verify", help="numeric checks of docs/theory.md §6 items 1-8")
    s.add_argument("--instances", type=int, default=200, help="random instances per check")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", default=None, help="write one record per check to this file")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser(
        "run",
        help="run one experiment setting and print its metrics",
        description="Run one setting; prints its metrics as JSON on stdout and the config it "
        "used on stderr. Fields, defaults and allowed values: gvgap show ID.",
    )
    s.add_argument("id", help="experiment id (gvgap list)")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a Config field (repeatable); gvgap show ID lists them",
    )
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("sweep", help="run a grid (experiment id or TOML file); resumable")
    s.add_argument("target", help="experiment id or sweep .toml file")
    s.add_argument("--out", required=True)
    s.add_argument("--executor", choices=["local", "ray"], default="local")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--address", default=None, help="Ray cluster address (default: start local)")
    s.add_argument("--seeds", type=int, default=None)
    s.add_argument(
        "--quick", action="store_true", help="use the experiment's QUICK grid (not for .toml)"
    )
    s.add_argument(
        "--append",
        action="store_true",
        help="add a different spec to an existing DIR (the manifest records both)",
    )
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("plot", help="figures from a run directory")
    s.add_argument("dir")
    s.add_argument("--out", default=None)
    s.set_defaults(fn=cmd_plot)

    s = sub.add_parser("report", help="report.md + report.html from a run directory")
    s.add_argument("dir")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("reproduce", help="verify + every experiment + figures + report")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--out", default="runs/reproduce")
    s.add_argument("--executor", choices=["local", "ray"], default="local")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument(
        "--experiments",
        nargs="+",
        metavar="ID",
        default=None,
        help="run only these experiments (default: all; verify always runs)",
    )
    s.set_defaults(fn=cmd_reproduce)

    s = sub.add_parser(
        "llm",
        help="LLM-scale pipeline: gvgap llm run FILE.toml --out DIR",
        add_help=False,
        prefix_chars="+",  # every "-" option goes on to gvgap.llm.cli
    )
    s.add_argument("llm_args", nargs=argparse.REMAINDER, help="see gvgap llm --help")
    s.set_defaults(fn=cmd_llm)
    return p


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("gvgap")
    except importlib.metadata.PackageNotFoundError:
        from gvgap import __version__

        return __version__


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``gvgap run … | head``): stop quietly. Point stdout at
    /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


#: OSErrors reported as one line (not a traceback) when they escape a command.
ONE_LINE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "file name too long",
    errno.EACCES: "permission denied",
    errno.EROFS: "read-only file system",
}


def _work_begins() -> None:
    """A command calls this when its side effects begin (its first write or child process),
    after its imports and validation. Until then a Ctrl-C ends the ``gvgap`` process at once
    with the one line (the start-up handler installed by :mod:`gvgap`): nothing is there to
    undo, and an interrupt inside an extension module's initialisation would otherwise
    surface as ``ImportError: initialization failed``, or be swallowed by a library's
    fallback import so that the command carried on (issue 19). From here on a Ctrl-C is a
    KeyboardInterrupt that unwinds (ending pools and Ray, which ignore SIGINT themselves, and
    releasing the directory lock) to :func:`main`'s one line. In-process callers of
    :func:`main` (tests) keep their own handler."""
    import gvgap

    global _CLI_PROCESS
    if signal.getsignal(signal.SIGINT) is gvgap._cli_startup_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _CLI_PROCESS = True


#: True once :func:`_work_begins` ran in the ``gvgap`` process itself (not an in-process
#: caller of :func:`main`).
_CLI_PROCESS = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gvgap`` console script."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.fn(args) or 0)
    except UserError as exc:
        print(f"gvgap: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        return _interrupted_exit()
    except OSError as exc:
        if _interrupted(exc):
            return _interrupted_exit()
        if exc.errno not in ONE_LINE_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"gvgap: error: {ONE_LINE_ERRNOS[exc.errno]}{where}", file=sys.stderr)
        return EXIT_ENV
    except Exception as exc:
        if _interrupted(exc):
            return _interrupted_exit()
        raise


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a Ctrl-C that a library turned into its own error (an
    extension module interrupted while it initialises raises ``ImportError: initialization
    failed`` from the KeyboardInterrupt, issue 19)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted_exit() -> int:
    """The one line and exit code of an interrupted command.

    In the ``gvgap`` process itself the process then ends at once (``os._exit``): by now the
    command has unwound — pools and Ray ended, the lock released, every write atomic — and
    what is left of the interpreter's shutdown only joins threads and pool manager threads of
    the interrupted work, which on a loaded box could hold the exit for minutes after the one
    line (seen once in CI: a `reproduce` alive 120 s after printing it)."""
    from gvgap import EXIT_INTERRUPTED, INTERRUPTED

    print(INTERRUPTED, file=sys.stderr)
    if _CLI_PROCESS:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
