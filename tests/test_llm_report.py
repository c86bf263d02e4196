"""The llm table and paired differences on a hand-made tidy frame; the section renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gvgap.llm.report import differences, table, write_section


def frame() -> pd.DataFrame:
    rows = []
    # two seeds: dpo win 0.6 / 0.7, online 0.7 / 0.9 on "count"; one seed on "rouge"
    for task, seed, pipe, win in [
        ("count", 0, "dpo", 0.6), ("count", 1, "dpo", 0.7),
        ("count", 0, "online_dpo_sft", 0.7), ("count", 1, "online_dpo_sft", 0.9),
        ("rouge", 0, "dpo", 0.5), ("rouge", 0, "online_dpo_sft", 0.5),
        ("count", 0, "bon_global_n2", 0.55), ("count", 0, "bon_global_n4", 0.58),
    ]:  # fmt: skip
        rows.append([task, seed, pipe, "win_rate", win])
        rows.append([task, seed, pipe, "win_rate_se", 0.05])
    return pd.DataFrame(rows, columns=["task", "seed", "pipeline", "metric", "value"])


def test_table_se_over_seeds_or_prompts() -> None:
    tab = table(frame()).set_index(["pipeline", "task"])
    # seeds 0.6, 0.7: mean 0.65, s = 0.0707, SE = s/√2 = 0.05
    assert tab.loc[("dpo", "count"), "mean"] == pytest.approx(0.65)
    assert tab.loc[("dpo", "count"), "se"] == pytest.approx(0.05)
    assert tab.loc[("dpo", "count"), "se_kind"] == "seeds"
    # one seed: the within-run SE over prompts
    assert tab.loc[("dpo", "rouge"), "se"] == 0.05
    assert tab.loc[("dpo", "rouge"), "se_kind"] == "prompts"
    # best-of-N only at the largest N
    assert ("bon_global_n4", "count") in tab.index and ("bon_global_n2", "count") not in tab.index


def test_paired_differences() -> None:
    d = differences(frame()).set_index(["comparison", "task"])
    row = d.loc[("online_dpo_sft − dpo", "count")]
    # paired d = (0.1, 0.2): mean 0.15, SE = 0.0707/√2 = 0.05
    assert row["mean"] == pytest.approx(0.15) and row["se"] == pytest.approx(0.05)
    assert np.isnan(d.loc[("online_dpo_sft − dpo", "rouge"), "se"])


def test_write_section(tmp_path: Path) -> None:
    frame().to_parquet(tmp_path / "results.parquet")
    paths = write_section(tmp_path)
    assert all(p.is_file() for p in paths)
    md = (tmp_path / "report.md").read_text()
    assert "0.650 ± 0.050" in md and "online_dpo_sft − dpo" in md
