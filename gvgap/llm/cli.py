"""``gvgap llm run FILE.toml --out DIR`` (DESIGN §4): validate everything, then run the
staged pipeline (resuming in an existing DIR of the same spec), then the table, figure and
report section. Data parallel under ``torchrun`` with no flag.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gvgap.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"gvgap llm: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``gvgap llm`` parser."""
    p = _Parser(prog="gvgap llm", description="LLM-scale pipeline with a known gold reward")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run (or resume) a pipeline file into --out")
    r.add_argument("file", help="pipeline .toml (see sims/llm_tiny.toml)")
    r.add_argument("--out", required=True)
    r.add_argument("--stop-after", default=None, help=argparse.SUPPRESS)
    return p


def validate(file: str, out: str, stop_after: str | None = None) -> object:
    """Every check that needs no writing: the file, devices, the output directory."""
    from gvgap.llm.config import load_spec
    from gvgap.llm.pipeline import STAGES, check_out_dir

    spec = load_spec(file)
    if stop_after is not None and stop_after not in dict(STAGES):
        raise UserError(f"--stop-after: one of {', '.join(dict(STAGES))}; got {stop_after!r}")
    from gvgap.nn.device import resolve

    for cfg in spec.configs:
        resolve(cfg.device, cfg.dtype)
    check_out_dir(Path(out), spec)
    return spec


def run(args: argparse.Namespace) -> int:
    """Validate, run, write the report section, print the table."""
    spec = validate(args.file, args.out, args.stop_after)
    from gvgap.llm import dist
    from gvgap.llm.pipeline import StopRunError, run_spec
    from gvgap.llm.report import markdown_table, table, write_section

    try:
        df = run_spec(spec, args.out, stop_after=args.stop_after)
    except StopRunError as stop:
        print(f"stopped after stage {stop}; run again to resume", file=sys.stderr)
        return 0
    if not dist.is_main():
        return 0
    for path in write_section(args.out):
        print(path)
    header, rows = markdown_table(table(df))
    print("win rate vs pi_ref (gold BT), mean +- SE")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``gvgap llm …``; raises UserError (the top-level CLI prints it and exits 2)."""
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"gvgap: error: {exc}", file=sys.stderr)
        sys.exit(2)
