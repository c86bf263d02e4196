"""The online loop's sampling: does a (temperature T, N samples) setting starve it?

For every finished run of an ``gvgap llm run`` directory, its stored SFT model and global RM
label the best vs the worst of N π_ref samples per evaluation prompt at temperature T
(:func:`gvgap.llm.evaluate.label_quality`, the quantity the online arms train on), for the
paper's T = 0.1, N = 25 and for the configured default. Prints, per grid cell, the mean over seeds
of: distinct samples per prompt, share of prompts that give a pair, and the global RM's label
accuracy (chosen strictly better by r*) with ties apart.

usage: python benchmarks/llm_sampling.py RUN_DIR [T,N ...]   (default: 0.1,25 and 1,8)
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch


def main(run_dir: str, settings: list[tuple[float, int]]) -> None:
    from gvgap.llm import evaluate as ev
    from gvgap.llm.report import config_cells
    from gvgap.sweep.llm_run import stored_runs

    torch.set_num_threads(1)
    runs = list(stored_runs(run_dir))
    rows: dict[tuple[str, float, int], list[dict[str, float]]] = {}
    cells = config_cells([r.cfg for r in runs], [r.instance_seed for r in runs])
    for run, cell in zip(runs, cells, strict=True):
        cfg, task, seed, p, models = run.cfg, run.task, run.seed, run.p, run.models
        for t, n in settings:
            c = dataclasses.replace(cfg, online_temperature=t, online_samples=n)
            scorers = ev.labellers(c, task, models, p)
            got = ev.label_quality(c, task, models["sft"], {"global": scorers["global"]}, seed, p)
            rows.setdefault((cell, t, n), []).append(got)  # per grid cell
    head = ("cell", "T", "N", "distinct", "pairs kept", "accuracy", "ties")
    print("{:<8} {:>5} {:>3} {:>9} {:>10} {:>9} {:>6}".format(*head))
    for (task, t, n), got in rows.items():
        keys = ("distinct", "pairs_kept", "label_accuracy", "label_ties")
        m = {k: float(np.nanmean([g[f"rm_global/{k}"] for g in got])) for k in keys}
        print(
            f"{task:<8} {t:>5g} {n:>3d} {m['distinct']:>9.2f} {m['pairs_kept']:>10.3f} "
            f"{m['label_accuracy']:>9.3f} {m['label_ties']:>6.3f}  ({len(got)} seeds)"
        )


if __name__ == "__main__":
    pairs = [tuple(s.split(",")) for s in sys.argv[2:]] or [("0.1", "25"), ("1", "8")]
    main(sys.argv[1], [(float(t), int(n)) for t, n in pairs])
