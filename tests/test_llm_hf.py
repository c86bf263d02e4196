"""The field's libraries: numerical parity of gvgap's DPO and reward losses with TRL's trainers,
and the HF route (a tiny GPT-NeoX saved from config + a generated jsonl, through TRL)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from gvgap.errors import UserError  # noqa: E402
from gvgap.llm.config import LLMConfig  # noqa: E402
from gvgap.llm.hf import (  # noqa: E402
    HFConfig,
    read_jsonl,
    run_hf,
    save_synthetic_model,
    word_tokenizer,
    write_jsonl,
)
from gvgap.llm.model import logp_completion, rm_scores  # noqa: E402
from gvgap.llm.tasks import make_task  # noqa: E402
from gvgap.nn import losses  # noqa: E402
from gvgap.nn.device import resolve  # noqa: E402

P = resolve("cpu", "float32")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny GPT-NeoX + word tokenizer saved from config, and 40 rows of readout pairs."""
    tmp = tmp_path_factory.mktemp("hf")
    cfg = LLMConfig(
        task="readout",
        vocab=6,
        prompt_len=3,
        completion_len=4,
        n_train_prompts=40,
        n_eval_prompts=4,
    )
    task = make_task(cfg, 0)
    model = save_synthetic_model(tmp / "model", 6, "tiny", seed=0)
    data = write_jsonl(task, tmp / "prefs.jsonl", 40, seed=1)
    return tmp, model, data


def test_word_tokenizer_splits_words_and_special_tokens() -> None:
    tok = word_tokenizer(6)
    ids = tok("<bos> 1 2 <sep> 3 4<eos>")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "1", "2", "<sep>", "3", "4", "<eos>"]
    assert ids[1:3] == [1, 2]  # content words are their own ids
    assert len(tok("12 345 6")["input_ids"]) == 3  # a pre-tokenizer: three words, not one id


def _trainer_batch(model_dir: Path, rows: list[dict]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    ref = copy.deepcopy(lm)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the policy off the reference
        for prm in lm.parameters():
            prm.add_(0.05 * torch.randn(prm.shape, generator=gen))
    args = trl.DPOConfig(
        output_dir="/tmp/gvgap-trl-parity", per_device_train_batch_size=8, max_steps=1,
        beta=0.1, use_cpu=True, report_to=[], save_strategy="no", dataloader_num_workers=0,
    )  # fmt: skip
    data = datasets.Dataset.from_list(rows[:8])
    trainer = trl.DPOTrainer(
        model=lm, ref_model=ref, args=args, train_dataset=data, processing_class=tok
    )
    return tok, trainer, next(iter(trainer.get_train_dataloader()))


def test_dpo_loss_and_gradients_match_trl(setup) -> None:
    """TRL 1.16's DPOTrainer.compute_loss vs gvgap's dpo_rows on logp_completion of the same
    rows (full vocabulary, the TRL route's law): equal losses, gradients to float32 rounding."""
    _, model, data = setup
    _, trainer, batch = _trainer_batch(model, read_jsonl(data))
    lm = trainer.model
    ids, mask = batch["input_ids"], batch["completion_mask"]
    assert bool((mask.sum(1) == mask.sum(1)[0]).all())  # equal lengths: no padding
    prefix = int((mask[0] == 0).sum())
    lm.zero_grad()
    theirs = trainer.compute_loss(lm, batch)
    theirs.backward()
    g_trl = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    lp = logp_completion(lm, ids, prefix, P, None)
    with torch.no_grad():
        ref = logp_completion(trainer.ref_model, ids, prefix, P, None)
    k = len(ids) // 2
    ours = losses.dpo_rows(lp[:k], lp[k:], ref[:k], ref[k:], 0.1).mean()
    ours.backward()
    t, o = float(theirs.detach()), float(ours.detach())
    assert abs(t - o) < 1e-6 and abs(o - 0.6931) > 1e-3
    for a, p in zip(g_trl, lm.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-7, rtol=1e-4)


def test_reward_loss_matches_trl(setup) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, model, data = setup
    rows = read_jsonl(data)[:8]
    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    rm = AutoModelForSequenceClassification.from_pretrained(
        model, num_labels=1, local_files_only=True
    )
    rm.config.pad_token_id = tok.pad_token_id
    joined = [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows
    ]
    args = trl.RewardConfig(
        output_dir="/tmp/gvgap-trl-parity", per_device_train_batch_size=8, max_steps=1,
        use_cpu=True, report_to=[], save_strategy="no", dataloader_num_workers=0,
    )  # fmt: skip
    trainer = trl.RewardTrainer(
        model=rm, args=args, train_dataset=datasets.Dataset.from_list(joined), processing_class=tok
    )
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(rm, batch)
    s = rm_scores(rm, batch["input_ids"], P)  # our read-out: the last position (no padding)
    ours = losses.bt_rows(s[:8] - s[8:]).mean()
    assert abs(float(theirs.detach()) - float(ours.detach())) < 1e-6


def test_hf_route_runs_end_to_end(setup) -> None:
    tmp, model, data = setup
    cfg = HFConfig(
        model=str(model), data=str(data), rm_steps=2, dpo_steps=2, batch_size=4,
        online_samples=3, max_new_tokens=4, val_fraction=0.2, lr=1e-3,
    )  # fmt: skip
    metrics = run_hf(cfg, tmp / "out")
    for key in ("rm_global/val_likelihood", "rm_dpo/val_likelihood", "online_dpo_sft/pairs_kept"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["sft/kl_k1"] == 0.0  # π = π_ref: every log-ratio is 0
    for stage in ("global_rm", "dpo", "online_dpo_sft"):
        assert (tmp / "out" / stage / "config.json").is_file()
    saved = json.loads((tmp / "out" / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(metrics)
    with pytest.raises(UserError, match="not empty"):
        run_hf(cfg, tmp / "out")


def test_bad_jsonl_and_model_are_one_line(setup, tmp_path) -> None:
    _, model, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(UserError, match="line 1 needs string fields"):
        read_jsonl(bad)
    bad.write_text("not json\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        read_jsonl(bad)
    with pytest.raises(UserError, match="--model"):
        HFConfig(model=str(tmp_path), data=str(bad)).validate()
    with pytest.raises(UserError, match="--beta"):
        HFConfig(model=str(model), data=str(bad), beta=float("nan")).validate()


def test_gpu_benchmark_runs_on_cpu_with_tiny_shapes_trl_arm_included(monkeypatch, capsys) -> None:
    """benchmarks/llm_gpu.py end to end on CPU: gvgap, plain and TRL arms (TRL 1.16 arguments,
    word tokenizer) and the sampler, with the gvgap/TRL ratio printed."""
    import runpy

    root = Path(__file__).resolve().parents[1]
    argv = ["llm_gpu.py", "--presets", "tiny", "--prompt", "4", "--completion", "4",
            "--steps", "2", "--device", "cpu"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(root / "benchmarks" / "llm_gpu.py"), run_name="__main__")
    out = capsys.readouterr().out
    for row in (
        "tiny         gvgap",
        "tiny         plain",
        "tiny         trl",
        "tiny         sample",
    ):
        assert row in out, out
    assert "gvgap/trl" in out and "skipped" not in out
