"""The LLM verdict: the project's one rule (signed-rank + TOST, Holm across cells) on the
matched-KL differences, with the positive control and the verifier floor; the power
computation against brute-force enumeration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gvgap.experiments import llm as llm_experiment

SEEDS = 8


def table(d: dict[str, list[float]], ctrl: dict[str, list[float]], acc: float = 0.95):
    """A tidy llm table: per task and seed, online − offline (matched KL) = d, gold − offline
    = ctrl, the global RM's label accuracy ``acc`` and val likelihoods global > local > DPO."""
    rows = []
    for task in d:
        for s in range(SEEDS):
            rid = f"{task}-{s}"
            vals = {
                ("online_dpo_sft", "win_rate_matched"): 0.6 + d[task][s],
                ("online_dpo_sft", "offline_win_rate_matched"): 0.6,
                ("online_dpo_gold", "win_rate_matched"): 0.6 + ctrl[task][s],
                ("online_dpo_gold", "offline_win_rate_matched"): 0.6,
                ("online_dpo_sft", "win_rate"): 0.7,
                ("dpo", "win_rate"): 0.65,
                ("rm_global", "label_accuracy"): acc,
                ("rm_global", "val_likelihood"): 0.8,
                ("rm_local", "val_likelihood"): 0.6,
                ("rm_dpo", "val_likelihood"): 0.55,
            }
            for (pipe, metric), v in vals.items():
                rows.append(
                    {"run_id": rid, "experiment": "llm", "task": task, "seed": s,
                     "instance_seed": 1, "pipeline": pipe, "metric": metric, "value": v}
                )  # fmt: skip
    return pd.DataFrame(rows)


UP = [0.04, 0.06, 0.05, 0.08, 0.03, 0.07, 0.05, 0.06]  # all > 0
FLAT = [0.002, -0.003, 0.001, -0.001, 0.003, -0.002, 0.0015, -0.0005]  # |d| ≪ δ = 0.03
CTRL = [0.15, 0.2, 0.12, 0.18, 0.16, 0.14, 0.2, 0.17]


def test_gap_greater_and_control_equivalent_are_supported() -> None:
    out = llm_experiment.task_verdicts(
        table({"readout": UP, "short": FLAT}, {"readout": CTRL, "short": CTRL})
    )
    gap, ctl = out["llm/readout"], out["llm/short"]
    assert gap["decision"]["outcome"] == "greater" and gap["verdict"] == "supported"
    assert ctl["decision"]["outcome"] == "equivalent" and ctl["verdict"] == "supported"
    assert gap["prediction_held"] and ctl["prediction_held"]
    assert gap["effect"] == pytest.approx(np.mean(UP))
    assert gap["positive_control"]["effect"] == pytest.approx(np.mean(CTRL))
    assert gap["consistent_with_paper"] == "yes" and gap["seeds"] == SEEDS
    assert gap["precondition"] and gap["verifier_verifies"]
    # Holm over the 2 cells: 8 positive differences give the exact one-sided p = 1/256, the
    # smallest of the family, scaled by m = 2
    assert gap["decision"]["p_greater"] == pytest.approx(2 / 256)
    assert 0.0 <= gap["power"] <= 1.0


def test_no_difference_on_the_gap_task_is_against() -> None:
    out = llm_experiment.task_verdicts(table({"readout": FLAT}, {"readout": CTRL}))
    v = out["llm/readout"]
    assert v["decision"]["outcome"] == "equivalent"
    assert v["verdict"] == "against" and v["prediction_held"] is False
    assert v["consistent_with_paper"] == "no"


def test_a_verifier_that_does_not_verify_makes_it_inconclusive() -> None:
    out = llm_experiment.task_verdicts(table({"readout": UP}, {"readout": CTRL}, acc=0.6))
    v = out["llm/readout"]
    assert v["decision"]["outcome"] == "greater" and v["verdict"] == "inconclusive"
    assert "does not verify" in v["detail"] and not v["verifier_verifies"]


def test_a_positive_control_that_does_not_detect_makes_it_inconclusive() -> None:
    out = llm_experiment.task_verdicts(table({"readout": UP}, {"readout": FLAT}))
    v = out["llm/readout"]
    assert v["verdict"] == "inconclusive" and "positive control does not detect" in v["detail"]


def test_other_grid_cells_go_to_robustness_and_the_experiment_verdict() -> None:
    a = table({"readout": UP}, {"readout": CTRL}).assign(pairs_per_prompt=2)
    b = table({"readout": FLAT}, {"readout": CTRL}).assign(pairs_per_prompt=8)
    b["run_id"] = b["run_id"] + "-8"
    out = llm_experiment.task_verdicts(pd.concat([a, b], ignore_index=True))
    v = out["llm/readout"]
    assert v["setting"] == {"task": "readout", "pairs_per_prompt": 2}
    assert [r["setting"]["pairs_per_prompt"] for r in v["robustness"]] == [8]
    assert v["robustness"][0]["verdict"] == "against" and v["robust"] is False
    head = llm_experiment.verdict(a)
    assert head.verdict == "supported" and head.positive_control["effect"] > 0.1


def test_two_instance_blocks_in_one_table_are_two_cells_never_averaged(tmp_path) -> None:
    """A directory holding two instance blocks (a sweep ``--append``-ed with another block):
    each block is its own cell — its own verdict, seeds and effect —, the tables keep them
    apart, and the report and the stdout table show the second cell beside the first."""
    from gvgap.llm.report import markdown_table, robustness_rows
    from gvgap.llm.report import table as paper_table

    a = table({"readout": UP}, {"readout": CTRL})
    b = table({"readout": FLAT}, {"readout": CTRL}).assign(instance_seed=3)
    b["run_id"] = b["run_id"] + "-i3"
    out = llm_experiment.task_verdicts(pd.concat([a, b], ignore_index=True))
    v = out["llm/readout"]
    assert v["setting"] == {"task": "readout", "instance_seed": 1} and v["seeds"] == SEEDS
    assert v["effect"] == pytest.approx(np.mean(UP))  # not the mean of UP and FLAT
    (other,) = v["robustness"]
    assert other["setting"]["instance_seed"] == 3 and other["seeds"] == SEEDS
    assert other["effect"] == pytest.approx(np.mean(FLAT))
    assert other["positive_control"]["effect"] == pytest.approx(np.mean(CTRL))
    head, rows = robustness_rows(v["robustness"])
    assert head[4] == "global label acc." and rows[0][4] == "0.950"
    assert rows[0][0] == "task=readout, instance_seed=3"
    both = pd.concat([a, b], ignore_index=True)
    _, tab_rows = markdown_table(paper_table(both))
    assert len(tab_rows[0]) == 3  # pipeline + one column per instance block
    with pytest.raises(ValueError, match="several runs per seed"):
        llm_experiment.paired(both, "online_dpo_sft")  # outside a cell: refused, not averaged
    from gvgap.llm.report import section
    from gvgap.report_doc import Doc

    doc = Doc(tmp_path)
    section(doc, both, out, [])
    text = doc.to_markdown()
    assert "Other cells of llm/readout" in text and "task=readout, instance_seed=3" in text
