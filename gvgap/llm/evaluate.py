"""Evaluation with a known gold reward: every number is exact given the samples, with its
standard error (DESIGN §3 "name the estimator").

For a policy π on the n held-out prompts, m samples each (temperature 1, so the sampled
distribution is π itself):

- reward: the mean gold reward r̄ = (1/nm) Σ r*(x_i, y_ij); SE over prompts.
- win_rate vs π_ref samples under the gold BT model: per prompt
  w_i = (1/(m m')) Σ_j Σ_k σ(r*(x_i, y_ij) − r*(x_i, y^ref_ik)), with m' fixed π_ref samples
  shared by every pipeline; the mean of w_i and its SE over prompts.
- KL(π‖π_ref) from exact per-sample log-ratios l = log π(y|x) − log π_ref(y|x), y ~ π:
  k1 = E[l] (unbiased), k3 = E[e^{−l} − 1 + l] (unbiased, never negative; Schulman 2020);
  SEs over prompts.
- RM validation likelihood on held-out BT(gold)-labelled pairs: (1/n) Σ σ(r̂(y_c) − r̂(y_r))
  with r̂ the global RM, the local RM β log π_local, DPO's implicit reward
  β (log π_dpo − log π_ref), and r* itself (the ceiling); plus the accuracy 1{Δr̂ > 0}.
"""

from __future__ import annotations

import torch
from torch import nn

from gvgap.llm.config import LLMConfig
from gvgap.llm.model import RewardModel
from gvgap.llm.stages import Pairs, logp_rows, rm_rows, sample_rows, stage_gen
from gvgap.llm.tasks import Task
from gvgap.nn.device import Placement


def mean_se(per_prompt: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error s/√n of per-prompt values ``(n,)`` (SE nan when n = 1)."""
    x = per_prompt.double()
    se = float(x.std(unbiased=True) / len(x) ** 0.5) if len(x) > 1 else float("nan")
    return float(x.mean()), se


def summarize(
    r: torch.Tensor, r_ref: torch.Tensor, log_ratio: torch.Tensor | None
) -> dict[str, float]:
    """The module docstring's metrics from gold rewards ``r (n, m)``, ``r_ref (n, m')`` and
    log-ratios ``(n, m)`` (None: no KL, e.g. best-of-N whose log π is not available)."""
    out = {}
    out["reward"], out["reward_se"] = mean_se(r.mean(dim=1))
    win = torch.sigmoid(r[:, :, None] - r_ref[:, None, :]).mean(dim=(1, 2))
    out["win_rate"], out["win_rate_se"] = mean_se(win)
    if log_ratio is not None:
        out["kl_k1"], out["kl_k1_se"] = mean_se(log_ratio.mean(dim=1))
        k3 = torch.expm1(-log_ratio) + log_ratio
        out["kl_k3"], out["kl_k3_se"] = mean_se(k3.mean(dim=1))
    return out


def ref_rewards(
    cfg: LLMConfig, task: Task, sft: nn.Module, seed: int, placement: Placement
) -> torch.Tensor:
    """Gold rewards of the shared π_ref samples, ``(n_eval, eval_samples)``."""
    gen = stage_gen(seed, "eval_ref")
    rep, ys = sample_rows(sft, task, task.eval_prompts, cfg.eval_samples, 1.0, gen, placement)
    return task.gold(rep, ys).view(len(task.eval_prompts), -1)


def policy_metrics(
    cfg: LLMConfig,
    task: Task,
    lm: nn.Module,
    sft: nn.Module,
    r_ref: torch.Tensor,
    seed: int,
    name: str,
    placement: Placement,
) -> dict[str, float]:
    """Gold reward, win rate and KL of one policy (module docstring)."""
    gen = stage_gen(seed, f"eval_{name}")
    rep, ys = sample_rows(lm, task, task.eval_prompts, cfg.eval_samples, 1.0, gen, placement)
    n = len(task.eval_prompts)
    seqs = task.join(rep, ys)
    log_ratio = logp_rows(lm, seqs, task, placement) - logp_rows(sft, seqs, task, placement)
    return summarize(task.gold(rep, ys).view(n, -1), r_ref, log_ratio.view(n, -1))


def implicit_rewards(
    cfg: LLMConfig,
    task: Task,
    seqs: torch.Tensor,
    rm: RewardModel,
    local: nn.Module,
    dpo: nn.Module,
    sft: nn.Module,
    placement: Placement,
) -> dict[str, torch.Tensor]:
    """r̂ of each RM on rows ``seqs``: ``global``, ``local`` (β log π_local), ``dpo``."""
    lp_sft = logp_rows(sft, seqs, task, placement)
    return {
        "global": rm_rows(rm, seqs, placement),
        "local": cfg.beta * logp_rows(local, seqs, task, placement),
        "dpo": cfg.beta * (logp_rows(dpo, seqs, task, placement) - lp_sft),
    }


def best_of_n(
    cfg: LLMConfig,
    task: Task,
    sft: nn.Module,
    rm: RewardModel,
    local: nn.Module,
    dpo: nn.Module,
    r_ref: torch.Tensor,
    seed: int,
    placement: Placement,
) -> dict[str, float]:
    """Best-of-N from π_ref reranked by each RM, for every N in ``bon_n``.

    For each eval prompt, ``eval_samples`` independent groups of max(bon_n) π_ref samples;
    BoN-N keeps the RM's argmax among the first N of a group (ties: first index).

    Returns:
        ``{"bon_<rm>_n<N>/<metric>": value}`` (reward and win rate with SEs).
    """
    gen = stage_gen(seed, "eval_bon")
    n, m, n_max = len(task.eval_prompts), cfg.eval_samples, max(cfg.bon_n)
    rep, ys = sample_rows(sft, task, task.eval_prompts, m * n_max, 1.0, gen, placement)
    gold = task.gold(rep, ys).view(n, m, n_max)
    scores = implicit_rewards(cfg, task, task.join(rep, ys), rm, local, dpo, sft, placement)
    out = {}
    for rm_name, s in scores.items():
        s = s.view(n, m, n_max)
        for big_n in cfg.bon_n:
            pick = s[:, :, :big_n].argmax(dim=2, keepdim=True)
            r = gold[:, :, :big_n].gather(2, pick).squeeze(2)
            for k, v in summarize(r, r_ref, None).items():
                out[f"bon_{rm_name}_n{big_n}/{k}"] = v
    return out


def rm_validation(
    cfg: LLMConfig,
    task: Task,
    val: Pairs,
    rm: RewardModel,
    local: nn.Module,
    dpo: nn.Module,
    sft: nn.Module,
    placement: Placement,
) -> dict[str, float]:
    """Validation likelihood and accuracy of each RM (and of r*) on held-out pairs."""
    k = len(val["chosen"])
    seqs = torch.cat([val["chosen"], val["rejected"]])
    scores = implicit_rewards(cfg, task, seqs, rm, local, dpo, sft, placement)
    p_len = task.prefix_len
    scores["gold"] = task.gold(seqs[:, 1 : p_len - 1], seqs[:, p_len:])
    out = {}
    for name, s in scores.items():
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
