"""The tests behind every verdict: robust summaries, one-sided superiority, two-sided
equivalence (TOST), Holm's correction and the three-way decision rule.

Pure functions on arrays of *paired differences* d_i = a_i − b_i (one per seed, same pairs,
same instance), on ratio-free metrics (regret, KL(π‖π*), win rate). No global RNG.

Tests (named, as docs/design.md §3 asks):

- superiority: Wilcoxon signed-rank, one-sided, H0: the distribution of d is symmetric about
  a location ≤ 0 (``alternative="greater"``); zero differences split between the signs
  (``zero_method="zsplit"``) so exact ties count against the alternative;
- equivalence with margin δ > 0 (Schuirmann's two one-sided tests): H0 is |location| ≥ δ;
  p_TOST = max(p(d + δ > 0), p(d − δ < 0)), both Wilcoxon one-sided; equivalence is declared
  when p_TOST < α;
- Holm (1979) step-down adjustment over a family of m p-values:
  p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)) for the sorted p_(1) ≤ … ≤ p_(m).

Decision (:func:`decide`) for one cell, each p-value Holm-adjusted within its family by the
caller (``adjust``): ``greater`` if superiority holds and equivalence does not; ``less`` if
inferiority holds and equivalence does not; ``equivalent`` if TOST holds (a significant
difference smaller than δ is practically nil); ``undetermined`` otherwise. An exact identity
(no sampling error) has no test: it holds iff its largest error is within a tolerance
(:func:`within_tolerance`, the rule of c1_gibbs and of ``gvgap verify``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Significance level of every verdict test (family-wise, after Holm).
ALPHA = 0.05
#: Fraction trimmed from each end for the trimmed mean (20 %, Wilcox's default).
TRIM = 0.2
OUTCOMES = ("greater", "less", "equivalent", "undetermined")


def _finite(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _trim_mean(x: np.ndarray, proportion: float) -> float:
    from scipy.stats import trim_mean  # here, not at module top: ~0.3 s, verdict paths only

    return float(trim_mean(x, proportion))


def robust_summary(values: Any) -> dict[str, float]:
    """Mean, median and 20 % trimmed mean of the finite values, and their count ``n``.

    The trimmed mean drops ⌊0.2 n⌋ values from each end (:func:`scipy.stats.trim_mean`).
    """
    x = _finite(values)
    if x.size == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "trimmed_mean": nan, "n": 0}
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "trimmed_mean": float(_trim_mean(x, TRIM)),
        "n": int(x.size),
    }


def signed_rank_p(d: Any, alternative: str, shift: float = 0.0) -> float:
    """One-sided Wilcoxon signed-rank p-value of ``d + shift`` (``greater`` / ``less`` than 0).

    All-zero differences give p = 1 (no evidence either way); fewer than 2 values give NaN.
    """
    x = _finite(d) + shift
    if x.size < 2:
        return float("nan")
    if not np.any(x):
        return 1.0
    from scipy.stats import wilcoxon  # here, not at module top: ~0.3 s, verdict paths only

    res = wilcoxon(x, alternative=alternative, zero_method="zsplit")
    return float(res.pvalue)


def tost_p(d: Any, margin: float) -> float:
    """TOST p-value for |location of d| < ``margin`` (two one-sided signed-rank tests)."""
    if not margin > 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin}")
    return max(signed_rank_p(d, "greater", margin), signed_rank_p(d, "less", -margin))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order (NaN stays NaN, not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide` with the p-values it rests on (after adjustment)."""

    outcome: str
    p_greater: float
    p_less: float
    p_equivalent: float
    margin: float
    summary: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """A flat JSON record."""
        return {
            "outcome": self.outcome,
            "p_greater": self.p_greater,
            "p_less": self.p_less,
            "p_equivalent": self.p_equivalent,
            "margin": self.margin,
            **self.summary,
        }


def outcome_of(p_greater: float, p_less: float, p_equivalent: float, alpha: float) -> str:
    """The three-way rule of the module docstring on (already adjusted) p-values."""
    if p_equivalent < alpha:
        return "equivalent"
    if p_greater < alpha:
        return "greater"
    if p_less < alpha:
        return "less"
    return "undetermined"


def decide(d: Any, *, margin: float, alpha: float = ALPHA, n_family: int = 1) -> Decision:
    """Decide the sign of the location of paired differences ``d`` with margin δ.

    Args:
        d: paired differences, shape ``(n,)``; non-finite values dropped.
        margin: equivalence margin δ > 0, in the units of ``d``.
        alpha: family-wise level.
        n_family: number of cells tested together; p-values are Bonferroni-scaled by it
            (the first step of Holm; use :func:`decide_family` for the full step-down).
    """
    pg = signed_rank_p(d, "greater")
    pl = signed_rank_p(d, "less")
    pe = tost_p(d, margin)
    scale = float(n_family)
    pg, pl, pe = (min(1.0, scale * p) if np.isfinite(p) else p for p in (pg, pl, pe))
    return Decision(outcome_of(pg, pl, pe, alpha), pg, pl, pe, margin, robust_summary(d))


def decide_family(ds: Sequence[Any], *, margin: float, alpha: float = ALPHA) -> list[Decision]:
    """:func:`decide` for each cell of a family, every p-value Holm-adjusted across cells."""
    raw = [(signed_rank_p(d, "greater"), signed_rank_p(d, "less"), tost_p(d, margin)) for d in ds]
    cols = [holm([r[i] for r in raw]) for i in range(3)]
    return [
        Decision(
            outcome_of(cols[0][j], cols[1][j], cols[2][j], alpha),
            float(cols[0][j]),
            float(cols[1][j]),
            float(cols[2][j]),
            margin,
            robust_summary(d),
        )
        for j, d in enumerate(ds)
    ]


#: Tolerance of an exact identity: float64 round-off in closed forms on trees of ≤ 1e6 leaves
#: (``gvgap verify``'s identity checks and c1_gibbs).
IDENTITY_TOL = 1e-9


def within_tolerance(errors: Any, tolerance: float) -> tuple[bool, float]:
    """The rule of an exact identity, which has no sampling error and so no test: it holds iff
    the largest error over every instance is ≤ ``tolerance`` (one failing instance decides).

    Returns:
        ``(holds, worst)``; no instance: ``(False, nan)``.
    """
    errs = np.asarray(errors, dtype=np.float64).ravel()
    worst = float(np.max(errs)) if errs.size else float("nan")
    return bool(worst <= tolerance), worst


def hypothesis_verdict(outcome: str, *, predicted: str, control_detects: bool) -> tuple[str, bool]:
    """Map a test outcome to ``(verdict on the hypothesis, prediction_held)``.

    The hypothesis predicts ``predicted`` (one of :data:`OUTCOMES` but ``undetermined``). A
    test whose positive control does not detect its effect cannot decide: ``inconclusive``.
    Otherwise the hypothesis is ``supported`` when the outcome is the prediction, ``against``
    when it is another decided outcome, ``inconclusive`` when undetermined.
    """
    if predicted not in OUTCOMES[:3]:
        raise ValueError(f"predicted must be one of {OUTCOMES[:3]}, got {predicted!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    held = outcome == predicted
    if not control_detects or outcome == "undetermined":
        return "inconclusive", held
    return ("supported" if held else "against"), held


# ---------------------------------------------------------------- power (seeds per cell)

#: Power every verdict cell and robustness re-check is sized for.
TARGET_POWER = 0.8
#: Simulated replicate experiments per power estimate.
POWER_SIMS = 4000
#: Candidate seed counts, searched in order (the smallest reaching the target is taken).
SEED_GRID: tuple[int, ...] = (
    *range(5, 31),
    *range(32, 61, 2),
    *range(64, 101, 4),
    *range(110, 201, 10),
)
TESTS = ("greater", "less", "equivalent")


def _bandwidth(x: np.ndarray) -> float:
    """Silverman's rule h = 0.9 min(s, IQR/1.34) n^{-1/5} (0 for a constant sample)."""
    q75, q25 = np.percentile(x, [75, 25])
    spread = min(float(np.std(x, ddof=1)), float(q75 - q25) / 1.34) if x.size > 1 else 0.0
    if spread <= 0:
        spread = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return 0.9 * spread * x.size ** (-0.2)


def simulate_pilot(pilot: Any, n: int, n_sim: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_sim, n)`` replicate samples from the smoothed bootstrap of ``pilot``.

    d* = d_J + h ε with J uniform over the pilot's finite values, ε ~ N(0, 1) and Silverman's
    bandwidth h (:func:`_bandwidth`): the resampling law of the pilot, made continuous so the
    exact signed-rank null applies (a plain bootstrap repeats values and creates ties).
    """
    x = _finite(pilot)
    if x.size == 0:
        raise ValueError("the pilot has no finite paired differences")
    draw = x[rng.integers(x.size, size=(n_sim, n))]
    return draw + _bandwidth(x) * rng.standard_normal((n_sim, n))


def _p_one_sided(sims: np.ndarray, alternative: str, shift: float = 0.0) -> np.ndarray:
    """Row-wise one-sided signed-rank p-values of ``sims + shift`` (the test of
    :func:`signed_rank_p`, vectorised by :func:`scipy.stats.wilcoxon` over axis 1). Rows
    with tied or zero |values| (a near-constant pilot, values rounded into ties after the
    shift) use the normal approximation: scipy's default would run a permutation test per
    row, minutes and gigabytes for a few thousand rows."""
    from scipy.stats import wilcoxon

    x = sims + shift
    a = np.sort(np.abs(x), axis=1)
    tied = (a[:, 0] == 0) | np.any(a[:, 1:] == a[:, :-1], axis=1)
    out = np.empty(x.shape[0])
    for mask, method in ((~tied, "auto"), (tied, "asymptotic")):
        if mask.any():
            out[mask] = wilcoxon(
                x[mask], axis=1, alternative=alternative, zero_method="zsplit", method=method
            ).pvalue
    return out


def power(
    pilot: Any,
    n: int,
    *,
    test: str = "greater",
    margin: float | None = None,
    alpha: float = ALPHA,
    n_tests: int = 1,
    n_sim: int = POWER_SIMS,
    rng: np.random.Generator,
) -> float:
    """Power of the verdict test on ``n`` paired differences drawn like ``pilot``.

    The probability, over replicate experiments of n seeds (:func:`simulate_pilot`), that the
    test rejects at the Bonferroni level α / n_tests (Holm rejects at least what Bonferroni
    does, so the figure is a lower bound on the power inside a Holm family of ``n_tests``):

    - ``greater`` / ``less``: one-sided signed-rank p < α / n_tests, under the pilot's law
      (the positive control's effect, or the effect a cell is expected to show);
    - ``equivalent``: TOST with ``margin`` δ, p_TOST < α / n_tests, under the pilot's spread
      centred at 0 (power to declare "no difference" when there is none).

    Args:
        pilot: paired differences of a pilot block, shape ``(k,)``.
        n: seeds of the experiment whose power is computed.
        test: ``greater``, ``less`` or ``equivalent``.
        margin: δ > 0 for ``equivalent``.
        rng: drives the simulation (fixed seed → fixed figure).
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    level = alpha / max(int(n_tests), 1)
    sims = simulate_pilot(pilot, int(n), n_sim, rng)
    if test != "equivalent":
        return float(np.mean(_p_one_sided(sims, test) < level))
    if margin is None or not margin > 0:
        raise ValueError(f"equivalence power needs a margin > 0, got {margin}")
    sims = sims - _finite(pilot).mean()
    p = np.maximum(_p_one_sided(sims, "greater", margin), _p_one_sided(sims, "less", -margin))
    return float(np.mean(p < level))


@dataclass(frozen=True)
class SeedPlan:
    """Seeds chosen by :func:`seeds_for_power`: the smallest ``seeds`` in :data:`SEED_GRID`
    whose estimated ``power`` reaches ``target`` (``reached`` False: the grid's largest)."""

    seeds: int
    power: float
    target: float
    reached: bool
    test: str
    pilot_n: int
    pilot_mean: float

    def to_json(self) -> dict[str, Any]:
        """A flat JSON record."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def seeds_for_power(
    pilot: Any,
    *,
    test: str = "greater",
    margin: float | None = None,
    target: float = TARGET_POWER,
    alpha: float = ALPHA,
    n_tests: int = 1,
    grid: Sequence[int] = SEED_GRID,
    n_sim: int = POWER_SIMS,
    seed: int = 0,
) -> SeedPlan:
    """The fewest seeds in ``grid`` with :func:`power` ≥ ``target`` (bisection over the
    grid: power rises with n up to simulation noise; every estimate uses the generator
    ``default_rng(seed)`` afresh, so the plan is a pure function of its arguments)."""
    grid = sorted(int(g) for g in grid)

    def pw(n: int) -> float:
        return power(
            pilot,
            n,
            test=test,
            margin=margin,
            alpha=alpha,
            n_tests=n_tests,
            n_sim=n_sim,
            rng=np.random.default_rng(seed),
        )

    x = _finite(pilot)
    top = pw(grid[-1])
    if top < target:
        return SeedPlan(grid[-1], top, target, False, test, x.size, float(x.mean()))
    lo, hi, p_hi = 0, len(grid) - 1, top
    while lo < hi:
        mid = (lo + hi) // 2
        p_mid = pw(grid[mid])
        if p_mid >= target:
            hi, p_hi = mid, p_mid
        else:
            lo = mid + 1
    return SeedPlan(grid[hi], p_hi, target, True, test, x.size, float(x.mean()))
