"""Malformed input through the real CLI: exit code 2, one line naming the field, no traceback,
and an existing sweep directory left byte-for-byte as it was (docs/design.md §4).

Most cases run as concurrent ``python -m gvgap.cli`` subprocesses (a module fixture); the
variations listed in :data:`IN_PROCESS` call ``gvgap.cli.main`` directly to keep the suite fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from gvgap.sweep.runner import run_sweep
from gvgap.sweep.spec import load_spec

GOOD = '[sweep]\nexperiment = "c1_gibbs"\nseeds = 2\n[grid]\nvocab = [2, 3]\n'


H6 = '[sweep]\nexperiment = "h6_gap"\nseeds = 1\n'
#: A 100 x 100 x 100 = 10^6-cell grid (over the 10^4-cell limit).
BIG_GRID = "[grid]\n" + "\n".join(
    f"{name} = [{', '.join(str(1 + i / 100) for i in range(100))}]"
    for name in ("reward_scale", "ref_concentration", "pi_concentration")
)


def toml(body: str, head: str = '[sweep]\nexperiment = "c1_gibbs"\nseeds = 1\n') -> str:
    return head + body


#: id -> (arguments after ``gvgap``; ``{f}`` is the case's TOML file, ``{out}`` the shared good
#: sweep directory, ``{tmp}`` a scratch dir), TOML text or None, text the error must contain.
CASES: dict[str, tuple[list[str], str | None, str]] = {
    "toml_syntax": (["sweep", "{f}", "--out", "{out}"], "[sweep\nexperiment =", "invalid TOML"),
    "toml_binary": (["sweep", "{f}", "--out", "{out}"], "\x00\x01\xff", "TOML"),
    "fixed_unknown": (["sweep", "{f}", "--out", "{out}"], toml("[fixed]\nvocabb = 2\n"), "vocabb"),
    "grid_unknown": (["sweep", "{f}", "--out", "{out}"], toml("[grid]\nhorizn = [2]\n"), "horizn"),
    "fixed_type": (["sweep", "{f}", "--out", "{out}"], toml('[fixed]\nvocab = "three"\n'), "vocab"),
    "grid_type": (["sweep", "{f}", "--out", "{out}"], toml('[grid]\nbeta = [1.0, "x"]\n'), "beta"),
    "bool_type": (["sweep", "{f}", "--out", "{out}"], toml("[fixed]\nhorizon = true\n"), "horizon"),
    "beta_range": (["sweep", "{f}", "--out", "{out}"], toml("[fixed]\nbeta = -1.0\n"), "beta"),
    "vocab_range": (["sweep", "{f}", "--out", "{out}"], toml("[grid]\nvocab = [3, 1]\n"), "vocab"),
    "ref_value": (["sweep", "{f}", "--out", "{out}"], toml('[fixed]\nref = "zipf"\n'), "ref"),
    "no_experiment": (["sweep", "{f}", "--out", "{out}"], "[sweep]\nseeds = 2\n", "experiment"),
    "no_sweep_table": (["sweep", "{f}", "--out", "{out}"], "[grid]\nvocab = [2]\n", "experiment"),
    "toml_experiment": (
        ["sweep", "{f}", "--out", "{out}"],
        '[sweep]\nexperiment = "h99_nope"\n',
        "h99_nope",
    ),
    "id_unknown": (["sweep", "h99_nope", "--out", "{out}"], None, "h99_nope"),
    "seeds_zero": (
        ["sweep", "{f}", "--out", "{out}"],
        '[sweep]\nexperiment = "c1_gibbs"\nseeds = 0\n',
        "seeds",
    ),
    "seeds_negative": (
        ["sweep", "{f}", "--out", "{out}"],
        '[sweep]\nexperiment = "c1_gibbs"\nseeds = -3\n',
        "seeds",
    ),
    "seeds_flag": (["sweep", "c1_gibbs", "--out", "{out}", "--seeds", "0"], None, "--seeds"),
    "seeds_flag_type": (["sweep", "c1_gibbs", "--out", "{out}", "--seeds", "x"], None, "--seeds"),
    "grid_empty": (["sweep", "{f}", "--out", "{out}"], toml("[grid]\nvocab = []\n"), "vocab"),
    "grid_scalar": (["sweep", "{f}", "--out", "{out}"], toml("[grid]\nvocab = 3\n"), "vocab"),
    "fixed_and_grid": (
        ["sweep", "{f}", "--out", "{out}"],
        toml("[fixed]\nvocab = 2\n[grid]\nvocab = [3]\n"),
        "vocab",
    ),
    "too_large": (
        ["sweep", "{f}", "--out", "{out}"],
        toml("[fixed]\nvocab = 10\nhorizon = 12\n"),
        "vocab**horizon",
    ),
    "unknown_table": (["sweep", "{f}", "--out", "{out}"], toml("[grids]\nvocab = [2]\n"), "grids"),
    "unknown_sweep_key": (
        ["sweep", "{f}", "--out", "{out}"],
        '[sweep]\nexperiment = "c1_gibbs"\nseed = 3\n',
        "seed",
    ),
    "out_unwritable": (["sweep", "{f}", "--out", "{tmp}/afile/sub"], GOOD, "--out"),
    "out_foreign": (["sweep", "{f}", "--out", "{tmp}/foreign"], GOOD, "--out"),
    "toml_missing": (["sweep", "{tmp}/missing.toml", "--out", "{out}"], None, "missing.toml"),
    "toml_is_dir": (["sweep", "{tmp}/adir.toml", "--out", "{out}"], None, "adir.toml"),
    "workers_zero": (["sweep", "{f}", "--out", "{out}", "--workers", "0"], GOOD, "--workers"),
    "workers_negative": (["sweep", "{f}", "--out", "{out}", "--workers", "-2"], GOOD, "--workers"),
    "executor_unknown": (
        ["sweep", "{f}", "--out", "{out}", "--executor", "dask"],
        GOOD,
        "--executor",
    ),
    "run_set_no_eq": (["run", "c1_gibbs", "--set", "vocab"], None, "--set"),
    "run_set_unknown": (["run", "c1_gibbs", "--set", "vocabb=3"], None, "vocabb"),
    "run_set_type": (["run", "c1_gibbs", "--set", "beta=abc"], None, "beta"),
    "run_set_range": (["run", "c1_gibbs", "--set", "horizon=0"], None, "horizon"),
    "run_unknown_id": (["run", "h99_nope"], None, "h99_nope"),
    "run_seed_negative": (["run", "c1_gibbs", "--seed", "-1"], None, "--seed"),
    # issue 8: refused before anything is written, one line each
    "beta_nan_in_grid": (
        ["sweep", "{f}", "--out", "{out}"],
        toml("[grid]\nbeta = [0.5, nan]\n"),
        "beta",
    ),
    "beta_inf": (["sweep", "{f}", "--out", "{out}"], toml("[fixed]\nbeta = inf\n"), "beta"),
    "beta_huge": (
        ["sweep", "{f}", "--out", "{out}"],
        toml("[fixed]\nbeta = 1e9\n"),
        "beta must be in [0.001, 1000]",
    ),
    "epsilon_not_misspec": (
        ["sweep", "{f}", "--out", "{out}"],
        toml("[fixed]\nepsilon = 0.1\n", H6),
        "epsilon",
    ),
    "tree_in_grid": (
        ["sweep", "{f}", "--out", "{out}"],
        toml("[grid]\nhorizon = [2, 30]\n"),
        "tree too large",
    ),
    "memory_guard": (
        ["sweep", "{f}", "--out", "{out}"],
        toml("[fixed]\nvocab = 2\nhorizon = 23\n", H6),
        "GiB",
    ),
    "instance_seed_2_70": (
        ["sweep", "{f}", "--out", "{out}"],
        '[sweep]\nexperiment = "c1_gibbs"\ninstance_seed = 1180591620717411303424\n',
        "instance_seed",
    ),
    "lam_nan": (["sweep", "{f}", "--out", "{out}"], toml("[fixed]\nlam = nan\n", H6), "lam"),
    "lam_inf": (["run", "h6_gap", "--set", "lam=inf"], None, "lam"),
    "beta_run_huge": (["run", "h6_gap", "--set", "beta=1e9"], None, "beta"),
    "horizon_1e18": (
        ["sweep", "{f}", "--out", "{out}"],
        toml("[fixed]\nhorizon = 1e18\n"),
        "horizon",
    ),
    "horizon_1e6": (["run", "c1_gibbs", "--set", "horizon=1000000"], None, "tree too large"),
    "seeds_1e9": (
        ["sweep", "{f}", "--out", "{out}"],
        '[sweep]\nexperiment = "c1_gibbs"\nseeds = 1000000000\n',
        "seeds",
    ),
    "seeds_flag_1e9": (
        ["sweep", "c1_gibbs", "--out", "{out}", "--seeds", "1000000000"],
        None,
        "--seeds",
    ),
    "grid_1e6_cells": (["sweep", "{f}", "--out", "{out}"], toml(BIG_GRID), "cells"),
    "n_pairs_1e9": (["run", "h6_gap", "--set", "n_pairs=1e9"], None, "n_pairs"),
    "k_1e9": (["sweep", "{f}", "--out", "{out}"], toml("[fixed]\nk = 1000000000\n", H6), "k"),
    "nested_5000": (
        ["sweep", "{f}", "--out", "{out}"],
        toml(f"[fixed]\nvocab = {'[' * 5000}{']' * 5000}\n"),
        "nested",
    ),
    "verify_seed_negative": (["verify", "--seed", "-1"], None, "--seed"),
    "verify_json_dir": (["verify", "--instances", "1", "--json", "{tmp}"], None, "--json"),
    "out_300_chars": (["sweep", "{f}", "--out", "{tmp}/" + "x" * 300], GOOD, "--out"),
    "sweep_toml_quick": (["sweep", "{f}", "--out", "{out}", "--quick"], GOOD, "--quick"),
    "spec_differs": (
        ["sweep", "{f}", "--out", "{out}"],
        GOOD.replace("seeds = 2", "seeds = 3"),
        "--append",
    ),
    "ray_unreachable": (
        ["sweep", "{f}", "--out", "{out}", "--executor", "ray", "--address", "127.0.0.1:1"],
        GOOD,
        "--address",
    ),
    "address_without_ray": (
        ["sweep", "{f}", "--out", "{out}", "--address", "127.0.0.1:1"],
        GOOD,
        "--address",
    ),
    # issue 19: non-regular files, empty paths, unwritable --json: refused before any work
    "toml_dev_zero": (["sweep", "/dev/zero", "--out", "{tmp}/o_dev_zero"], None, "regular"),
    "toml_fifo": (["sweep", "{tmp}/fifo.toml", "--out", "{tmp}/o_fifo"], None, "regular"),
    "toml_huge": (["sweep", "{f}", "--out", "{tmp}/o_huge"], "#" * (1 << 21), "larger than"),
    "out_empty": (["sweep", "{f}", "--out", ""], GOOD, "--out: empty path"),
    "reproduce_out_empty": (["reproduce", "--out", ""], None, "--out: empty path"),
    "plot_out_empty": (["plot", "{out}", "--out", ""], None, "--out: empty path"),
    "verify_json_empty": (["verify", "--json", ""], None, "--json: empty path"),
    "verify_json_proc": (["verify", "--instances", "1", "--json", "/proc/x.json"], None, "--json"),
    "verify_json_devnull": (["verify", "--json", "/dev/null"], None, "not a regular file"),
    "id_did_you_mean": (["run", "h6_gp"], None, "did you mean 'h6_gap'"),
    "field_did_you_mean": (["run", "c1_gibbs", "--set", "vocabb=2"], None, "did you mean 'vocab'"),
    "show_unknown": (["show", "c1_gibs"], None, "did you mean 'c1_gibbs'"),
}


#: Variations of a subprocess case, checked through ``gvgap.cli.main`` in this process.
IN_PROCESS = frozenset(
    {
        "bool_type",
        "grid_type",
        "vocab_range",
        "seeds_negative",
        "seeds_flag_type",
        "grid_scalar",
        "fixed_and_grid",
        "no_sweep_table",
        "toml_experiment",
        "unknown_sweep_key",
        "run_set_range",
        "run_seed_negative",
        "toml_is_dir",
        "workers_negative",
        "beta_inf",
        "beta_huge",
        "epsilon_not_misspec",
        "tree_in_grid",
        "memory_guard",
        "lam_nan",
        "lam_inf",
        "beta_run_huge",
        "horizon_1e18",
        "horizon_1e6",
        "seeds_1e9",
        "seeds_flag_1e9",
        "grid_1e6_cells",
        "n_pairs_1e9",
        "k_1e9",
        "nested_5000",
        "verify_seed_negative",
        "verify_json_dir",
        "out_300_chars",
        "sweep_toml_quick",
        "spec_differs",
        "id_did_you_mean",
        "address_without_ray",
        "field_did_you_mean",
        "show_unknown",
        "toml_huge",
        "out_empty",
        "reproduce_out_empty",
        "plot_out_empty",
        "verify_json_empty",
        "verify_json_devnull",
    }
)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _argv(name: str, tmp: Path, out: Path) -> list[str]:
    args, text, _ = CASES[name]
    f = tmp / f"{name}.toml"
    if text is not None:
        f.write_bytes(text.encode("latin-1") if name == "toml_binary" else text.encode())
    return [a.format(f=f, out=out, tmp=tmp) for a in args]


def _in_subprocess(argv: list[str]) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "gvgap.cli", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    from gvgap.cli import main

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, dict]:
    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "good"
    good = tmp / "good.toml"
    good.write_text(GOOD)
    run_sweep(load_spec(str(good)), out, workers=1, progress=False)
    (tmp / "afile").write_text("a regular file")
    (tmp / "adir.toml").mkdir()
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "manifest.json").write_text('{"experiment": "other_exp"}')
    os.mkfifo(tmp / "fifo.toml")  # opening it would block: refused before it is opened
    before = {"good": _snapshot(out), "foreign": _snapshot(tmp / "foreign")}
    spawned = [n for n in CASES if n not in IN_PROCESS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip(spawned, pool.map(lambda n: _in_subprocess(_argv(n, tmp, out)), spawned))
        )
    results.update({n: _in_process(_argv(n, tmp, out)) for n in IN_PROCESS})
    after = {"good": _snapshot(out), "foreign": _snapshot(tmp / "foreign")}
    return results, before, after


def test_corpus_is_large_enough() -> None:
    assert len(CASES) - len(IN_PROCESS) >= 20 and set(CASES) >= IN_PROCESS


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name: str, corpus: tuple[dict, dict, dict]) -> None:
    code, out, err = corpus[0][name]
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("gvgap: error: ")
    assert CASES[name][2] in err, err
    assert out == ""


def test_existing_results_are_untouched(corpus: tuple[dict, dict, dict]) -> None:
    _, before, after = corpus
    assert after == before
    assert "results.parquet" in before["good"] and "manifest.json" in before["good"]


def test_refused_inputs_create_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: ``--out ""`` wrote into the current directory, ``sweep /dev/zero`` read
    without bound, and ``verify --json /proc/x.json`` ran every check before failing. Each
    is refused on one line before any work: nothing appears in the current directory, and
    verify refuses before a single check runs."""
    from gvgap import verify

    def no_checks(*args, **kwargs):
        raise AssertionError("a check ran before --json was validated")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(verify, "run_checks", no_checks)
    good = tmp_path.parent / f"{tmp_path.name}-good.toml"
    good.write_text(GOOD)
    for argv in (
        ["sweep", str(good), "--out", ""],
        ["sweep", str(good), "--out", "  "],
        ["sweep", "/dev/zero", "--out", "o"],
        ["reproduce", "--quick", "--out", ""],
        ["verify", "--json", "/proc/x.json"],
        ["verify", "--json", str(tmp_path / "missing" / "x.json")],
    ):
        code, out, err = _in_process(argv)
        assert code == 2 and err.count("\n") == 1 and out == "", (argv, err)
    assert list(tmp_path.iterdir()) == []
    good.unlink()
