"""Fused soft value iteration with numba (optional; ``pip install gvgap[fast]``).

One pass per level over the states: for each state s, with the per-prompt shift C of V_{h+1}
(C = max_s V_{h+1}, as in the numpy path of :mod:`gvgap.theory.soft`),

    q_a = log π_ref(a|s) + (V_{h+1}(s·a) − C),   T = Σ_a e^{q_a},
    V_h(s) = log T + C,   log π*(a|s) = q_a − log T,

q and e^q stay in L1, in blocks of 128 states (the numpy path makes four passes over the edges).
e^q and log T are SIMD polynomials (Taylor to r^13 after k ln 2 reduction; 2 atanh series), not
libm calls, which do not vectorise: relative error ~1e-16, so the parity with numpy's exp/log is
at rounding level (max |Δ| ~ 5e-15 measured). A state whose
T underflows (< 1e-280) is redone with its own maximum, exactly as in the numpy path, so the two
agree to rounding for any reward range. The max of V_h (next level's C) is taken on the way.

Selected by ``GVGAP_SOFTVI`` = ``numpy`` | ``numba`` | ``auto`` (default: numba if importable).
numba is imported and the kernel compiled on first use only (importing gvgap stays numpy-only);
no cache on disk (``cache=False``): the JIT cost is paid once per process and V (see
benchmarks/README.md for the measured time).
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np

#: Same underflow threshold as gvgap.theory.soft._TINY.
_TINY = 1e-280


#: Edges per block: the block's Q, e^Q and per-state sums stay in L1.
_BLOCK = 128
# exp(x) = 2^k p(x − k ln 2), k = round(x / ln 2) by the 1.5·2^52 rounding trick; 2^k from the
# low mantissa bits of that sum shifted into the exponent field. Everything vectorises (SIMD).
_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split so k·_LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.9082149292705877e-10
_MAGIC = 6755399441055744.0  # 1.5 · 2^52
_BIAS = 1023 << 52
_MANT = (1 << 52) - 1
_SQRT2 = 1.4142135623730951
_LOG_TINY = math.log(_TINY)  # T below _TINY (or 0, subnormal: log → ≤ −708) is redone


@functools.cache
def available() -> bool:
    """Whether numba imports here (tried once, on first call)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _make_level(vocab: int):
    """The level kernel with the token count V as a compile-time constant (unrolled token
    loops, SIMD over states), compiled on first use per V and kept in memory."""
    import numba
    from llvmlite import ir
    from numba.extending import intrinsic

    def bitcast(src, dst, ir_type):
        @intrinsic
        def cast(typingctx, x):
            return dst(src), lambda context, builder, sig, args: builder.bitcast(args[0], ir_type)

        return cast

    f64, i64 = numba.types.float64, numba.types.int64
    bound = {
        "_as_f64": bitcast(i64, f64, ir.DoubleType()),
        "_as_i64": bitcast(f64, i64, ir.IntType(64)),
    }
    # max without NaN/−inf/signed-zero care: a SIMD reduction (values are finite here)
    bound["_values_max"] = numba.njit(
        nogil=True, error_model="numpy", fastmath={"nnan", "ninf", "nsz"}
    )(_values_max)
    # _level_body with these bound in its own globals (this module's stay untouched)
    fn = types.FunctionType(_level_body.__code__, {**globals(), **bound}, "_level_body")
    opts = {"cache": False, "nogil": True, "error_model": "numpy", "fastmath": {"contract"}}
    body = numba.njit(inline="always", **opts)(fn)

    def level(logpi_ref, v_next, shift, logpi, v_out, pb, lt):
        body(logpi_ref, v_next, shift, logpi, v_out, vocab, pb, lt)

    return numba.njit(**opts)(level)


def _values_max(lt, v_out, c):
    """v_out[j] = lt[j] + c (V_h); returns (max_j V_h, #{j: lt[j] < log 1e-280})."""
    bm = -1e308
    n_low = 0
    for j in range(v_out.size):
        lj = lt[j]
        v = lj + c
        v_out[j] = v
        bm = max(bm, v)
        n_low += lj < _LOG_TINY
    return bm, n_low


def _level_body(logpi_ref, v_next, shift, logpi, v_out, vocab, pb, lt):
    """One backward level, fused. ``logpi_ref``/``logpi`` ``(m, S·V)`` (flat edges),
    ``v_next`` ``(m, S·V)``, ``v_out`` ``(m, S)``; ``shift`` ``(m,)``: C of V_{h+1} in, C of V_h
    out. ``pb`` ``(_BLOCK·V,)`` and ``lt`` ``(_BLOCK,)``: scratch. ``_as_f64``, ``_as_i64``
    (bit casts) and ``_values_max``: bound by :func:`_make_level`."""
    m, n_states = v_out.shape
    for x in range(m):
        lp_row, v_row, out_row = logpi_ref[x], v_next[x], logpi[x]
        c = shift[x]
        mx = -np.inf
        for s0 in range(0, n_states, lt.size):
            ns = min(lt.size, n_states - s0)
            ne = ns * vocab
            e0 = s0 * vocab
            q_blk = out_row[e0 : e0 + ne]
            lp_blk = lp_row[e0 : e0 + ne]
            v_blk = v_row[e0 : e0 + ne]
            for i in range(ne):  # Q (shifted) and e^Q = p(r) 2^k, |r| ≤ ln2/2
                q = lp_blk[i] + (v_blk[i] - c)
                q_blk[i] = q
                xc = q if q > -708.0 else -708.0
                xc = xc if xc < 709.0 else 709.0
                t = xc * _LOG2E + _MAGIC
                kf = t - _MAGIC
                r = (xc - kf * _LN2_HI) - kf * _LN2_LO
                p = 1 / 479001600 + r * (1 / 6227020800)  # Taylor to r^13: |err| < 5e-18
                p = 1 / 39916800 + r * p
                p = 1 / 3628800 + r * p
                p = 1 / 362880 + r * p
                p = 1 / 40320 + r * p
                p = 1 / 5040 + r * p
                p = 1 / 720 + r * p
                p = 1 / 120 + r * p
                p = 1 / 24 + r * p
                p = 1 / 6 + r * p
                p = 0.5 + r * p
                p = 1.0 + r * p
                p = 1.0 + r * p
                pb[i] = p * _as_f64((_as_i64(t) << 52) + _BIAS)  # noqa: F821
            for j in range(ns):  # T = Σ_a e^q per state; log T = e ln 2 + log m, m in [√½, √2)
                if vocab % 8 == 0:  # 8 accumulators (numpy's pairwise order), no long chain
                    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = 0.0
                    for a in range(j * vocab, (j + 1) * vocab, 8):
                        t0 += pb[a]
                        t1 += pb[a + 1]
                        t2 += pb[a + 2]
                        t3 += pb[a + 3]
                        t4 += pb[a + 4]
                        t5 += pb[a + 5]
                        t6 += pb[a + 6]
                        t7 += pb[a + 7]
                    tot = ((t0 + t1) + (t2 + t3)) + ((t4 + t5) + (t6 + t7))
                else:
                    tot = 0.0
                    for a in range(vocab):
                        tot += pb[j * vocab + a]
                bits = _as_i64(tot)  # noqa: F821
                mt = _as_f64((bits & _MANT) | _BIAS)  # noqa: F821
                big = mt > _SQRT2
                mt = mt * 0.5 if big else mt
                e = float((bits >> 52) - 1023) + (1.0 if big else 0.0)
                u = (mt - 1.0) / (mt + 1.0)
                u2 = u * u
                w = 1 / 19 + u2 * (1 / 21 + u2 * 1 / 23)
                w = 1 / 11 + u2 * (1 / 13 + u2 * (1 / 15 + u2 * (1 / 17 + u2 * w)))
                w = 1.0 + u2 * (1 / 3 + u2 * (1 / 5 + u2 * (1 / 7 + u2 * (1 / 9 + u2 * w))))
                lt[j] = e * _LN2_HI + (e * _LN2_LO + 2.0 * u * w)
            bm, n_low = _values_max(lt, v_out[x, s0 : s0 + ns], c)
            if n_low:  # some T < 1e-280: the shared shift underflowed there
                bm = -np.inf
                for j in range(ns):
                    if lt[j] < _LOG_TINY:
                        i0 = e0 + j * vocab  # this state's own maximum
                        zmax = -np.inf
                        for a in range(vocab):
                            zmax = max(zmax, out_row[i0 + a])
                        acc = 0.0
                        for a in range(vocab):
                            acc += math.exp(out_row[i0 + a] - zmax)
                        lt[j] = zmax + math.log(acc)
                    v = lt[j] + c
                    v_out[x, s0 + j] = v
                    bm = max(bm, v)
            mx = max(mx, bm)
            for j in range(ns):
                for a in range(vocab):
                    q_blk[j * vocab + a] -= lt[j]
        shift[x] = mx


def fused_into(logpi_ref, r: np.ndarray, beta: float, values, logpi) -> None:
    """Soft VI by the fused kernel into preallocated ``values``/``logpi`` (SoftVIBuffers).

    Args:
        logpi_ref: ``logpi_ref[h]`` ``(m, V^h, V)`` float64, C-contiguous.
        r: ``(m, V^H)`` rewards; beta: β > 0.
        values: ``values[h]`` ``(m, V^h)``, h = 0..H; logpi: ``logpi[h]`` ``(m, V^h, V)``.
    """
    horizon = len(logpi_ref)
    np.divide(r, beta, out=values[horizon])  # V_H = r/β and its shift: numpy's SIMD passes
    shift = values[horizon].max(axis=1)
    vocab = logpi_ref[0].shape[-1]
    pb, lt = np.empty(_BLOCK * vocab), np.empty(_BLOCK)
    m = r.shape[0]
    level = _make_level(vocab)
    for h in range(horizon - 1, -1, -1):
        lp_ref = np.ascontiguousarray(logpi_ref[h]).reshape(m, -1)
        level(lp_ref, values[h + 1], shift, logpi[h].reshape(m, -1), values[h], pb, lt)
