"""Indexing and change of coordinates on the completion tree.

A problem has ``m`` prompts and completions ξ = (a_1..a_H) with tokens in ``range(V)``.
Leaves are indexed in base V with the first token most significant, so the leaf index of
ξ is ``sum_h a_h V^(H-h)`` and the child of state ``s`` (index ``i`` at depth ``h``) by token
``a`` is ``i * V + a`` at depth ``h + 1``. Hence a depth-(h+1) array of shape
``(m, V^(h+1))`` reshapes to ``(m, V^h, V)`` = (state at depth h, next token) for free.

A *node policy* is a tuple ``logpi`` with ``logpi[h]`` of shape ``(m, V^h, V)`` holding
log π(a | s_h) for every state at depth h (docs/theory.md §2). A *leaf distribution* is an array of
shape ``(m, V^H)`` holding log P_π(ξ | x) = Σ_h log π(a_h | s_h).
"""

from __future__ import annotations

import numpy as np

from gvgap.errors import UserError

NodeLogp = tuple[np.ndarray, ...]

#: Default ceiling on m * V^H (leaves held in one float64 array ≈ 8 bytes each).
MAX_LEAVES_DEFAULT = 1 << 24


class TreeTooLargeError(UserError):
    """Raised when a tree has more leaves than can be enumerated exactly."""


def n_leaves(vocab: int, horizon: int) -> int:
    """Number of completions V^H."""
    return int(vocab) ** int(horizon)


def check_tree_size(
    n_prompts: int, vocab: int, horizon: int, max_leaves: int = MAX_LEAVES_DEFAULT
) -> None:
    """Refuse a tree whose m·V^H leaves exceed ``max_leaves``.

    Raises:
        TreeTooLargeError: naming the fields and the limit.
    """
    total = int(n_prompts) * n_leaves(vocab, horizon)
    if total > max_leaves:
        raise TreeTooLargeError(
            f"tree too large to enumerate: n_prompts*vocab**horizon = {n_prompts}*{vocab}**"
            f"{horizon} = {total} leaves > max_leaves = {max_leaves}; lower vocab or horizon"
        )


def leaf_tokens(vocab: int, horizon: int) -> np.ndarray:
    """Token array of every leaf.

    Returns:
        ``(V^H, H)`` int64 array; row i is the completion whose leaf index is i.
    """
    idx = np.arange(n_leaves(vocab, horizon), dtype=np.int64)
    powers = vocab ** np.arange(horizon - 1, -1, -1, dtype=np.int64)
    return (idx[:, None] // powers[None, :]) % vocab


def tokens_to_leaf(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """Leaf index of token sequences: ``(..., H) -> (...)``."""
    tokens = np.asarray(tokens, dtype=np.int64)
    horizon = tokens.shape[-1]
    powers = vocab ** np.arange(horizon - 1, -1, -1, dtype=np.int64)
    return tokens @ powers


def leaf_to_tokens(leaf: np.ndarray, vocab: int, horizon: int) -> np.ndarray:
    """Token sequences of leaf indices: ``(...) -> (..., H)``."""
    leaf = np.asarray(leaf, dtype=np.int64)
    powers = vocab ** np.arange(horizon - 1, -1, -1, dtype=np.int64)
    return (leaf[..., None] // powers) % vocab


def node_shapes(n_prompts: int, vocab: int, horizon: int) -> list[tuple[int, int, int]]:
    """Shapes ``(m, V^h, V)`` of the node-policy arrays, h = 0..H-1."""
    return [(n_prompts, vocab**h, vocab) for h in range(horizon)]


def uniform_node_logp(n_prompts: int, vocab: int, horizon: int) -> NodeLogp:
    """Node policy of the uniform distribution over tokens."""
    return tuple(np.full(s, -np.log(vocab)) for s in node_shapes(n_prompts, vocab, horizon))


def node_to_leaf_logp(logpi: NodeLogp) -> np.ndarray:
    """Trajectory log-probabilities log P_π(ξ|x) = Σ_h log π(a_h|s_h).

    Args:
        logpi: node policy, ``logpi[h]`` of shape ``(m, V^h, V)``.

    Returns:
        ``(m, V^H)`` array. Cost: Σ_h m V^(h+1) additions ≈ 1.5 passes over the leaves.
    """
    acc = logpi[0][:, 0, :]
    for lp in logpi[1:]:
        acc = (acc[:, :, None] + lp).reshape(lp.shape[0], -1)
    return acc


def leaf_marginals(p_leaf: np.ndarray, vocab: int, horizon: int) -> list[np.ndarray]:
    """Probability of reaching each state: ``out[h]`` has shape ``(m, V^h)``, h = 0..H."""
    out = [p_leaf]
    for _ in range(horizon):
        out.append(out[-1].reshape(p_leaf.shape[0], -1, vocab).sum(axis=-1))
    return out[::-1]


def leaf_to_node_logp(logp_leaf: np.ndarray, vocab: int, horizon: int) -> NodeLogp:
    """Node policy realising a leaf distribution (docs/theory.md §2: unique on reachable states).

    π(a|s) = P(s·a) / P(s). States of probability zero get the uniform policy.

    Args:
        logp_leaf: ``(m, V^H)`` log-probabilities (each row normalised).

    Returns:
        node policy ``logpi[h]`` of shape ``(m, V^h, V)``.
    """
    m = logp_leaf.shape[0]
    # log-marginals by log-sum-exp over the last token, from the leaves up
    log_marg = [logp_leaf]
    for _ in range(horizon):
        x = log_marg[-1].reshape(m, -1, vocab)
        log_marg.append(_lse_last(x))
    log_marg = log_marg[::-1]  # log_marg[h] : (m, V^h)
    out = []
    for h in range(horizon):
        parent = log_marg[h][:, :, None]
        child = log_marg[h + 1].reshape(m, -1, vocab)
        with np.errstate(invalid="ignore"):
            lp = child - parent
        dead = ~np.isfinite(parent[..., 0])
        lp[dead] = -np.log(vocab)
        out.append(lp)
    return tuple(out)


def _lse_last(x: np.ndarray) -> np.ndarray:
    """log Σ exp over the last axis, safe for rows of -inf."""
    mx = x.max(axis=-1)
    safe = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.exp(x - safe[..., None]).sum(axis=-1))


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, any shape: z_i − log Σ_j e^{z_j}. A row of −∞ (no
    mass) stays −∞, without NaN; a NaN or +∞ in a row makes the row NaN (a diverged θ is
    never passed off as log-probabilities). numpy only: importing gvgap does not load scipy."""
    lse = _lse_last(z)[..., None]
    return z - np.where(lse == -np.inf, 0.0, lse)


def log_normalize_leaf(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax over leaves: ``(m, N) -> (m, N)``."""
    return log_softmax(logits)
