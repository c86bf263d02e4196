"""Fused (numba) soft value iteration against the numpy reference path and enumeration.

Parity target (issue 8): max |Δ| ≤ 1e-12 on V_h, log π* and log Z between the two kernels, for
random trees incl. extreme rewards (|r/β| up to 4e3, where the shared per-prompt shift underflows
and states are redone with their own maximum), peaked π_ref with zero-probability tokens
(log π_ref = −inf), m > 1 prompts and V ∈ {2, 3, 4, 32}.
"""

from __future__ import annotations

import numpy as np
import pytest

from gvgap.errors import UserError
from gvgap.theory import soft, soft_fused
from gvgap.theory.soft import SoftVIBuffers, log_partition_leaf, soft_value_iteration
from gvgap.theory.tree import node_to_leaf_logp

numba = pytest.importorskip(
    "numba", reason="numba not installed (pip install 'gvgap[fast]'): fused soft VI not tested"
)

BETA = 0.5
#: (V, H): trees small enough to be fast; V=2, H=11 and V=3, H=7 have levels of many blocks
#: (soft_fused._BLOCK_EDGES edges each), so block boundaries and a partial block are covered.
#: V < 8 runs the kernel with V compiled in, V = 10 and 32 the one with V a run-time argument
#: (10: a state's tokens are not a whole number of SIMD vectors).
TREES = ((2, 11), (3, 7), (4, 5), (10, 3), (32, 2))


def ref_policy(m, vocab, horizon, rng, peaked):
    """Node log-policy ``(m, V^h, V)`` per depth; ``peaked``: Dirichlet(0.1) with about a third
    of the tokens at probability exactly 0 (log −inf), at least one token kept per state."""
    out = []
    for h in range(horizon):
        alpha = 0.1 if peaked else 1.0
        p = rng.dirichlet(np.full(vocab, alpha), size=(m, vocab**h))
        if peaked:
            zero = rng.random(p.shape) < 0.33
            zero[..., 0] &= ~zero[..., 1:].all(axis=-1)  # keep a token in every state
            p = np.where(zero, 0.0, p)
            p /= p.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore"):
            out.append(np.log(p))
    return tuple(out)


def rewards(m, vocab, horizon, rng, extreme):
    """``(m, V^H)`` rewards: standard normal, or uniform on ±1e3/β (r/β up to ±4e3)."""
    n = vocab**horizon
    if extreme:
        return rng.uniform(-1e3 / BETA, 1e3 / BETA, size=(m, n))
    return rng.standard_normal((m, n))


def max_diff(a, b):
    """max |a − b| over arrays with matching −inf entries (asserted to match)."""
    assert np.array_equal(np.isneginf(a), np.isneginf(b))
    fin = np.isfinite(a)
    return float(np.abs(a[fin] - b[fin]).max()) if fin.any() else 0.0


@pytest.mark.parametrize("vocab,horizon", TREES)
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("peaked", [False, True])
@pytest.mark.parametrize("extreme", [False, True])
def test_fused_matches_numpy(vocab, horizon, m, peaked, extreme):
    rng = np.random.default_rng([vocab, horizon, m, peaked, extreme])
    logpi_ref = ref_policy(m, vocab, horizon, rng, peaked)
    r = rewards(m, vocab, horizon, rng, extreme)
    ref = soft_value_iteration(logpi_ref, r, BETA, backend="numpy")
    fused = soft_value_iteration(logpi_ref, r, BETA, backend="numba")
    err = max(max_diff(a, b) for a, b in zip(ref.logpi, fused.logpi))
    err = max(err, max(max_diff(a, b) for a, b in zip(ref.values, fused.values)))
    err = max(err, max_diff(ref.log_z, fused.log_z))
    assert err <= 1e-12
    if extreme:  # the underflow fallback ran: some V_{h+1} more than 645 below its level's max
        gaps = [(v.max(axis=1, keepdims=True) - v).max() for v in ref.values[1:]]
        assert max(gaps) > 700
    # theorem: log Z = log Σ_ξ P_ref(ξ) e^{r/β} (docs/theory.md §2), by enumeration
    with np.errstate(invalid="ignore"):
        lz = log_partition_leaf(node_to_leaf_logp(logpi_ref), r, BETA)
    np.testing.assert_allclose(fused.log_z, lz, rtol=1e-12, atol=1e-10)
    # π* is a distribution in every state (zero-probability tokens stay at −inf)
    for lp, lp_ref in zip(fused.logpi, logpi_ref):
        np.testing.assert_allclose(np.exp(lp).sum(axis=-1), 1.0, atol=1e-12)
        assert np.array_equal(np.isneginf(lp), np.isneginf(lp_ref))


def test_fused_writes_into_buffers():
    rng = np.random.default_rng(1)
    logpi_ref = ref_policy(2, 4, 4, rng, peaked=False)
    r = rewards(2, 4, 4, rng, extreme=False)
    buf = SoftVIBuffers.empty(2, 4, 4)
    res = soft_value_iteration(logpi_ref, r, BETA, out=buf, backend="numba")
    assert all(np.shares_memory(a, b) for a, b in zip(res.logpi, buf.logpi))
    assert np.shares_memory(res.log_z, buf.values[0])
    again = soft_value_iteration(logpi_ref, 2 * r, BETA, out=buf, backend="numba")
    fresh = soft_value_iteration(logpi_ref, 2 * r, BETA, backend="numpy")
    assert max(max_diff(a, b) for a, b in zip(again.logpi, fresh.logpi)) <= 1e-12


def test_switch(monkeypatch):
    monkeypatch.setenv(soft.SOFTVI_ENV, "numpy")
    assert soft.softvi_backend(1 << 30) == "numpy"
    monkeypatch.setenv(soft.SOFTVI_ENV, "NumBa")
    assert soft.softvi_backend(4) == "numba"
    monkeypatch.setenv(soft.SOFTVI_ENV, "auto")
    assert soft.softvi_backend(soft.FUSED_MIN_LEAVES - 1) == "numpy"  # JIT not worth it
    assert soft.softvi_backend(soft.FUSED_MIN_LEAVES) == "numba"
    monkeypatch.setenv(soft.SOFTVI_ENV, "fortran")
    with pytest.raises(UserError, match="GVGAP_SOFTVI"):
        soft.softvi_backend(4)
    monkeypatch.delenv(soft.SOFTVI_ENV)
    monkeypatch.setattr(soft_fused, "available", lambda: False)  # as without numba
    assert soft.softvi_backend(1 << 30) == "numpy"
    with pytest.raises(UserError, match="numba is not installed"):
        soft.softvi_backend(4, "numba")


def test_exp_polynomial_accuracy():
    # The Chebyshev interpolant of degree n of e^r on [−a, a] has relative error about
    # 2 (a/2)^{n+1}/(n+1)! (interpolation remainder at Chebyshev points, e^r ≈ 1 there):
    # for n = 10, a = ln2/2: 2·0.1733^11/11! ≈ 2.3e-16; allowed: that plus rounding.
    coef = soft_fused._exp_coefficients(soft_fused._EXP_DEG)
    half = np.log(2.0) / 2
    r = np.linspace(-half, half, 10001)
    p = np.polynomial.polynomial.polyval(r, coef)
    assert np.abs(p / np.exp(r) - 1).max() < 2e-15


def test_log_polynomial_accuracy():
    # log m = 2u g(u²), u = (m − 1)/(m + 1), on the reduced range m ∈ [√½, √2); g by its
    # Chebyshev interpolant of K = 7 terms on [0, a], a = u_max² ≈ 0.0294: interpolation error
    # ≈ |g^(K)|/K! · 2(a/4)^K = (1/15)·2·0.00736^7 ≈ 1.6e-16, times 2u ≤ 0.34: 5e-17. What is
    # left is rounding: a few ulp of log m (|log m| ≤ ln2/2).
    coef = soft_fused._log_coefficients(soft_fused._LOG_TERMS)
    m = np.linspace(np.sqrt(0.5), np.sqrt(2.0), 10001)
    u = (m - 1) / (m + 1)
    got = 2 * u * np.polynomial.polynomial.polyval(u * u, coef)
    assert np.abs(got - np.log(m)).max() < 1e-15
