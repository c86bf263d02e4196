"""Global tabular, linear-feature (R_sim) and local r_π reward classes (docs/theory.md §2)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class RewardClass(Protocol):
    """w ↦ r_w; see the package docstring."""

    n_params: int

    def init_params(self) -> np.ndarray: ...
    def leaf_reward(self, w: np.ndarray) -> np.ndarray: ...
    def vjp(self, w: np.ndarray, g: np.ndarray) -> np.ndarray: ...


class TabularReward:
    """Global tabular RM: one free reward per (prompt, completion); ``n_params = m N``."""

    def __init__(self, n_prompts: int, n_leaves: int):
        self.shape = (n_prompts, n_leaves)
        self.n_params = n_prompts * n_leaves

    def init_params(self) -> np.ndarray:
        """r = 0."""
        return np.zeros(self.n_params)

    def leaf_reward(self, w: np.ndarray) -> np.ndarray:
        """r(x, ξ) = w[x, ξ]."""
        return w.reshape(self.shape)

    def vjp(self, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Identity Jacobian."""
        return g.ravel()


class LinearReward:
    """R_sim: r_w(x, ξ) = w · φ(x, ξ) with features ``(m, N, k)``; ``n_params = k``."""

    def __init__(self, features: np.ndarray):
        self.features = np.ascontiguousarray(features, dtype=np.float64)
        self.n_params = int(self.features.shape[-1])
        self._flat = self.features.reshape(-1, self.n_params)  # (m N, k) view for BLAS

    def init_params(self) -> np.ndarray:
        """w = 0."""
        return np.zeros(self.n_params)

    def leaf_reward(self, w: np.ndarray) -> np.ndarray:
        """Φ w, ``(m, N)``."""
        return (self._flat @ w).reshape(self.features.shape[:2])

    def vjp(self, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Φᵀ g as one BLAS matrix–vector product over the flattened ``(m N, k)`` features."""
        return self._flat.T @ np.ravel(g)


class LocalReward:
    """Local RM of a policy class: r_θ = β (log P_θ − log P_ref), or β log P_θ if no reference.

    With ``beta=1`` and no reference this is the reference-free local RM of docs/theory.md §2/§5.
    R(Π) for Π tabular is every reward modulo per-prompt constants (isomorphic classes).
    """

    def __init__(self, policy, logp_ref: np.ndarray | None, beta: float = 1.0):
        self.policy = policy
        self.logp_ref = logp_ref
        self.beta = float(beta)
        self.n_params = policy.n_params

    def init_params(self) -> np.ndarray:
        """The policy class's initial parameters."""
        return self.policy.init_params()

    def leaf_reward(self, w: np.ndarray) -> np.ndarray:
        """r_π(x, ξ)."""
        lp = self.policy.leaf_logp(w)
        return self.beta * (lp if self.logp_ref is None else lp - self.logp_ref)

    def vjp(self, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        """β · policy VJP."""
        return self.beta * self.policy.vjp(w, g)
