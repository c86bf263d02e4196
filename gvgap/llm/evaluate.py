"""Evaluation with a known gold reward: every number is exact given its samples, with its
standard error over the n held-out prompts (docs/design.md §3 "name the estimator").

For a policy π on the n evaluation prompts (never trained on), m samples each at
temperature 1 (the sampled law is π itself, :mod:`gvgap.llm.model`):

- ``reward``: mean gold reward r̄ = (1/nm) Σ r*(x_i, y_ij).
- ``win_rate`` vs π_ref (SFT) samples and ``win_demo`` vs the demonstrator's samples, under the
  gold BT model: per prompt w_i = (1/(m m')) Σ_j Σ_k σ(r*(x_i, y_ij) − r*(x_i, y'_ik)), with m'
  fixed reference samples shared by every pipeline of the run.
- KL(π‖π_ref) from exact per-sample log-ratios l = log π(y|x) − log π_ref(y|x), y ~ π:
  ``kl_k1`` = E[l] (unbiased), ``kl_k3`` = E[e^{−l} − 1 + l] (unbiased, ≥ 0; Schulman 2020).
- Labellers on the held-out evaluation prompts (pipeline ``rm_<name>``, name ∈ global, local,
  dpo, gold, ``sft`` = β log π_ref, the untrained likelihood, and ``demo`` = β log p_demo,
  the exact demonstrator's, where it has a closed form; :func:`labellers`):
  ``val_likelihood`` = (1/n) Σ σ(r̂(y_c) − r̂(y_r)) on BT(gold)-labelled pairs from π_ref,
  ``val_accuracy`` = share with r̂(y_c) > r̂(y_r); and on *on-policy* pairs (N samples of π_ref
  at the online temperature, best vs worst by the labeller): ``label_accuracy`` (chosen
  strictly better by r*), ``label_ties`` (equal r*), ``pairs_kept``, ``distinct``.
- Best-of-N from π_ref reranked by each labeller (pipeline ``bon_<name>_n<N>``), a curve in N.
- Matched KL: each DPO run records its policy's metrics at evenly spaced steps (a KL
  frontier, step 0 being its starting policy, evaluated once per start: SFT's row, or DPO's
  last point); an online arm and its offline counterpart are compared
  at κ = the smaller of their largest KLs, each frontier's win rate linearly interpolated in
  k1 KL (``<pipeline>/win_rate_matched``, ``<pipeline>/kl_matched``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gvgap.llm.config import LLMConfig
from gvgap.llm.stages import (
    Pairs,
    logp_rows,
    on_policy_pairs,
    rm_rows,
    sample_rows,
    stage_gen,
)
from gvgap.llm.tasks import DEMO_CLOSED_FORM, Task
from gvgap.nn.device import Placement

Scorer = Callable[[torch.Tensor], torch.Tensor]


def mean_se(per_prompt: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error s/√n of per-prompt values ``(n,)`` (SE nan when n = 1)."""
    x = per_prompt.double()
    se = float(x.std(unbiased=True) / len(x) ** 0.5) if len(x) > 1 else float("nan")
    return float(x.mean()), se


def win(r: torch.Tensor, r_other: torch.Tensor) -> torch.Tensor:
    """Per-prompt gold-BT win rate of samples ``(n, m)`` against ``(n, m')``, ``(n,)``."""
    return torch.sigmoid(r[:, :, None] - r_other[:, None, :]).mean(dim=(1, 2))


def summarize(
    r: torch.Tensor, refs: dict[str, torch.Tensor], log_ratio: torch.Tensor | None
) -> dict[str, float]:
    """The module docstring's policy metrics from gold rewards ``r (n, m)``, the reference
    rewards ``refs`` (``sft``, ``demo``: ``(n, m')``) and log-ratios ``(n, m)`` (None: no KL,
    e.g. best-of-N, whose log π is not available)."""
    out = {}
    out["reward"], out["reward_se"] = mean_se(r.mean(dim=1))
    out["win_rate"], out["win_rate_se"] = mean_se(win(r, refs["sft"]))
    out["win_demo"], out["win_demo_se"] = mean_se(win(r, refs["demo"]))
    if log_ratio is not None:
        out["kl_k1"], out["kl_k1_se"] = mean_se(log_ratio.mean(dim=1))
        k3 = torch.expm1(-log_ratio) + log_ratio
        out["kl_k3"], out["kl_k3_se"] = mean_se(k3.mean(dim=1))
    return out


def eval_refs(
    cfg: LLMConfig, task: Task, sft: nn.Module, seed: int, placement: Placement
) -> dict[str, torch.Tensor]:
    """Gold rewards of the shared reference samples, ``(n_eval, eval_samples)`` each: π_ref's
    (``sft``) and the demonstrator's (``demo``)."""
    gen = stage_gen(seed, "eval_ref")
    rep, ys = sample_rows(sft, task, task.eval_prompts, cfg.eval_samples, 1.0, gen, placement)
    n = len(task.eval_prompts)
    demo = task.demonstrate(rep, gen)
    return {"sft": task.gold(rep, ys).view(n, -1), "demo": task.gold(rep, demo).view(n, -1)}


def policy_metrics(
    cfg: LLMConfig,
    task: Task,
    lm: nn.Module,
    sft: nn.Module,
    refs: dict[str, torch.Tensor],
    gen: torch.Generator,
    placement: Placement,
) -> dict[str, float]:
    """Gold reward, win rates and KL of one policy (module docstring)."""
    rep, ys = sample_rows(lm, task, task.eval_prompts, cfg.eval_samples, 1.0, gen, placement)
    n = len(task.eval_prompts)
    seqs = task.join(rep, ys)
    log_ratio = logp_rows(lm, seqs, task, placement) - logp_rows(sft, seqs, task, placement)
    return summarize(task.gold(rep, ys).view(n, -1), refs, log_ratio.view(n, -1))


#: Labellers that only describe the reference term (no best-of-N reranking by them).
REFERENCE_LABELLERS = ("sft", "demo")


def labellers(
    cfg: LLMConfig,
    task: Task,
    models: dict[str, nn.Module],
    placement: Placement,
) -> dict[str, Scorer]:
    """Rows → scores of each labeller: ``global`` r̂, ``local`` β log π_local, ``dpo``
    β (log π_dpo − log π_ref), ``sft`` β log π_ref, ``gold`` r* and, where the demonstrator's
    likelihood has a closed form (:data:`gvgap.llm.tasks.DEMO_CLOSED_FORM`), ``demo``
    β log p_demo.

    The local RM is DPO's implicit reward plus the reference term β log π_ref (both start at
    SFT and follow the same loss up to that term), so at equal steps it can verify better than
    DPO only by what that term knows about r*: ``sft`` measures it, ``demo`` is its exact value
    for the demonstrator SFT imitates. (The local RM is early-stopped within ``rm_steps``,
    DPO's implicit reward read after ``dpo_steps``: a budget the two need not share.)"""
    sft = models["sft"]

    def lp(name: str) -> Scorer:
        return lambda s: logp_rows(models[name], s, task, placement)

    out = {
        "global": lambda s: rm_rows(models["global_rm"], s, placement),
        "local": lambda s: cfg.beta * lp("local_rm")(s),
        "dpo": lambda s: cfg.beta * (lp("dpo")(s) - logp_rows(sft, s, task, placement)),
        "sft": lambda s: cfg.beta * lp("sft")(s),
        "gold": task.gold_rows,
    }
    if task.cfg.task in DEMO_CLOSED_FORM:
        out["demo"] = lambda s: cfg.beta * task.demo_logp(*task.split(s))
    return out


def rm_validation(test: Pairs, scorers: dict[str, Scorer]) -> dict[str, float]:
    """Validation likelihood and accuracy of each labeller on held-out BT(gold) pairs."""
    k = len(test["chosen"])
    seqs = torch.cat([test["chosen"], test["rejected"]])
    out = {}
    for name, score in scorers.items():
        s = score(seqs)
        delta = s[:k] - s[k:]
        lik, lik_se = mean_se(torch.sigmoid(delta))
        acc, acc_se = mean_se((delta > 0).double())
        out.update(
            {
                f"rm_{name}/val_likelihood": lik,
                f"rm_{name}/val_likelihood_se": lik_se,
                f"rm_{name}/val_accuracy": acc,
                f"rm_{name}/val_accuracy_se": acc_se,
            }
        )
    return out


def label_quality(
    cfg: LLMConfig,
    task: Task,
    sft: nn.Module,
    scorers: dict[str, Scorer],
    seed: int,
    placement: Placement,
) -> dict[str, float]:
    """Each labeller's best-vs-worst pairs among N π_ref samples per evaluation prompt at the
    online temperature: label accuracy, ties, pairs kept, distinct samples."""
    gen = stage_gen(seed, "eval_labels")
    n = cfg.online_samples
    rep, ys = sample_rows(sft, task, task.eval_prompts, n, cfg.online_temperature, gen, placement)
    seqs = task.join(rep, ys)
    gold = task.gold(rep, ys).view(-1, n)
    out = {}
    for name, score in scorers.items():
        *_, info = on_policy_pairs(score(seqs).view(-1, n), gold, ys)
        out.update({f"rm_{name}/{k}": v for k, v in info.items()})
    return out


def best_of_n(
    cfg: LLMConfig,
    task: Task,
    sft: nn.Module,
    scorers: dict[str, Scorer],
    refs: dict[str, torch.Tensor],
    seed: int,
    placement: Placement,
) -> dict[str, float]:
    """Best-of-N from π_ref reranked by each labeller, for every N of ``bon_n`` (a curve).

    For each eval prompt, ``eval_samples`` independent groups of max(N) π_ref samples;
    BoN-N keeps the labeller's argmax among the first N of a group (ties: first index).

    Returns:
        ``{"bon_<name>_n<N>/<metric>": value}`` (reward and win rates with SEs).
    """
    gen = stage_gen(seed, "eval_bon")
    n, m, n_max = len(task.eval_prompts), cfg.eval_samples, max(cfg.bon_sizes)
    rep, ys = sample_rows(sft, task, task.eval_prompts, m * n_max, 1.0, gen, placement)
    gold = task.gold(rep, ys).view(n, m, n_max)
    seqs = task.join(rep, ys)
    out = {}
    for name, score in scorers.items():
        if name in REFERENCE_LABELLERS:
            continue
        s = score(seqs).view(n, m, n_max)
        for big_n in cfg.bon_sizes:
            pick = s[:, :, :big_n].argmax(dim=2, keepdim=True)
            r = gold[:, :, :big_n].gather(2, pick).squeeze(2)
            for k, v in summarize(r, refs, None).items():
                out[f"bon_{name}_n{big_n}/{k}"] = v
    return out


def frontier_curve(records: dict[str, dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(k1 KL, win rate) of a DPO run's frontier records, sorted by KL."""
    pts = sorted((r["kl_k1"], r["win_rate"]) for r in records.values())
    kl, wr = (np.array(v, dtype=np.float64) for v in zip(*pts, strict=True))
    return kl, wr


def matched_kl(
    online: dict[str, dict[str, float]], offline: dict[str, dict[str, float]]
) -> tuple[float, float, float]:
    """(κ, win rate of online at κ, of offline at κ): κ = the smaller of the two frontiers'
    largest KLs; each win rate linearly interpolated in KL on its own frontier."""
    kl_a, wr_a = frontier_curve(online)
    kl_b, wr_b = frontier_curve(offline)
    kappa = float(min(kl_a.max(), kl_b.max()))
    return kappa, float(np.interp(kappa, kl_a, wr_a)), float(np.interp(kappa, kl_b, wr_b))
