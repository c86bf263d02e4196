"""Torch twins of the tree coordinates of :mod:`gvgap.theory.tree` (docs/theory.md §2).

Leaves are indexed in base V, first token most significant, as in the numpy core, so a
depth-(h+1) tensor ``(m, V^(h+1))`` reshapes to ``(m, V^h, V)`` = (state, next token). The
node tables of the stacked neural classes: :mod:`gvgap.nn.layout`.
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
