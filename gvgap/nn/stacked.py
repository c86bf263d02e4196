"""Stacked layers (B independent models on a leading axis) and the two bodies of the neural
classes: a causal transformer computed once per tree node, and an MLP over one-hot node
features.

Stacking. Every parameter has shape ``(B, …)``; model b is initialised from
``torch.Generator(seeds[b])`` alone (same laws as ``torch.nn``: Linear W, b ~ U(±1/√fan_in),
Embedding N(0, 1/width), LayerNorm (1, 0), heads zero), so a model does not depend on the
others in its stack. One call computes all B models (``torch.baddbmm`` per layer): seeds,
λ values, restarts and pipelines of a run share one forward pass.

Tree transformer. A causal transformer's hidden state at position t of [BOS_x, a_1, …]
depends only on the prefix (x, a_1..a_t), i.e. on the tree node at depth t. So every node is
computed ONCE (Σ_h m V^h nodes) instead of once per sequence through it (m V^H (H + 1)
positions: 6× more on a 4×7 tree), level by level with :class:`gvgap.nn.layout.TreeIndex`:
the node at depth h attends to its h + 1 ancestors (itself included).
Pre-LayerNorm blocks: x ← x + W_o Attn(LN₁ x); x ← x + FF(LN₂ x), FF = W₂ GELU(W₁ ·) of width
2d; final LayerNorm. ``tests/test_nn_stacked.py`` checks it against the same weights run
over whole sequences with ``torch.nn.functional.scaled_dot_product_attention``.

Node MLP. An MLP over a one-hot encoding: its first layer is the sum of the weight rows of
the active features (identical to ``Linear`` on the one-hot vector, without building it).
"""

from __future__ import annotations

import math

from gvgap.nn.device import import_torch

torch = import_torch()
nn = torch.nn
F = torch.nn.functional


class SLinear(nn.Module):
    """B affine maps x ↦ x W_b + c_b: ``(B, n, d_in) → (B, n, d_out)``."""

    def __init__(self, n_models: int, d_in: int, d_out: int, *, zero: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_models, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n_models, 1, d_out))
        self.zero, self.fan_in = zero, d_in

    def reset(self, b: int, gen) -> None:
        """Initialise model b: U(±1/√fan_in) (zeros for a head)."""
        if self.zero:
            return
        bound = 1.0 / math.sqrt(self.fan_in)
        for p in (self.weight, self.bias):
            p.data[b] = (
                torch.rand(p.shape[1:], generator=gen, dtype=torch.float64) * 2 - 1
            ) * bound

    def forward(self, x):
        if self.weight.shape[-1] == 1:  # a scalar head: a row-wise dot product, not a
            # batched matrix-vector product (whose BLAS path changes with B, and so its bits)
            return (x * self.weight[..., 0].unsqueeze(1)).sum(-1, keepdim=True) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


class SLayerNorm(nn.Module):
    """B LayerNorms over the last axis (weight 1, bias 0 at start)."""

    def __init__(self, n_models: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_models, 1, width))
        self.bias = nn.Parameter(torch.zeros(n_models, 1, width))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class SRows(nn.Module):
    """B tables of rows ``(B, n, d)`` read by index: embeddings (N(0, 1/d)) or the first layer
    of an MLP on one-hot inputs (U(±1/√fan_in))."""

    def __init__(self, n_models: int, n: int, d: int, *, fan_in: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_models, n, d))
        self.fan_in = fan_in

    def reset(self, b: int, gen) -> None:
        """Initialise model b."""
        shape = self.weight.shape[1:]
        if self.fan_in is None:
            std = 1.0 / math.sqrt(shape[-1])
            x = torch.randn(shape, generator=gen, dtype=torch.float64) * std
        else:
            bound = 1.0 / math.sqrt(self.fan_in)
            u = torch.rand(shape, generator=gen, dtype=torch.float64)
            x = (u * 2 - 1) * bound
        self.weight.data[b] = x.to(self.weight.device, self.weight.dtype)

    def forward(self, idx):
        """``idx`` of any shape → ``(B, *idx.shape, d)``."""
        return self.weight[:, idx]


def init_stack(module: nn.Module, seeds) -> None:
    """Initialise every stacked layer of ``module``, model b from ``Generator(seeds[b])``
    alone (layers in ``module.modules()`` order)."""
    for b, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed))
        for mod in module.modules():
            if hasattr(mod, "reset"):
                mod.reset(b, gen)


class SBlock(nn.Module):
    """One pre-LayerNorm causal block over tree nodes (module docstring)."""

    def __init__(self, n_models: int, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = SLayerNorm(n_models, width), SLayerNorm(n_models, width)
        self.qkv = SLinear(n_models, width, 3 * width)
        self.proj = SLinear(n_models, width, width)
        self.ff1 = SLinear(n_models, width, 2 * width)
        self.ff2 = SLinear(n_models, 2 * width, width)

    def attend(self, x, tix):
        """Causal attention of every node over its ancestors (itself included).

        The chunk's real nodes at depth h share their depth-t ancestor in consecutive blocks
        of f = n_h / n_t nodes (:func:`gvgap.nn.layout.split_tree` keeps this true), so
        q·k and p·v are block-broadcast products, with no gather; padding rows get 0."""
        b, _, w = x.shape
        hd, dh = self.heads, w // self.heads
        # one split per tensor (a slice per use would cost a full-size zero tensor each in
        # the backward pass): real rows of q, k, v per depth
        q, k, v = (
            [t[:, :n] for t, n in zip(u.split(tix.padded, dim=1), tix.real)]
            for u in self.qkv(self.ln1(x)).split(w, dim=-1)
        )
        outs = []
        for h, n_pad in enumerate(tix.padded):
            n = tix.real[h]
            a = v[0] if h == 0 else self._level(q[h] * (1.0 / math.sqrt(dh)), k, v, h, hd, dh)
            outs.append(a)  # BOS (h = 0) attends to itself only: softmax of one score = 1
            if n_pad > n:
                outs.append(torch.zeros((b, n_pad - n, w), dtype=x.dtype, device=x.device))
        return torch.cat(outs, dim=1)

    @staticmethod
    def _level(qh, k, v, h, hd, dh):
        """Attention output of depth h's real nodes ``(B, n, w)`` over depths 0..h."""
        b, n, w = qh.shape
        blocks = [(t, k[t].shape[1]) for t in range(h + 1)]
        s = torch.stack(
            [
                (qh.view(b, nt, n // nt, hd, dh) * k[t].view(b, nt, 1, hd, dh))
                .sum(-1)
                .view(b, n, hd)
                for t, nt in blocks
            ],
            dim=-1,
        )
        p = torch.softmax(s, dim=-1)  # (B, n, heads, h + 1)
        a = 0.0
        for t, nt in blocks:
            pt = p[..., t].view(b, nt, n // nt, hd, 1)
            a = a + (pt * v[t].view(b, nt, 1, hd, dh)).view(b, n, w)
        return a

    def forward(self, x, tix):
        x = x + self.proj(self.attend(x, tix))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class TreeTransformer(nn.Module):
    """Token + position embeddings (V tokens, then one BOS per prompt), ``depth`` causal
    blocks and a final LayerNorm, over the nodes of a tree chunk: ``(B, n_nodes, width)``."""

    def __init__(self, n_models, n_prompts, vocab, horizon, *, width, depth, heads):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.width, self.depth, self.heads = width, depth, heads
        self.tok = SRows(n_models, vocab + n_prompts, width)
        self.pos = SRows(n_models, horizon + 1, width)
        self.blocks = nn.ModuleList([SBlock(n_models, width, heads) for _ in range(depth)])
        self.ln = SLayerNorm(n_models, width)

    def forward(self, tix):
        x = self.tok(tix.tokens) + self.pos(tix.depths)
        for blk in self.blocks:
            x = blk(x, tix)
        return self.ln(x)


class NodeMLP(nn.Module):
    """GELU MLP of ``depth`` ≥ 1 hidden layers of ``width`` over one-hot features, the first
    layer read as rows (module docstring), then a zero-initialised head to ``d_out``."""

    def __init__(self, n_models: int, n_features: int, width: int, depth: int, d_out: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"an MLP needs depth >= 1, got {depth}")
        self.rows = SRows(n_models, n_features, width, fan_in=n_features)
        self.bias0 = SRows(n_models, 1, width, fan_in=n_features)
        self.hidden = nn.ModuleList([SLinear(n_models, width, width) for _ in range(depth - 1)])
        self.head = SLinear(n_models, width, d_out, zero=True)

    def forward(self, feats):
        """``feats`` ``(n, S)`` active feature ids per row → ``(B, n, d_out)``."""
        x = F.gelu(self.rows(feats).sum(2) + self.bias0.weight)
        for lin in self.hidden:
            x = F.gelu(lin(x))
        return self.head(x)
