"""The paper's pipeline as pure stages (docs/theory.md §5, §7): each is a function of a frozen
config,
its inputs and a torch.Generator derived from (seed, stage name).

SFT → preference pairs (π_ref samples, BT(gold) labels; split by prompt into a training and a
validation part, plus pairs on the held-out evaluation prompts) → global RM (scalar head, BT)
→ local RM (reference-free DPO) → offline DPO (+ an extra pass) → online DPO (N samples per
training prompt at temperature T from the starting policy, best vs worst by a labeller; one
round, as in the paper). Best-of-N lives in :mod:`gvgap.llm.evaluate`.

Losses come from :mod:`gvgap.nn.losses` (one loss module; the equations of docs/theory.md §2, β the
KL strength): SFT ``sft_rows`` (per-token NLL), global RM ``bt_rows``, local RM
``local_rm_rows`` (reference-free DPO), DPO ``dpo_rows`` with reference log-probs computed
once per data set; chosen and rejected rows share one forward. The RMs stop early on the
validation pairs (:func:`gvgap.llm.train.fit`); the DPO runs take a fixed number of steps and
record a KL frontier (policy metrics at evenly spaced steps, for the matched-KL comparison).
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gvgap.llm.config import LLMConfig
from gvgap.llm.model import build_lm, build_rm, logp_completion, rm_scores, sample
from gvgap.llm.tasks import Task
from gvgap.llm.train import fit
from gvgap.nn import losses
from gvgap.nn.device import Placement

Pairs = dict[str, torch.Tensor]
#: Logit elements (rows × positions × output vocabulary) of one no-grad forward chunk.
LOGIT_BUDGET = 2**26


def stage_gen(seed: int, name: str) -> torch.Generator:
    """The CPU generator of one stage: a child of ``seed`` keyed by the stage name."""
    ss = np.random.SeedSequence([seed, zlib.crc32(name.encode())])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def chunk_rows(lm: nn.Module, length: int) -> int:
    """Rows per no-grad forward: :data:`LOGIT_BUDGET` / (length × output vocabulary)."""
    vocab = lm.config.vocab_size if hasattr(lm, "config") else 1
    return max(1, LOGIT_BUDGET // max(1, length * vocab))


@torch.no_grad()
def logp_rows(lm: nn.Module, seqs: torch.Tensor, task: Task, placement: Placement) -> torch.Tensor:
    """log π(y|x) of many rows in chunks, no grad, ``(N,)`` float64 on CPU."""
    lm.eval()
    step = chunk_rows(lm, task.cfg.H + 1)
    out = [
        logp_completion(lm, seqs[i : i + step], task.prefix_len, placement, task.n_content)
        .double()
        .cpu()
        for i in range(0, len(seqs), step)
    ]
    lm.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@torch.no_grad()
def rm_rows(rm: nn.Module, seqs: torch.Tensor, placement: Placement) -> torch.Tensor:
    """r̂ of many rows in chunks, ``(N,)`` float64 on CPU."""
    rm.eval()
    step = chunk_rows(rm, seqs.shape[1]) * 8  # one score per position, not a vocabulary
    out = [
        rm_scores(rm, seqs[i : i + step], placement).double().cpu()
        for i in range(0, len(seqs), step)
    ]
    rm.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def sample_rows(
    lm: nn.Module,
    task: Task,
    prompts: torch.Tensor,
    n: int,
    temperature: float,
    gen: torch.Generator,
    placement: Placement,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n completions per prompt: ``(len(prompts)·n, P)`` prompts (prompt-major) and ``(…, H)``."""
    rep = prompts.repeat_interleave(n, dim=0)
    step = chunk_rows(lm, 1) // 4
    ys = [
        sample(
            lm,
            task.prefix(rep[i : i + step]),
            task.cfg.H,
            task.n_content,
            temperature,
            gen,
            placement,
        )
        for i in range(0, len(rep), step)
    ]
    return rep, torch.cat(ys) if ys else torch.zeros((0, task.cfg.H), dtype=torch.long)


def new_lm(
    cfg: LLMConfig, task: Task, seed: int, placement: Placement, model: str = ""
) -> nn.Module:
    """The initial LM of a run (every rank builds the same one); ``model`` overrides cfg.model."""
    init = int(stage_gen(seed, "init").initial_seed())
    return build_lm(model or cfg.model, task.vocab_size, task.seq_len, init, placement)


# --------------------------------------------------------------------------- stages


def stage_sft(
    cfg: LLMConfig,
    task: Task,
    seed: int,
    placement: Placement,
    model: str = "",
    ckpt: Path | None = None,
) -> tuple[nn.Module, dict]:
    """π_ref: maximum likelihood on demonstrations of the known generator (per-token NLL)."""
    gen = stage_gen(seed, "sft")
    prompts = task.train_prompts.repeat_interleave(cfg.demos_per_prompt, dim=0)
    seqs = task.join(prompts, task.demonstrate(prompts, gen))
    lm = new_lm(cfg, task, seed, placement, model)

    def row_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        lp = logp_completion(model, seqs[idx], task.prefix_len, placement, task.n_content)
        return losses.sft_rows(lp, cfg.H)

    return lm, fit(lm, row_loss, len(seqs), cfg.sft_steps, cfg, gen, lr=cfg.lr, ckpt_dir=ckpt)


def label_pairs(
    task: Task, prompts: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, gen: torch.Generator
) -> Pairs:
    """Label (y_a, y_b) by the gold BT model: a wins with probability σ(r*(a) − r*(b))."""
    a_wins = task.gold_wins(prompts, y_a, y_b, gen)
    chosen = torch.where(a_wins[:, None], y_a, y_b)
    rejected = torch.where(a_wins[:, None], y_b, y_a)
    return {"chosen": task.join(prompts, chosen), "rejected": task.join(prompts, rejected)}


def n_val_prompts(cfg: LLMConfig) -> int:
    """Training prompts whose pairs form the validation split (the last ones)."""
    return max(2, round(cfg.val_fraction * cfg.n_train_prompts))


def fit_prompts(task: Task) -> torch.Tensor:
    """The training prompts of the fitting split (every stage that trains uses these)."""
    return task.train_prompts[: len(task.train_prompts) - n_val_prompts(task.cfg)]


def stage_pairs(
    cfg: LLMConfig, task: Task, sft: nn.Module, seed: int, placement: Placement
) -> dict[str, Pairs]:
    """Preference pairs from π_ref samples (temperature 1) labelled by BT(gold).

    Returns ``{"train": …, "val": …, "test": …}``: pairs of the fitting prompts, of the
    validation prompts (early stopping) and of the held-out evaluation prompts (reported).
    """
    gen = stage_gen(seed, "pairs")
    k = n_val_prompts(cfg)
    splits = {
        "train": task.train_prompts[:-k],
        "val": task.train_prompts[-k:],
        "test": task.eval_prompts,
    }
    out = {}
    for split, prompts in splits.items():
        rep, ys = sample_rows(sft, task, prompts, 2 * cfg.pairs_per_prompt, 1.0, gen, placement)
        out[split] = label_pairs(task, rep[0::2], ys[0::2], ys[1::2], gen)
    return out


def _fused(pairs: Pairs, idx: torch.Tensor) -> torch.Tensor:
    """Chosen rows then rejected rows, ``(2b, L)``: one forward for both."""
    return torch.cat([pairs["chosen"][idx], pairs["rejected"][idx]])


def _val(
    module: nn.Module, pairs: Pairs, row_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor]
) -> Callable[[], float]:
    """Mean validation loss of ``module`` over every pair of ``pairs`` (no grad, chunks of 256
    pairs)."""

    @torch.no_grad()
    def val() -> float:
        n = len(pairs["chosen"])
        return float(
            sum(row_loss(module, torch.arange(i, min(i + 256, n))).sum() for i in range(0, n, 256))
            / n
        )

    return val


def stage_global_rm(
    cfg: LLMConfig,
    task: Task,
    backbone: nn.Module,
    pairs: dict[str, Pairs],
    seed: int,
    placement: Placement,
    ckpt: Path | None = None,
) -> tuple[nn.Module, dict]:
    """Global RM: the backbone + a scalar head, Bradley–Terry loss, early-stopped on val."""
    gen = stage_gen(seed, "global_rm")
    rm = build_rm(backbone, int(gen.initial_seed()), pad_id=task.vocab_size - 1)

    def loss_on(split: Pairs) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
        def row_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            r_c, r_r = rm_scores(model, _fused(split, idx), placement).chunk(2)
            return losses.bt_rows(r_c - r_r)

        return row_loss

    return rm, _fit_on_pairs(rm, loss_on, pairs, cfg, gen, ckpt)


def _fit_on_pairs(
    model: nn.Module,
    loss_on: Callable[[Pairs], Callable[[nn.Module, torch.Tensor], torch.Tensor]],
    pairs: dict[str, Pairs],
    cfg: LLMConfig,
    gen: torch.Generator,
    ckpt: Path | None,
) -> dict:
    """A reward model's fit on the ``train`` pairs (``cfg.rm_steps`` at ``cfg.pref_lr``),
    early-stopped on the loss of the ``val`` pairs; returns the fit's info."""
    tr, va = pairs["train"], pairs["val"]
    return fit(
        model, loss_on(tr), len(tr["chosen"]), cfg.rm_steps, cfg, gen,
        lr=cfg.pref_lr, val_loss=_val(model, va, loss_on(va)), ckpt_dir=ckpt,
    )  # fmt: skip


def stage_local_rm(
    cfg: LLMConfig,
    task: Task,
    sft: nn.Module,
    pairs: dict[str, Pairs],
    seed: int,
    placement: Placement,
    ckpt: Path | None = None,
) -> tuple[nn.Module, dict]:
    """Local RM: the LM trained with the reference-free DPO loss; r_π(x, y) = β log π(y|x).

    Started from SFT on the same pairs as DPO, it is β log π_ref plus a learned deviation of the
    same class as DPO's implicit reward β log π/π_ref: it can verify better than DPO only by
    what π_ref's likelihood knows about r* (paper_notes.md, "LLM-scale pipeline").
    """
    gen = stage_gen(seed, "local_rm")
    lm = copy.deepcopy(sft)

    def loss_on(split: Pairs) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
        def row_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            seqs = _fused(split, idx)
            lp = logp_completion(model, seqs, task.prefix_len, placement, task.n_content)
            return losses.local_rm_rows(*lp.chunk(2), cfg.beta)

        return row_loss

    return lm, _fit_on_pairs(lm, loss_on, pairs, cfg, gen, ckpt)


def ref_logps(sft: nn.Module, pairs: Pairs, task: Task, placement: Placement) -> Pairs:
    """log π_ref of the chosen and rejected rows, computed once per data set."""
    return {k: logp_rows(sft, pairs[k], task, placement) for k in ("chosen", "rejected")}


def run_dpo(
    cfg: LLMConfig,
    task: Task,
    init: nn.Module,
    pairs: Pairs,
    ref: Pairs,
    steps: int,
    gen: torch.Generator,
    placement: Placement,
    on_step: Callable[[nn.Module, int], None] | None = None,
    ckpt: Path | None = None,
) -> tuple[nn.Module, dict]:
    """DPO from ``init`` against precomputed reference log-probs ``ref`` (fixed steps)."""
    lm = copy.deepcopy(init)

    def row_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        lp = logp_completion(model, _fused(pairs, idx), task.prefix_len, placement, task.n_content)
        lp_c, lp_r = lp.chunk(2)
        ref_c, ref_r = (ref[k][idx].to(lp.device, lp.dtype) for k in ("chosen", "rejected"))
        return losses.dpo_rows(lp_c, lp_r, ref_c, ref_r, cfg.beta)

    hook = None if on_step is None else (lambda k: on_step(lm, k))
    info = fit(
        lm, row_loss, len(pairs["chosen"]), steps, cfg, gen,
        lr=cfg.pref_lr, ckpt_dir=ckpt, on_step=hook,
    )  # fmt: skip
    return lm, info


def best_worst(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``(n_prompts, N)`` scores: argmax, argmin, and whether they differ.

    Tie rule: the first index attains the max / min; prompts whose N scores are all equal
    give no pair.
    """
    best, worst = scores.argmax(dim=1), scores.argmin(dim=1)
    return best, worst, scores.max(dim=1).values > scores.min(dim=1).values


def on_policy_pairs(
    scores: torch.Tensor, gold: torch.Tensor, ys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
    """Best vs worst of N by a labeller's ``scores`` ``(n, N)``, with its label quality.

    Returns:
        chosen index ``(n,)``, rejected index ``(n,)``, kept-prompt mask ``(n,)``, and
        ``pairs_kept`` (share of prompts giving a pair), ``distinct`` (mean distinct samples
        per prompt), ``label_accuracy`` (share of kept pairs whose chosen side has strictly
        higher gold reward), ``label_ties`` (share with equal gold reward), with the SEs of
        the two shares (binomial, over kept pairs).
    """
    n, big_n = scores.shape
    best, worst, ok = best_worst(scores)
    rows = torch.arange(n)
    g_c, g_r = gold[rows, best][ok], gold[rows, worst][ok]
    k = max(int(ok.sum()), 1)
    acc, ties = float((g_c > g_r).double().sum() / k), float((g_c == g_r).double().sum() / k)
    flat = ys.view(n, big_n, -1)
    distinct = np.mean([len(torch.unique(flat[i], dim=0)) for i in range(n)]) if n else 0.0
    info = {
        "pairs_kept": float(ok.double().mean()) if n else 0.0,
        "distinct": float(distinct),
        "label_accuracy": acc if ok.any() else float("nan"),
        "label_accuracy_se": float(np.sqrt(acc * (1 - acc) / k)) if ok.any() else float("nan"),
        "label_ties": ties if ok.any() else float("nan"),
        "label_ties_se": float(np.sqrt(ties * (1 - ties) / k)) if ok.any() else float("nan"),
    }
    return best, worst, ok, info


def online_pairs(
    cfg: LLMConfig,
    task: Task,
    policy: nn.Module,
    labeller: Callable[[torch.Tensor], torch.Tensor],
    gen: torch.Generator,
    placement: Placement,
) -> tuple[Pairs, dict[str, float]]:
    """N samples per fitting prompt at temperature T; best and worst by ``labeller`` (rows →
    scores) form a pair. Returns the pairs and :func:`on_policy_pairs`' label quality."""
    n = cfg.online_samples
    prompts = fit_prompts(task)
    rep, ys = sample_rows(policy, task, prompts, n, cfg.online_temperature, gen, placement)
    seqs = task.join(rep, ys)
    scores = labeller(seqs).view(-1, n)
    gold = task.gold(rep, ys).view(-1, n)
    best, worst, ok, info = on_policy_pairs(scores, gold, ys)
    rows = torch.arange(len(prompts)) * n
    return {
        "chosen": seqs[(rows + best)[ok]],
        "rejected": seqs[(rows + worst)[ok]],
    }, info


def frontier_steps(cfg: LLMConfig, steps: int) -> list[int]:
    """Steps at which a DPO run's policy is evaluated: 0 and ``frontier`` evenly spaced ones."""
    return sorted({0, *(round(steps * (i + 1) / cfg.frontier) for i in range(cfg.frontier))})
