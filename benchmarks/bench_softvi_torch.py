"""Torch soft value iteration on big trees vs one ``exp`` pass over the leaves.

Run: ``PYTHONPATH=. python benchmarks/bench_softvi_torch.py [--device cuda] [--log2-leaves 30]
[--repeat K] [--dtype float32]``.

For each tree (V, H) with V^H ≈ 2^log2_leaves leaves (m = 1, r Gaussian, β = 0.5, uniform
π_ref) it prints the best-of-K wall time (CUDA-synchronised) of

- ``exp``: one ``torch.exp(r, out=buf)`` over the N leaves — the unit (reads N, writes N;
  on an H200 this runs at the memory-bandwidth limit);
- ``soft_vi_big``: :func:`gvgap.nn.bigtree.soft_vi_big` (reads r once; exact log Z, E_{π*} r,
  KL(π*‖π_ref), J(π*));
- ``plain``: level-by-level ``torch.logsumexp`` over the token axis (the naive baseline),

and the ratios to the unit, plus a check that both give the same log Z. Target on a GPU:
soft_vi_big ≤ 2× exp. Nothing is asserted; on CPU just report.
"""

from __future__ import annotations

import argparse
import math
import time

from gvgap.nn.bigtree import soft_vi_big
from gvgap.nn.device import resolve


def _timed(fn, sync, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def plain(r, beta, vocab, horizon):
    """Naive soft VI: V_h = logsumexp_a(log π_ref + V_{h+1}) level by level."""
    import torch

    v = r / beta
    for _ in range(horizon):
        v = torch.logsumexp(v.reshape(r.shape[0], -1, vocab) - math.log(vocab), dim=2)
    return v[:, 0]


def main(argv=None) -> list[dict]:
    """Run the benchmark; returns one dict per tree (also printed)."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--log2-leaves", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-plain", action="store_true", help="skip the naive baseline")
    args = ap.parse_args(argv)
    pl = resolve(args.device, args.dtype)
    sync = torch.cuda.synchronize if pl.is_cuda else (lambda: None)
    gen = torch.Generator(device=pl.device).manual_seed(0)
    rows = []
    k = args.log2_leaves
    for vocab in (2, 4, 32):
        horizon = max(1, round(k / math.log2(vocab)))
        n = vocab**horizon
        r = torch.randn((1, n), generator=gen, device=pl.device, dtype=pl.dtype)
        buf = torch.empty_like(r)
        t_exp, _ = _timed(lambda r=r, buf=buf: torch.exp(r, out=buf), sync, args.repeat)
        del buf
        t_big, out = _timed(
            lambda r=r, v=vocab, h=horizon: soft_vi_big(r, 0.5, v, h), sync, args.repeat
        )
        row = {
            "V": vocab,
            "H": horizon,
            "leaves": n,
            "exp_s": t_exp,
            "soft_vi_s": t_big,
            "ratio": t_big / t_exp,
            "log_z": float(out.log_z[0]),
        }
        if not args.no_plain:
            t_pl, lz = _timed(lambda r=r, v=vocab, h=horizon: plain(r, 0.5, v, h), sync, 1)
            row.update(
                plain_s=t_pl,
                plain_ratio=t_pl / t_exp,
                agree=abs(float(lz[0]) - row["log_z"]) <= 1e-4 * max(1, abs(row["log_z"])),
            )
        rows.append(row)
        print(
            f"V={vocab:<3d} H={horizon:<3d} N={n:.3g}  exp {t_exp * 1e3:8.2f} ms  soft_vi_big "
            f"{t_big * 1e3:8.2f} ms  ratio {row['ratio']:.2f}"
            + (
                f"  plain {row['plain_ratio']:.2f}x agree={row['agree']}"
                if "plain_s" in row
                else ""
            ),
            flush=True,
        )
        del r
        if pl.is_cuda:
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
