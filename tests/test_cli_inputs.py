"""Malformed input through the real CLI: exit code 2, one line naming the field, no traceback,
and an existing sweep directory left byte-for-byte as it was (DESIGN §4).

Most cases run as concurrent ``python -m gvgap.cli`` subprocesses (a module fixture); the
variations listed in :data:`IN_PROCESS` call ``gvgap.cli.main`` directly to keep the suite fast.
"""

from __future__ import annotations

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
