"""Torch policy classes on the tree: tabular and log-linear (parity with the numpy core), an
MLP over a prefix encoding and a small causal transformer over tokens.

Every class is a ``torch.nn.Module`` with

- ``node_logp() -> tuple[Tensor]``: log π_θ(a|s) per depth, ``[h]: (m, V^h, V)``;
- ``leaf_logp() -> Tensor``: log P_θ(ξ|x), ``(m, V^H)``,

both from ONE batched forward pass over all states (MLP) or over the V^(H−1) depth-(H−1)
prefixes run through the causal model once (transformer: next-token log-probs at position t
of a prefix are the distribution of its depth-t ancestor). So J, both KLs, win rate and
best-of-N of a neural policy are exact through ``TreeEnv.metrics`` / ``gvgap.theory``.

Neural classes add the log π_ref node table as an offset and zero-initialise the output
head, so the initial policy *is* π_ref (as at LLM scale, where π_ref is the initial model).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gvgap.nn.device import Placement, import_torch, resolve
from gvgap.nn.tree import as_tensor, edge_offsets, node_logp_from_paths, node_to_leaf_logp
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

    def _tree(self, n_prompts, vocab, horizon, logpi_ref, placement) -> tuple[Placement, Any]:
        """Record m, V, H; return the placement (default: :func:`resolve`) and log π_ref
        (default: uniform), which the neural classes add as a base offset."""
        self.n_prompts, self.vocab, self.horizon = n_prompts, vocab, horizon
        if logpi_ref is None:
            logpi_ref = uniform_node_logp(n_prompts, vocab, horizon)
        return placement or resolve(), logpi_ref


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


def mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
    """``depth`` hidden GELU layers of ``width``, then a zero-initialised linear head."""
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.GELU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, d_out))


def init_weights(module: nn.Module, seed: int, zero: tuple = ()) -> None:
    """Initialise every Linear / Embedding of ``module`` from a ``torch.Generator(seed)``
    (PyTorch's default laws, no global RNG); modules in ``zero`` get zero weights and bias.

    Linear: W ~ U(±1/√fan_in) (kaiming_uniform with a = √5), b ~ U(±1/√fan_in);
    Embedding: N(0, 1/width). LayerNorm keeps (1, 0).
    """
    g = torch.Generator().manual_seed(int(seed))
    for mod in module.modules():
        if isinstance(mod, nn.Linear):
            if any(mod is z for z in zero):
                nn.init.zeros_(mod.weight)
                nn.init.zeros_(mod.bias)
                continue
            bound = 1.0 / math.sqrt(mod.in_features)
            with torch.no_grad():
                mod.weight.copy_((torch.rand(mod.weight.shape, generator=g) * 2 - 1) * bound)
                mod.bias.copy_((torch.rand(mod.bias.shape, generator=g) * 2 - 1) * bound)
        elif isinstance(mod, nn.Embedding):
            with torch.no_grad():
                std = 1.0 / math.sqrt(mod.embedding_dim)
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * std)


def prefix_encoding(n_prompts: int, vocab: int, horizon: int) -> np.ndarray:
    """One-hot encoding of every (prompt, state), depth-major: ``(Σ_h m V^h, m + H + (H−1)(V+1))``.

    Columns: prompt one-hot, depth one-hot, and for each position t < H−1 a one-hot over
    V tokens + 1 padding symbol (positions not yet generated are padding).
    """
    rows = []
    d = n_prompts + horizon + (horizon - 1) * (vocab + 1)
    for h in range(horizon):
        n_s = vocab**h
        enc = np.zeros((n_prompts, n_s, d))
        enc[np.arange(n_prompts), :, np.arange(n_prompts)] = 1.0
        enc[:, :, n_prompts + h] = 1.0
        s = np.arange(n_s)
        for t in range(horizon - 1):
            tok = (s // vocab ** (h - 1 - t)) % vocab if t < h else np.full(n_s, vocab)
            enc[:, s, n_prompts + horizon + t * (vocab + 1) + tok] = 1.0
        rows.append(enc.reshape(-1, d))
    return np.concatenate(rows)


class MLPPolicy(TreePolicy):
    """π_θ(·|x, s) = softmax(log π_ref(·|s) + MLP(enc(x, s))), one pass over all states."""

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
        seed: int = 0,
    ):
        super().__init__()
        pl, logpi_ref = self._tree(n_prompts, vocab, horizon, logpi_ref, placement)
        enc = prefix_encoding(n_prompts, vocab, horizon)
        self.register_buffer("enc", as_tensor(enc, pl))
        self.register_buffer(
            "offset",
            as_tensor(np.concatenate([np.asarray(a).reshape(-1, vocab) for a in logpi_ref]), pl),
        )
        self.net = mlp(enc.shape[1], width, depth, vocab)
        init_weights(self.net, seed, zero=(self.net[-1],))
        self.to(pl.device, pl.dtype)

    def node_logp(self):
        """All states in one batch, split per depth."""
        lp = F.log_softmax(self.offset + self.net(self.enc), dim=-1)
        out, start = [], 0
        for h in range(self.horizon):
            n = self.n_prompts * self.vocab**h
            out.append(lp[start : start + n].reshape(self.n_prompts, -1, self.vocab))
            start += n
        return tuple(out)


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention + GELU MLP (width 2d) with residuals."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class TransformerBody(nn.Module):
    """Token + position embeddings (V tokens, then one BOS token per prompt), ``depth``
    causal blocks, final LayerNorm. Sequences are ``[BOS_x, a_1, …]`` of length ≤ H + 1."""

    def __init__(self, n_prompts, vocab, horizon, *, width=32, depth=2, heads=2):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.n_prompts, self.vocab, self.horizon = n_prompts, vocab, horizon
        self.width, self.depth, self.heads = width, depth, heads
        self.tok = nn.Embedding(vocab + n_prompts, width)
        self.pos = nn.Embedding(horizon + 1, width)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(width)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` token ids → ``(B, T, width)`` hidden states."""
        x = self.tok(seq) + self.pos(torch.arange(seq.shape[1], device=seq.device))
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x)


def sequences(n_prompts: int, vocab: int, length: int, device) -> torch.Tensor:
    """``[BOS_x, a_1..a_L]`` for every prompt and token string: ``(m V^L, L + 1)``."""
    toks = np.arange(vocab**length)[:, None] // vocab ** np.arange(length - 1, -1, -1) % vocab
    toks = toks.reshape(vocab**length, length)
    bos = np.repeat(vocab + np.arange(n_prompts), vocab**length)[:, None]
    seq = np.concatenate([bos, np.tile(toks, (n_prompts, 1))], axis=1)
    return torch.as_tensor(seq, dtype=torch.long, device=device)


class TransformerPolicy(TreePolicy):
    """Small causal transformer: π(·|x, a_<t) = softmax(log π_ref + head(h_t)).

    One forward pass over the m·V^(H−1) sequences [BOS_x, a_1..a_{H−1}] gives every node's
    next-token distribution (position t ↔ the depth-t ancestor).
    """

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
        seed: int = 0,
    ):
        super().__init__()
        pl, logpi_ref = self._tree(n_prompts, vocab, horizon, logpi_ref, placement)
        self.register_buffer("offset", as_tensor(edge_offsets(logpi_ref, vocab, horizon), pl))
        self.register_buffer("seq", sequences(n_prompts, vocab, horizon - 1, pl.device))
        self.body = TransformerBody(
            n_prompts, vocab, horizon, width=width, depth=depth, heads=heads
        )
        self.head = nn.Linear(width, vocab)
        init_weights(self, seed, zero=(self.head,))
        self.to(pl.device, pl.dtype)

    def node_logp(self):
        """Strided views of the path outputs (see module docstring)."""
        logits = self.head(self.body(self.seq))
        m, h, v = self.n_prompts, self.horizon, self.vocab
        lp = F.log_softmax(self.offset + logits.reshape(m, -1, h, v), dim=-1)
        return node_logp_from_paths(lp, v)
