"""Command-line interface (DESIGN §4). Every command's work lives in a library module;
this file parses arguments and turns :class:`~gvgap.errors.UserError` into one line + exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gvgap.errors import UserError

EXIT_USAGE = 2


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
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from gvgap.verify import run_verify

    return run_verify(instances=args.instances, seed=args.seed, json_path=args.json)


def cmd_run(args: argparse.Namespace) -> int:
    from gvgap.sweep.runner import run_single

    metrics = run_single(args.id, _parse_sets(args.set), seed=args.seed)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from gvgap.sweep.runner import run_sweep
    from gvgap.sweep.spec import load_spec

    spec = load_spec(args.target, seeds=args.seeds, quick=args.quick)
    df = run_sweep(
        spec, args.out, executor=args.executor, workers=args.workers, address=args.address
    )
    n_runs = df["run_id"].nunique() if "run_id" in df.columns else 0
    print(f"{args.out}/results.parquet: {n_runs} runs, {len(df)} rows")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from gvgap.report import write_plots

    for path in write_plots(args.dir, args.out):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from gvgap.report import write_report

    for path in write_report(args.dir):
        print(path)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from gvgap.reproduce import reproduce

    return reproduce(args.out, quick=args.quick, executor=args.executor, workers=args.workers)


def cmd_llm(args: argparse.Namespace) -> int:
    from gvgap.llm.cli import main as llm_main  # lazy: torch/transformers only when asked

    return llm_main(args.llm_args)


def build_parser() -> argparse.ArgumentParser:
    """The ``gvgap`` argument parser."""
    p = _Parser(prog="gvgap", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("list", help="experiments and problem families")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("verify", help="numeric checks of THEORY §6 items 1-8")
    s.add_argument("--instances", type=int, default=200, help="random instances per check")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", default=None, help="write one record per check to this file")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("run", help="run one experiment setting and print its metrics")
    s.add_argument("id")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gvgap`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except UserError as exc:
        print(f"gvgap: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gvgap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
