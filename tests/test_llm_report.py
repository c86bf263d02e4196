"""The llm tables on a hand-made tidy frame (SEs over seeds or prompts, labellers, best-of-N),
the figures return axes, and the report section renders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gvgap.llm.report import (
    labeller_table,
    markdown_table,
    plot_bon,
    plot_frontier,
    plot_labellers,
    plot_table,
    section,
    table,
)


def frame() -> pd.DataFrame:
    rows = []
    # two seeds: dpo win 0.6 / 0.7, online 0.7 / 0.9 on "readout"; one seed on "rouge"
    for task, seed, pipe, metric, v in [
        ("readout", 0, "dpo", "win_rate", 0.6), ("readout", 1, "dpo", "win_rate", 0.7),
        ("readout", 0, "online_dpo_sft", "win_rate", 0.7),
        ("readout", 1, "online_dpo_sft", "win_rate", 0.9),
        ("rouge", 0, "dpo", "win_rate", 0.5), ("rouge", 0, "online_dpo_sft", "win_rate", 0.5),
        ("readout", 0, "bon_global_n2", "win_rate", 0.55),
        ("readout", 0, "bon_global_n4", "win_rate", 0.58),
        ("readout", 1, "bon_global_n2", "win_rate", 0.65),
        ("readout", 1, "bon_global_n4", "win_rate", 0.62),
        ("readout", 0, "rm_global", "val_likelihood", 0.8),
        ("readout", 1, "rm_global", "val_likelihood", 0.7),
        ("readout", 0, "rm_global", "label_accuracy", 1.0),
        ("readout", 1, "rm_global", "label_accuracy", 0.9),
        ("readout", 0, "online_dpo_sft", "win_rate_matched", 0.7),
        ("readout", 0, "online_dpo_sft", "offline_win_rate_matched", 0.6),
        ("readout", 0, "dpo", "frontier0_kl", 0.0), ("readout", 0, "dpo", "frontier1_kl", 2.0),
        ("readout", 0, "dpo", "frontier0_win_rate", 0.5),
        ("readout", 0, "dpo", "frontier1_win_rate", 0.6),
    ]:  # fmt: skip
        rows.append([task, seed, pipe, metric, v])
        rows.append([task, seed, pipe, f"{metric}_se", 0.05])
    return pd.DataFrame(rows, columns=["task", "seed", "pipeline", "metric", "value"])


def test_table_se_over_seeds_or_prompts() -> None:
    tab = table(frame()).set_index(["pipeline", "task"])
    # seeds 0.6, 0.7: mean 0.65, s = 0.0707, SE = s/√2 = 0.05
    assert tab.at[("dpo", "readout"), "mean"] == pytest.approx(0.65)
    assert tab.at[("dpo", "readout"), "se"] == pytest.approx(0.05)
    assert tab.at[("dpo", "readout"), "se_kind"] == "seeds"
    # one seed: the within-run SE over prompts
    assert tab.at[("dpo", "rouge"), "se"] == pytest.approx(0.05)
    assert tab.at[("dpo", "rouge"), "se_kind"] == "prompts"
    # best-of-N at the largest N only: (0.58 + 0.62) / 2
    assert tab.at[("bon_global_n4", "readout"), "mean"] == pytest.approx(0.60)
    assert ("bon_global_n2", "readout") not in tab.index
    header, rows = markdown_table(table(frame()))
    assert header == ["pipeline", "readout", "rouge"]
    assert rows[0] == ["dpo", "0.650 ± 0.050", "0.500 ± 0.050"]


def test_labeller_table_means_and_se_over_seeds() -> None:
    lab = labeller_table(frame()).set_index(["task", "labeller"])
    assert lab.at[("readout", "global"), "val_likelihood"] == pytest.approx(0.75)
    assert lab.at[("readout", "global"), "val_likelihood_se"] == pytest.approx(0.05)
    assert lab.at[("readout", "global"), "label_accuracy"] == pytest.approx(0.95)
    assert np.isnan(lab.at[("readout", "local"), "val_likelihood"])  # absent, not invented


def test_plots_return_axes_and_section_renders(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from gvgap.report_doc import Doc

    df = frame()
    for draw in (plot_table, plot_labellers):
        ax = Figure().add_subplot()
        assert draw(df, ax) is ax
    ax = Figure().add_subplot()
    assert plot_bon(df, ax, task="readout") is ax
    assert [list(line.get_xdata()) for line in ax.get_lines()][:1] == [[2, 4]]
    ax = Figure().add_subplot()
    assert plot_frontier(df, ax, task="readout") is ax
    assert list(ax.get_lines()[0].get_xdata()) == [0.0, 2.0]
    doc = Doc(tmp_path)
    verdicts = {"llm/readout": {"verdict": "supported", "effect": 0.1, "ci_low": 0.05,
                                "ci_high": 0.15, "positive_control": {"effect": 0.2},
                                "seeds": 2, "power": 0.5, "detail": "d"}}  # fmt: skip
    section(doc, df, verdicts, [])
    text = doc.to_markdown()
    assert "LLM-scale pipeline" in text and "0.650 ± 0.050" in text
    assert "llm/readout: supported" in text and "0.750 ± 0.050" in text


def test_section_renders_a_verdict_with_null_fields(tmp_path) -> None:
    """`gvgap report` on a `reproduce --quick` directory: the llm record has no power plan
    (``"power": null``) and no positive-control CI; the section prints nan, not a traceback."""
    from gvgap.report_doc import Doc

    doc = Doc(tmp_path)
    verdicts = {"llm": {"verdict": "inconclusive", "effect": -0.02, "ci_low": None,
                        "ci_high": -0.003, "positive_control": None, "seeds": 2,
                        "power": None, "detail": "d"}}  # fmt: skip
    section(doc, frame(), verdicts, [])
    text = doc.to_markdown()
    assert "llm: inconclusive" in text and "power nan" in text and "[+nan, -0.0030]" in text


def test_a_grid_axis_besides_task_is_shown_never_averaged() -> None:
    """A `pairs_per_prompt` axis: each (task, pairs) cell is its own row, in numeric order (2
    before 16), with its own mean; the plots take every cell."""
    from gvgap.llm.report import per_seed, tasks_of, with_cells

    a = frame().assign(pairs_per_prompt=16)
    b = frame().assign(pairs_per_prompt=2)
    b.loc[b.metric == "win_rate", "value"] += 0.1  # dpo on readout at 2 pairs: 0.7, 0.8
    df = pd.concat([a, b], ignore_index=True)
    cells = tasks_of(df)
    assert cells == [
        "readout · pairs_per_prompt=2", "readout · pairs_per_prompt=16",
        "rouge · pairs_per_prompt=2", "rouge · pairs_per_prompt=16",
    ]  # fmt: skip
    tab = table(df).set_index(["pipeline", "task"])
    assert tab.at[("dpo", "readout · pairs_per_prompt=16"), "mean"] == pytest.approx(0.65)
    assert tab.at[("dpo", "readout · pairs_per_prompt=2"), "mean"] == pytest.approx(0.75)
    assert with_cells(with_cells(df)).equals(with_cells(df))
    with pytest.raises(ValueError, match="several runs per seed"):
        per_seed(df.assign(pairs_per_prompt=2), "dpo", "win_rate", "readout")
    assert len(plot_table(df).patches) == 4 * len(set(tab.index.get_level_values(0)))
    import matplotlib.pyplot as plt

    for cell in cells[:2]:
        plot_bon(df, task=cell)
        plot_frontier(df, task=cell)
    labels = plot_labellers(df).get_legend().get_texts()
    assert {t.get_text() for t in labels} >= set(cells)  # one colour per cell
    plt.close("all")


def test_config_cells_label_runs_like_result_rows() -> None:
    """Scripts holding runs (configs and instance blocks) get the labels of the result rows."""
    import dataclasses

    from gvgap.llm.config import LLMConfig
    from gvgap.llm.report import config_cells

    a = LLMConfig(task="readout", pairs_per_prompt=1)
    b = dataclasses.replace(a, pairs_per_prompt=8)
    assert config_cells([a, b, b], [1, 1, 3]) == [
        "readout · pairs_per_prompt=1 · instance_seed=1",
        "readout · pairs_per_prompt=8 · instance_seed=1",
        "readout · pairs_per_prompt=8 · instance_seed=3",
    ]
    assert config_cells([a, a], [1, 1]) == ["readout", "readout"]
