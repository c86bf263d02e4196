"""Fused soft value iteration with numba (optional; ``pip install gvgap[fast]``).

One pass per level over the states: for each state s, with the per-prompt shift C of V_{h+1}
(C = max_s V_{h+1}, as in the numpy path of :mod:`gvgap.theory.soft`),

    q_a = log π_ref(a|s) + (V_{h+1}(s·a) − C),   T = Σ_a e^{q_a},
    V_h(s) = log T + C,   log π*(a|s) = q_a − log T,

in blocks of :func:`block_states` states (256 edges, ≥ 16 states) whose q and e^q stay in L1
(the numpy path makes four passes over the edges). e^q and log T are SIMD polynomials (degree-10
Chebyshev interpolant of e^r after k ln 2 reduction; 7-term one of the atanh series of log m),
not libm calls, which do not vectorise: error ≲ 1.5e-15 relative, so the parity with numpy's
exp/log is ~1e-14 (measured ≤ 8e-15 on 2^20 leaves, H ≤ 20). A state whose T underflows
(< 1e-280) is redone with its own maximum, as in the numpy path, so the two agree to rounding
for any reward range. The max of V_h (next level's C) is taken on the way; V_H = r/β and its
max are one pass too.

Selected by ``GVGAP_SOFTVI`` = ``numpy`` | ``numba`` | ``auto`` (default: numba if importable).
numba is imported and the kernel compiled on first use only (importing gvgap stays numpy-only);
no cache on disk (``cache=False``): the JIT cost is paid once per process and V < 8 (V is
compiled in there), once for all V ≥ 8 (see benchmarks/README.md for the measured time).
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np

#: Same underflow threshold as gvgap.theory.soft._TINY.
_TINY = 1e-280


#: Edges per block (2 KB per float64 array): a block's Q and e^Q stay in L1 between its passes,
#: and the passes that touch no new memory are short, so the hardware prefetcher keeps the
#: loads of log π_ref and V_{h+1} streaming (best of 128…2048 measured, benchmarks/README.md).
_BLOCK_EDGES = 256
#: ... but at least this many states, so that the per-state loops (log, max) of a large V run
#: whole SIMD vectors (16 states: two 8-wide vectors).
_MIN_BLOCK_STATES = 16
#: Degree of the polynomial for e^r on |r| ≤ ln2/2 (see :func:`_exp_coefficients`): relative
#: error 1.4e-15, so after H ≤ 20 levels (errors add once per level) still ≪ the 1e-12 parity.
_EXP_DEG = 10
#: Terms of the atanh series of log m (see :func:`_log_values`).
_LOG_TERMS = 7
# exp(x) = 2^k p(x − k ln 2), k = round(x / ln 2) by the 1.5·2^52 rounding trick; 2^k from the
# low mantissa bits of that sum shifted into the exponent field. Everything vectorises (SIMD).
_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split so k·_LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.9082149292705877e-10
_MAGIC = 6755399441055744.0  # 1.5 · 2^52
_BIAS = 1023 << 52
_MANT = (1 << 52) - 1
_SQRT2 = 1.4142135623730951
#: V below this: token count compiled in (unrolled, SIMD across states); from it on: SIMD
#: along the tokens of a state (a constant V ≥ 8 was unrolled into scalar code).
_CONST_VOCAB_BELOW = 8
_ABS_MASK = (1 << 63) - 1  # all bits but the sign
_KEY_NEG_INF = -0x7FF0000000000001  # order key of −inf (see _block_max)
_LOG_TINY = math.log(_TINY)  # T below _TINY (or 0, subnormal: log → ≤ −708) is redone


def _exp_coefficients(deg: int) -> tuple[float, ...]:
    """Monomial coefficients (r^0 first) of the degree-``deg`` polynomial interpolating e^r at
    the Chebyshev points of [−ln2/2, ln2/2]: near-minimax, max relative error 1.4e-15 at degree
    10 (1.8e-14 at 9, against 3e-13 / 9e-12 for the Taylor polynomials of the same degree)."""
    from numpy.polynomial import Chebyshev, Polynomial

    half = math.log(2.0) / 2
    p = Chebyshev.interpolate(np.exp, deg, domain=[-half, half]).convert(kind=Polynomial)
    return tuple(float(c) for c in p.coef)


def _log_coefficients(terms: int) -> tuple[float, ...]:
    """Monomial coefficients (s^0 first) of the polynomial with ``terms`` terms interpolating
    g(s) = atanh(√s)/√s = Σ_k s^k/(2k+1) at the Chebyshev points of [0, u_max²], u_max =
    (√2 − 1)/(√2 + 1): max error of 2u g(u²) (= log m) 1.7e-16 with 7 terms (1e-14 with 6,
    against 4.5e-13 for the first 7 terms of the series)."""
    from numpy.polynomial import Chebyshev, Polynomial

    s_max = ((math.sqrt(2.0) - 1) / (math.sqrt(2.0) + 1)) ** 2
    nodes = Chebyshev.interpolate(_atanh_ratio, terms - 1, domain=[0.0, s_max])
    return tuple(float(c) for c in nodes.convert(kind=Polynomial).coef)


def _atanh_ratio(s: np.ndarray) -> np.ndarray:
    """g(s) = atanh(√s)/√s for s > 0 (all Chebyshev points of :func:`_log_coefficients` are)."""
    u = np.sqrt(s)
    return np.arctanh(u) / u


#: Why the fused kernel was switched off in this process (it failed to compile), or None.
DISABLED: list[str] = []


@functools.cache
def _numba_imports() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def available() -> bool:
    """Whether numba imports here (tried once) and the kernel has not failed in this process."""
    return not DISABLED and _numba_imports()


def disable(reason: str) -> None:
    """Switch the fused kernel off for this process (``auto`` then uses numpy), warning once."""
    if not DISABLED:
        import warnings

        warnings.warn(f"fused soft VI disabled, using numpy: {reason}", stacklevel=3)
        DISABLED.append(reason)


@functools.cache
def jitted() -> dict:
    """The helpers below by name, jitted on first call (numba is imported here) and kept."""
    import numba
    from llvmlite import ir
    from numba.extending import intrinsic

    def bitcast(src, dst, ir_type):
        @intrinsic
        def cast(typingctx, x):
            return dst(src), lambda context, builder, sig, args: builder.bitcast(args[0], ir_type)

        return cast

    f64, i64 = numba.types.float64, numba.types.int64
    # jitted with these names bound in one shared namespace (this module's globals stay
    # untouched), each with its own fastmath flags (numba's inline="always" would compile it
    # with its caller's); a constant V reaches them as a literal, so they are compiled for it
    ns = {
        **globals(),
        "_as_f64": bitcast(i64, f64, ir.DoubleType()),
        "_as_i64": bitcast(f64, i64, ir.IntType(64)),
        "_EXP_COEF": _exp_coefficients(_EXP_DEG),
        "_LOG_COEF": _log_coefficients(_LOG_TERMS),
    }
    for fn, fastmath in _HELPERS:
        ns[fn.__name__] = numba.njit(fastmath=fastmath, **JIT_OPTIONS)(
            types.FunctionType(fn.__code__, ns, fn.__name__)
        )
    return ns


#: numba options of every function here. _nrt=False: no reference counting of the per-block
#: array views (atomic increments, ~10% of the run time at 256-edge blocks); nothing allocates.
JIT_OPTIONS = {"cache": False, "nogil": True, "error_model": "numpy", "_nrt": False}


@functools.cache
def _make_level(vocab: int):
    """The level kernel, compiled on first use and kept in memory: for ``vocab`` = V > 0 with V
    a compile-time constant (token loops unrolled, SIMD across states), for ``vocab`` = 0 with V
    a run-time argument (SIMD along each state's V tokens; one compilation for all large V).
    Returns it and the leaf pass :func:`_leaf_values`."""
    import numba

    body = jitted()["_level_body"]
    if vocab:

        def level(logpi_ref, v_next, shift, logpi, v_out, pb, lt, vocab_rt):
            body(logpi_ref, v_next, shift, logpi, v_out, vocab, pb, lt)

    else:

        def level(logpi_ref, v_next, shift, logpi, v_out, pb, lt, vocab_rt):
            body(logpi_ref, v_next, shift, logpi, v_out, vocab_rt, pb, lt)

    return numba.njit(**JIT_OPTIONS)(level), jitted()["_leaf_values"]


def _exp_shifted(lp_blk, v_blk, c, q_blk, pb):
    """q_i = log π_ref_i + (V_{h+1,i} − C) into ``q_blk``, e^{q_i} into ``pb`` (one block).

    e^q = 2^k p(r), k = round(q / ln 2) (the 1.5·2^52 rounding trick: the low mantissa bits
    of t = q log2 e + 1.5·2^52 hold k), r = q − k ln 2 with |r| ≤ ln2/2 (ln 2 in two parts,
    Cody–Waite), p = e^r by a polynomial of degree _EXP_DEG (Horner), 2^k by shifting k into
    the exponent field. q is clamped to [−708, 709] first (normal 2^k; e^{−708} ≈ 3e-308
    stands for any smaller value and −inf: the underflow check in :func:`_level_body` catches
    states where that matters).
    """
    for i in range(pb.size):
        q = lp_blk[i] + (v_blk[i] - c)
        q_blk[i] = q
        xc = q if q > -708.0 else -708.0
        xc = xc if xc < 709.0 else 709.0
        t = xc * _LOG2E + _MAGIC
        kf = t - _MAGIC
        r = (xc - kf * _LN2_HI) - kf * _LN2_LO
        p = _EXP_COEF[_EXP_DEG]  # noqa: F821
        for d in range(_EXP_DEG - 1, -1, -1):  # unrolled: constant trip count
            p = _EXP_COEF[d] + r * p  # noqa: F821
        pb[i] = _as_f64(_as_i64(p) + (_as_i64(t) << 52))  # noqa: F821


def _token_sums(pb, tot, vocab):
    """tot[j] = T_j = Σ_a pb[j·V + a] (compiled with ``reassoc``: SIMD across states for a
    constant small V, along the tokens otherwise; the order of the adds is LLVM's)."""
    for j in range(tot.size):
        if vocab < _CONST_VOCAB_BELOW:
            acc = 0.0
            for a in range(j * vocab, (j + 1) * vocab):
                acc += pb[a]
            tot[j] = acc
        else:  # a slice: contiguous loads (indices in range() may wrap around, so: gathers)
            tot[j] = pb[j * vocab : (j + 1) * vocab].sum()


def _log_values(lt, v_out, c):
    """lt[j] ← log T_j, V_h: v_out[j] = log T_j + C; returns #{j: log T_j < log 1e-280}.

    T = 2^e m with m in [√½, √2) (mantissa bits, halved and e + 1 when above √2);
    log m = 2 atanh u = 2u g(u²), u = (m − 1)/(m + 1), |u| ≤ (√2 − 1)/(√2 + 1) ≈ 0.1716,
    g(s) = Σ_k s^k/(2k+1) by a polynomial of _LOG_TERMS terms (see :func:`_log_coefficients`);
    log T = e ln 2 + log m.
    A subnormal or zero T gives some value ≤ −708, counted like any T < 1e-280.
    """
    n_low = 0
    for j in range(lt.size):
        bits = _as_i64(lt[j])  # noqa: F821
        mt = _as_f64((bits & _MANT) | _BIAS)  # noqa: F821
        big = mt > _SQRT2
        mt = mt * 0.5 if big else mt
        e = float((bits >> 52) - 1023) + (1.0 if big else 0.0)
        u = (mt - 1.0) / (mt + 1.0)
        u2 = u * u
        w = _LOG_COEF[_LOG_TERMS - 1]  # noqa: F821
        for k in range(_LOG_TERMS - 2, -1, -1):  # unrolled
            w = _LOG_COEF[k] + u2 * w  # noqa: F821
        log_t = e * _LN2_HI + (e * _LN2_LO + 2.0 * u * w)
        lt[j] = log_t
        v_out[j] = log_t + c
        n_low += log_t < _LOG_TINY
    return n_low


def _block_max(v, key_max):
    """max(key_max, max_j key(v[j])) with key(x) = bits(x) ^ ((bits(x) >> 63) & (2^63 − 1)):
    an int64 in the order of the float64 x (NaN aside), so the max is an integer SIMD reduction
    (LLVM does not vectorise the float max here). :func:`_unkey` maps it back."""
    for j in range(v.size):
        bits = _as_i64(v[j])  # noqa: F821
        key_max = max(key_max, bits ^ ((bits >> 63) & _ABS_MASK))
    return key_max


def _unkey(key):
    """The float64 of an order key of :func:`_block_max` (the map is its own inverse)."""
    return _as_f64(key ^ ((key >> 63) & _ABS_MASK))  # noqa: F821


def _redo_underflow(q_blk, lt, v_out, c, vocab):
    """States with T < 1e-280 (the shared shift C underflowed there): log T from the state's
    own maximum z, log Σ_a e^{q_a} = z + log Σ_a e^{q_a − z}, as in the numpy path."""
    for j in range(lt.size):
        if lt[j] < _LOG_TINY:
            zmax = -np.inf
            for a in range(vocab):
                zmax = max(zmax, q_blk[j * vocab + a])
            acc = 0.0
            for a in range(vocab):
                acc += math.exp(q_blk[j * vocab + a] - zmax)
            lt[j] = zmax + math.log(acc)
            v_out[j] = lt[j] + c


def _subtract_log(q_blk, lt, vocab):
    """log π*(a|s_j) = q − log T_j, in place."""
    for j in range(lt.size):
        for a in range(vocab):
            q_blk[j * vocab + a] -= lt[j]


def _leaf_values(r, beta, v_out, shift):
    """V_H = r/β into ``v_out`` ``(m, V^H)`` and its per-prompt max (the shift C) into
    ``shift`` ``(m,)``, in one pass (the max by order keys, as in :func:`_block_max`)."""
    for x in range(r.shape[0]):
        key_max = _KEY_NEG_INF
        for i in range(r.shape[1]):
            v = r[x, i] / beta
            v_out[x, i] = v
            bits = _as_i64(v)  # noqa: F821
            key_max = max(key_max, bits ^ ((bits >> 63) & _ABS_MASK))
        shift[x] = _unkey(key_max)


def _level_body(logpi_ref, v_next, shift, logpi, v_out, vocab, pb, lt):
    """One backward level, fused. ``logpi_ref``/``logpi`` ``(m, S·V)`` (flat edges),
    ``v_next`` ``(m, S·V)``, ``v_out`` ``(m, S)``; ``shift`` ``(m,)``: C of V_{h+1} in, C of V_h
    out. ``pb`` ``(B·V,)`` and ``lt`` ``(B,)``: scratch for a block of B states."""
    m, n_states = v_out.shape
    blk = lt.size
    for x in range(m):
        lp_row, v_row, out_row, vo_row = logpi_ref[x], v_next[x], logpi[x], v_out[x]
        c = shift[x]
        key_max = _KEY_NEG_INF
        for s0 in range(0, n_states, blk):
            ns = min(blk, n_states - s0)
            e0, e1 = s0 * vocab, (s0 + ns) * vocab
            q_blk, lt_blk, vo_blk = out_row[e0:e1], lt[:ns], vo_row[s0 : s0 + ns]
            _exp_shifted(lp_row[e0:e1], v_row[e0:e1], c, q_blk, pb[: e1 - e0])
            _token_sums(pb, lt_blk, vocab)
            if _log_values(lt_blk, vo_blk, c):
                _redo_underflow(q_blk, lt_blk, vo_blk, c, vocab)
            key_max = _block_max(vo_blk, key_max)
            _subtract_log(q_blk, lt_blk, vocab)
        shift[x] = _unkey(key_max)


#: (helper, fastmath flags) for :func:`jitted`: ``contract`` lets a·b + c be one FMA; the
#: token sums may also reorder (``reassoc``), which makes them SIMD reductions for V ≥ 8. Not on
#: the exp/log code: it would let LLVM fold the rounding trick and the two-part ln 2.
_HELPERS = (
    (_exp_shifted, {"contract"}),
    (_token_sums, {"reassoc"}),
    (_log_values, {"contract"}),
    (_block_max, set()),
    (_unkey, set()),
    (_redo_underflow, set()),
    (_subtract_log, set()),
    (_level_body, {"contract"}),
    (_leaf_values, set()),
)


def block_states(vocab: int) -> int:
    """States per block of the fused kernel: _BLOCK_EDGES // V, at least _MIN_BLOCK_STATES."""
    return max(_MIN_BLOCK_STATES, _BLOCK_EDGES // vocab)


def fused_into(logpi_ref, r: np.ndarray, beta: float, values, logpi) -> None:
    """Soft VI by the fused kernel into preallocated ``values``/``logpi`` (SoftVIBuffers).

    Args:
        logpi_ref: ``logpi_ref[h]`` ``(m, V^h, V)`` float64, C-contiguous.
        r: ``(m, V^H)`` rewards; beta: β > 0.
        values: ``values[h]`` ``(m, V^h)``, h = 0..H; logpi: ``logpi[h]`` ``(m, V^h, V)``.
    """
    horizon = len(logpi_ref)
    vocab = logpi_ref[0].shape[-1]
    level, leaf_values = _make_level(vocab if vocab < _CONST_VOCAB_BELOW else 0)
    shift = np.empty(r.shape[0])
    leaf_values(np.ascontiguousarray(r, dtype=np.float64), float(beta), values[horizon], shift)
    blk = block_states(vocab)
    pb, lt = np.empty(blk * vocab), np.empty(blk)
    m = r.shape[0]
    for h in range(horizon - 1, -1, -1):
        lp_ref = np.ascontiguousarray(logpi_ref[h]).reshape(m, -1)
        level(lp_ref, values[h + 1], shift, logpi[h].reshape(m, -1), values[h], pb, lt, vocab)
