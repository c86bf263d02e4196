"""Throughput of gvgap's DPO step and sampler on Pythia-shaped models (GPU; run by llm_gpu.sh).

Per preset (``pythia-410m`` by default; ``--presets pythia-410m pythia-1.4b`` for both), batch
8 preference pairs, 256 prompt + 256 completion tokens, bf16 autocast (float32 master
weights, as TRL's ``bf16=True``):

- ``gvgap``: :func:`gvgap.llm.stages.run_dpo` (the accelerate loop of
  :func:`gvgap.llm.train.fit` on :func:`gvgap.nn.losses.dpo_rows`) — the exact code path of
  ``gvgap llm run``: chosen and rejected in one fused forward, reference
  log-probs precomputed once per data set (timed separately as ``ref_pass``), the output layer
  on completion positions only, AdamW + gradient clipping.
- ``plain``: a plain PyTorch DPO loop measured in the same run: separate chosen / rejected
  forwards, reference forwards every step, full logits.
- ``trl``: TRL's DPOTrainer on the same model and batch when ``trl`` imports (TRL ≥ 1.16
  arguments: no ``max_prompt_length``; a word-level tokenizer with a whitespace
  pre-tokenizer, so each number of the text rows is one id); any failure is printed as a
  skip with its reason. The ratio ``trl s/step ÷ gvgap s/step`` is printed (goal ≥ 1.5).
- ``sample``: gvgap's KV-cache sampler (:func:`gvgap.llm.model.sample`, the one law over
  content tokens) drawing 256-token completions for 8 × 8 prompts — sampling dominates online
  DPO, so it is timed too (completions/s and tokens/s).

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
    cfg = LLMConfig(batch_size=len(pairs["chosen"]), lr=1e-6, beta=0.05, pref_lr=1e-6)
    task = SimpleNamespace(prefix_len=prompt, n_content=None, cfg=SimpleNamespace(H=0))
    pairs = {k: v.to(placement.device) for k, v in pairs.items()}
    ref_t = timed(lambda: st.ref_logps(lm, pairs, task, placement), 1, placement.device)
    ref = st.ref_logps(lm, pairs, task, placement)
    gen = torch.Generator().manual_seed(0)
    clock: list[float] = []

    def tick(_lm, k: int) -> None:  # steady state: from the end of step 1 to the last step
        if placement.is_cuda:
            torch.cuda.synchronize()
        clock.append(time.perf_counter())

    st.run_dpo(cfg, task, lm, pairs, ref, steps + 1, gen, placement, on_step=tick)
    return (clock[-1] - clock[1]) / steps, ref_t


def bench_sample(lm, prompt: int, completion: int, placement) -> float:
    """Seconds to sample 64 completions of ``completion`` tokens (8 prompts × 8) with gvgap's
    KV-cache sampler over the content tokens."""
    from gvgap.llm.model import sample

    vocab = lm.config.vocab_size - 8
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (64, prompt), generator=gen)
    return timed(lambda: sample(lm, x, completion, vocab, 1.0, gen, placement), 1, placement.device)


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


def bench_trl(
    preset: str, batch: int, prompt: int, completion: int, steps: int, device: str = "cuda"
) -> float:
    """Seconds per step of TRL's DPOTrainer (raises when TRL or its API is unavailable)."""
    import copy

    import datasets
    import trl

    from gvgap.llm.hf import word_tokenizer

    cuda = device != "cpu"
    placement = resolve(device, "bfloat16" if cuda else "float32")
    lm = build_lm(preset, PRESETS[preset].vocab or 64, prompt + completion + 1, 0, placement)
    tok = word_tokenizer(lm.config.vocab_size - 5)  # words 0…V−6 + 5 special tokens = V ids
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
        bf16=cuda,
        use_cpu=not cuda,
        max_length=prompt + completion + 1,
        max_steps=steps + 2,
        beta=0.05,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        learning_rate=1e-6,
    )
    trainer = trl.DPOTrainer(
        model=lm, ref_model=copy.deepcopy(lm), args=args, train_dataset=data, processing_class=tok
    )
    t0 = []
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            t0.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    return (t0[-1] - t0[1]) / (len(t0) - 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["pythia-410m"])
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
        t_sample = bench_sample(lm, a.prompt, a.completion, placement)
        if not a.no_trl:
            try:
                rows["trl"] = bench_trl(preset, a.batch, a.prompt, a.completion, a.steps, a.device)
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
            + (
                f", gvgap/trl {rows['trl'] / rows['gvgap']:.2f}x (goal >= 1.5)"
                if "trl" in rows
                else ""
            )
        )
        print(
            f"{preset:<12} sample {64 / t_sample:8.1f} completions/s "
            f"{64 * a.completion / t_sample:10.0f} tokens/s ({a.completion}-token completions)"
        )
        del lm
        if placement.is_cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
