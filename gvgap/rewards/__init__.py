"""Reward classes R: parameters w ↦ leaf rewards r_w ``(m, N)`` with exact VJPs.

``n_params``, ``init_params()``, ``leaf_reward(w)``, ``vjp(w, g) = Σ g ∂r_w/∂w``.
"""

from gvgap.rewards.classes import LinearReward, LocalReward, RewardClass, TabularReward

__all__ = ["LinearReward", "LocalReward", "RewardClass", "TabularReward"]
