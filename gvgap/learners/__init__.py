"""Learners: offline (SFT, DPO, IPO, SPIN) and online (RM fit, soft RL, RLHF, MaxEnt-IRL,
online DPO, policy gradient, best-of-N). Every fit returns a frozen :class:`Result` with its
final gradient norm."""

from gvgap.learners.offline import dpo, ipo, preference_fit, sft, spin, spin_pairs
from gvgap.learners.online import (
    best_of_n,
    fit_reward,
    maxent_irl,
    online_dpo_exact,
    online_dpo_sampled,
    policy_gradient,
    rlhf,
    soft_rl,
)
from gvgap.learners.optim import OptResult, minimize
from gvgap.learners.result import Result
from gvgap.learners.round import online_dpo_round
from gvgap.learners.select import LAMBDA_GRID, select_lambda, val_bt_loglik

__all__ = [
    "LAMBDA_GRID",
    "OptResult",
    "Result",
    "best_of_n",
    "dpo",
    "fit_reward",
    "ipo",
    "maxent_irl",
    "minimize",
    "online_dpo_exact",
    "online_dpo_round",
    "online_dpo_sampled",
    "policy_gradient",
    "preference_fit",
    "rlhf",
    "select_lambda",
    "sft",
    "soft_rl",
    "spin",
    "spin_pairs",
    "val_bt_loglik",
]
