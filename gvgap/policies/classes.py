"""Tabular autoregressive, log-linear and soft-optimal policy classes (docs/theory.md §2–§3)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from gvgap import theory
from gvgap.theory.tree import NodeLogp, log_softmax


class PolicyClass(Protocol):
    """θ ↦ π_θ; see the package docstring."""

    n_params: int

    def init_params(self) -> np.ndarray: ...
    def leaf_logp(self, theta: np.ndarray) -> np.ndarray: ...
    def vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray: ...
    def node_logp(self, theta: np.ndarray) -> NodeLogp: ...


def edge_sums(g: np.ndarray, vocab: int, horizon: int) -> list[np.ndarray]:
    """Subtree sums of a leaf array: ``out[h][x, s, a] = Σ_{ξ below s·a} g[x, ξ]``.

    ``out[h]`` has shape ``(m, V^h, V)``; this is ∂(Σ g · log P)/∂ log π(a|s).
    """
    m = g.shape[0]
    sums = [None] * horizon
    level = g
    for h in range(horizon - 1, -1, -1):
        sums[h] = level.reshape(m, -1, vocab)
        level = sums[h].sum(axis=-1)
    return sums


def _logits_vjp(logpi: NodeLogp, g: np.ndarray) -> list[np.ndarray]:
    """∂(Σ g · log P)/∂ logits for node policies log π = log_softmax(logits), per depth."""
    vocab = logpi[0].shape[-1]
    out = []
    for lp, e in zip(logpi, edge_sums(g, vocab, len(logpi))):
        out.append(e - np.exp(lp) * e.sum(axis=-1, keepdims=True))
    return out


class LogitPolicy:
    """Base of the classes given by per-depth logits z_h(θ) ``(m, V^h, V)`` and an optional
    base ``offset`` (log π_ref): π_θ(a|s) = softmax(offset_h(s) + z_h(θ)(s))_a."""

    offset: NodeLogp | None = None

    def logits(self, theta: np.ndarray) -> list[np.ndarray]:
        """z_h(θ) per depth (subclasses)."""
        raise NotImplementedError

    def node_logp(self, theta: np.ndarray) -> NodeLogp:
        """log π_θ(a|s) per depth."""
        zs = self.logits(theta)
        if self.offset is not None:
            zs = [z + off for z, off in zip(zs, self.offset)]
        return tuple(log_softmax(z) for z in zs)

    def leaf_logp(self, theta: np.ndarray) -> np.ndarray:
        """log P_θ(ξ|x), ``(m, V^H)``."""
        return theory.node_to_leaf_logp(self.node_logp(theta))


class TabularPolicy(LogitPolicy):
    """Every autoregressive policy on the tree: θ = one logit per (state, token).

    ``n_params = m Σ_h V^(h+1)``; π(a|s) = softmax(θ_s)_a. Equivalent to *all* leaf
    distributions with full support (docs/theory.md §2), i.e. R(Π) = every reward mod prompt
    constants.
    """

    def __init__(self, n_prompts: int, vocab: int, horizon: int, init: NodeLogp | None = None):
        self.shapes = theory.tree.node_shapes(n_prompts, vocab, horizon)
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.n_params = int(sum(self.sizes))
        self.vocab, self.horizon = vocab, horizon
        self._init = init

    def unflatten(self, theta: np.ndarray) -> list[np.ndarray]:
        """θ ``(n_params,)`` → per-depth logits ``(m, V^h, V)``."""
        parts = np.split(theta, np.cumsum(self.sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def init_params(self) -> np.ndarray:
        """Logits of ``init`` (e.g. π_ref) if given, else the uniform policy (zeros)."""
        if self._init is None:
            return np.zeros(self.n_params)
        return np.concatenate([a.ravel() for a in self._init])

    def params_from_node_logp(self, logpi: NodeLogp) -> np.ndarray:
        """θ realising a node policy (log-probs are valid logits)."""
        return np.concatenate([np.asarray(a, float).ravel() for a in logpi])

    def logits(self, theta: np.ndarray) -> list[np.ndarray]:
        """The logits are the parameters."""
        return self.unflatten(theta)

    def vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Σ g · ∂ log P_θ / ∂θ, ``(n_params,)``."""
        return np.concatenate([d.ravel() for d in _logits_vjp(self.node_logp(theta), g)])


def markov_features(
    n_prompts: int, vocab: int, horizon: int, kind: str = "position_bigram"
) -> list[np.ndarray]:
    """(prefix, token) features of log-linear policies, per depth ``(m, V^h, V, d)``.

    kinds: ``"position_token"`` (1[h, a], d = H V), ``"bigram"`` (1[a_{h-1}, a] with a start
    symbol, d = (V+1) V), ``"position_bigram"`` (both, d = H V + (V+1) V).
    """
    allowed = ("position_token", "bigram", "position_bigram")
    if kind not in allowed:
        raise ValueError(f"policy features must be one of {allowed}, got {kind!r}")
    feats = []
    for h in range(horizon):
        n_states = vocab**h
        blocks = []
        if kind in ("position_token", "position_bigram"):
            pt = np.zeros((n_states, vocab, horizon * vocab))
            pt[:, np.arange(vocab), h * vocab + np.arange(vocab)] = 1.0
            blocks.append(pt)
        if kind in ("bigram", "position_bigram"):
            prev = np.arange(n_states) % vocab if h > 0 else np.full(n_states, vocab)
            bg = np.zeros((n_states, vocab, (vocab + 1) * vocab))
            cols = prev[:, None] * vocab + np.arange(vocab)[None, :]
            bg[np.arange(n_states)[:, None], np.arange(vocab)[None, :], cols] = 1.0
            blocks.append(bg)
        f = np.concatenate(blocks, axis=-1)
        feats.append(np.broadcast_to(f, (n_prompts, *f.shape)))
    return feats


class LogLinearPolicy(LogitPolicy):
    """π_θ(a|s) ∝ exp(θ · φ(s, a)) with (prefix, token) features, shared across prompts.

    Args:
        features: per-depth ``(m, V^h, V, d)`` (see :func:`markov_features`).
        offset: optional per-depth base logits ``(m, V^h, V)`` (e.g. log π_ref), so that
            θ = 0 is π_ref.
    """

    def __init__(self, features: list[np.ndarray], offset: NodeLogp | None = None):
        self.features = features
        self.offset = offset
        self.n_params = int(features[0].shape[-1])
        self.vocab, self.horizon = features[0].shape[2], len(features)

    def init_params(self) -> np.ndarray:
        """θ = 0 (π_ref if ``offset`` is log π_ref, else uniform)."""
        return np.zeros(self.n_params)

    def logits(self, theta: np.ndarray) -> list[np.ndarray]:
        """θ · φ(s, a) per depth."""
        return [f @ theta for f in self.features]

    def vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Σ g · ∂ log P_θ / ∂θ = Σ_h Σ_{x,s,a} φ(s,a) ∂/∂logit(s,a)."""
        dz = _logits_vjp(self.node_logp(theta), g)
        return sum(np.einsum("xsad,xsa->d", f, d) for f, d in zip(self.features, dz))


class SoftOptimalPolicy:
    """Π(R) = {π*_r : r ∈ R}: P_θ(ξ|x) ∝ P_ref(ξ|x) exp(r_θ(x, ξ)/β) (docs/theory.md §3).

    Parameterised by the reward class's parameters; this is the class that online RLHF with
    reward class R searches, and offline MLE restricted to it is claim 8.
    """

    def __init__(self, reward_class, logp_ref: np.ndarray, beta: float, vocab: int, horizon: int):
        self.reward_class = reward_class
        self.logp_ref = logp_ref
        self.beta = float(beta)
        self.n_params = reward_class.n_params
        self.vocab, self.horizon = vocab, horizon

    def init_params(self) -> np.ndarray:
        """Parameters of the reward class's zero (π_ref)."""
        return self.reward_class.init_params()

    def leaf_logp(self, theta: np.ndarray) -> np.ndarray:
        """log P* = log P_ref + r_θ/β − log Z_θ."""
        return theory.log_normalize_leaf(
            self.logp_ref + self.reward_class.leaf_reward(theta) / self.beta
        )

    def vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        """∂ log P(ξ)/∂r(ξ') = (1[ξ = ξ'] − P(ξ'))/β, chained into the reward class."""
        p = np.exp(self.leaf_logp(theta))
        dr = (g - p * g.sum(axis=1, keepdims=True)) / self.beta
        return self.reward_class.vjp(theta, dr)

    def node_logp(self, theta: np.ndarray) -> NodeLogp:
        """Node form, by the tree conditionals of the leaf distribution."""
        return theory.leaf_to_node_logp(self.leaf_logp(theta), self.vocab, self.horizon)
