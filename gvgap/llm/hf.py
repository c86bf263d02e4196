"""The paper's pipeline on any local Hugging Face causal LM and a local preference dataset,
through TRL's trainers (``gvgap llm hf --model DIR --data FILE.jsonl --out DIR``).

The route practitioners already trust, with the same stages and the same labeller metrics as
:mod:`gvgap.llm.pipeline` (where no gold reward exists, the learned RM is the judge):

1. global RM: ``AutoModelForSequenceClassification`` (one label) from the model directory,
   trained by TRL's ``RewardTrainer`` (Bradley–Terry) on the training pairs;
2. offline DPO: TRL's ``DPOTrainer`` (β, reference = the model itself, reference log-probs
   precomputed);
3. online DPO, one round (docs/theory.md §7): N completions per training prompt sampled from the
model
   at temperature T (``generate``), the best and the worst by the RM form a pair, then the
   same ``DPOTrainer`` from the model;
4. metrics (``metrics.json``): validation likelihood and accuracy of the global RM and of
   DPO's implicit reward β (log π_dpo − log π_ref) on held-out pairs (split by prompt), the
   online pairs kept and distinct samples, and each policy's mean RM score and k1 KL on
   fresh samples of the validation prompts.

The dataset is JSON lines ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL's
preference format; the completions are appended to the prompt as text). Every stage's model
is saved with ``save_pretrained`` under ``DIR/<stage>``. Tested on a tiny GPT-NeoX saved from
config with a word-level tokenizer and a jsonl written from a synthetic task
(:func:`save_synthetic_model`, :func:`write_jsonl`).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gvgap.atomic import atomic_write
from gvgap.errors import UserError, check_choice, check_range

KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class HFConfig:
    """One run of the HF route.

    Attributes:
        model: local directory of a causal LM and its tokenizer (``save_pretrained``).
        data: JSON-lines preference file (module docstring).
        beta: KL strength β of DPO.
        lr: learning rate of every trainer.
        batch_size: pairs per step.
        rm_steps: RewardTrainer steps.
        dpo_steps: DPOTrainer steps (offline and online alike).
        online_samples: N samples per prompt in online DPO.
        online_temperature: sampling temperature T.
        max_new_tokens: longest sampled completion.
        val_fraction: share of the prompts held out for the metrics.
        seed: trainers' and sampling seed.
        device: ``cpu`` or ``cuda``.
    """

    model: str
    data: str
    beta: float = 0.05
    lr: float = 1e-5
    batch_size: int = 8
    rm_steps: int = 100
    dpo_steps: int = 100
    online_samples: int = 4
    online_temperature: float = 1.0
    max_new_tokens: int = 64
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """Ranges and readable inputs; UserError naming the field."""
        rules = {
            "beta": (1e-3, 1e3),
            "lr": (1e-10, 1.0),
            "batch_size": (1, 65536),
            "rm_steps": (1, 10**7),
            "dpo_steps": (1, 10**7),
            "online_samples": (2, 256),
            "online_temperature": (0.01, 100.0),
            "max_new_tokens": (1, 65536),
            "val_fraction": (0.01, 0.5),
            "seed": (0, 2**62),
        }
        for name, (lo, hi) in rules.items():
            check_range(f"--{name.replace('_', '-')}", getattr(self, name), lo, hi)
        check_choice("--device", self.device, ("cpu", "cuda"))
        if not (Path(self.model) / "config.json").is_file():
            raise UserError(f"--model: {self.model!r} is not a directory with config.json")


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """The preference rows of a JSON-lines file.

    Raises:
        UserError: unreadable file, a line that is not JSON, or a row without the three
            string fields (naming the line).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--data {path}: cannot read ({type(exc).__name__})") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"--data {path}: line {i} is not JSON") from None
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in KEYS):
            raise UserError(f"--data {path}: line {i} needs string fields {', '.join(KEYS)}")
        rows.append({k: row[k] for k in KEYS})
    if len({r["prompt"] for r in rows}) < 4:
        raise UserError(f"--data {path}: at least 4 distinct prompts are needed, got {len(rows)}")
    return rows


def split_by_prompt(rows: list[dict], fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation) rows; whole prompts go to one side."""
    prompts = sorted({r["prompt"] for r in rows})
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(prompts)[: max(1, round(fraction * len(prompts)))].tolist())
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


def word_tokenizer(n_content: int) -> Any:
    """A word-level tokenizer for the synthetic tasks: words ``0``…``V−1`` are the content
    tokens (ids 0…V−1), then ``<sep>``, ``<bos>``, ``<eos>``, ``<pad>``, ``<unk>``; a whitespace
    pre-tokenizer, so ``"12 345 6"`` is three words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [str(i) for i in range(n_content)] + ["<sep>", "<bos>", "<eos>", "<pad>", "<unk>"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<sep>"],
    )


def text(tokens: Any) -> str:
    """Token ids → words ``"3 1 4"``."""
    return " ".join(str(int(t)) for t in tokens)


def save_synthetic_model(path: str | Path, n_content: int, preset: str, seed: int) -> Path:
    """A GPT-NeoX of ``preset`` from config (random init from ``seed``) with the word tokenizer
    of :func:`word_tokenizer`, saved to ``path`` (``save_pretrained``)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from gvgap.llm.config import PRESETS
    from gvgap.llm.model import neox_config

    tok = word_tokenizer(n_content)
    cfg = neox_config(PRESETS[preset], len(tok), 512)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        lm = GPTNeoXForCausalLM(cfg)
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def write_jsonl(task: Any, path: str | Path, n_pairs: int, seed: int) -> Path:
    """``n_pairs`` preference rows from a synthetic task: two demonstrator samples per prompt,
    labelled by the gold BT model (the prompt ends with ``<sep>`` and a space)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(task.train_prompts), (n_pairs,), generator=gen)
    x = task.train_prompts[idx]
    a, b = task.demonstrate(x, gen), task.demonstrate(x, gen)
    a_wins = task.gold_wins(x, a, b, gen)
    lines = []
    for i in range(n_pairs):
        c, r = (a[i], b[i]) if a_wins[i] else (b[i], a[i])
        row = {"prompt": f"<bos> {text(x[i])} <sep> ", "chosen": text(c), "rejected": text(r)}
        lines.append(json.dumps(row) + "\n")
    atomic_write(path, "".join(lines))
    return Path(path)


def _dataset(rows: list[dict], joined: bool) -> Any:
    import datasets

    if joined:  # the RewardTrainer scores whole texts
        rows = [
            {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
            for r in rows
        ]
    return datasets.Dataset.from_list(rows)


def _args(cls: Any, cfg: HFConfig, out: Path, steps: int, **kw: Any) -> Any:
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        max_steps=steps,
        learning_rate=cfg.lr,
        seed=cfg.seed,
        use_cpu=cfg.device == "cpu",
        report_to=[],
        save_strategy="no",
        logging_steps=10**9,
        dataloader_num_workers=0,
        **kw,
    )


def train_rm(cfg: HFConfig, tok: Any, rows: list[dict], out: Path) -> Any:
    """The global RM (``RewardTrainer``), saved to ``out/global_rm``."""
    import trl
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(
        cfg.model, num_labels=1, local_files_only=True
    )
    rm.config.pad_token_id = tok.pad_token_id
    args = _args(trl.RewardConfig, cfg, out / ".trl", cfg.rm_steps)
    trainer = trl.RewardTrainer(
        model=rm, args=args, train_dataset=_dataset(rows, True), processing_class=tok
    )
    trainer.train()
    rm.save_pretrained(out / "global_rm")
    return rm


def train_dpo(cfg: HFConfig, tok: Any, policy: Any, rows: list[dict], out: Path, name: str) -> Any:
    """DPO of a copy of ``policy`` against ``policy`` (``DPOTrainer``), saved to ``out/name``."""
    import trl

    lm = copy.deepcopy(policy)
    args = _args(
        trl.DPOConfig,
        cfg,
        out / ".trl",
        cfg.dpo_steps,
        beta=cfg.beta,
        precompute_ref_log_probs=True,
    )
    trainer = trl.DPOTrainer(
        model=lm,
        ref_model=copy.deepcopy(policy),
        args=args,
        train_dataset=_dataset(rows, False),
        processing_class=tok,
    )
    trainer.train()
    lm.save_pretrained(out / name)
    return lm


def sample_texts(cfg: HFConfig, tok: Any, lm: Any, prompts: list[str], n: int) -> list[list[str]]:
    """``n`` completions (text, special tokens dropped) per prompt at the online temperature."""
    import torch

    out = []
    with torch.random.fork_rng():  # HF generate draws from the global RNG: fork and restore
        torch.manual_seed(cfg.seed)
        for p in prompts:
            ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"].to(lm.device)
            gen = lm.generate(
                ids.repeat(n, 1),
                do_sample=True,
                temperature=cfg.online_temperature,
                top_k=0,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
            out.append(tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True))
    return out


def scores(tok: Any, rm: Any, texts: list[str]) -> np.ndarray:
    """RM scores of whole texts, ``(n,)``."""
    import torch

    rm.eval()
    with torch.no_grad():
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return (
            rm(**{k: v.to(rm.device) for k, v in batch.items()}).logits[:, 0].double().cpu().numpy()
        )


def seq_logp(tok: Any, lm: Any, prompt: str, completions: list[str]) -> np.ndarray:
    """log π(completion | prompt) under the full vocabulary (the TRL route's law), ``(n,)``."""
    import torch

    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    lm.eval()
    with torch.no_grad():
        for c in completions:
            c_ids = tok(c, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + c_ids], device=lm.device)
            logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].double(), -1)
            tgt = ids[0, 1:]
            out.append(float(logp[len(p_ids) - 1 :].gather(1, tgt[len(p_ids) - 1 :, None]).sum()))
    return np.array(out)


def _lik(delta: np.ndarray) -> dict[str, float]:
    sig = 1 / (1 + np.exp(-delta))
    n = max(len(delta), 1)
    return {
        "val_likelihood": float(sig.mean()),
        "val_likelihood_se": float(sig.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "val_accuracy": float((delta > 0).mean()),
    }


def run_hf(cfg: HFConfig, out: str | Path) -> dict[str, float]:
    """The route of the module docstring; writes ``out/metrics.json`` and the stage models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg.validate()
    rows = read_jsonl(cfg.data)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: exists and is not empty; choose another --out")
    tok = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    sft = AutoModelForCausalLM.from_pretrained(cfg.model, local_files_only=True)
    train, val = split_by_prompt(rows, cfg.val_fraction, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    rm = train_rm(cfg, tok, train, out)
    dpo = train_dpo(cfg, tok, sft, train, out, "dpo")
    # one online round: best vs worst of N samples by the RM, then DPO from the model
    prompts = sorted({r["prompt"] for r in train})
    samples = sample_texts(cfg, tok, sft, prompts, cfg.online_samples)
    pairs, distinct = [], []
    for p, ys in zip(prompts, samples, strict=True):
        s = scores(tok, rm, [p + y for y in ys])
        distinct.append(len(set(ys)))
        if s.max() > s.min():
            pairs.append(
                {"prompt": p, "chosen": ys[int(s.argmax())], "rejected": ys[int(s.argmin())]}
            )
    metrics: dict[str, float] = {
        "online_dpo_sft/pairs_kept": len(pairs) / len(prompts),
        "online_dpo_sft/distinct": float(np.mean(distinct)),
        "online_dpo_sft/n_pairs": float(len(pairs)),
    }
    online = train_dpo(cfg, tok, sft, pairs, out, "online_dpo_sft") if pairs else sft
    for name, delta in _val_deltas(cfg, tok, rm, dpo, sft, val).items():
        metrics.update({f"rm_{name}/{k}": v for k, v in _lik(delta).items()})
    for name, lm in (("sft", sft), ("dpo", dpo), ("online_dpo_sft", online)):
        metrics.update({f"{name}/{k}": v for k, v in _policy(cfg, tok, lm, sft, rm, val).items()})
    atomic_write(out / "metrics.json", json.dumps({"config": asdict(cfg), "metrics": metrics}))
    return metrics


def _val_deltas(cfg, tok, rm, dpo, sft, val) -> dict[str, np.ndarray]:
    """Δ r̂ = r̂(chosen) − r̂(rejected) on the validation pairs, global RM and DPO implicit."""
    glob = np.array(
        [scores(tok, rm, [r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]]) for r in val]
    )
    imp = []
    for r in val:
        lp = seq_logp(tok, dpo, r["prompt"], [r["chosen"], r["rejected"]])
        ref = seq_logp(tok, sft, r["prompt"], [r["chosen"], r["rejected"]])
        imp.append(cfg.beta * (lp - ref))
    imp = np.array(imp)
    return {"global": glob[:, 0] - glob[:, 1], "dpo": imp[:, 0] - imp[:, 1]}


def _policy(cfg, tok, lm, sft, rm, val) -> dict[str, float]:
    """Mean RM score and k1 KL(π‖π_ref) of 4 samples per validation prompt (the completion's
    words, its end token left out)."""
    prompts = sorted({r["prompt"] for r in val})
    samples = sample_texts(cfg, tok, lm, prompts, 4)
    r, kl = [], []
    for p, ys in zip(prompts, samples, strict=True):
        r.append(scores(tok, rm, [p + y for y in ys]).mean())
        kl.append((seq_logp(tok, lm, p, ys) - seq_logp(tok, sft, p, ys)).mean())
    return {"rm_score": float(np.mean(r)), "kl_k1": float(np.mean(kl))}
