"""Torch twins of the tree coordinates of :mod:`gvgap.theory.tree` (THEORY §2).

Leaves are indexed in base V, first token most significant, as in the numpy core, so a
depth-(h+1) tensor ``(m, V^(h+1))`` reshapes to ``(m, V^h, V)`` = (state, next token).
"""

from __future__ import annotations

import numpy as np

from gvgap.nn.device import import_torch

torch = import_torch()


def as_tensor(a, placement) -> torch.Tensor:
    """A numpy array (or tensor) on the placement's device and dtype."""
    return torch.as_tensor(np.array(a), dtype=placement.dtype, device=placement.device)


def node_to_leaf_logp(logpi) -> torch.Tensor:
    """log P(ξ|x) = Σ_h log π(a_h|s_h) from node log-probs ``[h]: (m, V^h, V)`` → ``(m, V^H)``."""
    acc = logpi[0][:, 0, :]
    for lp in logpi[1:]:
        acc = (acc[:, :, None] + lp).reshape(lp.shape[0], -1)
    return acc


def prefix_tokens(vocab: int, depth: int) -> np.ndarray:
    """Tokens of every state at ``depth``: ``(V^depth, depth)`` int64, base-V order."""
    idx = np.arange(vocab**depth, dtype=np.int64)
    powers = vocab ** np.arange(depth - 1, -1, -1, dtype=np.int64)
    return (idx[:, None] // powers[None, :]) % vocab


def edge_offsets(logpi_ref, vocab: int, horizon: int) -> np.ndarray:
    """π_ref node logits along every depth-(H−1) prefix path: ``(m, V^(H−1), H, V)``.

    ``out[x, p, t]`` = log π_ref(·|x, first t tokens of prefix p) (the offset a neural policy
    adds so that a zero head is exactly π_ref).
    """
    m = logpi_ref[0].shape[0]
    n_pref = vocab ** (horizon - 1)
    out = np.empty((m, n_pref, horizon, vocab))
    p = np.arange(n_pref)
    for t in range(horizon):
        out[:, :, t, :] = np.asarray(logpi_ref[t])[:, p // vocab ** (horizon - 1 - t), :]
    return out


def node_logp_from_paths(lp_paths: torch.Tensor, vocab: int) -> tuple[torch.Tensor, ...]:
    """Node log-probs per depth from path outputs ``(m, V^(H−1), H, V)``.

    The states at depth h are the prefixes whose first descendant at depth H−1 has index
    s · V^(H−1−h): a strided view, no copy of the distributions.
    """
    horizon = lp_paths.shape[2]
    return tuple(lp_paths[:, :: vocab ** (horizon - 1 - h), h, :] for h in range(horizon))


def scatter_leaf(values, prompt, leaf, shape) -> torch.Tensor:
    """Σ of per-row values into a leaf tensor ``(m, N)`` (adjoint of gather)."""
    m, n = shape
    out = torch.zeros(m * n, dtype=values.dtype, device=values.device)
    out.index_add_(0, prompt * n + leaf, values)
    return out.reshape(m, n)
