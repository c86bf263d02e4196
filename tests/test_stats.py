"""gvgap.stats against hand-computed values, degenerate samples and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gvgap import stats


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- probability of improvement


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # pairs (1,2)(1,2) → 0, 0; (2,2)(2,2) → ½, ½ (ties); (3,2)(3,2) → 1, 1: total 3 / 6.
        ([1, 2, 3], [2, 2], 0.5),
        # (3,1) → 1, (3,3) → ½, twice: (1 + ½ + 1 + ½) / 4.
        ([3, 3], [1, 3], 0.75),
        # every a beats every b.
        ([5, 6], [1, 2, 3], 1.0),
        # all ties: ½.
        ([2, 2], [2], 0.5),
        # (0,1)→0, (0,−1)→1, (2,1)→1, (2,−1)→1: 3 / 4.
        ([0, 2], [1, -1], 0.75),
    ],
)
def test_prob_improvement_hand_values(a: list, b: list, expected: float) -> None:
    assert stats.prob_improvement(a, b) == pytest.approx(expected)


def test_prob_improvement_symmetry_and_empty() -> None:
    a, b = rng(1).normal(size=7), rng(2).normal(size=5)
    assert stats.prob_improvement(a, b) + stats.prob_improvement(b, a) == pytest.approx(1.0)
    assert np.isnan(stats.prob_improvement([], [1.0]))
    assert stats.prob_improvement([1.0, np.nan], [0.0]) == 1.0  # non-finite values dropped


def test_prob_improvement_ci_contains_estimate_and_is_deterministic() -> None:
    a, b = rng(3).normal(0.5, 1, 12), rng(4).normal(0, 1, 12)
    p, lo, hi = stats.prob_improvement_ci(a, b, rng=rng(0), n_resamples=999)
    assert lo <= p <= hi
    assert lo >= 0 and hi <= 1
    assert stats.prob_improvement_ci(a, b, rng=rng(0), n_resamples=999) == (p, lo, hi)
    assert stats.prob_improvement_ci([1.0, 1.0], [1.0, 1.0], rng=rng(0)) == (0.5, 0.5, 0.5)
    assert np.isnan(stats.prob_improvement_ci([1.0], [0.0], rng=rng(0))[1])


# ---------------------------------------------------------------- mean and CI


def test_mean_ci_contains_mean_and_is_deterministic() -> None:
    x = rng(5).normal(2.0, 1.0, 30)
    m, lo, hi = stats.mean_ci(x, rng=rng(0), n_resamples=999)
    assert m == pytest.approx(x.mean())
    assert lo < m < hi
    assert stats.mean_ci(x, rng=rng(0), n_resamples=999) == (m, lo, hi)
    # the interval is about ±1.96 s/√n wide
    assert hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(30), rel=0.3)


def test_mean_ci_degenerate_samples() -> None:
    assert all(np.isnan(v) for v in stats.mean_ci([], rng=rng()))
    m, lo, hi = stats.mean_ci([3.0], rng=rng())
    assert m == 3.0 and np.isnan(lo) and np.isnan(hi)
    assert stats.mean_ci([2.0, 2.0, 2.0], rng=rng()) == (2.0, 2.0, 2.0)
    assert stats.mean_ci([1.0, np.nan, 3.0, np.inf], rng=rng())[0] == 2.0


def test_mean_ci_two_values() -> None:
    m, lo, hi = stats.mean_ci([0.0, 1.0], rng=rng(), n_resamples=500)
    assert m == 0.5 and 0.0 <= lo <= m <= hi <= 1.0


def test_summarize_groups() -> None:
    df = pd.DataFrame({"g": ["a", "a", "a", "b", "b"], "value": [1.0, 2.0, 3.0, 5.0, 5.0]})
    out = stats.summarize(df, ["g"], rng=rng(), n_resamples=500)
    assert list(out.columns) == ["g", "mean", "ci_low", "ci_high", "n"]
    assert out["mean"].tolist() == [2.0, 5.0]
    assert out["n"].tolist() == [3, 2]
    assert out.loc[1, "ci_low"] == out.loc[1, "ci_high"] == 5.0
    pooled = stats.summarize(df, [], rng=rng(), n_resamples=500)
    assert len(pooled) == 1 and pooled.loc[0, "mean"] == pytest.approx(3.2)


# ---------------------------------------------------------------- paired differences


def tiny_frame() -> pd.DataFrame:
    """Two settings (horizon 1, 2) × 3 seeds, pipelines dpo/rlhf, one metric J.

    horizon 1: rlhf − dpo = 1, 2, 3 for seeds 0, 1, 2 (mean 2);
    horizon 2: rlhf = dpo exactly (differences 0); seed 2 of horizon 2 lacks rlhf.
    A column of another experiment's field is all NaN; rows are shuffled, so pairing must
    use the keys, not the row order.
    """
    rows = []
    dpo = {0: 10.0, 1: 20.0, 2: 30.0}
    for h in (1, 2):
        for s in (0, 1, 2):
            base = {
                "run_id": f"h{h}s{s}",
                "experiment": "x",
                "horizon": h,
                "other": np.nan,
                "seed": s,
                "instance_seed": 100 + s,
                "metric": "J",
            }
            rows.append({**base, "pipeline": "dpo", "value": dpo[s]})
            if h == 1:
                rows.append({**base, "pipeline": "rlhf", "value": dpo[s] + s + 1})
            elif s < 2:
                rows.append({**base, "pipeline": "rlhf", "value": dpo[s]})
            rows.append({**base, "pipeline": "", "metric": "log_gap", "value": 0.1 * h})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_paired_difference_hand_frame() -> None:
    out = stats.paired_difference(
        tiny_frame(),
        metric="J",
        a_pipeline="rlhf",
        b_pipeline="dpo",
        by=["horizon"],
        rng=rng(),
        n_resamples=999,
    )
    assert list(out.columns) == ["horizon", *stats.PAIRED_COLUMNS]
    h1, h2 = out.iloc[0], out.iloc[1]
    assert h1["horizon"] == 1 and h1["mean"] == pytest.approx(2.0) and h1["n"] == 3
    assert h1["ci_low"] <= 2.0 <= h1["ci_high"]
    assert h1["ci_low"] >= 1.0 and h1["ci_high"] <= 3.0
    assert h1["mean_a"] == pytest.approx(22.0) and h1["mean_b"] == pytest.approx(20.0)
    # P(rlhf > dpo), rlhf = (11, 22, 33), dpo = (10, 20, 30): 11 beats 10 only; 22 beats
    # 10, 20; 33 beats all three → (1 + 2 + 3) / 9.
    assert h1["p_improve"] == pytest.approx(6 / 9)
    # horizon 2: two pairs (seed 2 has no rlhf), all differences 0 → degenerate CI at 0;
    # values (10, 20) vs (10, 20): ties ½ twice, 20 > 10 once → (½ + 0 + 1 + ½) / 4.
    assert h2["n"] == 2 and h2["mean"] == 0.0 and h2["ci_low"] == h2["ci_high"] == 0.0
    assert h2["p_improve"] == pytest.approx(0.5)


def test_paired_difference_deterministic_and_pooled() -> None:
    df = tiny_frame()
    kw = {"metric": "J", "a_pipeline": "rlhf", "b_pipeline": "dpo", "n_resamples": 500}
    a = stats.paired_difference(df, by=["horizon"], rng=rng(7), **kw)
    b = stats.paired_difference(df, by=["horizon"], rng=rng(7), **kw)
    pd.testing.assert_frame_equal(a, b)
    pooled = stats.paired_difference(df, by=[], rng=rng(7), **kw)
    assert len(pooled) == 1 and pooled.loc[0, "n"] == 5
    assert pooled.loc[0, "mean"] == pytest.approx((1 + 2 + 3) / 5)


def test_paired_difference_empty_and_bad_by() -> None:
    df = tiny_frame()
    out = stats.paired_difference(
        df, metric="J", a_pipeline="ipo", b_pipeline="dpo", by=["horizon"], rng=rng()
    )
    assert out.empty and "mean" in out.columns
    with pytest.raises(ValueError, match="nope"):
        stats.paired_difference(
            df, metric="J", a_pipeline="rlhf", b_pipeline="dpo", by=["nope"], rng=rng()
        )


def test_pair_runs_key_excludes_run_id() -> None:
    df = tiny_frame()
    df.loc[df["pipeline"] == "rlhf", "run_id"] += "-other"  # pipelines from separate runs
    pairs = stats.pair_runs(df, metric="J", a_pipeline="rlhf", b_pipeline="dpo")
    assert len(pairs) == 5
    assert sorted(pairs["diff"].tolist()) == [0.0, 0.0, 1.0, 2.0, 3.0]


def test_with_column_errors() -> None:
    df = tiny_frame()
    with pytest.raises(ValueError, match="nothing"):
        stats.with_column(df, "nothing")
    assert "log_gap" in stats.with_column(df, "log_gap").columns
    assert stats.has_column(df, "log_gap") and not stats.has_column(df, "nothing")


def test_at_cell_is_the_one_rows_at_a_cell_rule():
    """Issue 19 (rows-at-a-cell three times): equality per column, any of a list, NaN matches
    NaN (h6's cells group with dropna=False), fields the table lacks are ignored; ``select``
    is the same rule on bare metrics too."""
    df = pd.DataFrame(
        {
            "run_id": [0, 1, 2, 3],
            "vocab": [2, 3, 3, 3],
            "cell": ["a", "a", None, "b"],
            "pipeline": ["", "", "", ""],
            "metric": ["gap", "gap", "gap", "gap"],
            "value": [0.5, 1.5, 2.5, 3.5],
        }
    )
    assert stats.at_cell(df, {"vocab": 3, "absent": 9})["run_id"].tolist() == [1, 2, 3]
    assert stats.at_cell(df, {"vocab": [2, 3], "cell": "a"})["run_id"].tolist() == [0, 1]
    assert stats.at_cell(df, {"cell": float("nan")})["run_id"].tolist() == [2]
    assert stats.select(df, {"gap": [1.5, 3.5], "vocab": 3})["run_id"].tolist() == [1, 3]
