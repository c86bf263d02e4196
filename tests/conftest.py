"""Shared helpers and fixtures: small random trees, finite differences, brute-force oracles.

Every random draw goes through an explicit ``np.random.default_rng(seed)``; nothing touches
the global RNG.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import strategies as st

from gvgap.envs.tree_env import TreeEnv, make_env


def random_env(
    seed: int,
    *,
    vocab: int = 2,
    horizon: int = 2,
    n_prompts: int = 1,
    beta: float = 1.0,
    ref: str = "random",
    n_features: int | None = None,
    reward_scale: float = 1.0,
) -> TreeEnv:
    """A small :class:`TreeEnv` with Gaussian r*, a Dirichlet π_ref and optional features.

    Args:
        seed: seeds r*, π_ref and the features (one generator, fixed draw order).
        n_features: if given, ``(m, V^H, k)`` Gaussian features are attached.
        reward_scale: standard deviation of r*.
    """
    rng = np.random.default_rng(seed)
    n = vocab**horizon
    r_star = reward_scale * rng.standard_normal((n_prompts, n))
    feats = None if n_features is None else rng.standard_normal((n_prompts, n, n_features))
    rho = rng.dirichlet(np.ones(n_prompts)) if n_prompts > 1 else None
    return make_env(
        vocab=vocab,
        horizon=horizon,
        n_prompts=n_prompts,
        beta=beta,
        r_star=r_star,
        ref=ref,
        features=feats,
        rho=rho,
        rng=rng,
    )


@pytest.fixture
def env_factory() -> Callable[..., TreeEnv]:
    """The :func:`random_env` factory as a fixture."""
    return random_env


def random_leaf_logp(rng: np.random.Generator, m: int, n: int, scale: float = 1.0) -> np.ndarray:
    """A random full-support leaf distribution ``(m, n)`` (log-softmax of Gaussian logits)."""
    z = scale * rng.standard_normal((m, n))
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def central_fd(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite-difference gradient of a scalar function, same shape as ``x``."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    flat, gflat = x.ravel(), out.ravel()
    for i in range(flat.size):
        xp, xm = flat.copy(), flat.copy()
        xp[i] += eps
        xm[i] -= eps
        gflat[i] = (f(xp.reshape(x.shape)) - f(xm.reshape(x.shape))) / (2 * eps)
    return out


def brute_leaf_logp(logpi_ref: tuple[np.ndarray, ...], x: int = 0) -> dict[tuple, float]:
    """log P_ref(ξ|x) for every token tuple ξ, by walking the tree in pure Python.

    Independent of ``node_to_leaf_logp``: the state index is recomputed from the prefix.
    """
    vocab, horizon = logpi_ref[0].shape[-1], len(logpi_ref)
    out = {}
    for toks in itertools.product(range(vocab), repeat=horizon):
        total, state = 0.0, 0
        for h, a in enumerate(toks):
            total += float(logpi_ref[h][x, state, a])
            state = state * vocab + a
        out[toks] = total
    return out


@st.composite
def small_trees(draw: st.DrawFn) -> dict:
    """Hypothesis strategy: V∈{2,3}, H∈{1,2,3}, m∈{1,2}, β∈[0.1,5] and a seed."""
    return {
        "vocab": draw(st.sampled_from([2, 3])),
        "horizon": draw(st.integers(1, 3)),
        "n_prompts": draw(st.integers(1, 2)),
        "beta": draw(st.floats(0.1, 5.0)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
