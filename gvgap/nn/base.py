"""Base of the stacked neural classes (``MLPPolicy``, ``TransformerPolicy``, ``ScalarHeadRM``).

A stacked class holds B = ``n_models`` independent models (``n_models=None``: one model and
the unbatched class protocol, outputs ``(m, N)``; else outputs ``(B, m, N)``). Its internal
output is the padded flat leaf space ``(B, L)`` (:class:`gvgap.nn.layout.LeafSpace`) of a
:class:`~gvgap.nn.layout.Chunk` (the whole tree by default), from ONE batched forward pass
over the chunk's nodes; :meth:`StackedTree.chunks` splits the tree so that one pass stays
under a memory bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gvgap.nn.device import Placement, import_torch, resolve
from gvgap.nn.layout import Chunk, LeafSpace, TreeIndex, split_tree

torch = import_torch()
nn = torch.nn

#: Default bound on the memory one forward + backward pass of a stack may take (bytes).
MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class TorchIndex:
    """The torch tables of a :class:`TreeIndex` on a device (see its docstring)."""

    tree: TreeIndex
    offsets: tuple[int, ...]
    padded: tuple[int, ...]
    real: tuple[int, ...]
    tokens: torch.Tensor
    depths: torch.Tensor
    ancestors: tuple[torch.Tensor, ...]
    parents: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def torch_index(tree: TreeIndex, device) -> TorchIndex:
    """Move a chunk's node tables to ``device``."""

    def t(a):
        return torch.as_tensor(a, dtype=torch.long, device=device)

    anc = tuple(t(tree.ancestors(h)) for h in range(tree.n_levels))
    par = tuple(
        (t(p), t(a)) for p, a in (tree.parent_and_token(h) for h in range(1, tree.horizon + 1))
    )
    real = tuple(c for _, c in tree.ranges[: tree.n_levels])
    return TorchIndex(
        tree, tree.offsets, tree.padded, real, t(tree.tokens()), t(tree.depths()), anc, par
    )


def model_seeds(seed: int | Sequence[int], n_models: int) -> list[int]:
    """One init seed per model: a sequence of B ints, or one int for every model."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed)] * n_models
    seeds = [int(s) for s in seed]
    if len(seeds) != n_models:
        raise ValueError(f"need {n_models} seeds, got {len(seeds)}")
    return seeds


class StackedTree(nn.Module):
    """Common tree bookkeeping of the stacked classes (module docstring)."""

    n_levels: int

    def _tree(self, n_prompts, vocab, horizon, n_models, placement) -> Placement:
        self.n_prompts, self.vocab, self.horizon = n_prompts, vocab, horizon
        self.stacked = n_models is not None
        self.n_models = int(n_models) if n_models is not None else 1
        self._index: dict = {}
        return placement or resolve()

    @property
    def n_leaves(self) -> int:
        """N = V^H."""
        return self.vocab**self.horizon

    @property
    def leaf_space(self) -> LeafSpace:
        """The padded flat leaf space of the whole tree."""
        return LeafSpace.of(self.n_prompts, self.n_leaves)

    def tree_index(self, chunk: Chunk | None = None) -> TorchIndex:
        """The (cached) node tables of ``chunk`` (default: the whole tree)."""
        chunk = chunk or Chunk(0, 0, self.n_prompts)
        if chunk not in self._index:
            dev = next(self.parameters()).device
            tree = TreeIndex(self.n_prompts, self.vocab, self.horizon, self.n_levels, chunk)
            self._index[chunk] = torch_index(tree, dev)
        return self._index[chunk]

    def leaf_flat(self, chunk: Chunk | None = None) -> torch.Tensor:  # pragma: no cover
        """``(B, pad(leaves of chunk))``: the chunk's leaf outputs, real leaves first."""
        raise NotImplementedError

    def bytes_per_leaf(self) -> float:  # pragma: no cover - abstract
        """Estimated bytes of one model's forward + backward per leaf of a chunk."""
        raise NotImplementedError

    def chunks(self, max_bytes: int = MAX_BYTES) -> list[Chunk]:
        """Chunks whose pass over all B models stays under ``max_bytes`` (estimate)."""
        per_leaf = self.bytes_per_leaf() * self.n_models
        max_leaves = max(1, int(max_bytes // max(per_leaf, 1.0)))
        return split_tree(self.n_prompts, self.vocab, self.horizon, max_leaves)

    def public(self, flat: torch.Tensor) -> torch.Tensor:
        """``(m, N)`` (unstacked) or ``(B, m, N)`` from the whole tree's flat outputs."""
        out = flat[:, : self.n_prompts * self.n_leaves].reshape(
            flat.shape[0], self.n_prompts, self.n_leaves
        )
        return out if self.stacked else out[0]

    def itemsize(self) -> int:
        """Bytes per parameter element."""
        return next(self.parameters()).element_size()
