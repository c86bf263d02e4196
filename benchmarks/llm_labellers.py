"""Why does a labeller verify, or not? The likelihood-based labellers of a run taken apart.

For every finished run of a ``gvgap llm run`` directory, on the held-out test pairs (BT(gold)
labels on π_ref samples of the evaluation prompts, never trained on) and per labeller — the
global RM, the local RM β log π_local, DPO's implicit reward β log π_dpo/π_ref (after its 200
steps, and ``dpo_extra`` after its extra pass, the local RM's budget of up to 400), the SFT
likelihood β log π_ref and, where it has a closed form (readout, short, sum), the exact
demonstrator likelihood β log p_demo (:meth:`gvgap.llm.tasks.Task.demo_logp`):

- ``lik`` = mean σ(r̂(y_c) − r̂(y_r)) (the report's validation likelihood) and ``acc`` (share
  with r̂(y_c) > r̂(y_r));
- ``c`` = the maximum-likelihood BT scale of the labeller's margins in nats, fitted on the
  *training* pairs (argmax_c Σ log σ(c·m), a convex 1-D problem; compare with β: a labeller
  whose learnt scale matters has c far from β), and ``lik@c`` on the test pairs at that scale;
- for the per-token labellers, the margin split into the last completion token (where the
  ``readout`` reward lives) and the first H − 1 tokens: accuracy and SD of each part.

Prints, per grid cell (the task and every other field that varies), the mean ± SE over seeds.

usage: python benchmarks/llm_labellers.py RUN_DIR
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch


def ml_scale(m: torch.Tensor, iters: int = 100) -> float:
    """argmax_{c ≥ 0} Σ log σ(c·m) for margins ``m`` (chosen minus rejected), by Newton steps
    (the objective is concave in c); 0 when no positive scale beats c = 0."""
    m = m.double()
    c = 0.0
    for _ in range(iters):
        s = torch.sigmoid(c * m)
        grad, hess = float(((1 - s) * m).sum()), float((s * (1 - s) * m * m).sum())
        if hess <= 0:
            return c
        step = grad / hess
        c = max(c + step, 0.0)
        if abs(step) < 1e-10:
            break
    return c


def margins(score: Callable[[torch.Tensor], torch.Tensor], pairs: dict) -> torch.Tensor:
    """r(chosen) − r(rejected) of every pair, one scoring pass over both sides."""
    k = len(pairs["chosen"])
    s = score(torch.cat([pairs["chosen"], pairs["rejected"]]))
    return s[:k] - s[k:]


def describe(train: torch.Tensor, test: torch.Tensor, beta: float) -> dict[str, float]:
    """The module docstring's numbers for margins in nats (labeller margin = β·m)."""
    c = ml_scale(train)
    return {
        "lik": float(torch.sigmoid(beta * test).mean()),
        "acc": float((test > 0).double().mean()),
        "c": c,
        "lik@c": float(torch.sigmoid(c * test).mean()),
    }


def run_numbers(cfg, task, models, pairs: dict, placement) -> dict[str, float]:
    """The module docstring's numbers for one finished run (``models`` by stage name)."""
    from gvgap.llm import stages as st
    from gvgap.llm.model import logp_completion

    @torch.no_grad()
    def per_token(name: str, seqs: torch.Tensor) -> torch.Tensor:
        lm = models[name].eval()
        lp = logp_completion(lm, seqs, task.prefix_len, placement, task.n_content, per_token=True)
        return lp.double().cpu()

    def lab(name: str, ref: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda s: per_token(name, s) - (per_token("sft", s) if ref else 0.0)

    def global_rm(s: torch.Tensor) -> torch.Tensor:
        return st.rm_rows(models["global_rm"], s, placement)

    out: dict[str, float] = {}
    g_tr, g_te = (margins(global_rm, pairs[s]) for s in ("train", "test"))
    out.update({f"global/{k}": v for k, v in describe(g_tr, g_te, 1.0).items()})
    token_scores = {
        "local": lab("local_rm"),
        "dpo": lab("dpo", ref=True),
        "dpo_extra": lab("dpo_extra", ref=True),  # DPO after its extra pass: the local RM's budget
        "sft": lab("sft"),
    }
    for name, score in token_scores.items():
        tr, te = (margins(score, pairs[s]) for s in ("train", "test"))
        got = describe(tr.sum(1), te.sum(1), cfg.beta)
        out.update({f"{name}/{k}": v for k, v in got.items()})
        for part, cols in (("last", te[:, -1]), ("first", te[:, :-1].sum(1))):
            out[f"{name}/{part}_acc"] = float((cols > 0).double().mean())
            out[f"{name}/{part}_sd"] = float(cols.std())
    if cfg.task in ("readout", "short", "sum"):

        def demo(s: torch.Tensor) -> torch.Tensor:
            return task.demo_logp(*task.split(s))

        d_tr, d_te = (margins(demo, pairs[s]) for s in ("train", "test"))
        out.update({f"demo/{k}": v for k, v in describe(d_tr, d_te, cfg.beta).items()})
    return out


def main(run_dir: str) -> None:
    from gvgap.llm.report import config_cells
    from gvgap.sweep.llm_run import stored_runs

    torch.set_num_threads(1)
    runs = list(stored_runs(run_dir))
    rows: dict[str, list[dict[str, float]]] = {}
    cells = config_cells([r.cfg for r in runs], [r.instance_seed for r in runs])
    for run, cell in zip(runs, cells, strict=True):
        got = run_numbers(run.cfg, run.task, run.models, run.pairs(), run.p)
        rows.setdefault(cell, []).append(got)  # one group per grid cell, never averaged over
    for cell, got in rows.items():
        print(f"== {cell} ({len(got)} seeds; mean ± SE over seeds; test pairs)")
        for name in ("global", "local", "dpo", "dpo_extra", "sft", "demo"):
            cells = []
            for k in (k for k in got[0] if k.startswith(f"{name}/")):
                v = np.array([g[k] for g in got])
                se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
                cells.append(f"{k.split('/')[1]} {v.mean():.3f} ± {se:.3f}")
            if cells:
                print(f"  {name:<9} " + "  ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1])
