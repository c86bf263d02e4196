"""The verdict rule shared by H1–H5: a test contrast, a positive control, one decision.

Every hypothesis experiment names, as constants fixed before reading results, a headline
cell (Config values), a *test* contrast a − b on a ratio-free metric (J, i.e. regret
J(π*) − J(π) with the sign flipped; KL(π‖π*); win rate; accuracies) with the outcome the
hypothesis predicts (``greater`` / ``less`` / ``equivalent``) and an equivalence margin δ,
and a *positive control* contrast with the outcome that shows the test can detect the effect
it looks for. The rule (:func:`hypothesis_record`):

1. per cell of the table, the paired differences d_i (same seed, instance and Config) of the
   test contrast (a table holding one cell other than the headline — a robustness re-check
   of ``gvgap reproduce`` — is read at that cell); :func:`gvgap.inference.decide_family`
   decides every cell with Holm's correction across the cells present, and the headline
   cell's decision is read;
2. the positive control at the headline cell is decided on its own (:func:`decide`); it
   *detects* when its outcome is the expected one and its bootstrap 95% CI excludes 0;
3. :func:`gvgap.inference.hypothesis_verdict` maps (outcome, prediction, control) to the
   verdict on the hypothesis and whether the prediction held.

The effect and CI of the Verdict are the headline test contrast's mean paired difference
with its bootstrap CI; the detail carries the robust summaries and the p-values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gvgap.experiments.base import Verdict
from gvgap.inference import decide, decide_family, hypothesis_verdict

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd


@dataclass(frozen=True)
class Contrast:
    """Paired difference ``a − b`` of ``metric`` (pipelines of the tidy table)."""

    label: str
    a: str
    b: str
    metric: str = "J"


def headline_rows(df: pd.DataFrame, headline: dict) -> pd.DataFrame:
    """The rows a figure shows: the headline cell's, or, on a table of one other setting (a
    robustness re-check, where the headline's values were overridden), all rows: the same
    rule as :func:`hypothesis_record`, so a re-check's figure is not silently empty."""
    from gvgap.stats import at_cell

    rows = at_cell(df, headline)
    keys = [k for k in headline if k in df.columns]
    if rows.empty and keys and len(df.drop_duplicates(keys)) == 1:
        return df
    return rows


def paired(df: pd.DataFrame, c: Contrast) -> np.ndarray:
    """The paired differences a_i − b_i of ``c`` over the runs of ``df`` (finite only)."""
    from gvgap.stats import paired_diffs

    return paired_diffs(df, c.a, c.b, c.metric)


def mean_ci(d: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% bootstrap CI (``stats.mean_ci``, fixed seed 0); NaNs when < 2 values."""
    from gvgap.stats import mean_ci as _mean_ci

    if d.size < 2:
        nan = float("nan")
        return (float(d.mean()) if d.size else nan), nan, nan
    return tuple(float(v) for v in _mean_ci(d, rng=np.random.default_rng(0)))


def ci_str(d: np.ndarray) -> str:
    """``mean [lo, hi]`` of paired differences."""
    m, lo, hi = mean_ci(d)
    return f"{m:+.3g} [{lo:+.3g}, {hi:+.3g}]"


def cells_of(df: pd.DataFrame, by: list[str]) -> list[dict]:
    """The distinct settings of the columns ``by`` present in the table."""
    by = [b for b in by if b in df.columns]
    if not by:
        return [{}]
    rows = df[by].drop_duplicates().sort_values(by)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in zip(by, r)}
        for r in rows.itertuples(index=False)
    ]


def detects(d: np.ndarray, expected: str, margin: float) -> tuple[bool, str]:
    """Whether a control contrast shows its expected outcome: ``greater``, ``less`` or
    ``differ`` (either sign) with its bootstrap 95% CI excluding 0, or ``equivalent`` (TOST
    within ``margin``: an isomorphic control)."""
    dec = decide(d, margin=margin)
    if expected == "equivalent":
        return dec.outcome == "equivalent", dec.outcome
    _, lo, hi = mean_ci(d)
    want = ("greater", "less") if expected == "differ" else (expected,)
    excl = {"greater": lo > 0, "less": hi < 0}.get(dec.outcome, False)
    return bool(dec.outcome in want and excl), dec.outcome


def hypothesis_record(
    df: pd.DataFrame,
    *,
    claim: str,
    hypothesis: str,
    prediction: str,
    predicted: str,
    test: Contrast,
    margin: float,
    control: Contrast,
    control_expected: str,
    control_margin: float,
    headline: dict,
    by: list[str],
    reported: Sequence[Contrast] = (),
    extra: str | Callable[[pd.DataFrame], str] = "",
    more_controls: Sequence[tuple[Contrast, str]] = (),
) -> Verdict:
    """The H1–H5 verdict (module docstring) from the tidy table ``df``.

    ``reported`` contrasts (not evidence) and ``extra`` (a string, or a function of the
    headline cell's rows) are read in the same cell as the decision and appended to the
    detail. ``more_controls``: further (contrast, expected outcome) pairs at the headline
    cell (:func:`detects`, margin ``control_margin``) that must all hold with the positive
    control for the test to decide (e.g. an isomorphic control expected ``equivalent``)."""
    from gvgap.stats import at_cell

    cells = cells_of(df, by)
    keys = [{k: v for k, v in headline.items() if k in c} for c in cells]
    head_idx = [i for i, c in enumerate(cells) if all(c[k] == v for k, v in keys[i].items())]
    if not head_idx and len(cells) == 1:  # one other setting (a robustness re-check): read it
        headline, head_idx = {k: v for k, v in cells[0].items()}, [0]
    if head_idx:  # read the effect, control and n in the decided cell only (every ``by`` key)
        headline = {**headline, **cells[head_idx[0]]}
    head = at_cell(df, headline)
    d_head = paired(head, test)
    if not head_idx or d_head.size < 2:
        nan = float("nan")
        return Verdict(
            claim,
            "inconclusive",
            nan,
            nan,
            nan,
            0,
            f"headline cell {headline} has fewer than 2 paired {test.label} runs",
            hypothesis=hypothesis,
        )
    ds = [paired(at_cell(df, c), test) for c in cells]
    decisions = decide_family(ds, margin=margin)
    dec = decisions[head_idx[0]]
    d_ctrl = paired(head, control)
    ok, ctrl_outcome = detects(d_ctrl, control_expected, control_margin)
    pos_ok, more = ok, []
    for c, expected in more_controls:
        held_c, outcome_c = detects(paired(head, c), expected, control_margin)
        ok = ok and held_c
        fails = "" if held_c else " — does NOT hold, so the test cannot decide"
        more.append(
            f" Control {c.label} ({c.metric}): {ci_str(paired(head, c))}, {outcome_c} "
            f"(expected {expected}){fails}."
        )
    verdict, held = hypothesis_verdict(dec.outcome, predicted=predicted, control_detects=ok)
    m, lo, hi = mean_ci(d_head)
    cm, clo, chi = mean_ci(d_ctrl)
    s = dec.summary
    notes = [extra(head) if callable(extra) else extra]
    if reported:
        notes.append(f"Reported (not evidence): {contrast_lines(head, list(reported))}.")
    extra = " ".join(n for n in notes if n)
    detail = (
        f"hypothesis: {hypothesis} Prediction: {prediction} Test {test.label} "
        f"({test.metric}, headline {headline}"
        + (f" (first of {len(head_idx)} matching cells)" if len(head_idx) > 1 else "")
        + f", {len(cells)} cell(s), Holm): {dec.outcome}, "
        f"median {s['median']:+.3g}, trimmed mean {s['trimmed_mean']:+.3g}, "
        f"p> {dec.p_greater:.2g}, p< {dec.p_less:.2g}, p_TOST(δ={margin:g}) "
        f"{dec.p_equivalent:.2g}. Positive control {control.label} ({control.metric}): "
        f"{cm:+.3g} [{clo:+.3g}, {chi:+.3g}], {ctrl_outcome}"
        f"{'' if pos_ok else ' — does NOT detect, so the test cannot decide'}."
        + "".join(more)
        + (f" {extra}" if extra else "")
    )
    return Verdict(
        claim,
        verdict,
        m,
        lo,
        hi,
        int(head["run_id"].nunique()) if "run_id" in head.columns else int(d_head.size),
        detail,
        hypothesis=hypothesis,
        prediction_held=held,
        positive_control={"effect": cm, "ci_low": clo, "ci_high": chi},
    )


def module_verdict(
    module,
    df: pd.DataFrame,
    *,
    predicted: str,
    control_expected: str,
    by: list[str],
    headline: dict | None = None,
    extra: str | Callable[[pd.DataFrame], str] = "",
) -> Verdict:
    """:func:`hypothesis_record` with a hypothesis module's constants (CLAIM, HYPOTHESIS,
    PREDICTION, TEST, CONTROL, MARGIN for both contrasts, HEADLINE unless ``headline`` is
    given, REPORTED)."""
    return hypothesis_record(
        df,
        claim=module.CLAIM,
        hypothesis=module.HYPOTHESIS,
        prediction=module.PREDICTION,
        predicted=predicted,
        test=module.TEST,
        margin=module.MARGIN,
        control=module.CONTROL,
        control_expected=control_expected,
        control_margin=module.MARGIN,
        headline=module.HEADLINE if headline is None else headline,
        by=by,
        reported=module.REPORTED,
        extra=extra,
        more_controls=getattr(module, "MORE_CONTROLS", ()),
    )


def contrast_lines(df: pd.DataFrame, contrasts: list[Contrast]) -> str:
    """``label metric: mean [lo, hi]`` for each contrast present (the verdict's detail)."""
    parts = []
    for c in contrasts:
        d = paired(df, c)
        if d.size >= 2:
            parts.append(f"{c.label} ({c.metric}) {ci_str(d)}")
    return "; ".join(parts)


def synthetic_table(
    diffs: dict[str, np.ndarray], *, metric: str = "J", base: str = "base", cell: dict
) -> pd.DataFrame:
    """A tidy table with pipeline ``base`` at 0 and each pipeline of ``diffs`` at ``d_i``
    per seed i, at Config values ``cell`` (for the verdict-rule unit tests)."""
    import pandas as pd

    rows = []
    n = len(next(iter(diffs.values())))
    for i in range(n):
        rows.append({"run_id": i, "seed": i, "pipeline": base, "metric": metric, "value": 0.0})
        for p, d in diffs.items():
            rows.append({"run_id": i, "seed": i, "pipeline": p, "metric": metric, "value": d[i]})
    return pd.DataFrame(rows).assign(instance_seed=0, **cell)


def metric_rows(name: str, env, res) -> dict[str, float]:
    """The shared metrics of ``res`` (``common.metric_row``) plus ``regret`` = J(π*) − J(π)."""
    from gvgap.experiments.common import metric_row

    out = metric_row(name, env, res)
    out[f"{name}/regret"] = float(env.j_star - out[f"{name}/J"])
    return out


# ---------------------------------------------------------------- seed blocks and power

#: Instance-seed blocks of H1–H5 (the instance seed of a run is its seed). DEV: every sweep
#: run while the designs were developed (seeds from 0). PILOT: the power pilot of each
#: experiment. CONFIRM: the confirmatory sweep of ``gvgap reproduce`` and its re-checks, first
#: run after the rules, cells, margins and the power plan below were fixed (issue 17).
DEV_BLOCK = 0
PILOT_BLOCK = 5_000_000
CONFIRM_BLOCK = 6_000_000
#: Seeds of the pilot block.
PILOT_SEEDS = 12
#: Bounds of the planned seed count. At least 20: the verdict rests on percentile-bootstrap
#: intervals of means of right-skewed paired differences and on signed-rank tests Holm-
#: adjusted across cells, both unreliable with fewer runs (a dry run on the development
#: block with 10 seeds left four of five tests undetermined although each control detected;
#: the test's own power is reported in the plan). At most 40 (what ``gvgap reproduce
#: --quick`` affords on two cores); the power reached is reported either way.
SEED_BOUNDS = (20, 40)


def quick_sweep(headline: dict, seeds: int = 20, grid: dict | None = None) -> dict:
    """The confirmatory sweep of an H1–H5 experiment (its ``QUICK``): the headline cell (and
    ``grid``) with k = 3 and the short λ grid, on :data:`CONFIRM_BLOCK`; ``gvgap reproduce``
    replaces ``seeds`` by the power plan's."""
    return {
        "seeds": seeds,
        "seed_start": CONFIRM_BLOCK,
        "fixed": {**headline, "k": 3, "lam_grid": "short"},
        "grid": dict(grid or {}),
    }


def pilot_sweep(quick: dict) -> dict:
    """The power pilot of a hypothesis experiment: its QUICK sweep (the headline cell and its
    grid) with :data:`PILOT_SEEDS` seeds on :data:`PILOT_BLOCK`."""
    return {**quick, "seeds": PILOT_SEEDS, "seed_start": PILOT_BLOCK}


#: Dirichlet concentrations of the peaked-π_ref re-checks (smaller = more peaked).
ROBUST_CONCENTRATIONS = (0.1, 0.3, 1.0)
#: β values of the re-checks besides the default β = 1.
ROBUST_BETAS = (0.1, 3.0)
#: Prompts of the per-prompt-reward re-check.
ROBUST_PROMPTS = 2


def robustness(*vocab_horizon: tuple[int, int], per_prompt: bool = False) -> list[dict]:
    """The standard verdict re-checks (``ROBUSTNESS``): each other (V, H); a random π_ref at
    each of :data:`ROBUST_CONCENTRATIONS`; each β in :data:`ROBUST_BETAS`; with
    ``per_prompt`` (families linear / misspec / planning with sum_mod only), m =
    :data:`ROBUST_PROMPTS` prompts with their own reward weights (targets)."""
    out = [
        *({"vocab": v, "horizon": h} for v, h in vocab_horizon),
        *({"ref": "random", "ref_concentration": c} for c in ROBUST_CONCENTRATIONS),
        *({"beta": b} for b in ROBUST_BETAS),
    ]
    if per_prompt:
        out.append({"n_prompts": ROBUST_PROMPTS, "per_prompt_weights": True})
    return out


#: The full sweep of H1, H2, H3 and H5 (:func:`sweeps`): fixed fields and grid.
SETTINGS_FIXED = {"vocab": 3, "k": 3}
SETTINGS_GRID = {"horizon": [3, 4], "n_pairs": [16, 64, 256]}


def sweeps(
    headline: dict,
    *,
    fixed: dict = SETTINGS_FIXED,
    grid: dict = SETTINGS_GRID,
    quick_grid: dict | None = None,
    robust: tuple[tuple[int, int], ...] = ((4, 3),),
    robust_fixed: dict | None = None,
) -> tuple[dict, dict, dict, list[dict]]:
    """``(SETTINGS, QUICK, PILOT, ROBUSTNESS)`` of an H1–H5 experiment from its headline cell:

    - SETTINGS: the full sweep, ``fixed`` and ``grid``, 20 seeds on :data:`CONFIRM_BLOCK`;
    - QUICK: the confirmatory sweep of ``gvgap reproduce --quick`` (:func:`quick_sweep`: the
      headline, less the fields ``quick_grid`` sweeps, and ``quick_grid``; its seeds are
      replaced by the power plan's);
    - PILOT: its power pilot on its own seed block (:func:`pilot_sweep`);
    - ROBUSTNESS: the standard re-checks (:func:`robustness` at the other (V, H) of
      ``robust``), each with ``robust_fixed`` set too.
    """
    quick_grid = dict(quick_grid or {})
    quick = quick_sweep({k: v for k, v in headline.items() if k not in quick_grid}, grid=quick_grid)
    grid = {k: list(v) for k, v in grid.items()}
    settings = {"seeds": 20, "seed_start": CONFIRM_BLOCK, "fixed": dict(fixed), "grid": grid}
    checks = [{**o, **(robust_fixed or {})} for o in robustness(*robust)]
    return settings, quick, pilot_sweep(quick), checks


def plan_seeds(module, pilot: pd.DataFrame) -> dict:
    """Seeds of the confirmatory sweep and of every re-check, from the pilot block.

    The positive control (``module.CONTROL``, expected ``module.CONTROL_EXPECTED``) is decided
    alone at the headline cell, in the main sweep and in each re-check alike; the seeds are
    the fewest of :data:`gvgap.inference.SEED_GRID` at which its one-sided signed-rank test
    reaches 80 % power at the pilot's effect (:func:`gvgap.inference.seeds_for_power`,
    smoothed bootstrap of the pilot's paired differences), clipped to :data:`SEED_BOUNDS`.
    The re-checks get the same seeds and so the same power (the power is computed at the
    headline's pilot effect: a re-check's own effect is not known before it runs). Reported
    in ``parts``, not used for the choice: the power of the test itself at those seeds —
    to show the predicted outcome at the pilot's effect, and to declare equivalence (TOST,
    ``module.MARGIN``, Holm across the QUICK cells) were the effect 0 with the pilot's spread.

    Returns:
        ``{"seeds", "power", "robust_seeds", "robust_power", "parts"}``.
    """
    from gvgap import inference

    head = headline_rows(pilot, getattr(module, "HEAD_CELL", module.HEADLINE))
    d_ctrl, d_test = paired(head, module.CONTROL), paired(head, module.TEST)
    expected = module.CONTROL_EXPECTED
    if d_ctrl.size < 2 or expected not in ("greater", "less"):
        seeds = int(module.QUICK["seeds"])
        nan = float("nan")
        note = "no pilot control differences" if d_ctrl.size < 2 else f"control {expected}"
        return {"seeds": seeds, "power": nan, "robust_seeds": seeds, "robust_power": nan,
                "parts": {"note": note}}  # fmt: skip
    plan = inference.seeds_for_power(d_ctrl, test=expected)
    seeds = int(np.clip(plan.seeds, *SEED_BOUNDS))
    pw = inference.power(d_ctrl, seeds, test=expected, rng=np.random.default_rng(0))
    n_cells = max(1, int(np.prod([len(v) for v in module.QUICK.get("grid", {}).values()])))
    parts: dict = {"control": {**plan.to_json(), "power_at_seeds": pw}}
    if d_test.size >= 2:
        predicted = getattr(module, "PREDICTED", "greater")
        parts["test"] = {
            "pilot_mean": float(d_test.mean()),
            "pilot_n": int(d_test.size),
            "power_predicted": inference.power(
                d_test, seeds, test=predicted, margin=module.MARGIN, n_tests=n_cells,
                rng=np.random.default_rng(0),
            ) if predicted in inference.TESTS else float("nan"),
            "power_equivalent_if_null": inference.power(
                d_test, seeds, test="equivalent", margin=module.MARGIN, n_tests=n_cells,
                rng=np.random.default_rng(0),
            ),
        }  # fmt: skip
    return {"seeds": seeds, "power": pw, "robust_seeds": seeds, "robust_power": pw,
            "parts": parts}  # fmt: skip
