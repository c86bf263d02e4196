"""Soft value iteration and leaf enumeration vs one ``np.exp`` pass over as many float64.

Run: ``.venv/bin/python benchmarks/bench_softvi.py [--repeat K] [--cpu]``.

For each tree (≥ 1M leaves) it prints the best-of-K time of

- ``exp``: one ``np.exp(x, out=buf)`` over N = m·V^H float64 (the unit; 16 MB in + out,
  which stays in a 32 MB L3 cache),
- ``soft_value_iteration`` (library; π_ref Dirichlet, r Gaussian, β = 0.5),
- ``node_to_leaf_logp`` of the resulting π* (library),
- two *candidates* defined below, checked equal to the library in the same run:
  ``soft_vi_slices`` (per-token contiguous slices: no ``max``/``sum`` reduction over a
  short length-V axis; log π* = Q − V_h with one log per state) and ``leaf_slices``
  (node → leaf by per-token slices),

and, for the ``out=`` buffer API (issue 8): ``softvi_out`` (the library writing into reused
:class:`~gvgap.theory.soft.SoftVIBuffers`) against ``mem``, a memory-only pass of the same
loads and stores into the same buffers (per level: load log π_ref and V_{h+1}, store log π*
by one add per edge, store V_h; r/β first), printed as the ratio ``out/mem`` (target ≤ 1.5),
and beside it ``fused/mem``: the numba kernel (``backend="numba"``, gvgap/theory/soft_fused.py)
into the same buffers, after a warm-up call whose time (the JIT, once per V) is printed as
``jit s``; its max |Δ| to the numpy path is in ``max|Δ|``. Without numba those columns read
``n/a``. All library calls not marked fused use ``backend="numpy"``.
Every ratio is measured in the same run. Nothing is asserted. ``--cpu`` times
with ``time.process_time`` (robust to other processes sharing the cores).
"""

from __future__ import annotations

import argparse
import functools
import time
import timeit

import numpy as np

from gvgap import theory
from gvgap.envs.tree_env import random_ref_policy
from gvgap.theory import soft_fused
from gvgap.theory.soft import SoftVIBuffers

TREES = ((4, 10, 1), (2, 20, 1), (32, 4, 1))  # (V, H, m): 1,048,576 leaves each


def soft_vi_slices(
    logpi_ref: tuple[np.ndarray, ...], r: np.ndarray, beta: float
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Soft VI on contiguous per-token slices; returns (log π* per depth, log Z).

    V_h = q_max + log Σ_a exp(Q_h(·, a) − q_max) and log π*(a|s) = Q_h(s, a) − V_h(s): the
    same single exp per edge and log per state as the library, but the reductions over the
    V tokens are V − 1 elementwise ops on contiguous ``(m, S)`` arrays instead of
    ``max``/``sum`` over a length-V last axis.
    """
    m, horizon = r.shape[0], len(logpi_ref)
    value = np.asarray(r, dtype=np.float64) / beta
    logpi: list[np.ndarray] = [None] * horizon  # type: ignore[list-item]
    for h in range(horizon - 1, -1, -1):
        _, n_states, vocab = logpi_ref[h].shape
        q = logpi_ref[h] + value.reshape(m, n_states, vocab)
        cols = [np.ascontiguousarray(q[..., a]) for a in range(vocab)]
        qmax = cols[0].copy()
        for c in cols[1:]:
            np.maximum(qmax, c, out=qmax)
        tot, tmp = np.zeros_like(qmax), np.empty_like(qmax)
        for c in cols:
            np.subtract(c, qmax, out=tmp)
            np.exp(tmp, out=tmp)
            tot += tmp
        np.log(tot, out=tot)
        tot += qmax  # V_h
        for a, c in enumerate(cols):
            np.subtract(c, tot, out=q[..., a])
        logpi[h], value = q, tot
    return tuple(logpi), value[:, 0]


def leaf_slices(logpi: tuple[np.ndarray, ...]) -> np.ndarray:
    """log P(ξ) = Σ_h log π(a_h|s_h), writing each token's children as one contiguous add."""
    acc = logpi[0][:, 0, :]
    for lp in logpi[1:]:
        out = np.empty(lp.shape)
        for a in range(lp.shape[-1]):
            np.add(acc, lp[..., a], out=out[..., a])
        acc = out.reshape(lp.shape[0], -1)
    return acc


def memory_pass(logpi_ref, r: np.ndarray, beta: float, buf: SoftVIBuffers) -> None:
    """The loads and stores soft VI cannot avoid, with no other work: V_H = r/β; per level
    log π*-buffer ← log π_ref + V_{h+1} (one add per edge), V_h ← one value per state."""
    horizon = len(logpi_ref)
    np.divide(r, beta, out=buf.values[horizon])
    v = buf.values[horizon]
    for h in range(horizon - 1, -1, -1):
        q = buf.logpi[h]
        np.add(logpi_ref[h], v.reshape(q.shape), out=q)
        np.copyto(buf.values[h], q[..., 0])
        v = buf.values[h]


@functools.cache
def _numba_levels():
    """numba passes over one level (compiled on first use), in the fused kernel's loop order —
    per prompt, blocks of ``soft_fused.block_states(V)`` states:

    - ``memory``: :func:`memory_pass`'s loads and stores, log π*-buffer ← log π_ref + V_{h+1}
      (one add per edge), V_h ← the block's first token per state (one store per state);
    - ``exp``: the same, plus the kernel's e^q per edge (its first inner pass, into an L1
      scratch): the floor of any kernel with one exp per edge in this loop structure.
    """
    import numba

    exp_shifted = soft_fused.jitted()["_exp_shifted"]

    def make(with_exp):
        @numba.njit(**soft_fused.JIT_OPTIONS)
        def level(lp, v_next, out, v_out, vocab, block, pb):
            for x in range(v_out.shape[0]):
                lp_row, v_row, out_row, vo_row = lp[x], v_next[x], out[x], v_out[x]
                for s0 in range(0, vo_row.size, block):
                    s1 = min(s0 + block, vo_row.size)
                    e0, e1 = s0 * vocab, s1 * vocab
                    lp_blk, v_blk, out_blk = lp_row[e0:e1], v_row[e0:e1], out_row[e0:e1]
                    if with_exp:
                        exp_shifted(lp_blk, v_blk, 0.0, out_blk, pb[: e1 - e0])
                    else:
                        for i in range(out_blk.size):
                            out_blk[i] = lp_blk[i] + v_blk[i]
                    for j in range(s1 - s0):
                        vo_row[s0 + j] = out_blk[j * vocab]

        return level

    @numba.njit(**soft_fused.JIT_OPTIONS)
    def leaf(r, beta, v_out):
        for x in range(r.shape[0]):
            r_row, v_row = r[x], v_out[x]
            for i in range(r_row.size):
                v_row[i] = r_row[i] / beta

    return {"memory": make(False), "exp": make(True), "leaf": leaf}


def numba_pass(kind: str, logpi_ref, r: np.ndarray, beta: float, buf: SoftVIBuffers) -> None:
    """:func:`memory_pass` (``kind="memory"``) or it plus one exp per edge (``"exp"``) as one
    numba loop per level, in the fused kernel's blocks (see :func:`_numba_levels`)."""
    levels = _numba_levels()
    horizon, m = len(logpi_ref), r.shape[0]
    vocab = logpi_ref[0].shape[-1]
    block = soft_fused.block_states(vocab)  # as in the fused kernel
    pb = np.empty(block * vocab)
    levels["leaf"](r, beta, buf.values[horizon])
    for h in range(horizon - 1, -1, -1):
        out = buf.logpi[h].reshape(m, -1)
        lp = logpi_ref[h].reshape(m, -1)
        levels[kind](lp, buf.values[h + 1], out, buf.values[h], vocab, block, pb)


def best_of(fn, repeat: int, timer) -> float:
    """Best time (s) of ``repeat`` single calls."""
    return min(timeit.repeat(fn, number=1, repeat=repeat, timer=timer))


def best_of_interleaved(fns, repeat: int, timer) -> list[float]:
    """Best time (s) of each of ``fns`` over ``repeat`` rounds of one call each, in turn."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = timer()
            fn()
            best[k] = min(best[k], timer() - t0)
    return best


def measure(vocab: int, horizon: int, m: int, beta: float, repeat: int, timer, rng) -> dict:
    """Best-of-``repeat`` times (s) of every kernel on one tree, and the candidates' max error."""
    n = m * vocab**horizon
    logpi_ref = random_ref_policy(m, vocab, horizon, 1.0, rng)
    r = rng.standard_normal((m, vocab**horizon))
    x, buf = rng.standard_normal(n), np.empty(n)
    lib = theory.soft_value_iteration(logpi_ref, r, beta, backend="numpy")
    cand, log_z = soft_vi_slices(logpi_ref, r, beta)
    err = max(float(np.abs(a - b).max()) for a, b in zip(cand, lib.logpi))
    err = max(err, float(np.abs(log_z - lib.log_z).max()))
    err = max(
        err, float(np.abs(leaf_slices(lib.logpi) - theory.node_to_leaf_logp(lib.logpi)).max())
    )
    vibuf = SoftVIBuffers.empty(m, vocab, horizon)
    into = theory.soft_value_iteration(logpi_ref, r, beta, out=vibuf, backend="numpy")
    err = max(err, max(float(np.abs(a - b).max()) for a, b in zip(into.logpi, lib.logpi)))
    # issue 8: the library into reused buffers, the kernels and both memory passes,
    # interleaved (one call of each per round) and all into the same buffers, so that each
    # call finds the caches as the previous one left them: the same state for all
    runs = {
        "mem": lambda: memory_pass(logpi_ref, r, beta, vibuf),
        "softvi_out": lambda: theory.soft_value_iteration(
            logpi_ref, r, beta, out=vibuf, backend="numpy"
        ),
    }
    t = dict.fromkeys(("fused", "jit", "mem_nb", "exp_nb", "jit_mem", "fused_err"), float("nan"))
    if soft_fused.available():
        fbuf = SoftVIBuffers.empty(m, vocab, horizon)
        t0 = time.perf_counter()  # first call: JIT for this V (if not compiled yet) + one run
        got = theory.soft_value_iteration(logpi_ref, r, beta, out=fbuf, backend="numba")
        t["jit"] = time.perf_counter() - t0
        diffs = [
            np.abs(a - b).max() for a, b in zip(got.logpi + got.values, lib.logpi + lib.values)
        ]
        t["fused_err"] = float(max(diffs))
        t0 = time.perf_counter()
        numba_pass("memory", logpi_ref, r, beta, fbuf)  # its JIT (once), out of the timings
        t["jit_mem"] = time.perf_counter() - t0
        numba_pass("exp", logpi_ref, r, beta, fbuf)
        runs["fused"] = lambda: theory.soft_value_iteration(
            logpi_ref, r, beta, out=vibuf, backend="numba"
        )
        runs["mem_nb"] = lambda: numba_pass("memory", logpi_ref, r, beta, vibuf)
        runs["exp_nb"] = lambda: numba_pass("exp", logpi_ref, r, beta, vibuf)
    t.update(zip(runs, best_of_interleaved(list(runs.values()), repeat, timer)))
    return t | {
        "n": n,
        "exp": best_of(lambda: np.exp(x, out=buf), repeat, timer),
        "softvi": best_of(
            lambda: theory.soft_value_iteration(logpi_ref, r, beta, backend="numpy"), repeat, timer
        ),
        "leaf": best_of(lambda: theory.node_to_leaf_logp(lib.logpi), repeat, timer),
        "vi_slices": best_of(lambda: soft_vi_slices(logpi_ref, r, beta), repeat, timer),
        "leaf_slices": best_of(lambda: leaf_slices(lib.logpi), repeat, timer),
        "err": err,
    }


def main() -> None:
    """Time each tree and print the ratios to one exp pass."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, help="best-of-K timing (default 9)")
    ap.add_argument("--cpu", action="store_true", help="process CPU time instead of wall time")
    ap.add_argument("--beta", type=float, default=0.5)
    args = ap.parse_args()
    timer = time.process_time if args.cpu else time.perf_counter
    rng = np.random.default_rng(0)
    kind = "CPU" if args.cpu else "wall"
    results = [(v, h, measure(v, h, m, args.beta, args.repeat, timer, rng)) for v, h, m in TREES]
    print(f"best of {args.repeat} ({kind} time); ratio = t / t(exp)")
    print(
        f"{'V':>3} {'H':>3} {'N':>8} | {'exp ms':>7} | {'softVI':>7} {'ratio':>6} | "
        f"{'leaf':>6} {'ratio':>5} | {'VI-slc':>7} {'ratio':>6} | {'leaf-slc':>8} {'ratio':>5} |"
        f" {'max|Δ|':>7}"
    )
    for vocab, horizon, t in results:
        u = t["exp"]
        print(
            f"{vocab:>3} {horizon:>3} {t['n']:>8} | {1e3 * u:>7.2f} | "
            f"{1e3 * t['softvi']:>7.1f} {t['softvi'] / u:>6.1f} | "
            f"{1e3 * t['leaf']:>6.1f} {t['leaf'] / u:>5.1f} | "
            f"{1e3 * t['vi_slices']:>7.1f} {t['vi_slices'] / u:>6.1f} | "
            f"{1e3 * t['leaf_slices']:>8.1f} {t['leaf_slices'] / u:>5.1f} | {t['err']:>7.1e}"
        )
    print(
        f"\nissue 8 (target ≤ 1.5): best of {args.repeat} interleaved ({kind} time); mem = numpy"
        " memory-only pass, mem-nb = numba memory-only pass (same blocks), exp-nb = mem-nb plus"
        " the kernel's exp per edge (a floor); jit: first call"
    )
    print(
        f"{'V':>3} {'H':>3} | {'mem ms':>6} {'mem-nb':>6} | {'out ms':>6} {'out/mem':>7} | "
        f"{'fused ms':>8} {'fused/mem':>9} {'fused/mem-nb':>12} | {'exp-nb':>6} "
        f"{'exp-nb/mem':>10} | {'max|Δ|':>7} | {'jit s':>5} {'jit mem-nb':>10}"
    )
    for vocab, horizon, t in results:
        print(
            f"{vocab:>3} {horizon:>3} | {1e3 * t['mem']:>6.2f} {1e3 * t['mem_nb']:>6.2f} | "
            f"{1e3 * t['softvi_out']:>6.2f} {t['softvi_out'] / t['mem']:>7.2f} | "
            f"{1e3 * t['fused']:>8.2f} {t['fused'] / t['mem']:>9.2f} "
            f"{t['fused'] / t['mem_nb']:>12.2f} | {1e3 * t['exp_nb']:>6.2f} "
            f"{t['exp_nb'] / t['mem']:>10.2f} | {t['fused_err']:>7.1e} | "
            f"{t['jit']:>5.2f} {t['jit_mem']:>10.2f}".replace("nan", "n/a")
        )


if __name__ == "__main__":
    main()
