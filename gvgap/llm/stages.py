"""The paper's pipeline as pure stages (THEORY §5, §7): each is a function of a frozen config,
its inputs and a torch.Generator derived from (seed, stage name).

SFT → preference pairs (π_ref samples, BT(gold) labels) → global RM (scalar head, BT) →
local RM (reference-free DPO) → offline DPO (+ an extra epoch) → online DPO (one round from
SFT, one from DPO, iterated from SFT; N samples at temperature T, best vs worst by the global
RM). Best-of-N lives in :mod:`gvgap.llm.evaluate`.

Losses (per pair, the equations of THEORY §2; β the KL strength):

- SFT: −(1/H) Σ_t log π(y_t | x, y_<t) on demonstrations.
- BT (global RM): −log σ(r̂(x, y_c) − r̂(x, y_r)).
- local RM (reference-free DPO): −log σ(β (log π(y_c|x) − log π(y_r|x))).
- DPO: −log σ(β [(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]); the
  reference log-probs are computed once per data set, chosen and rejected share one forward.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gvgap.llm import dist
from gvgap.llm.config import LLMConfig
from gvgap.llm.model import RewardModel, build_lm, logp_completion, sample
from gvgap.llm.tasks import Task
from gvgap.nn.device import Placement, autocast

Pairs = dict[str, torch.Tensor]
#: Largest batch of rows in one no-grad forward (evaluation, reference log-probs, sampling).
CHUNK = 512
#: Gradient clipping threshold of every stage (the norm before clipping is reported).
CLIP = 1.0


def stage_gen(seed: int, name: str) -> torch.Generator:
    """The CPU generator of one stage: a child of ``seed`` keyed by the stage name."""
    ss = np.random.SeedSequence([seed, zlib.crc32(name.encode())])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def fit(
    module: nn.Module,
    row_loss: Callable[[torch.Tensor], torch.Tensor],
    n_rows: int,
    steps: int,
    cfg: LLMConfig,
    gen: torch.Generator,
    lr: float | None = None,
) -> dict[str, float]:
    """AdamW on a per-row loss; data parallel across ranks (:mod:`gvgap.llm.dist`).

    Each step draws a global batch of ``min(batch_size, n_rows)`` row indices from ``gen``
    (identical on every rank), this rank evaluates its shard, and the loss is Σ_shard ℓ / B so
    the all-reduced gradient is the global-batch mean.

    Returns:
        ``{"loss": last global-batch loss on this rank's shard × W, "grad_norm": last norm}``.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.pref_lr if lr is None else lr, weight_decay=0.0)
    batch = min(cfg.batch_size, n_rows)
    loss_v, gnorm = float("nan"), float("nan")
    if n_rows == 0:
        return {"loss": loss_v, "grad_norm": gnorm}
    module.train()
    for _ in range(steps):
        idx = torch.randperm(n_rows, generator=gen)[:batch]
        mine = dist.shard(idx)
        opt.zero_grad(set_to_none=False)
        loss = row_loss(mine).sum() / batch if len(mine) else sum(p.sum() * 0 for p in params)
        loss.backward()
        dist.all_reduce_grads(params)
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, CLIP))
        opt.step()
        loss_v = float(loss.detach()) * dist.world()[1]
    return {"loss": loss_v, "grad_norm": gnorm}


@torch.no_grad()
def logp_rows(lm: nn.Module, seqs: torch.Tensor, task: Task, placement: Placement) -> torch.Tensor:
    """log π(y|x) of many rows in chunks, no grad, ``(N,)`` float64 on CPU."""
    lm.eval()
    out = [
        logp_completion(lm, seqs[i : i + CHUNK], task.prefix_len, placement).double().cpu()
        for i in range(0, len(seqs), CHUNK)
    ]
    lm.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@torch.no_grad()
def rm_rows(rm: RewardModel, seqs: torch.Tensor, placement: Placement) -> torch.Tensor:
    """r̂ of many rows in chunks, ``(N,)`` float64 on CPU."""
    rm.eval()
    out = []
    for i in range(0, len(seqs), CHUNK):
        with autocast(placement):
            out.append(rm(seqs[i : i + CHUNK].to(placement.device)).double().cpu())
    rm.train()
    return torch.cat(out)


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
    ys = [
        sample(
            lm,
            task.prefix(rep[i : i + CHUNK]),
            task.cfg.horizon,
            task.cfg.vocab,
            temperature,
            gen,
            placement,
        )
        for i in range(0, len(rep), CHUNK)
    ]
    return rep, torch.cat(ys)


def new_lm(cfg: LLMConfig, task: Task, seed: int, placement: Placement) -> nn.Module:
    """The initial LM of a run (every rank builds the same one)."""
    init = int(stage_gen(seed, "init").initial_seed())
    return build_lm(cfg.model, task.vocab_size, task.seq_len, init, placement)


# --------------------------------------------------------------------------- stages


def stage_sft(
    cfg: LLMConfig, task: Task, seed: int, placement: Placement
) -> tuple[nn.Module, dict]:
    """π_ref: maximum likelihood on demonstrations of the known generator."""
    gen = stage_gen(seed, "sft")
    prompts = task.train_prompts.repeat_interleave(cfg.demos_per_prompt, dim=0)
    seqs = task.join(prompts, task.demonstrate(prompts, gen))
    lm = new_lm(cfg, task, seed, placement)

    def row_loss(idx: torch.Tensor) -> torch.Tensor:
        return -logp_completion(lm, seqs[idx], task.prefix_len, placement) / cfg.horizon

    return lm, fit(lm, row_loss, len(seqs), cfg.sft_steps, cfg, gen, lr=cfg.lr)


def label_pairs(
    task: Task, prompts: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, gen: torch.Generator
) -> Pairs:
    """Label (y_a, y_b) by the gold BT model: a wins with probability σ(r*(a) − r*(b))."""
    a_wins = torch.rand(len(prompts), generator=gen, dtype=torch.float64) < torch.sigmoid(
        task.gold(prompts, y_a) - task.gold(prompts, y_b)
    )
    chosen = torch.where(a_wins[:, None], y_a, y_b)
    rejected = torch.where(a_wins[:, None], y_b, y_a)
    return {"chosen": task.join(prompts, chosen), "rejected": task.join(prompts, rejected)}


def stage_pairs(
    cfg: LLMConfig, task: Task, sft: nn.Module, seed: int, placement: Placement
) -> dict[str, Pairs]:
    """Preference pairs from π_ref samples (temperature 1) labelled by BT(gold).

    Returns ``{"train": …, "val": …}``; validation pairs are on the held-out eval prompts.
    """
    gen = stage_gen(seed, "pairs")
    out = {}
    for split, prompts in (("train", task.train_prompts), ("val", task.eval_prompts)):
        rep, ys = sample_rows(sft, task, prompts, 2 * cfg.pairs_per_prompt, 1.0, gen, placement)
        out[split] = label_pairs(task, rep[0::2], ys[0::2], ys[1::2], gen)
    return out


def _fused(pairs: Pairs, idx: torch.Tensor) -> torch.Tensor:
    """Chosen rows then rejected rows, ``(2b, L)``: one forward for both."""
    return torch.cat([pairs["chosen"][idx], pairs["rejected"][idx]])


def stage_global_rm(
    cfg: LLMConfig, task: Task, sft: nn.Module, pairs: Pairs, seed: int, placement: Placement
) -> tuple[RewardModel, dict]:
    """Global RM: the SFT backbone + a scalar head, Bradley–Terry loss."""
    gen = stage_gen(seed, "global_rm")
    rm = RewardModel(copy.deepcopy(sft), int(gen.initial_seed()))

    def row_loss(idx: torch.Tensor) -> torch.Tensor:
        with autocast(placement):
            r = rm(_fused(pairs, idx).to(placement.device)).float()
        r_c, r_r = r.chunk(2)
        return -F.logsigmoid(r_c - r_r)

    return rm, fit(rm, row_loss, len(pairs["chosen"]), cfg.rm_steps, cfg, gen)


def stage_local_rm(
    cfg: LLMConfig, task: Task, sft: nn.Module, pairs: Pairs, seed: int, placement: Placement
) -> tuple[nn.Module, dict]:
    """Local RM: the LM trained with the reference-free DPO loss; r_π(x, y) = β log π(y|x)."""
    gen = stage_gen(seed, "local_rm")
    lm = copy.deepcopy(sft)

    def row_loss(idx: torch.Tensor) -> torch.Tensor:
        lp_c, lp_r = logp_completion(lm, _fused(pairs, idx), task.prefix_len, placement).chunk(2)
        return -F.logsigmoid(cfg.beta * (lp_c - lp_r))

    return lm, fit(lm, row_loss, len(pairs["chosen"]), cfg.rm_steps, cfg, gen)


def dpo_row_loss(
    lm: nn.Module,
    pairs: Pairs,
    ref: dict[str, torch.Tensor],
    beta: float,
    task: Task,
    placement: Placement,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-pair DPO loss of ``lm`` against precomputed reference log-probs ``ref``."""

    def row_loss(idx: torch.Tensor) -> torch.Tensor:
        lp = logp_completion(lm, _fused(pairs, idx), task.prefix_len, placement)
        lp_c, lp_r = lp.chunk(2)
        dev = lp.device
        margin = (lp_c - ref["chosen"][idx].to(dev, lp.dtype)) - (
            lp_r - ref["rejected"][idx].to(dev, lp.dtype)
        )
        return -F.logsigmoid(beta * margin)

    return row_loss


def run_dpo(
    cfg: LLMConfig,
    task: Task,
    init: nn.Module,
    sft: nn.Module,
    pairs: Pairs,
    steps: int,
    gen: torch.Generator,
    placement: Placement,
) -> tuple[nn.Module, dict]:
    """DPO from ``init`` with π_ref = ``sft``; reference log-probs computed once."""
    ref = {k: logp_rows(sft, pairs[k], task, placement) for k in ("chosen", "rejected")}
    lm = copy.deepcopy(init)
    loss = dpo_row_loss(lm, pairs, ref, cfg.beta, task, placement)
    return lm, fit(lm, loss, len(pairs["chosen"]), steps, cfg, gen)


def stage_dpo(
    cfg: LLMConfig,
    task: Task,
    init: nn.Module,
    sft: nn.Module,
    pairs: Pairs,
    seed: int,
    placement: Placement,
    name: str = "dpo",
) -> tuple[nn.Module, dict]:
    """Offline DPO on the preference pairs (``dpo_extra``: one more pass from the DPO model)."""
    return run_dpo(cfg, task, init, sft, pairs, cfg.dpo_steps, stage_gen(seed, name), placement)


def best_worst(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``(n_prompts, N)`` scores: argmax, argmin, and whether they differ.

    Tie rule: the first index attains the max / min; prompts whose N scores are all equal
    give no pair.
    """
    best, worst = scores.argmax(dim=1), scores.argmin(dim=1)
    return best, worst, scores.max(dim=1).values > scores.min(dim=1).values


def online_pairs(
    cfg: LLMConfig,
    task: Task,
    policy: nn.Module,
    rm: RewardModel | None,
    gen: torch.Generator,
    placement: Placement,
) -> Pairs:
    """N samples per training prompt at temperature T; best and worst by the RM form a pair.

    ``rm`` None labels by the gold reward r* itself (the oracle positive control).
    """
    n = cfg.online_samples
    rep, ys = sample_rows(
        policy, task, task.train_prompts, n, cfg.online_temperature, gen, placement
    )
    if rm is None:
        scores = task.gold(rep, ys).view(-1, n)
    else:
        scores = rm_rows(rm, task.join(rep, ys), placement).view(-1, n)
    best, worst, ok = best_worst(scores)
    rows = torch.arange(len(task.train_prompts)) * n
    prompts = task.train_prompts[ok]
    return {
        "chosen": task.join(prompts, ys[(rows + best)[ok]]),
        "rejected": task.join(prompts, ys[(rows + worst)[ok]]),
    }


def stage_online(
    cfg: LLMConfig,
    task: Task,
    init: nn.Module,
    sft: nn.Module,
    rm: RewardModel | None,
    rounds: int,
    seed: int,
    placement: Placement,
    name: str,
) -> tuple[nn.Module, dict]:
    """Online DPO: ``rounds`` × (sample from the current policy, relabel by the RM, DPO).

    ``rm`` None: relabel by r* (oracle positive control, reported beside the RM arms).
    """
    gen = stage_gen(seed, name)
    policy, info = init, {}
    for _ in range(rounds):
        pairs = online_pairs(cfg, task, policy, rm, gen, placement)
        policy, info = run_dpo(cfg, task, policy, sft, pairs, cfg.online_steps, gen, placement)
        info["n_pairs"] = float(len(pairs["chosen"]))
    return policy, info
