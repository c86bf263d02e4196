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


def at_cell(df: pd.DataFrame, cell: dict) -> pd.DataFrame:
    """Rows whose Config columns equal ``cell`` (fields absent from the table are ignored)."""
    mask = np.ones(len(df), bool)
    for k, v in cell.items():
        if k in df.columns:
            mask &= (df[k] == v).to_numpy()
    return df[mask]


def headline_rows(df: pd.DataFrame, headline: dict) -> pd.DataFrame:
    """The rows a figure shows: the headline cell's, or, on a table of one other setting (a
    robustness re-check, where the headline's values were overridden), all rows: the same
    rule as :func:`hypothesis_record`, so a re-check's figure is not silently empty."""
    rows = at_cell(df, headline)
    keys = [k for k in headline if k in df.columns]
    if rows.empty and keys and len(df.drop_duplicates(keys)) == 1:
        return df
    return rows


def paired(df: pd.DataFrame, c: Contrast) -> np.ndarray:
    """The paired differences a_i − b_i of ``c`` over the runs of ``df`` (finite only)."""
    from gvgap.stats import pair_runs

    sub = df[df["pipeline"].isin([c.a, c.b]) & (df["metric"] == c.metric)]
    if set(sub["pipeline"]) != {c.a, c.b}:
        return np.zeros(0)
    d = pair_runs(sub, metric=c.metric, a_pipeline=c.a, b_pipeline=c.b)["diff"].to_numpy(float)
    return d[np.isfinite(d)]


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


def plot_contrasts(df: pd.DataFrame, contrasts: list[Contrast], *, title: str, ax=None):
    """Mean paired difference (95% bootstrap CI) of each contrast, one point per contrast;
    its tick names the metric (J and win rate share the axis) and the paired seeds behind it."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    labels = []
    for i, c in enumerate(contrasts):
        d = paired(df, c)
        m, lo, hi = mean_ci(d)
        if not np.isfinite(m):
            continue
        labels.append((i, f"{c.label} ({c.metric}; {len(d)} seeds)"))
        err = [[max(m - lo, 0.0)], [max(hi - m, 0.0)]] if np.isfinite(lo) else None
        ax.errorbar([i], [m], yerr=err, marker="o", ls="none", capsize=3, color="C0")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks([i for i, _ in labels], [t for _, t in labels], rotation=25, ha="right")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("paired difference a − b (95% CI)")
    ax.set_title(title)
    return ax
