"""The verdict tests of gvgap.inference against hand-derived values."""

from __future__ import annotations

import numpy as np
import pytest

from gvgap.inference import (
    decide,
    decide_family,
    holm,
    hypothesis_verdict,
    robust_summary,
    signed_rank_p,
    tost_p,
    within_tolerance,
)


def test_holm_hand_values():
    # sorted p: 0.01·3 = 0.03; 0.03·2 = 0.06; 0.04·1 = 0.04 → running max 0.06.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = holm([0.5, np.nan])
    assert out[0] == 0.5 and np.isnan(out[1])  # NaN is not counted in m


def test_signed_rank_exact_all_positive():
    # All n differences positive: the signed-rank statistic is at its maximum, reached by one
    # of the 2^n equally likely sign patterns under H0, so the exact one-sided p is 2^-n.
    d = np.arange(1.0, 11.0)
    assert signed_rank_p(d, "greater") == pytest.approx(2.0**-10)
    assert signed_rank_p(-d, "less") == pytest.approx(2.0**-10)
    assert signed_rank_p(np.zeros(8), "greater") == 1.0


def test_tost_within_margin_exact():
    # |d_i| < δ with distinct d_i: d + δ is all positive and d − δ all negative, each with
    # distinct magnitudes (no ties), so both exact one-sided p-values are 2^-n.
    d = 1e-3 * np.arange(1, 21) - 0.0105
    assert tost_p(d, 0.1) == pytest.approx(2.0**-20)
    assert tost_p(np.zeros(20), 0.1) < 1e-4  # identical arms: equivalent (tied ranks, normal)
    with pytest.raises(ValueError):
        tost_p(np.zeros(5), 0.0)


def test_decide_returns_each_outcome():
    rng = np.random.default_rng(0)
    assert decide(1.0 + 0.1 * rng.standard_normal(20), margin=0.05).outcome == "greater"
    assert decide(-1.0 + 0.1 * rng.standard_normal(20), margin=0.05).outcome == "less"
    assert decide(1e-3 * rng.standard_normal(20), margin=0.05).outcome == "equivalent"
    assert decide(rng.standard_normal(6), margin=0.01).outcome == "undetermined"


def test_decide_family_holm_is_stricter_than_single():
    d = np.arange(1.0, 6.0)  # p = 2^-5 = 0.03125 alone: "greater" at α = 0.05
    assert decide(d, margin=0.01).outcome == "greater"
    fam = decide_family([d, d, d], margin=0.01)  # Holm: 3 · 0.03125 > 0.05 → undetermined
    assert [x.outcome for x in fam] == ["undetermined"] * 3


def test_robust_summary_trims():
    s = robust_summary([0, 1, 2, 3, 4, 5, 6, 7, 8, 1000])
    # trim 2 from each end: mean of 2..7 = 4.5; median (4+5)/2
    assert s["trimmed_mean"] == pytest.approx(4.5)
    assert s["median"] == pytest.approx(4.5)
    assert s["mean"] == pytest.approx(103.6)


@pytest.mark.parametrize(
    ("outcome", "predicted", "control", "expected"),
    [
        ("greater", "greater", True, ("supported", True)),
        ("equivalent", "greater", True, ("against", False)),
        ("less", "greater", True, ("against", False)),
        ("undetermined", "greater", True, ("inconclusive", False)),
        ("greater", "greater", False, ("inconclusive", True)),
        ("equivalent", "equivalent", True, ("supported", True)),
    ],
)
def test_hypothesis_verdict_table(outcome, predicted, control, expected):
    assert hypothesis_verdict(outcome, predicted=predicted, control_detects=control) == expected


# ---------------------------------------------------------------- power


def _normal_pilot(mean: float, sd: float = 1.0, k: int = 2000) -> np.ndarray:
    """k exact N(mean, sd²) quantiles: a pilot whose law is the normal itself."""
    from scipy.stats import norm

    return mean + sd * norm.ppf((np.arange(k) + 0.5) / k)


def test_power_matches_direct_simulation_of_the_normal_shift_model():
    # Reference: 20,000 direct N(0.5, 1) experiments of n = 27 seeds, one-sided signed-rank at
    # α = 0.05 reject in 0.789 (computed with scipy.stats.wilcoxon; the t-test's 0.81 times
    # the signed-rank's asymptotic relative efficiency 0.955 gives the same figure).
    from gvgap.inference import power

    p = power(_normal_pilot(0.5), 27, rng=np.random.default_rng(0))
    assert abs(p - 0.789) < 0.03


def test_power_at_zero_effect_is_the_size_of_the_test():
    from gvgap.inference import power

    p = power(_normal_pilot(0.0), 20, rng=np.random.default_rng(1))
    assert abs(p - 0.05) < 0.015
    q = power(_normal_pilot(0.0), 20, n_tests=5, rng=np.random.default_rng(1))
    assert abs(q - 0.01) < 0.006


def test_equivalence_power_rises_with_seeds_and_margin():
    from gvgap.inference import power

    pilot = _normal_pilot(0.3, 0.1)  # centred before simulating: power under no difference
    lo = power(pilot, 8, test="equivalent", margin=0.05, rng=np.random.default_rng(2))
    hi = power(pilot, 40, test="equivalent", margin=0.05, rng=np.random.default_rng(2))
    wide = power(pilot, 8, test="equivalent", margin=0.2, rng=np.random.default_rng(2))
    assert lo < hi and lo < wide and wide > 0.9


def test_seeds_for_power_is_the_smallest_grid_value_reaching_the_target():
    from gvgap.inference import SEED_GRID, power, seeds_for_power

    pilot = _normal_pilot(0.8)
    plan = seeds_for_power(pilot, seed=3)
    assert plan.reached and plan.power >= 0.8
    grid = [g for g in SEED_GRID if g < plan.seeds]
    assert power(pilot, grid[-1], rng=np.random.default_rng(3)) < 0.8
    # a Holm family of 6 cells needs more seeds; the plan is a pure function of its inputs
    assert seeds_for_power(pilot, n_tests=6, seed=3).seeds > plan.seeds
    assert seeds_for_power(pilot, seed=3) == plan
    # an effect too small for the grid is reported, not hidden
    weak = seeds_for_power(_normal_pilot(0.05), seed=3)
    assert not weak.reached and weak.seeds == 200 and weak.power < 0.8


def test_within_tolerance_is_the_identity_rule():
    """c1_gibbs and `gvgap verify` decide an exact identity by its largest error: within the
    tolerance (equality included) holds; one instance above, a NaN (an identity that could not
    be evaluated) or no instance at all does not."""
    assert within_tolerance([0.0, 1e-12, 1e-9], 1e-9) == (True, 1e-9)
    assert within_tolerance([0.0, 2e-9], 1e-9) == (False, 2e-9)
    held, worst = within_tolerance([0.0, float("nan")], 1e-9)
    assert not held and np.isnan(worst)
    held, worst = within_tolerance([], 1e-9)
    assert not held and np.isnan(worst)
