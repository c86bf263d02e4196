"""Tree layout of the stacked neural classes: node levels, chunks, padded flat leaf space.

Node indexing (as in :mod:`gvgap.theory.tree`): the node of prompt x at depth h with state s
(tokens a_1..a_h read in base V, first token most significant) has the *global* index
g = x V^h + s, so its parent is g // V, its last token is g mod V and its ancestor at depth
t ≤ h is g // V^(h−t). The leaves (depth H) in global order are the flat leaf space
``x N + ξ`` (prompt-major, N = V^H), the layout of ``(m, N)`` arrays raveled.

A :class:`Chunk` is a contiguous range [lo, hi) of depth-j nodes: the nodes computed for it
are its subtrees (depths h ≥ j: [lo V^(h−j), hi V^(h−j))) and their ancestors (depths
h < j: [lo // V^(j−h), (hi − 1) // V^(j−h) + 1)). The whole tree is ``Chunk(0, 0, m)``. A
causal model needs exactly these nodes, so a chunk's leaf outputs equal the full tree's on
its leaf range: memory is bounded by the chunk, not the tree.

Padding (batch invariance). The stacked classes carry B independent models on a leading
axis. Torch's CPU kernels process a contiguous tensor in SIMD blocks with a scalar tail, and
vectorised transcendental functions (exp, erf, …) may differ from their scalar versions in
the last bit, so an element's value can depend on its position in the whole tensor, i.e.
on B. Every per-model block that such a function sees is therefore padded to a multiple of
:data:`PAD` elements (each level's node count, the flat leaf space, the pair lists, the
flat parameters): then model b computes bit for bit what it computes alone (checked by
``tests/test_nn_stacked.py``). Padding rows are computed and ignored (weight 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: Per-model blocks are padded to a multiple of this many elements (≥ 2 × the widest SIMD
#: vector in elements: AVX-512 float32 has 16).
PAD = 64


def pad(n: int, k: int = PAD) -> int:
    """The smallest multiple of ``k`` that is ≥ n (≥ k)."""
    return max(k, -(-int(n) // k) * k)


@dataclass(frozen=True)
class Chunk:
    """Depth-``depth`` nodes [lo, hi) (global indices) with subtrees and ancestors."""

    depth: int
    lo: int
    hi: int


def level_range(vocab: int, h: int, chunk: Chunk) -> tuple[int, int]:
    """``(start, count)`` of the chunk's global node range at depth h (module docstring)."""
    j = chunk.depth
    if h <= j:
        f = vocab ** (j - h)
        start = chunk.lo // f
        return start, (chunk.hi - 1) // f + 1 - start
    f = vocab ** (h - j)
    return chunk.lo * f, (chunk.hi - chunk.lo) * f


def split_tree(n_prompts: int, vocab: int, horizon: int, max_leaves: int) -> list[Chunk]:
    """Chunks of at most ``max_leaves`` leaves covering the tree (one if it fits): whole
    prompts, else the subtrees of one prompt's depth-j states in runs of V^k, the largest
    that fit. So every chunk's nodes at depth h share their depth-t ancestors in aligned
    blocks of V^(h−t) (or all share one), which the tree transformer relies on."""
    n_leaves = vocab**horizon
    if n_prompts * n_leaves <= max_leaves:
        return [Chunk(0, 0, n_prompts)]
    if n_leaves <= max_leaves:
        per = max_leaves // n_leaves
        return [Chunk(0, lo, min(lo + per, n_prompts)) for lo in range(0, n_prompts, per)]
    k = 0  # subtrees of V^k depth-j states: V^(H−j+k) leaves; take j = H − 1 − k' as needed
    while vocab ** (k + 1) <= max_leaves:
        k += 1
    j = horizon - k  # depth whose single subtrees have V^k leaves
    return [Chunk(j, lo, lo + 1) for lo in range(n_prompts * vocab**j)]


@dataclass(frozen=True)
class TreeIndex:
    """Node tables of one chunk for levels 0..``n_levels`` − 1, each padded to :data:`PAD`.

    Attributes:
        n_prompts, vocab, horizon: the tree. n_levels: depths computed (H for a policy,
        H + 1 for a reward model). chunk: the chunk.
    """

    n_prompts: int
    vocab: int
    horizon: int
    n_levels: int
    chunk: Chunk

    @cached_property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """``(start, count)`` per depth 0..n_levels (the last one: the leaf level)."""
        return tuple(level_range(self.vocab, h, self.chunk) for h in range(self.n_levels + 1))

    @cached_property
    def padded(self) -> tuple[int, ...]:
        """Padded node count per computed depth."""
        return tuple(pad(c) for _, c in self.ranges[: self.n_levels])

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Offset of each depth's block in the concatenated node axis (length n_levels + 1)."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.padded)]))

    @property
    def n_nodes(self) -> int:
        """Padded length of the concatenated node axis."""
        return self.offsets[-1]

    def global_ids(self, h: int) -> np.ndarray:
        """Global indices of depth h's padded block (−1 on padding)."""
        start, count = self.ranges[h]
        out = np.full(pad(count), -1, dtype=np.int64)
        out[:count] = start + np.arange(count, dtype=np.int64)
        return out

    def tokens(self) -> np.ndarray:
        """Input token per node, ``(n_nodes,)``: BOS_x = V + x at depth 0, else a_h = g mod V
        (padding: token 0)."""
        out = []
        for h in range(self.n_levels):
            g = self.global_ids(h)
            tok = np.where(g < 0, 0, (self.vocab + g) if h == 0 else g % self.vocab)
            out.append(tok)
        return np.concatenate(out)

    def depths(self) -> np.ndarray:
        """Depth (position) per node, ``(n_nodes,)``."""
        return np.concatenate([np.full(p, h, dtype=np.int64) for h, p in enumerate(self.padded)])

    def local(self, h: int, g: np.ndarray) -> np.ndarray:
        """Local index (within depth h's block) of global indices ``g`` at depth h."""
        return g - self.ranges[h][0]

    def ancestors(self, h: int) -> np.ndarray:
        """Positions in the node axis of each depth-h node's ancestors at depths 0..h (itself
        last): ``(padded[h], h + 1)``; padding rows point at position 0."""
        g = self.global_ids(h)
        real = g >= 0
        cols = []
        for t in range(h + 1):
            a = self.local(t, np.where(real, g, 0) // self.vocab ** (h - t))
            cols.append(np.where(real, self.offsets[t] + a, 0))
        return np.stack(cols, axis=1)

    def parent_and_token(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        """For depth h ≥ 1 (leaf level included): each node's parent's local index at depth
        h − 1 and its token a_h; padding maps to (0, 0)."""
        g = self.global_ids(h)
        real = g >= 0
        parent = np.where(real, self.local(h - 1, np.where(real, g, 0) // self.vocab), 0)
        return parent, np.where(real, g % self.vocab, 0)

    def prompt_of(self, h: int) -> np.ndarray:
        """Prompt of each depth-h node (padding: 0)."""
        g = self.global_ids(h)
        return np.where(g >= 0, g, 0) // self.vocab**h

    def path_tokens(self, h: int, slots: int) -> np.ndarray:
        """Tokens a_1..a_slots of each depth-h node, ``V`` (the padding symbol) beyond depth
        h: ``(padded[h], slots)``."""
        g = np.where(self.global_ids(h) >= 0, self.global_ids(h), 0)
        s = g % self.vocab**h
        out = np.full((g.size, slots), self.vocab, dtype=np.int64)
        for t in range(min(h, slots)):
            out[:, t] = (s // self.vocab ** (h - 1 - t)) % self.vocab
        return out

    @property
    def leaf_span(self) -> tuple[int, int]:
        """``(start, count)`` of the chunk's leaves in the flat leaf space."""
        return self.ranges[self.horizon]


@dataclass(frozen=True)
class LeafSpace:
    """The flat leaf space ``(m N,)`` padded to ``size`` (a multiple of :data:`PAD` for the
    stacked classes; unpadded for the tabular and log-linear classes)."""

    n_prompts: int
    n_leaves: int
    size: int

    @classmethod
    def of(cls, n_prompts: int, n_leaves: int, padded: bool = True) -> LeafSpace:
        """The space of an ``(m, N)`` tree."""
        n = n_prompts * n_leaves
        return cls(n_prompts, n_leaves, pad(n) if padded else n)

    @property
    def n_real(self) -> int:
        """m N."""
        return self.n_prompts * self.n_leaves

    def pack(self, arrays) -> np.ndarray:
        """``(B, size)`` float64 from B arrays of shape ``(m, N)`` (zeros on padding)."""
        out = np.zeros((len(arrays), self.size))
        for b, a in enumerate(arrays):
            out[b, : self.n_real] = np.asarray(a, dtype=np.float64).reshape(-1)
        return out

    def unpack(self, flat: np.ndarray) -> np.ndarray:
        """``(B, m, N)`` from ``(B, size)``."""
        flat = np.asarray(flat)
        return flat[:, : self.n_real].reshape(flat.shape[0], self.n_prompts, self.n_leaves)

    def rho_leaf(self, rhos) -> np.ndarray:
        """``(B, size)``: ρ_x at every leaf of prompt x, 0 on padding."""
        return self.pack([np.repeat(np.asarray(r, float)[:, None], self.n_leaves, 1) for r in rhos])

    def mask(self) -> np.ndarray:
        """``(size,)``: 1 on real leaves, 0 on padding."""
        out = np.zeros(self.size)
        out[: self.n_real] = 1.0
        return out

    def flat_index(self, prompt: np.ndarray, leaf: np.ndarray) -> np.ndarray:
        """Flat positions x N + ξ of ``(prompt, leaf)`` pairs."""
        return np.asarray(prompt, np.int64) * self.n_leaves + np.asarray(leaf, np.int64)
