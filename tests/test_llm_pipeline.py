"""`gvgap llm run`: the results contract, resume after a kill, bad input (exit 2, no writes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
import pandas as pd

from gvgap.cli import main
from gvgap.llm.config import spec_from_data
from gvgap.llm.pipeline import STAGES, StopRunError, run_spec

FIXED = {
    "vocab": 5,
    "prompt_len": 3,
    "completion_len": 3,
    "n_train_prompts": 8,
    "n_eval_prompts": 4,
    "sft_steps": 8,
    "rm_steps": 4,
    "dpo_steps": 4,
    "online_steps": 3,
    "batch_size": 4,
    "online_samples": 3,
    "online_rounds": 2,
    "bon_n": [1, 3],
    "eval_samples": 2,
}
TOML = '[llm]\ntasks = ["sum", "short"]\nseeds = 1\n[fixed]\n' + "\n".join(
    f"{k} = {v}" for k, v in FIXED.items()
)


def spec(tasks: list[str] = ["sum"]):  # noqa: B006
    return spec_from_data({"llm": {"tasks": tasks, "seeds": 1}, "fixed": FIXED}, "test")


def test_resume_after_kill_gives_the_same_table(tmp_path: Path) -> None:
    full = run_spec(spec(), tmp_path / "a")
    cols = {"run_id", "experiment", "task", "seed", "instance_seed", "pipeline", "metric", "value"}
    assert cols <= set(full.columns) and set(full["experiment"]) == {"llm"}
    pipes = set(full["pipeline"])
    assert {"sft", "dpo", "online_dpo_sft", "online_dpo_iter", "online_dpo_gold"} <= pipes
    assert {"bon_global_n3", "bon_local_n1", "bon_dpo_n3", "rm_global", "rm_gold"} <= pipes
    # killed right after "dpo" was checkpointed, then resumed
    with pytest.raises(StopRunError):
        run_spec(spec(), tmp_path / "b", stop_after="dpo")
    stages = next((tmp_path / "b" / "stages").iterdir())
    assert sorted(p.name for p in stages.iterdir()) == sorted(
        ["sft", "pairs", "global_rm", "local_rm", "dpo"]
    )
    assert not (tmp_path / "b" / "results.parquet").exists()
    again = run_spec(spec(), tmp_path / "b")
    pd.testing.assert_frame_equal(full, again)
    assert len(list(stages.iterdir())) == len(STAGES)


def test_cli_run_writes_table_figure_report(tmp_path: Path, capsys) -> None:
    f = tmp_path / "p.toml"
    f.write_text(TOML)
    assert main(["llm", "run", str(f), "--out", str(tmp_path / "o")]) == 0
    out = tmp_path / "o"
    df = pd.read_parquet(out / "results.parquet")
    assert set(df["task"]) == {"sum", "short"}
    for name in ("report.md", "report.html", "figures/llm_table.png"):
        assert (out / name).is_file()
    assert "online_dpo_sft" in (out / "report.md").read_text()
    err = capsys.readouterr().err
    assert "eta" in err and "evaluate done" in err
    # a second run in the same DIR resumes every stage and rewrites the same table
    assert main(["llm", "run", str(f), "--out", str(out)]) == 0
    assert "resumed" in capsys.readouterr().err
    pd.testing.assert_frame_equal(df, pd.read_parquet(out / "results.parquet"))
    # `gvgap report DIR` on an llm run directory renders the LLM section with its figure
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "LLM-scale pipeline" in text and "llm_table.png" in text


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ("sft_steps = 8", "sft_steps = -1"),
        ("sft_steps = 8", "sft_steps = 'many'"),
        ("sft_steps = 8", "sft_stepz = 8"),
        ("bon_n = [1, 3]", "bon_n = [0]"),
        ("vocab = 5", "vocab = 5\nmodel = 'nope'"),
        ("vocab = 5", "vocab = 5\ndevice = 'cuda'"),
        ("seeds = 1", "seeds = 0"),
        ('tasks = ["sum", "short"]', 'tasks = ["chess"]'),
        ("[fixed]", "[fixd]"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    tmp_path: Path,
    capsys,
    edit: str,
    field: str,
) -> None:
    f = tmp_path / "p.toml"
    f.write_text(TOML.replace(edit, field))
    out = tmp_path / "o"
    assert main(["llm", "run", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gvgap: error:")
    name = field.split("=")[0].strip().strip("[]")
    assert name in err or "cuda" in err or "model" in err
    assert not out.exists()


def test_unreadable_file_and_foreign_dir(tmp_path: Path, capsys) -> None:
    assert main(["llm", "run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
    f = tmp_path / "p.toml"
    f.write_text(TOML)
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "results.parquet").write_bytes(b"x")
    assert main(["llm", "run", str(f), "--out", str(foreign)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["results.parquet"]


def test_core_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import gvgap.cli, gvgap.llm.config, gvgap.llm.cli\n"
        "gvgap.llm.config.spec_from_data({}, 'x')\n"
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


def test_shipped_pipeline_files_validate() -> None:
    from gvgap.llm.config import load_spec

    root = Path(__file__).resolve().parents[1]
    tiny = load_spec(root / "sims" / "llm_tiny.toml")
    assert {c.task for c in tiny.configs} == {"count", "short", "rouge"}
    gpu = load_spec(root / "sims" / "llm_gpu.toml")
    assert all(c.device == "cuda" and c.dtype == "bfloat16" for c in gpu.configs)


@pytest.mark.slow  # a subprocess importing transformers; the code path it times is tested fast
def test_gpu_benchmark_runs_on_cpu_with_tiny_shapes() -> None:
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "benchmarks/llm_gpu.py",
        "--presets",
        "tiny",
        "--prompt",
        "4",
        "--completion",
        "4",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--no-trl",
    ]
    res = subprocess.run(
        cmd, cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root)}, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "tiny         gvgap" in res.stdout and "tiny         plain" in res.stdout


@pytest.mark.slow  # two CLI subprocesses; the same resume is covered fast by the hook test
def test_sigkill_mid_run_then_resume_gives_the_same_table(tmp_path: Path) -> None:
    import signal
    import time

    root = Path(__file__).resolve().parents[1]
    f = tmp_path / "p.toml"
    f.write_text(TOML.replace('"sum", "short"', '"sum"'))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gvgap.cli", "llm", "run", str(f), "--out", str(out)]
    env = {"PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("stages/*/global_rm/info.json")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.parquet").exists(), "the run finished before it was killed"
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "global_rm resumed" in res.stderr
    again = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(again, run_spec(spec(), tmp_path / "ref"))
