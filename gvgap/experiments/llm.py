"""LLM scale — does the online advantage follow the generation–verification gap with GPT-NeoX
models and a learned verifier (docs/theory.md §5, §7)?

Design: per task, one instance (``instance_seed``), every pipeline of the paper trained in one
run per seed from the same SFT model on the same preference pairs (:mod:`gvgap.llm.pipeline`):
offline DPO, online DPO from SFT labelled by the learned global RM (the test arm), by the local
RM, and by r* itself (the positive control: the same loop with a perfect verifier). Each DPO
run records a KL frontier; online and offline are compared at matched KL(π‖π_ref)
(``win_rate_matched``): their win rates against π_ref samples, interpolated on each frontier at
the smaller of the two final KLs, per seed.

Rule (fixed before the confirmatory sweep, on instance seed 1; development used 100):
the paired differences d_i = online − DPO (matched KL, same seed) of every cell
(task × any other grid axis) are decided together by :func:`gvgap.inference.decide_family`
(one-sided signed-rank tests and TOST with margin :data:`MARGIN`, Holm across cells); the
prediction is ``greater`` on the gap task and ``equivalent`` on the controls
(:data:`PREDICTION`). The positive control (gold-labelled online − DPO, same cell) must
detect ``greater`` (:func:`gvgap.experiments.hypothesis.detects`), and the comparison counts
only where the learned verifier verifies: mean on-policy label accuracy of the global RM
≥ :data:`VERIFIER_FLOOR`; otherwise the verdict is inconclusive.
:func:`gvgap.inference.hypothesis_verdict` maps the outcome to the verdict. Seeds: the power
of the signed-rank test at α/m for an effect of :data:`EFFECT_OF_INTEREST` given the pilot's
spread of d (:func:`gvgap.inference.power`, the smoothed bootstrap of the recentred
differences; ``power`` in each record).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gvgap.experiments import hypothesis
from gvgap.experiments.base import Verdict
from gvgap.llm.config import LIMITS, PRESETS, LLMConfig

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

ID = "llm"
CLAIM = (
    "At LLM scale (GPT-NeoX from config, gold reward known), online DPO labelled by a learned "
    "global RM beats offline DPO at matched KL where the task has a generation–verification "
    "gap, and ties it on the two controls."
)
NOTES = "LLM"
DESIGN_NOTE = __doc__
HYPOTHESIS = (
    "H6: online wins through a simple verifier learnt from the same pairs (a gap task: the "
    "global RM verifies better than the local RM and DPO's implicit reward)."
)
REQUIRES_TORCH = True
Config = LLMConfig
#: ``gvgap show llm``: the allowed values of each field (from the validation table).
ALLOWED = {
    **{
        k: ", ".join(v) if isinstance(v[0], str) else f"[{v[0]:g}, {v[1]:g}]"
        for k, v in LIMITS.items()
    },
    "model": f"{', '.join(PRESETS)} or a GPT-NeoX checkpoint dir",
    "rm_model": f"sft, {', '.join(PRESETS)}",
    "device": "cpu, cuda, cuda:N, auto",
    "bon_n": "comma-separated integers in [1, 256]",
}
#: Columns the figure distinguishes (other varying fields become panels).
PLOT_USES = ("task",)
#: The outcome the hypothesis predicts per task (gap: greater; controls: equivalent).
PREDICTION = {
    "readout": "greater",
    "count": "greater",
    "sum": "greater",
    "short": "equivalent",
    "rouge": "equivalent",
}
#: The paper's finding per task (docs/theory.md §7), for ``consistent_with_paper``.
PAPER_POSITION = {
    "readout": "TL;DR: online DPO > DPO (56.1 vs 49.7 win rate at 1.4B)",
    "count": "TL;DR: online DPO > DPO (56.1 vs 49.7 win rate at 1.4B)",
    "sum": "TL;DR: online DPO > DPO (56.1 vs 49.7 win rate at 1.4B)",
    "short": "two-word summaries: online ≈ DPO (23.2 vs 21.9)",
    "rouge": "ROUGE-L reward: online ≈ DPO (0.352 vs 0.354)",
}
#: Test arm and its offline counterpart; positive control arm (gold labels).
TEST = ("online_dpo_sft", "dpo")
CONTROL = ("online_dpo_gold", "dpo")
#: Equivalence margin δ of the TOST, in win-rate units (3 points).
MARGIN = 0.03
#: Smallest mean on-policy label accuracy of the global RM for a comparison to count.
VERIFIER_FLOOR = 0.7
#: Effect (win-rate units) the power computation is for.
EFFECT_OF_INTEREST = 0.05

#: The confirmatory setting of ``sims/llm_tiny.toml`` (CPU, tiny GPT-NeoX).
TINY: dict[str, Any] = {
    "model": "tiny",
    "vocab": 8,
    "prompt_len": 4,
    "completion_len": 12,
    "short_len": 2,
    "reward_scale": 8.0,
    "demo_skill": 0.5,
    "demo_style": 0.3,
    "n_train_prompts": 512,
    "n_eval_prompts": 64,
    "demos_per_prompt": 4,
    "pairs_per_prompt": 2,
    "batch_size": 64,
    "lr": 3e-3,
    "pref_lr": 3e-3,
    "sft_steps": 300,
    "rm_steps": 400,
    "dpo_steps": 200,
    "online_steps": 200,
    "eval_every": 50,
    "beta": 0.1,
    "online_samples": 8,
    "online_temperature": 1.0,
    "bon_n": "1,2,4,8",
    "eval_samples": 8,
    "frontier": 4,
}
SETTINGS = {
    "seeds": 8,
    "instance_seed": 1,
    "fixed": TINY,
    "grid": {"task": ["readout", "short", "rouge"]},
}
#: The second confirmatory block of the gap task (``sims/llm_readout2.toml``), fixed before it
#: ran: the first block (SETTINGS, 8 seeds) was undetermined at power 0.29, its pilot's SD
#: (<= 0.03) having under-estimated the spread of the matched-KL differences (SD 0.083). With
#: that block as the pilot (:func:`gvgap.inference.power`, one test), 16 seeds detect an effect
#: distributed like the positive control's (mean +0.056) with power 0.90; equivalence at
#: :data:`MARGIN` stays out of reach (0.06 at 16 seeds, 0.30 at 40). Same rule and TINY.
CONFIRM2 = {
    "seeds": 16,
    "instance_seed": 3,
    "fixed": TINY,
    "grid": {"task": ["readout"]},
}
#: The pairs axis (``sims/llm_pairs.toml``; exploratory, 5 seeds, no power plan): the gap task
#: at 1, 2 and 8 preference pairs per training prompt. Descriptive: 5 seeds cannot reject in a
#: Holm family of 3 cells (smallest signed-rank p 1/32 > α/3).
PAIRS = {
    "seeds": 5,
    "instance_seed": 2,
    "fixed": {k: v for k, v in TINY.items() if k != "pairs_per_prompt"},
    "grid": {"task": ["readout"], "pairs_per_prompt": [1, 2, 8]},
}
#: ``gvgap reproduce --quick``: the gap task only, small (about 20 s per run on one core); two
#: seeds cannot reach a decided outcome under the rule: its verdict is inconclusive by design.
QUICK = {
    "seeds": 2,
    "instance_seed": 1,
    "fixed": {
        **TINY,
        "n_train_prompts": 128,
        "n_eval_prompts": 32,
        "sft_steps": 100,
        "rm_steps": 200,
        "dpo_steps": 50,
        "online_steps": 50,
        "frontier": 2,
    },
    "grid": {"task": ["readout"]},
}
SMOKE = LLMConfig(
    vocab=5,
    prompt_len=3,
    completion_len=3,
    n_train_prompts=16,
    n_eval_prompts=4,
    sft_steps=4,
    rm_steps=2,
    dpo_steps=2,
    online_steps=2,
    batch_size=4,
    online_samples=2,
    bon_n="1,2",
    eval_samples=2,
    eval_every=1,
    frontier=1,
)


def run(cfg: LLMConfig, *, rng: np.random.Generator, instance_rng: np.random.Generator) -> dict:
    """Every stage of one (config, seed) in memory (``gvgap sweep``; ``gvgap llm run`` runs the
    same stages checkpointed, :mod:`gvgap.sweep.llm_run`)."""
    from gvgap.llm.pipeline import run_stages

    seed, inst = run_seeds(rng, instance_rng)
    return run_stages(cfg, seed, inst)


def run_seeds(rng: np.random.Generator, instance_rng: np.random.Generator) -> tuple[int, int]:
    """The integer seeds of a run's stages and task instance, drawn from its two generators."""
    return int(rng.integers(2**62)), int(instance_rng.integers(2**62))


# ---------------------------------------------------------------- verdict


def by_seed(df: pd.DataFrame, pipeline: str, metric: str) -> pd.Series:
    """``pipeline/metric`` indexed by seed, within one cell (raises where a seed has several
    runs: two cells or instance blocks are never averaged together)."""
    sel = df[(df.pipeline == pipeline) & (df.metric == metric)]
    if sel["seed"].duplicated().any():
        raise ValueError(f"{pipeline}/{metric}: several runs per seed (more than one cell)")
    return sel.set_index("seed")["value"]


def paired(df: pd.DataFrame, arm: str) -> np.ndarray:
    """Per seed, ``arm``'s win rate minus its offline counterpart's at matched KL."""
    d = by_seed(df, arm, "win_rate_matched") - by_seed(df, arm, "offline_win_rate_matched")
    d = d.dropna().to_numpy(float)
    return d[np.isfinite(d)]


def final_diff(df: pd.DataFrame, a: str, b: str) -> np.ndarray:
    """Per seed, ``a − b`` win rate at the final checkpoints (reported, not evidence)."""
    return (by_seed(df, a, "win_rate") - by_seed(df, b, "win_rate")).dropna().to_numpy(float)


def labeller_summary(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean (and SE over seeds) of each labeller's validation likelihood and label accuracy."""
    from gvgap.llm.report import LABELLER_ORDER

    out = {}
    for lab in LABELLER_ORDER:
        rec = {}
        for m in ("val_likelihood", "val_accuracy", "label_accuracy", "label_ties"):
            v = df[(df.pipeline == f"rm_{lab}") & (df.metric == m)]["value"].dropna()
            rec[m] = float(v.mean()) if len(v) else float("nan")
            rec[f"{m}_se"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
        out[lab] = rec
    return out


def _record(
    cell_df: pd.DataFrame, cell: dict, decision: Any, n_cells: int, rng: np.random.Generator
) -> dict[str, Any]:
    """The verdict record of one cell (module docstring)."""
    from gvgap.inference import hypothesis_verdict, power

    task = cell.get("task") or str(cell_df["task"].iloc[0])
    predicted = PREDICTION[task]
    d = paired(cell_df, TEST[0])
    d_ctrl = paired(cell_df, CONTROL[0])
    ok, ctrl_outcome = hypothesis.detects(d_ctrl, "greater", MARGIN)
    labs = labeller_summary(cell_df)
    verifies = labs["global"]["label_accuracy"] >= VERIFIER_FLOOR
    verdict, held = hypothesis_verdict(
        decision.outcome, predicted=predicted, control_detects=ok and verifies
    )
    m, lo, hi = hypothesis.mean_ci(d)
    cm, clo, chi = hypothesis.mean_ci(d_ctrl)
    # the power of this test at the effect of interest, with the spread the seeds showed
    power_at = (
        power(d - d.mean() + EFFECT_OF_INTEREST, d.size, n_tests=n_cells, rng=rng)
        if d.size > 1
        else float("nan")
    )
    fm, flo, fhi = hypothesis.mean_ci(final_diff(cell_df, *TEST))
    order = [labs[k]["val_likelihood"] for k in ("global", "local", "dpo")]
    s = decision.summary
    why = []
    if not verifies:
        why.append(
            f"the global RM does not verify (label accuracy {labs['global']['label_accuracy']:.3f}"
            f" < {VERIFIER_FLOOR}): the comparison does not count"
        )
    if not ok:
        why.append(f"the positive control does not detect ({ctrl_outcome})")
    detail = (
        f"Test {TEST[0]} − {TEST[1]} win rate at matched KL: {decision.outcome} "
        f"(median {s['median']:+.3g}, p> {decision.p_greater:.2g}, p< {decision.p_less:.2g}, "
        f"p_TOST(δ={MARGIN:g}) {decision.p_equivalent:.2g}; Holm over {n_cells} cells); "
        f"predicted {predicted}. At the final checkpoints (not evidence): {fm:+.3g} "
        f"[{flo:+.3g}, {fhi:+.3g}]. Val likelihood global/local/DPO "
        f"{order[0]:.3f}/{order[1]:.3f}/{order[2]:.3f}."
        + (" Inconclusive because " + "; ".join(why) + "." if why else "")
    )
    consistent = {"supported": "yes", "against": "no"}.get(verdict, "undecided")
    return {
        "claim": CLAIM,
        "hypothesis": HYPOTHESIS,
        "verdict": verdict,
        "prediction_held": held,
        "effect": m,
        "ci_low": lo,
        "ci_high": hi,
        "n_runs": int(d.size),
        "positive_control": {"effect": cm, "ci_low": clo, "ci_high": chi},
        "paper_position": PAPER_POSITION[task],
        "consistent_with_paper": consistent,
        "seeds": int(cell_df["seed"].nunique()),
        "power": power_at,
        "detail": detail,
        "decision": decision.to_json(),
        "final_checkpoint": {"effect": fm, "ci_low": flo, "ci_high": fhi},
        "labellers": labs,
        "precondition": bool(order[0] > order[1] > order[2]),
        "verifier_verifies": bool(verifies),
        "setting": cell,
    }


def task_verdicts(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{"llm/<task>": record}`` (docs/design.md §5 fields): each task's headline cell (the first
    in
    grid order), its other cells under ``robustness``; every cell decided in one Holm family."""
    from gvgap.inference import decide_family
    from gvgap.llm.report import varying_fields
    from gvgap.stats import at_cell

    df = df[df["experiment"] == ID] if "experiment" in df else df
    by = varying_fields(df)
    if "task" not in by:
        by = ["task", *by]
    cells = hypothesis.cells_of(df, by)
    frames = [at_cell(df, c) for c in cells]
    decisions = decide_family([paired(f, TEST[0]) for f in frames], margin=MARGIN)
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, Any]] = {}
    for cell, frame, dec in zip(cells, frames, decisions, strict=True):
        if frame.empty:
            continue
        rec = _record(frame, cell, dec, len(cells), rng)
        key = f"{ID}/{cell['task']}"
        if key not in out:
            out[key] = {**rec, "robust": None, "robustness": []}
        else:
            head = out[key]
            keys = ("setting", "verdict", "effect", "ci_low", "ci_high", "seeds", "power")
            head["robustness"].append(
                {
                    **{k: rec[k] for k in keys},
                    "positive_control": rec["positive_control"],
                    "label_accuracy": rec["labellers"]["global"]["label_accuracy"],
                }
            )
            head["robust"] = all(r["verdict"] == head["verdict"] for r in head["robustness"])
    return out


def verdict(df: pd.DataFrame) -> Verdict:
    """The gap task's verdict (the first task predicted ``greater``; the per-task records:
    :func:`task_verdicts`)."""
    records = task_verdicts(df)
    gap = [k for k, v in records.items() if PREDICTION[k.split("/")[1]] == "greater"]
    if not gap:
        nan = float("nan")
        return Verdict(CLAIM, "inconclusive", nan, nan, nan, 0, "no gap task in the table")
    v = records[gap[0]]
    others = "; ".join(f"{k}: {r['verdict']}" for k, r in records.items() if k != gap[0])
    return Verdict(
        CLAIM,
        v["verdict"],
        v["effect"],
        v["ci_low"],
        v["ci_high"],
        v["n_runs"],
        f"{gap[0]}: {v['detail']}" + (f" Other tasks: {others}." if others else ""),
        hypothesis=HYPOTHESIS,
        prediction_held=v["prediction_held"],
        positive_control=v["positive_control"],
    )


def plot(df: pd.DataFrame, ax: Any = None) -> Any:
    """Win rate vs π_ref samples, pipeline × task (mean over seeds ± 1 SE): the paper's table."""
    from gvgap.llm.report import plot_table

    return plot_table(df, ax)


def report_section(doc: Any, df: pd.DataFrame, verdicts: dict, figs: list[dict]) -> None:
    """The LLM section of ``gvgap report`` (hook of :func:`gvgap.report.write_report`): the
    experiment's figure, the best-of-N, KL-frontier and labeller figures, tables, verdicts."""
    from matplotlib.figure import Figure

    from gvgap import figures
    from gvgap.llm import report as llm_report

    out = doc.root / "figures"
    shown = [(out / f"{e['name']}.png", e.get("caption", "")) for e in figs if "error" not in e]
    meta = figures.figure_meta(ID, df)
    extra = [
        ("llm__bon", "Best-of-N from π_ref, reranked by each labeller (mean ± SE over seeds).",
         llm_report.plot_bon),
        ("llm__frontier", "KL frontier of each DPO run (win rate vs k1 KL, mean over seeds).",
         llm_report.plot_frontier),
    ]  # fmt: skip
    for task in llm_report.tasks_of(df):
        for name, caption, fn in extra:
            fig = Figure(figsize=(6.4, 4.4), layout="constrained")
            fn(df, fig.add_subplot(), task=task)
            slug = llm_report.cell_slug(task)
            figures.save_figure(fig, out, f"{name}_{slug}", meta=meta)
            shown.append((out / f"{name}_{slug}.png", f"{caption} Cell {task}."))
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    llm_report.plot_labellers(df, fig.add_subplot())
    figures.save_figure(fig, out, "llm__labellers", meta=meta)
    shown.append(
        (out / "llm__labellers.png", "Online − DPO at matched KL vs the labeller's accuracy.")
    )
    mine = {k: v for k, v in verdicts.items() if k == ID or k.startswith(f"{ID}/")}
    llm_report.section(doc, df, mine, shown)
