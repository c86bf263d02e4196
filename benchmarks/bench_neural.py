"""h6_neural's cost and precision, measured in one process.

Run: ``PYTHONPATH=. python benchmarks/bench_neural.py [--part run|quick|dtype|forward|all]
[--vocab 4 --horizon 7 --width 16] [--threads 1] [--device cpu]``.

- ``run``: one ``h6_neural`` run (default: V = 4, H = 7, 16,384 leaves, width 16, the
  Config's defaults otherwise) — CPU and wall seconds, and the share of the capacity
  measurement (both residuals, all restarts) in that CPU;
- ``quick``: h6_neural's QUICK sweep as ``reproduce --quick`` runs it (chunks of
  BATCH_SIZE runs), CPU seconds;
- ``dtype``: float32 vs float64 on the same device — (a) the same parameters evaluated in
  both precisions (max |Δ log P|, |ΔJ| of policies, |Δr| of RMs: pure rounding), (b) the
  same run trained in both (every J, capacity and accuracy metric: rounding propagated
  through the fits);
- ``forward``: one forward + backward of the policy and the RM per precision, ms.

Nothing is asserted; the printed ratios are the measurement.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _cfg(**kw):
    from gvgap.experiments import h6_neural as E
    from gvgap.experiments.base import make_config

    return make_config(E.Config, kw)


def _rngs(seed: int):
    from gvgap.sweep.spec import RunSpec

    return RunSpec("h6_neural", {}, seed, seed).rngs()


def part_run(args) -> dict:
    """One run: CPU/wall and the capacity's share (timed inside the same run)."""
    from gvgap.experiments import h6_neural as E
    from gvgap.nn import pipelines as P

    cfg = _cfg(vocab=args.vocab, horizon=args.horizon, width=args.width, device=args.device)
    spent = {"capacity": 0.0}
    inner = P.capacity_many

    def timed(*a, **k):
        t0 = time.process_time()
        try:
            return inner(*a, **k)
        finally:
            spent["capacity"] += time.process_time() - t0

    P.capacity_many = timed
    rng, inst = _rngs(0)
    t0, w0 = time.process_time(), time.perf_counter()
    out = E.run(cfg, rng=rng, instance_rng=inst)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    P.capacity_many = inner
    keys = [k for k in sorted(out) if "capacity" in k or k.endswith(("/J", "/grad_norm"))]
    row = {
        "leaves": cfg.vocab**cfg.horizon,
        "cpu_s": cpu,
        "wall_s": wall,
        "capacity_cpu_s": spent["capacity"],
        "capacity_share": spent["capacity"] / cpu,
        **{k: out[k] for k in keys},
    }
    print(
        f"run V={cfg.vocab} H={cfg.horizon} ({row['leaves']} leaves) width {cfg.width}: "
        f"CPU {cpu:.1f} s, wall {wall:.1f} s, threads {args.threads}; capacity "
        f"{spent['capacity']:.1f} s = {100 * row['capacity_share']:.1f} % of the run"
    )
    print(json.dumps({k: round(v, 6) for k, v in row.items()}, indent=1))
    return row


def part_quick(args) -> dict:
    """h6_neural's QUICK sweep, chunked like the sweep runner."""
    from gvgap.experiments import h6_neural as E
    from gvgap.sweep.executors import execute_chunk
    from gvgap.sweep.spec import spec_from_data

    runs = spec_from_data("h6_neural", E.QUICK, "h6_neural:QUICK").runs()
    t0, w0 = time.process_time(), time.perf_counter()
    for i in range(0, len(runs), E.BATCH_SIZE):
        execute_chunk(runs[i : i + E.BATCH_SIZE])
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    print(f"quick: {len(runs)} runs, CPU {cpu:.1f} s, wall {wall:.1f} s")
    return {"runs": len(runs), "cpu_s": cpu, "wall_s": wall}


def _same_params(args) -> dict:
    """Identical parameters (float64 values) evaluated in float64 and float32."""
    import torch

    from gvgap.envs.families import make_family
    from gvgap.nn.device import resolve
    from gvgap.nn.policies import TransformerPolicy
    from gvgap.nn.rewards import ScalarHeadRM

    env = make_family(
        "planning",
        rng=np.random.default_rng(0),
        vocab=args.vocab,
        horizon=args.horizon,
        k=4,
        ref="random",
        ref_concentration=0.3,
        check="ends_with_first",
    )
    out = {}
    for name, make in (
        (
            "policy",
            lambda pl: TransformerPolicy(
                1,
                args.vocab,
                args.horizon,
                width=args.width,
                depth=1,
                heads=2,
                logpi_ref=env.logpi_ref,
                placement=pl,
                seed=3,
            ),
        ),
        (
            "rm",
            lambda pl: ScalarHeadRM(
                1,
                args.vocab,
                args.horizon,
                width=args.width,
                depth=1,
                heads=2,
                placement=pl,
                seed=3,
            ),
        ),
    ):
        hi = make(resolve(args.device, "float64"))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in hi.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
        lo = make(resolve(args.device, "float32"))
        lo.load_state_dict({k: v.float() for k, v in hi.state_dict().items()})
        with torch.no_grad():
            a = (hi.leaf_logp() if name == "policy" else hi.leaf_reward()).double().cpu()
            b = (lo.leaf_logp() if name == "policy" else lo.leaf_reward()).double().cpu()
        a, b = a.numpy(), b.numpy()
        out[f"{name}_max_abs_diff"] = float(np.max(np.abs(a - b)))
        if name == "policy":
            out["policy_J_diff"] = abs(env.objective(a) - env.objective(b))
            out["policy_kl_opt_diff"] = abs(env.metrics(a)["kl_opt"] - env.metrics(b)["kl_opt"])
    return out


def part_dtype(args) -> dict:
    """float32 vs float64: the same parameters, then the same run trained in both."""
    from gvgap.experiments import h6_neural as E
    from gvgap.nn import pipelines as P

    same = _same_params(args)
    shown = json.dumps({k: f"{v:.2e}" for k, v in same.items()})
    print("same parameters, float32 vs float64:", shown)
    runs = {}
    for dtype in ("float64", "float32"):
        P._CAPACITY.clear()
        cfg = _cfg(
            vocab=args.vocab,
            horizon=args.horizon,
            width=args.width,
            device=args.device,
            dtype=dtype,
        )
        rng, inst = _rngs(0)
        t0 = time.process_time()
        runs[dtype] = E.run(cfg, rng=rng, instance_rng=inst)
        print(f"  trained in {dtype}: CPU {time.process_time() - t0:.1f} s")
    a, b = runs["float64"], runs["float32"]
    ends = ("/J", "capacity_residual", "capacity_asymmetry", "/acc_in")
    keys = [k for k in a if k.endswith(ends)]
    diffs = {k: abs(a[k] - b[k]) for k in keys if np.isfinite(a[k]) and np.isfinite(b[k])}
    for k in sorted(diffs):
        print(f"  {k:32s} float64 {a[k]:+.6f}  float32 {b[k]:+.6f}  |Δ| {diffs[k]:.2e}")
    return {**same, **{f"trained_{k}": v for k, v in diffs.items()}}


def part_forward(args) -> dict:
    """One forward + backward per class and precision (best of 5), ms."""
    import torch

    from gvgap.nn.device import resolve
    from gvgap.nn.policies import TransformerPolicy
    from gvgap.nn.rewards import ScalarHeadRM

    out = {}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for dtype in ("float64", "float32"):
        pl = resolve(args.device, dtype)
        kw = {"width": args.width, "depth": 1, "heads": 2, "placement": pl}
        for name, mod in (
            ("policy", TransformerPolicy(1, args.vocab, args.horizon, **kw)),
            ("rm", ScalarHeadRM(1, args.vocab, args.horizon, **kw)),
        ):
            best = float("inf")
            for _ in range(5):
                sync()
                t0 = time.perf_counter()
                mod.leaf_flat().square().sum().backward()
                sync()
                best = min(best, time.perf_counter() - t0)
            out[f"{name}_{dtype}_ms"] = 1e3 * best
    print("forward + backward:", json.dumps({k: round(v, 2) for k, v in out.items()}))
    return out


def main(argv=None) -> dict:
    """Run the chosen parts; returns their measurements."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="all", choices=("run", "quick", "dtype", "forward", "all"))
    ap.add_argument("--vocab", type=int, default=4)
    ap.add_argument("--horizon", type=int, default=7)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = ("forward", "run", "quick", "dtype") if args.part == "all" else (args.part,)
    fns = {"run": part_run, "quick": part_quick, "dtype": part_dtype, "forward": part_forward}
    return {p: fns[p](args) for p in parts}


if __name__ == "__main__":
    main()
