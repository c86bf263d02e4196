"""Throughput of gvgap's DPO step on Pythia-shaped models (GPU; run by llm_gpu.sh).

Per preset (``pythia-410m``, ``pythia-1.4b`` by default), batch 8 preference pairs, 256 prompt +
256 completion tokens, bf16 autocast (float32 master weights, as TRL's ``bf16=True``):

- ``gvgap``: :func:`gvgap.llm.stages.fit` on :func:`gvgap.llm.stages.dpo_row_loss` — the exact
  code path of ``gvgap llm run``: chosen and rejected in one fused forward, reference
  log-probs precomputed once per data set (timed separately as ``ref_pass``), the output layer
  on completion positions only, AdamW + gradient clipping.
- ``plain``: a plain PyTorch DPO loop measured in the same run: separate chosen / rejected
  forwards, reference forwards every step, full logits.
- ``trl``: TRL's DPOTrainer on the same model and batch when ``trl`` imports (guarded; any
  failure is printed as a skip with its reason).

Reported: samples/s (preference pairs per second), tokens/s (2 × 512 tokens per pair), and
MFU = 6 N T / (t · peak) + attention 12 L d s T / (t · peak), N = non-embedding parameters
(the output layer counted on completion tokens only: prompt logits are not needed by DPO),
T tokens per step, peak = ``--peak-tflops`` (989 dense bf16 on H100/H200).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from gvgap.llm import stages as st
from gvgap.llm.config import PRESETS, LLMConfig
from gvgap.llm.model import build_lm
from gvgap.nn.device import autocast, resolve


def model_flops(lm: torch.nn.Module, batch: int, prompt: int, completion: int) -> float:
    """Training FLOPs of one DPO step on the policy (fwd + bwd = 3 × fwd)."""
    c = lm.config
    body = sum(p.numel() for p in lm.gpt_neox.layers.parameters())
    head = lm.get_output_embeddings().weight.numel()
    seq = prompt + completion
    tokens = 2 * batch * seq
    attn = 12 * c.num_hidden_layers * c.hidden_size * seq * tokens
    return 6 * body * tokens + 6 * head * 2 * batch * completion + attn


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` after one warm-up call (CUDA synchronised)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def make_pairs(vocab: int, batch: int, prompt: int, completion: int) -> dict[str, torch.Tensor]:
    """Random rows sharing a prompt: ``chosen``, ``rejected`` ``(batch, prompt + completion)``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, prompt), generator=gen)
    ys = torch.randint(0, vocab, (2, batch, completion), generator=gen)
    return {"chosen": torch.cat([x, ys[0]], 1), "rejected": torch.cat([x, ys[1]], 1)}


def bench_gvgap(lm, pairs, prompt: int, steps: int, placement) -> tuple[float, float]:
    """(seconds per DPO step, seconds of the one-off reference pass) of gvgap's code path."""
    task = SimpleNamespace(prefix_len=prompt)
    cfg = LLMConfig(batch_size=len(pairs["chosen"]), lr=1e-6, beta=0.05)
    pairs = {k: v.to(placement.device) for k, v in pairs.items()}
    ref_t = timed(
        lambda: {k: st.logp_rows(lm, pairs[k], task, placement) for k in pairs},
        1,
        placement.device,
    )
    ref = {k: st.logp_rows(lm, pairs[k], task, placement) for k in pairs}
    loss = st.dpo_row_loss(lm, pairs, ref, cfg.beta, task, placement)
    gen = torch.Generator().manual_seed(0)
    # one fit call = `steps` optimiser steps; fit's warm-up is the timed() warm-up call
    per_call = timed(
        lambda: st.fit(lm, loss, len(pairs["chosen"]), steps, cfg, gen), 1, placement.device
    )
    return per_call / steps, ref_t


def bench_plain(lm, ref_lm, pairs, prompt: int, steps: int, placement) -> float:
    """Seconds per step of a plain PyTorch DPO loop (module docstring)."""
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-6)
    pairs = {k: v.to(placement.device) for k, v in pairs.items()}

    def logp(model, seqs):
        with autocast(placement):
            logits = model(input_ids=seqs).logits[:, prompt - 1 : -1]
        return -F.cross_entropy(
            logits.float().transpose(1, 2), seqs[:, prompt:], reduction="none"
        ).sum(1)

    def step() -> None:
        with torch.no_grad():
            rc, rr = logp(ref_lm, pairs["chosen"]), logp(ref_lm, pairs["rejected"])
        pc, pr = logp(lm, pairs["chosen"]), logp(lm, pairs["rejected"])
        loss = -F.logsigmoid(0.05 * ((pc - rc) - (pr - rr))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(lambda: [step() for _ in range(steps)], 1, placement.device) / steps


def bench_trl(preset: str, batch: int, prompt: int, completion: int, steps: int) -> float:
    """Seconds per step of TRL's DPOTrainer (raises when TRL or its API is unavailable)."""
    import datasets
    import trl
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    placement = resolve("cuda", "bfloat16")
    lm = build_lm(preset, 50304, prompt + completion, 0, placement)
    vocab = {str(i): i for i in range(lm.config.vocab_size)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="0"))
    )
    tok.pad_token, tok.eos_token = "1", "2"
    pairs = make_pairs(lm.config.vocab_size - 8, batch * (steps + 2), prompt, completion)
    words = lambda t: " ".join(map(str, t.tolist()))  # noqa: E731
    data = datasets.Dataset.from_dict(
        {
            "prompt": [words(r[:prompt]) for r in pairs["chosen"]],
            "chosen": [words(r[prompt:]) for r in pairs["chosen"]],
            "rejected": [words(r[prompt:]) for r in pairs["rejected"]],
        }
    )
    args = trl.DPOConfig(
        output_dir="/tmp/gvgap_trl_bench",
        per_device_train_batch_size=batch,
        bf16=True,
        max_length=prompt + completion,
        max_prompt_length=prompt,
        max_steps=steps + 2,
        beta=0.05,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        learning_rate=1e-6,
    )
    trainer = trl.DPOTrainer(model=lm, args=args, train_dataset=data, processing_class=tok)
    t0 = []
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            t0.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    return (t0[-1] - t0[1]) / (len(t0) - 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["pythia-410m", "pythia-1.4b"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--completion", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--no-trl", action="store_true")
    a = p.parse_args()
    placement = resolve(a.device, "bfloat16" if a.device != "cpu" else "float32")
    seq = a.prompt + a.completion
    print(
        f"DPO step, batch {a.batch} pairs x ({a.prompt}+{a.completion}) tokens, "
        f"bf16 autocast, {a.steps} timed steps, device {placement.device}"
    )
    print(f"{'preset':<12} {'impl':<6} {'s/step':>8} {'samples/s':>10} {'tokens/s':>10} {'MFU':>6}")
    for preset in a.presets:
        lm = build_lm(preset, PRESETS[preset].vocab or 64, seq, 0, placement)
        flops = model_flops(lm, a.batch, a.prompt, a.completion)
        pairs = make_pairs(lm.config.vocab_size, a.batch, a.prompt, a.completion)
        rows = {}
        t, ref_t = bench_gvgap(lm, pairs, a.prompt, a.steps, placement)
        rows["gvgap"] = t
        ref_lm = build_lm(preset, PRESETS[preset].vocab or 64, seq, 1, placement).eval()
        rows["plain"] = bench_plain(lm, ref_lm, pairs, a.prompt, a.steps, placement)
        del ref_lm
        if not a.no_trl and placement.is_cuda:
            try:
                rows["trl"] = bench_trl(preset, a.batch, a.prompt, a.completion, a.steps)
            except Exception as exc:
                print(f"{preset:<12} trl    skipped: {type(exc).__name__}: {str(exc)[:120]}")
        for impl, t in rows.items():
            mfu = flops / t / (a.peak_tflops * 1e12)
            print(
                f"{preset:<12} {impl:<6} {t:8.4f} {a.batch / t:10.1f} "
                f"{2 * a.batch * seq / t:10.0f} {100 * mfu:5.1f}%"
            )
        print(
            f"{preset:<12} gvgap reference log-probs, once per data set: "
            f"{a.batch / ref_t:.1f} pairs/s; "
            f"speed-up gvgap/plain {rows['plain'] / rows['gvgap']:.2f}x"
        )
        del lm
        if placement.is_cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
