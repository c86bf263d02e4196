"""TreeEnv: m prompts × V^H completions with exact tables (docs/theory.md §2).

The environment holds the prompt distribution ρ, the reference policy π_ref (node form),
the true reward r* (leaf table), β, and optionally the feature map φ of the simple reward
class R_sim. Everything derived (P_ref, π*, log Z, J(π*)) is computed once, exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from gvgap import theory
from gvgap.errors import check_choice, check_int, check_range
from gvgap.theory.tree import NodeLogp

RewardFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class TreeEnv:
    """An enumerable token-tree problem.

    Attributes:
        vocab: V, tokens per step.
        horizon: H, completion length.
        beta: KL strength β > 0 of the true objective.
        rho: ``(m,)`` prompt distribution.
        logpi_ref: reference node policy, ``[h]`` of shape ``(m, V^h, V)``.
        r_star: ``(m, V^H)`` true reward r*(x, ξ).
        features: optional ``(m, V^H, k)`` features φ of the simple reward class R_sim.
        info: free-form description (family, knobs, gap descriptor).
    """

    vocab: int
    horizon: int
    beta: float
    rho: np.ndarray
    logpi_ref: NodeLogp
    r_star: np.ndarray
    features: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        """m."""
        return int(self.rho.shape[0])

    @property
    def n_leaves(self) -> int:
        """V^H completions per prompt."""
        return theory.n_leaves(self.vocab, self.horizon)

    @cached_property
    def tokens(self) -> np.ndarray:
        """``(V^H, H)`` token array of the leaves."""
        return theory.leaf_tokens(self.vocab, self.horizon)

    @cached_property
    def logp_ref(self) -> np.ndarray:
        """``(m, V^H)`` log P_ref(ξ|x)."""
        return theory.node_to_leaf_logp(self.logpi_ref)

    @cached_property
    def soft_star(self) -> theory.SoftVIResult:
        """Soft value iteration on r*: π*, V, log Z."""
        return theory.soft_value_iteration(self.logpi_ref, self.r_star, self.beta)

    @cached_property
    def logp_star(self) -> np.ndarray:
        """``(m, V^H)`` log P*(ξ|x) of the soft-optimal policy for r*."""
        return theory.node_to_leaf_logp(self.soft_star.logpi)

    @cached_property
    def j_star(self) -> float:
        """J(π*) = β E_x log Z_{r*}(x) (Gibbs identity, docs/theory.md §3)."""
        return float(self.beta * self.rho @ self.soft_star.log_z)

    @cached_property
    def j_ref(self) -> float:
        """J(π_ref) = E_{π_ref} r*."""
        return theory.expected_reward(self.logp_ref, self.r_star, self.rho)

    def objective(self, logp: np.ndarray) -> float:
        """J(π) for leaf log-probabilities ``(m, V^H)``."""
        return theory.objective_j(logp, self.r_star, self.logp_ref, self.beta, self.rho)

    def metrics(self, logp: np.ndarray) -> dict[str, float]:
        """The shared metrics of docs/design.md §5, exactly.

        Returns:
            ``J``, ``J_norm`` = (J − J_ref)/(J* − J_ref), ``reward``, ``kl_ref``, ``kl_opt``,
            ``win_rate`` (vs π_ref under the true BT model).
        """
        reward = theory.expected_reward(logp, self.r_star, self.rho)
        kl_ref = theory.kl(logp, self.logp_ref, self.rho)
        j = reward - self.beta * kl_ref
        gap = self.j_star - self.j_ref
        return {
            "J": j,
            "J_norm": (j - self.j_ref) / gap if gap > 1e-12 else float("nan"),
            "reward": reward,
            "kl_ref": kl_ref,
            "kl_opt": theory.kl(logp, self.logp_star, self.rho),
            "win_rate": theory.win_rate(logp, self.logp_ref, self.r_star, self.rho),
        }


# ---------------------------------------------------------------- reference policies


def random_ref_policy(
    n_prompts: int, vocab: int, horizon: int, concentration: float, rng: np.random.Generator
) -> NodeLogp:
    """Random autoregressive π_ref: each π_ref(·|s) ~ Dirichlet(concentration · 1).

    Large concentration → near uniform; small → peaked. Probabilities are floored at 1e-12
    and renormalised so that log π_ref is finite everywhere.
    """
    check_range("ref_concentration", concentration, 0.0, lo_open=True)
    out = []
    for shape in theory.tree.node_shapes(n_prompts, vocab, horizon):
        p = rng.dirichlet(np.full(vocab, concentration), size=shape[:2])
        p = np.maximum(p, 1e-12)
        out.append(np.log(p / p.sum(axis=-1, keepdims=True)))
    return tuple(out)


def make_ref_policy(
    kind: str | NodeLogp,
    n_prompts: int,
    vocab: int,
    horizon: int,
    rng: np.random.Generator,
    concentration: float = 1.0,
) -> NodeLogp:
    """π_ref by family: ``"uniform"``, ``"random"`` (Dirichlet), or an explicit node table."""
    if isinstance(kind, tuple):
        return tuple(np.asarray(a, dtype=np.float64) for a in kind)
    if kind == "uniform":
        return theory.uniform_node_logp(n_prompts, vocab, horizon)
    check_choice("ref", kind, ("uniform", "random"))
    return random_ref_policy(n_prompts, vocab, horizon, concentration, rng)


def make_env(
    *,
    vocab: int,
    horizon: int,
    n_prompts: int = 1,
    beta: float = 1.0,
    r_star: np.ndarray | RewardFn,
    ref: str | NodeLogp = "uniform",
    ref_concentration: float = 1.0,
    features: np.ndarray | None = None,
    rho: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    max_leaves: int = theory.MAX_LEAVES_DEFAULT,
    info: dict | None = None,
) -> TreeEnv:
    """Build a :class:`TreeEnv`, refusing trees too large to enumerate.

    Args:
        r_star: ``(m, V^H)`` table, ``(V^H,)`` shared by all prompts, or a function of the
            token array ``(V^H, H)`` returning ``(V^H,)`` or ``(m, V^H)``.
        ref: π_ref family (see :func:`make_ref_policy`).
        features: optional ``(m, V^H, k)`` or ``(V^H, k)`` R_sim features.
        rng: needed only for random families.
    """
    for name, val, lo in (
        ("vocab", vocab, 2),
        ("horizon", horizon, 1),
        ("n_prompts", n_prompts, 1),
    ):
        check_int(name, val, lo)
    check_range("beta", beta, 0.0, lo_open=True)
    theory.check_tree_size(n_prompts, vocab, horizon, max_leaves)
    rng = rng if rng is not None else np.random.default_rng(0)
    n = theory.n_leaves(vocab, horizon)
    if callable(r_star):
        r_star = r_star(theory.leaf_tokens(vocab, horizon))
    r = np.broadcast_to(np.asarray(r_star, dtype=np.float64), (n_prompts, n)).copy()
    if features is not None:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim == 2:
            features = np.broadcast_to(features, (n_prompts, *features.shape)).copy()
    rho = np.full(n_prompts, 1.0 / n_prompts) if rho is None else np.asarray(rho, float)
    logpi_ref = make_ref_policy(ref, n_prompts, vocab, horizon, rng, ref_concentration)
    return TreeEnv(vocab, horizon, float(beta), rho, logpi_ref, r, features, dict(info or {}))
