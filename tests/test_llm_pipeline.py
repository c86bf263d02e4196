"""`gvgap llm run`: the sweep contract (store, lock, verdicts, report), resume after a kill,
corrupted stages re-run, the same numbers as `gvgap sweep`, and bad input (exit 2, one line,
nothing written)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
import pandas as pd

from gvgap.cli import main
from gvgap.llm.pipeline import STAGES, StopRunError
from gvgap.sweep.llm_run import run_llm

FIXED = {
    "vocab": 5,
    "prompt_len": 3,
    "completion_len": 3,
    "n_train_prompts": 16,
    "n_eval_prompts": 4,
    "pairs_per_prompt": 2,
    "sft_steps": 6,
    "rm_steps": 4,
    "dpo_steps": 3,
    "online_steps": 2,
    "batch_size": 4,
    "online_samples": 3,
    "bon_n": '"1,3"',
    "eval_samples": 2,
    "eval_every": 2,
    "frontier": 2,
}
TOML = (
    '[sweep]\nexperiment = "llm"\nseeds = 2\ninstance_seed = 3\n[fixed]\n'
    + "\n".join(f"{k} = {v}" for k, v in FIXED.items())
    + '\n[grid]\ntask = ["readout", "short"]\n'
)


def write(tmp: Path, text: str = TOML, name: str = "p.toml") -> Path:
    f = tmp / name
    f.write_text(text)
    return f


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """One finished `gvgap llm run` (2 tasks × 2 seeds, on 2 worker processes) shared by the
    tests below; the tests that re-run parts of it in this process compare equal to it."""
    tmp = tmp_path_factory.mktemp("llm")
    f = write(tmp)
    assert main(["llm", "run", str(f), "--out", str(tmp / "o"), "--workers", "2"]) == 0
    return f, tmp / "o", pd.read_parquet(tmp / "o" / "results.parquet")


def test_frontier_start_point_is_the_starting_policy(done) -> None:
    """Step 0 of a DPO run is its starting policy, evaluated once: the SFT row for the runs
    from SFT, DPO's last frontier point for the runs from DPO (same numbers, not re-sampled)."""
    _, _, df = done
    v = df.set_index(["task", "seed", "pipeline", "metric"])["value"]
    for (task, seed), _ in df.groupby(["task", "seed"]):
        sft_wr = v[(task, seed, "sft", "win_rate")]
        for arm in ("dpo", "online_dpo_sft", "online_dpo_local", "online_dpo_gold"):
            assert v[(task, seed, arm, "frontier0_step")] == 0.0
            assert v[(task, seed, arm, "frontier0_win_rate")] == sft_wr
        dpo = df[(df.pipeline == "dpo") & df.metric.str.fullmatch(r"frontier\d+_step")]
        last = int(dpo["metric"].nunique())
        for arm in ("dpo_extra", "online_dpo_dpo"):
            for m in ("kl", "win_rate"):
                got = v[(task, seed, arm, f"frontier0_{m}")]
                assert got == v[(task, seed, "dpo", f"frontier{last - 1}_{m}")]


def _bench(name: str):
    """A script of ``benchmarks/`` imported as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_labeller_diagnosis_ml_scale_hand_value_and_run_numbers(done, capsys) -> None:
    """``benchmarks/llm_labellers.py``: the ML BT scale of margins ±1 in proportion 3 : 1 is
    logit(3/4) = log 3 (σ(c) = 3/4 sets the derivative 3(1 − σ(c)) − σ(c) to 0); on a run, its
    global-RM likelihood is the report's ``rm_global/val_likelihood`` (same pairs, same RM)."""
    import math

    import torch

    bench = _bench("llm_labellers")
    m = torch.tensor([1.0, 1.0, 1.0, -1.0])
    assert bench.ml_scale(m) == pytest.approx(math.log(3), abs=1e-9)
    assert bench.ml_scale(torch.tensor([1.0, -1.0, -1.0])) == 0.0
    _, out, df = done
    bench.main(str(out))
    text = capsys.readouterr().out
    for task in ("readout", "short"):
        block = text.split(f"== {task}")[1].split("==")[0]
        got = float(re.search(r"global\s+lik ([0-9.]+)", block).group(1))
        want = df[
            (df.task == task) & (df.pipeline == "rm_global") & (df.metric == "val_likelihood")
        ]
        assert got == pytest.approx(float(want["value"].mean()), abs=5e-4)
        dpo = float(re.search(r"\n  dpo\s+lik ([0-9.]+)", block).group(1))
        want = df[(df.task == task) & (df.pipeline == "rm_dpo") & (df.metric == "val_likelihood")]
        assert dpo == pytest.approx(float(want["value"].mean()), abs=5e-4)
        assert "demo " in block and "last_acc" in block and "\n  dpo_extra lik" in block


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_results_verdicts_report_provenance(done) -> None:
    _, out, df = done
    cols = {"run_id", "experiment", "task", "seed", "instance_seed", "pipeline", "metric", "value"}
    assert cols <= set(df.columns) and set(df["experiment"]) == {"llm"}
    assert set(df["task"]) == {"readout", "short"} and set(df["seed"]) == {0, 1}
    pipes = set(df["pipeline"])
    assert {"sft", "dpo", "dpo_extra", "online_dpo_sft", "online_dpo_dpo"} <= pipes
    assert {"online_dpo_local", "online_dpo_gold", "bon_global_n3", "bon_dpo_n1"} <= pipes
    assert {"rm_global", "rm_local", "rm_dpo", "rm_gold", "rm_sft"} <= pipes
    metrics = set(df["metric"])
    assert {"val_likelihood", "val_likelihood_se", "label_accuracy", "label_ties"} <= metrics
    assert {"win_rate", "win_demo", "kl_k1", "kl_k3", "win_rate_matched", "frontier2_kl"} <= metrics
    gold = df[(df.pipeline == "rm_gold") & (df.metric == "label_accuracy")]["value"]
    assert set(gold.dropna()) <= {1.0}  # r* labels its own best-vs-worst pairs correctly
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert set(verdicts) == {"llm/readout", "llm/short"}
    keys = {"claim", "hypothesis", "verdict", "prediction_held", "effect", "ci_low", "ci_high"}
    keys |= {"n_runs", "positive_control", "robust", "paper_position", "consistent_with_paper"}
    keys |= {"seeds", "power", "robustness", "labellers"}
    for v in verdicts.values():
        assert keys <= set(v) and v["seeds"] == 2 and v["n_runs"] == 2
        assert v["verdict"] in ("supported", "against", "inconclusive")
    report = (out / "report.md").read_text()
    man = json.loads((out / "manifest.json").read_text())
    assert "LLM-scale pipeline" in report and "llm/readout" in report
    assert man["experiment"] == "llm" and "git_sha" in man and man["n_runs"] == 4
    assert "gvgap_version" in report and "instance_seed" in report  # provenance in the report
    for name in (
        "llm.png",
        "llm__bon_readout.png",
        "llm__frontier_short.png",
        "llm__labellers.png",
    ):
        assert (out / "figures" / name).is_file()


def test_second_run_resumes_everything_and_rewrites_the_same_table(done, capsys) -> None:
    f, out, df = done
    assert main(["llm", "run", str(f), "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(df, pd.read_parquet(out / "results.parquet"))
    assert "llm/readout:" in capsys.readouterr().out


def test_stop_after_a_stage_then_resume_gives_the_same_table(done, tmp_path) -> None:
    _, _, df = done
    f = write(tmp_path, TOML.replace("seeds = 2", "seeds = 1").replace(', "short"]', "]"))
    with pytest.raises(StopRunError):
        run_llm(str(f), tmp_path / "b", stop_after="dpo", progress=False)
    stages = next((tmp_path / "b" / "stages").iterdir())
    assert sorted(p.name for p in stages.iterdir() if not p.name.startswith(".")) == sorted(
        ["sft", "pairs", "global_rm", "local_rm", "dpo"]
    )
    assert not (tmp_path / "b" / "results.parquet").exists()
    again = run_llm(str(f), tmp_path / "b", progress=False)
    one = df[(df.task == "readout") & (df.seed == 0)].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, again)  # the same run as in the 2 × 2 sweep
    assert len([p for p in stages.iterdir() if not p.name.startswith(".")]) == len(STAGES) - 1


def test_corrupted_stages_and_records_are_reported_and_rerun(done, tmp_path, capsys) -> None:
    f, out, df = done
    work = tmp_path / "c"
    shutil.copytree(out, work)
    run = sorted((work / "stages").iterdir())[0]
    model = run / "dpo" / "model.pt"
    model.write_bytes(model.read_bytes()[:100])  # truncated
    info = run / "evaluate" / "info.json"
    info.write_text(info.read_text().replace('"sft/win_rate": 0', '"sft/win_rate": 9'))
    record = work / "runs" / f"{run.name}.json"
    rec = json.loads(record.read_text())
    rec["metrics"]["sft/win_rate"] = 0.99  # an edited run record
    record.write_text(json.dumps(rec))
    capsys.readouterr()
    again = run_llm(str(f), work, progress=False)
    err = capsys.readouterr().err
    assert "dpo: incomplete or corrupt" in err and "evaluate: incomplete or corrupt" in err
    assert f"runs/{run.name}.json" in err
    pd.testing.assert_frame_equal(df, again)


def test_a_second_process_on_the_same_out_is_refused(done, capsys) -> None:
    f, out, _ = done
    before = snapshot(out)
    with (out / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the directory
        assert main(["llm", "run", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another sweep is running there" in err
    assert snapshot(out) == before


def test_one_worker_and_two_threads_give_the_numbers_of_two_workers(done, tmp_path) -> None:
    """Every CPU run computes on one intra-op thread, whatever the caller's setting and the
    number of workers: the table of the 2-worker fixture, run here in-process."""
    import torch

    f, _, df = done
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        again = run_llm(str(f), tmp_path / "w1", progress=False, workers=1)
    finally:
        torch.set_num_threads(before)
    pd.testing.assert_frame_equal(df, again)


@pytest.mark.parametrize("workers", [0, -1])
def test_bad_workers_one_line_exit_2_nothing_written(done, tmp_path, capsys, workers) -> None:
    f, _, _ = done
    out = tmp_path / "x"
    assert main(["llm", "run", str(f), "--out", str(out), "--workers", str(workers)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--workers" in err
    assert not (tmp_path / "x").exists()


def test_workers_are_one_where_runs_share_a_device(done, monkeypatch) -> None:
    from gvgap.errors import UserError
    from gvgap.sweep.llm_run import llm_workers, load

    spec = load(str(done[0]))
    assert llm_workers(None, spec, 4, None) == min(4, os.cpu_count() or 1)
    assert llm_workers(8, spec, 3, None) == 3  # never more than the pending runs
    assert llm_workers(None, spec, 4, "dpo") == 1  # --stop-after: in this process
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: every rank runs every run itself
    assert llm_workers(None, spec, 4, None) == 1
    with pytest.raises(UserError, match="--workers"):
        llm_workers(2, spec, 4, None)


def test_gvgap_sweep_gives_the_same_numbers(done, tmp_path) -> None:
    """`gvgap sweep` runs the experiment's run() in memory: the same rows as the staged run."""
    f, _, df = done
    from gvgap.sweep.runner import run_sweep
    from gvgap.sweep.spec import load_spec

    swept = run_sweep(load_spec(str(f)), tmp_path / "s", workers=1, progress=False)
    pd.testing.assert_frame_equal(df.drop(columns="run_id"), swept.drop(columns="run_id"))
    assert set(df["run_id"]) == set(swept["run_id"])


BAD = [
    ("beta = nan", "beta"),
    ("beta = inf", "beta"),
    ("lr = -inf", "lr"),
    ("pref_lr = nan", "pref_lr"),
    ("reward_scale = nan", "reward_scale"),
    ("online_temperature = inf", "online_temperature"),
    ("demo_skill = nan", "demo_skill"),
    ("demo_skill = 1.5", "demo_skill"),
    ("n_train_prompts = 1e12", "n_train_prompts"),
    ("n_train_prompts = 1000000\ncompletion_len = 1000\nprompt_len = 12", "GiB"),
    ("sft_steps = -1", "sft_steps"),
    ("sft_steps = 'many'", "sft_steps"),
    ("sft_stepz = 8", "sft_stepz"),
    ('bon_n = "0,1"', "bon_n"),
    ('bon_n = "a"', "bon_n"),
    ("model = 'nope'", "model"),
    ("device = 'cuda'", "cuda"),
    ("device = 'tpu'", "device"),
    ("dtype = 'float16'", "dtype"),
    ("online_samples = 1", "online_samples"),
    ("grad_accum = 3", "grad_accum"),
    ("vocab = 2\nprompt_len = 2", "distinct prompts"),
]


@pytest.mark.parametrize(("line", "field"), BAD)
def test_bad_field_one_line_exit_2_nothing_written(tmp_path, capsys, line: str, field: str):
    names = tuple(f"{ln.split('=')[0].strip()} =" for ln in line.splitlines())
    body = "\n".join(ln for ln in TOML.splitlines() if not ln.startswith(names))
    f = write(tmp_path, body.replace("[fixed]", f"[fixed]\n{line}"))
    out = tmp_path / "o"
    assert main(["llm", "run", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gvgap: error:") and field in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t.replace("seeds = 2", "seeds = 1e9"), "seeds"),
        (lambda t: t.replace("seeds = 2", "seeds = 100000"), "seeds"),
        (lambda t: t.replace("instance_seed = 3", "instance_seed = 18446744073709551616"), "seed"),
        (lambda t: t.replace('"short"]', '"chess"]'), "task"),
        (lambda t: t.replace("[fixed]", "[fixd]"), "fixd"),
        (lambda t: '[sweep]\nexperiment = "c1_gibbs"\n', "runs experiment 'llm'"),
        (lambda t: '[llm]\ntasks = ["readout"]\n', "[llm] table is replaced"),
        (lambda t: "\x00\x01\xff binary", "TOML"),
    ],
)
def test_bad_file_one_line_exit_2(tmp_path, capsys, edit, needle: str) -> None:
    f = write(tmp_path, edit(TOML))
    out = tmp_path / "o"
    assert main(["llm", "run", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not out.exists()


def test_bad_checkpoint_dir_unreadable_file_foreign_dir(tmp_path, capsys) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{broken")
    f = write(tmp_path, TOML.replace("[fixed]", f"[fixed]\nmodel = '{model}'"))
    assert main(["llm", "run", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "model:" in capsys.readouterr().err
    assert main(["llm", "run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "results.parquet").write_bytes(b"x")
    assert main(["llm", "run", str(write(tmp_path)), "--out", str(foreign)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["results.parquet"]
    assert not (tmp_path / "o").exists()


def test_light_modules_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import gvgap.cli, gvgap.llm.config, gvgap.experiments.llm, gvgap.sweep.llm_run\n"
        "from gvgap.sweep.spec import load_spec\n"
        "spec = load_spec('sims/llm_tiny.toml')\n"
        "assert spec.experiment == 'llm' and len(spec.runs()) >= 15\n"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root)},
    )
    assert res.returncode == 0, res.stderr


def test_shipped_llm_files_validate() -> None:
    from gvgap.experiments import llm
    from gvgap.experiments.llm import SETTINGS
    from gvgap.sweep.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    tiny = load_spec(str(root / "sims" / "llm_tiny.toml"))
    assert {c["task"] for c in tiny.configs} == {"readout", "short", "rouge"}
    assert tiny.seeds == SETTINGS["seeds"] >= 5 and tiny.instance_seed == SETTINGS["instance_seed"]
    assert {k: v for k, v in tiny.configs[0].items() if k != "task"} == {
        k: v for k, v in load_spec("llm").configs[0].items() if k != "task"
    }
    for name, design in (("llm_readout2", "CONFIRM2"), ("llm_pairs", "PAIRS")):
        spec = load_spec(str(root / "sims" / f"{name}.toml"))  # the file is the named design
        want = getattr(llm, design)
        assert (spec.seeds, spec.instance_seed) == (want["seeds"], want["instance_seed"])
        grid = {k: sorted({c[k] for c in spec.configs}) for k in want["grid"]}
        assert grid == {k: sorted(v) for k, v in want["grid"].items()}
        assert all({**c, **want["fixed"]} == c for c in spec.configs)
    gpu = load_spec(str(root / "sims" / "llm_gpu.toml"))
    assert all(c["device"] == "cuda" and c["dtype"] == "bfloat16" for c in gpu.configs)


def test_ctrl_c_on_workers_is_one_line_exit_130_and_resumes_to_the_same_table(
    done, tmp_path
) -> None:
    """Ctrl-C to the process group of a 2-worker `gvgap llm run` once a run is stored: one
    line, exit 130, no process left; the same command then finishes the sweep, and its runs
    shared with the fixture's sweep carry the fixture's numbers."""
    from test_sweep_reliability import INTERRUPTED, _interrupt

    _, _, df = done
    f = write(tmp_path, TOML.replace("seeds = 2", "seeds = 8"))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gvgap.cli", "llm", "run", str(f), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    err = _interrupt(proc, out / "runs", None)
    lines = err.splitlines()
    assert proc.returncode == 130 and lines[-1] == INTERRUPTED, (proc.returncode, err)
    assert "Traceback" not in err and sum("interrupted" in ln for ln in lines) == 1, err
    stored = len(list((out / "runs").glob("*.json")))
    assert 0 < stored < 16
    again = subprocess.run([*cmd, "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    full = pd.read_parquet(out / "results.parquet")
    assert full["run_id"].nunique() == 16
    shared = full[full["run_id"].isin(set(df["run_id"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(df.reset_index(drop=True), shared)


def test_sampling_diagnosis_per_cell_matches_the_run(done, capsys) -> None:
    """``benchmarks/llm_sampling.py`` at the run's own (T, N): one row per cell, and the global
    RM's label accuracy is the report's ``rm_global/label_accuracy`` (same samples, same RM)."""
    _, out, df = done
    bench = _bench("llm_sampling")
    bench.main(str(out), [(1.0, int(FIXED["online_samples"]))])  # the default temperature 1
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(r[0] for r in rows) == ["readout", "short"]
    for row in rows:
        want = df[
            (df.task == row[0]) & (df.pipeline == "rm_global") & (df.metric == "label_accuracy")
        ]
        assert float(row[5]) == pytest.approx(float(want["value"].mean()), abs=5e-4)
