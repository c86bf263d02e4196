"""Torch policy classes on the tree: tabular and log-linear (parity with the numpy core), and
the stacked neural classes — an MLP over a one-hot prefix encoding and a small causal
transformer over tokens (:mod:`gvgap.nn.stacked`).

Every class is a ``torch.nn.Module`` with

- ``node_logp() -> tuple[Tensor]``: log π_θ(a|s) per depth, ``[h]: (m, V^h, V)``;
- ``leaf_logp() -> Tensor``: log P_θ(ξ|x), ``(m, V^H)``,

from ONE batched forward pass over all tree nodes (each node computed once; the transformer's
state at a node is its prefix's, see :mod:`gvgap.nn.stacked`). So J, both KLs, win rate and
best-of-N of a neural policy are exact through ``TreeEnv.metrics`` / ``gvgap.theory``. The
neural classes take ``n_models=B`` to hold B independent models (outputs get a leading B
axis; ``leaf_flat`` is the padded flat form the trainers use, :mod:`gvgap.nn.base`).

Neural classes add the log π_ref node table as an offset and zero-initialise the output
head, so the initial policy *is* π_ref (as at LLM scale, where π_ref is the initial model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gvgap.nn.base import StackedTree, model_seeds
from gvgap.nn.device import Placement, import_torch, resolve
from gvgap.nn.layout import Chunk, TreeIndex
from gvgap.nn.stacked import NodeMLP, SLinear, TreeTransformer, init_stack
from gvgap.nn.tree import as_tensor, node_to_leaf_logp
from gvgap.theory.tree import node_shapes, uniform_node_logp

torch = import_torch()
nn = torch.nn
F = torch.nn.functional


class TreePolicy(nn.Module):
    """Base: subclasses define :meth:`node_logp`; leaf log-probs follow by path sums."""

    n_prompts: int
    vocab: int
    horizon: int

    def node_logp(self) -> tuple[torch.Tensor, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def leaf_logp(self) -> torch.Tensor:
        """log P_θ(ξ|x), ``(m, V^H)``."""
        return node_to_leaf_logp(self.node_logp())


class TorchTabularPolicy(TreePolicy):
    """θ = one logit per (prompt, state, token); π = softmax(θ_s) (numpy ``TabularPolicy``)."""

    def __init__(self, n_prompts, vocab, horizon, init=None, placement: Placement | None = None):
        super().__init__()
        pl = placement or resolve()
        self.n_prompts, self.vocab, self.horizon = n_prompts, vocab, horizon
        init = (
            init
            if init is not None
            else [np.zeros(s) for s in node_shapes(n_prompts, vocab, horizon)]
        )
        self.logits = nn.ParameterList([nn.Parameter(as_tensor(a, pl).clone()) for a in init])

    def node_logp(self):
        """log_softmax of the logits per depth."""
        return tuple(F.log_softmax(z, dim=-1) for z in self.logits)


class TorchLogLinearPolicy(TreePolicy):
    """π_θ(a|s) ∝ exp(θ · φ(s, a) + offset(s, a)) (numpy ``LogLinearPolicy``)."""

    def __init__(self, features, offset=None, placement: Placement | None = None):
        super().__init__()
        pl = placement or resolve()
        self.n_prompts, _, self.vocab, d = features[0].shape
        self.horizon = len(features)
        for h, f in enumerate(features):
            self.register_buffer(f"phi{h}", as_tensor(f, pl))
            if offset is not None:
                self.register_buffer(f"off{h}", as_tensor(offset[h], pl))
        self.has_offset = offset is not None
        self.theta = nn.Parameter(torch.zeros(d, dtype=pl.dtype, device=pl.device))

    def node_logp(self):
        """log_softmax(φ θ + offset) per depth."""
        out = []
        for h in range(self.horizon):
            z = getattr(self, f"phi{h}") @ self.theta
            if self.has_offset:
                z = z + getattr(self, f"off{h}")
            out.append(F.log_softmax(z, dim=-1))
        return tuple(out)


def node_tables(logpi_ref, n_prompts: int, vocab: int, horizon: int) -> np.ndarray:
    """log π_ref node tables ``[h]: (m, V^h, V)`` (None: uniform) as rows ``(Σ_h m V^h, V)``,
    depth-major, each depth in global node order (:mod:`gvgap.nn.layout`)."""
    if logpi_ref is None:
        logpi_ref = uniform_node_logp(n_prompts, vocab, horizon)
    return np.concatenate([np.asarray(a, np.float64).reshape(-1, vocab) for a in logpi_ref])


class NeuralPolicy(StackedTree, TreePolicy):
    """π_θ(·|s) = softmax(log π_ref(·|s) + f_θ(s)) for a stacked network f (subclasses define
    :meth:`logits`), over the nodes of a chunk; leaf log-probs by path sums."""

    def _setup(self, n_prompts, vocab, horizon, n_models, logpi_ref, placement) -> Placement:
        """Record the tree; store log π_ref as per-model node rows ``(B or 1, T, V)`` in the
        whole tree's padded node order (``logpi_ref``: one node table, or a list of B)."""
        pl = self._tree(n_prompts, vocab, horizon, n_models, placement)
        self.n_levels = horizon
        # one node table (arrays per depth), or one table per model
        per_model = (
            n_models is not None and logpi_ref is not None and not hasattr(logpi_ref[0], "ndim")
        )
        tables = logpi_ref if per_model else [logpi_ref]
        if per_model and len(tables) != self.n_models:
            raise ValueError(f"need {self.n_models} π_ref tables, got {len(tables)}")
        full = TreeIndex(n_prompts, vocab, horizon, horizon, Chunk(0, 0, n_prompts))
        rows = np.zeros((len(tables), full.n_nodes, vocab))
        for b, tab in enumerate(tables):
            flat = node_tables(tab, n_prompts, vocab, horizon)
            start = 0
            for h in range(horizon):
                n = n_prompts * vocab**h
                rows[b, full.offsets[h] : full.offsets[h] + n] = flat[start : start + n]
                start += n
        self.register_buffer("offset", as_tensor(rows, pl))
        return pl

    def logits(self, tix) -> torch.Tensor:  # pragma: no cover - abstract
        """``(B, n_nodes, V)`` network outputs at the chunk's nodes (depths 0..H−1)."""
        raise NotImplementedError

    def _offset_rows(self, tix) -> torch.Tensor:
        if tix.tree.chunk == Chunk(0, 0, self.n_prompts):
            return self.offset
        full, pos = self.tree_index(), []
        for h in range(self.n_levels):
            g = tix.tree.global_ids(h)
            pos.append(np.where(g >= 0, full.offsets[h] + g, 0))
        pos = np.concatenate(pos)
        return self.offset[:, torch.as_tensor(pos, device=self.offset.device)]

    def node_logp_flat(self, chunk: Chunk | None = None) -> tuple[torch.Tensor, object]:
        """log π_θ(·|s) at the chunk's nodes, ``(B, n_nodes, V)``, and the chunk's tables."""
        tix = self.tree_index(chunk)
        return F.log_softmax(self._offset_rows(tix) + self.logits(tix), dim=-1), tix

    def leaf_flat(self, chunk: Chunk | None = None) -> torch.Tensor:
        """log P_θ(ξ|x) of the chunk's leaves, ``(B, pad(n))``: acc_{h+1}(s·a) = acc_h(s) +
        log π(a|s), level by level."""
        lp, tix = self.node_logp_flat(chunk)
        b, v = lp.shape[0], self.vocab
        acc = torch.zeros((b, tix.padded[0]), dtype=lp.dtype, device=lp.device)
        for h in range(self.horizon):
            o, n = tix.offsets[h], tix.padded[h]
            parent, tok = tix.parents[h]
            acc = acc[:, parent] + lp[:, o : o + n].reshape(b, n * v)[:, parent * v + tok]
        return acc

    def node_logp(self):
        """log π_θ(a|s) per depth: ``(m, V^h, V)`` or ``(B, m, V^h, V)``."""
        lp, tix = self.node_logp_flat()
        out = []
        for h in range(self.horizon):
            o, n = tix.offsets[h], self.n_prompts * self.vocab**h
            a = lp[:, o : o + n].reshape(lp.shape[0], self.n_prompts, -1, self.vocab)
            out.append(a if self.stacked else a[0])
        return tuple(out)

    def leaf_logp(self):
        """log P_θ(ξ|x): ``(m, V^H)`` or ``(B, m, V^H)``."""
        return self.public(self.leaf_flat())


class MLPPolicy(NeuralPolicy):
    """π_θ(·|x, s) = softmax(log π_ref(·|s) + MLP(enc(x, s))), one pass over all states.

    enc(x, s): one-hot of the prompt, of the depth, and for each position t < H − 1 of the
    token a_{t+1} or a padding symbol (V + 1 values): m + H + (H − 1)(V + 1) features.
    """

    def __init__(
        self,
        n_prompts,
        vocab,
        horizon,
        *,
        width=32,
        depth=2,
        logpi_ref=None,
        placement: Placement | None = None,
        seed: int | Sequence[int] = 0,
        n_models: int | None = None,
    ):
        super().__init__()
        pl = self._setup(n_prompts, vocab, horizon, n_models, logpi_ref, placement)
        self.width, self.depth = width, depth
        n_feat = n_prompts + horizon + (horizon - 1) * (vocab + 1)
        self.net = NodeMLP(self.n_models, n_feat, width, depth, vocab)
        self.to(pl.device, pl.dtype)
        init_stack(self.net, model_seeds(seed, self.n_models))
        self._feats: dict = {}

    def features(self, tix) -> torch.Tensor:
        """Active feature ids per node, ``(n_nodes, 2 + H − 1)`` (class docstring)."""
        key = tix.tree.chunk
        if key not in self._feats:
            m, v, hh = self.n_prompts, self.vocab, self.horizon
            rows = []
            for h in range(self.n_levels):
                tok = tix.tree.path_tokens(h, hh - 1)
                cols = m + hh + np.arange(hh - 1) * (v + 1) + tok
                depth = np.full((tok.shape[0], 1), m + h)
                rows.append(np.concatenate([tix.tree.prompt_of(h)[:, None], depth, cols], 1))
            self._feats[key] = torch.as_tensor(np.concatenate(rows), device=tix.tokens.device)
        return self._feats[key]

    def logits(self, tix):
        """The MLP at every node of the chunk."""
        return self.net(self.features(tix))

    def bytes_per_leaf(self) -> float:
        """≈ (H + 1 + 6·depth) width values per node, nodes ≈ 1/(V − 1) per leaf."""
        per_node = (self.horizon + 1 + 6 * self.depth) * self.width + 4 * self.vocab
        return per_node * self.itemsize() / max(self.vocab - 1, 1)


class TransformerPolicy(NeuralPolicy):
    """Small causal transformer: π(·|x, a_≤t) = softmax(log π_ref + head(h_t)), h_t the
    transformer state of the node (x, a_1..a_t), every node computed once
    (:class:`gvgap.nn.stacked.TreeTransformer`)."""

    def __init__(
        self,
        n_prompts,
        vocab,
        horizon,
        *,
        width=32,
        depth=2,
        heads=2,
        logpi_ref=None,
        placement: Placement | None = None,
        seed: int | Sequence[int] = 0,
        n_models: int | None = None,
    ):
        super().__init__()
        pl = self._setup(n_prompts, vocab, horizon, n_models, logpi_ref, placement)
        self.width, self.depth, self.heads = width, depth, heads
        self.body = TreeTransformer(
            self.n_models, n_prompts, vocab, horizon, width=width, depth=depth, heads=heads
        )
        self.head = SLinear(self.n_models, width, vocab, zero=True)
        self.to(pl.device, pl.dtype)
        init_stack(self, model_seeds(seed, self.n_models))

    def logits(self, tix):
        """Head on the transformer state of every node."""
        return self.head(self.body(tix))

    def bytes_per_leaf(self) -> float:
        """≈ (16 + 4 H) width values per node and layer, nodes ≈ 1/(V − 1) per leaf."""
        per_node = self.depth * (16 + 4 * self.horizon) * self.width + 4 * self.vocab
        return per_node * self.itemsize() / max(self.vocab - 1, 1)
