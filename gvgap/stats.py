"""Bootstrap confidence intervals, paired differences and the probability of improvement.

Pure functions on arrays and tidy frames (docs/design.md §5 ``results.parquet`` layout); no I/O and
no global random state: every resampling draws from the ``numpy.random.Generator`` passed in,
so every number is reproducible given its seed.

Estimators (named, as docs/design.md §3 asks):

- mean and its CI: sample mean x̄ = (1/n) Σ_i x_i with a bias-corrected and accelerated (BCa)
  bootstrap interval (:func:`scipy.stats.bootstrap`), falling back to the percentile interval
  when BCa is undefined;
- paired difference: d_i = a_i − b_i over runs i that share seeds and every Config field,
  mean d̄ with the same bootstrap interval;
- probability of improvement (rliable, Agarwal et al. 2021):
  P(A > B) = (1 / (n m)) Σ_i Σ_j S(a_i, b_j), S(a, b) = 1 if a > b, ½ if a = b, 0 otherwise.

Tidy-table helpers (:func:`has_column`, :func:`with_column`, :func:`select`) let callers name a
per-run bare metric (pipeline ``""``, e.g. ``log_gap``) wherever a column is expected.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Default bootstrap resamples: Monte Carlo error of a 95% end point ≈ 0.5% of its width.
N_RESAMPLES = 2000
CONFIDENCE = 0.95
#: Tidy-table columns that are not part of a run's identity (the pairing key is the rest).
NON_KEY_COLUMNS = ("run_id", "pipeline", "metric", "value")
#: Columns of :func:`paired_difference`'s result after the ``by`` columns.
PAIRED_COLUMNS = (
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "mean_a",
    "mean_b",
    "p_improve",
    "p_ci_low",
    "p_ci_high",
)

_RNG_KW = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"


def _finite(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _bootstrap_ci(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    *,
    rng: np.random.Generator,
    confidence: float,
    n_resamples: int,
    paired: bool = False,
) -> tuple[float, float]:
    """BCa interval of a vectorised ``statistic``; percentile interval if BCa is undefined."""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sps.bootstrap(
                data,
                statistic,
                n_resamples=n_resamples,
                vectorized=True,
                paired=paired,
                confidence_level=confidence,
                method=method,
                **{_RNG_KW: rng},
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            return lo, hi
    return float("nan"), float("nan")


def mean_ci(
    values: Any,
    *,
    rng: np.random.Generator,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
) -> tuple[float, float, float]:
    """Sample mean x̄ = (1/n) Σ x_i and its bootstrap confidence interval.

    Non-finite values are dropped. Degenerate samples do not raise: n = 0 gives
    ``(nan, nan, nan)``, n = 1 gives ``(x, nan, nan)`` (no interval from one draw) and a
    constant sample gives the degenerate interval ``(x, x, x)``.

    Args:
        values: array-like of shape ``(n,)`` (flattened).
        rng: generator every resample is drawn from.
        confidence: coverage of the interval.
        n_resamples: bootstrap resamples.

    Returns:
        ``(mean, ci_low, ci_high)``; BCa interval, percentile interval where BCa is undefined.
    """
    x = _finite(values)
    if x.size == 0:
        return (float("nan"),) * 3
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan")
    if np.ptp(x) == 0:
        return mean, mean, mean
    lo, hi = _bootstrap_ci(
        (x,),
        lambda s, axis=-1: np.mean(s, axis=axis),
        rng=rng,
        confidence=confidence,
        n_resamples=n_resamples,
    )
    return mean, lo, hi


def _prob_improvement_stat(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised P(A > B) over the last axis (ties ½), for :func:`scipy.stats.bootstrap`."""
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    diff = a[..., :, None] - b[..., None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))


def prob_improvement(a: Any, b: Any) -> float:
    """Probability of improvement P(A > B) with ties counted ½ (rliable's definition).

    P(A > B) = (1 / (n m)) Σ_{i=1}^{n} Σ_{j=1}^{m} S(a_i, b_j), where S(a, b) = 1 if a > b,
    ½ if a = b and 0 otherwise: the Mann–Whitney U statistic divided by n m, an unbiased
    estimate of P(A > B) + ½ P(A = B) for independent draws A, B.

    Args:
        a: scores of method A, shape ``(n,)``; non-finite values are dropped.
        b: scores of method B, shape ``(m,)``; non-finite values are dropped.

    Returns:
        a value in [0, 1]; NaN when either sample is empty.
    """
    x, y = _finite(a), _finite(b)
    if x.size == 0 or y.size == 0:
        return float("nan")
    return float(_prob_improvement_stat(x, y))


def prob_improvement_ci(
    a: Any,
    b: Any,
    *,
    rng: np.random.Generator,
    paired: bool = False,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
) -> tuple[float, float, float]:
    """P(A > B) (:func:`prob_improvement`) and its bootstrap CI.

    Args:
        a: scores of A, shape ``(n,)``.
        b: scores of B, shape ``(m,)``; with ``paired`` the shape of ``a``.
        rng: generator every resample is drawn from.
        paired: resample (a_i, b_i) pairs jointly. The default resamples the runs of A and B
            independently, as rliable does: P(A > B) is defined for independent draws, and
            joint resampling of positively correlated pairs biases the resampled statistic.
        confidence: coverage of the interval.
        n_resamples: bootstrap resamples.

    Returns:
        ``(p, ci_low, ci_high)``; degenerate cases as in :func:`mean_ci`.
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if paired:
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
    else:
        x, y = _finite(x), _finite(y)
    p = prob_improvement(x, y)
    if min(x.size, y.size) < 2:
        return p, float("nan"), float("nan")
    if np.ptp(np.concatenate([x, y])) == 0:
        return p, p, p
    lo, hi = _bootstrap_ci(
        (x, y),
        _prob_improvement_stat,
        rng=rng,
        confidence=confidence,
        n_resamples=n_resamples,
        paired=paired,
    )
    return p, lo, hi


def _groups(df: pd.DataFrame, by: Sequence[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """``(by-values, sub-frame)`` per group, sorted, NaN keys kept; one group if ``by`` empty."""
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"grouping columns not in the frame: {missing}")
    if not by:
        return [({}, df)]
    out = []
    for key, g in df.groupby(list(by), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out.append((dict(zip(by, key)), g))
    return out


def summarize(
    df: pd.DataFrame,
    by: Sequence[str],
    value: str = "value",
    *,
    rng: np.random.Generator,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Mean and bootstrap CI of ``value`` per group (:func:`mean_ci` in each group).

    Args:
        df: a tidy frame (e.g. ``results.parquet`` filtered to one metric).
        by: grouping columns (NaN is its own group); empty = one group.
        value: the column averaged.
        rng: generator shared by the groups in sorted group order (deterministic).
        confidence: coverage of each interval.
        n_resamples: bootstrap resamples.

    Returns:
        columns ``[*by, mean, ci_low, ci_high, n]`` (n = finite values), one row per group.
    """
    rows = []
    for keys, g in _groups(df, by):
        vals = _finite(g[value])
        m, lo, hi = mean_ci(vals, rng=rng, confidence=confidence, n_resamples=n_resamples)
        rows.append({**keys, "mean": m, "ci_low": lo, "ci_high": hi, "n": int(vals.size)})
    return pd.DataFrame(rows, columns=[*by, "mean", "ci_low", "ci_high", "n"])


def _as_key(v: Any) -> Any:
    """A hashable stand-in for a list/dict/array cell (its JSON text); other cells as is."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return json.dumps(v, default=str) if isinstance(v, (list, dict)) else v


def _hashable(frame: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Copy with list/dict/array cells of ``cols`` turned into JSON strings (for grouping)."""
    frame = frame.copy()
    for c in cols:
        if frame[c].dtype == object:
            frame[c] = frame[c].map(_as_key)
    return frame


def pair_runs(
    df: pd.DataFrame,
    *,
    metric: str,
    a_pipeline: str,
    b_pipeline: str,
    value: str = "value",
    keep: Sequence[str] = (),
) -> pd.DataFrame:
    """Join ``metric`` of pipelines a and b on the run identity.

    Runs pair when they share ``seed``, ``instance_seed`` and every Config field, i.e. every
    column except ``run_id, pipeline, metric, value`` (columns that are all NaN are ignored).
    Repeated rows of one pipeline and run are averaged. Columns in ``keep`` stay in the key
    even when all NaN.

    Returns:
        the key columns plus ``value_a``, ``value_b`` and ``diff`` = value_a − value_b.
    """
    sub = df[df["metric"] == metric]
    key = [c for c in sub.columns if c not in (*NON_KEY_COLUMNS, value)]
    key = [c for c in key if sub[c].notna().any() or c in keep]
    if not key:
        raise ValueError("no run-identity columns (seed, instance_seed, Config fields) to pair on")
    sub = _hashable(sub, key)
    sides = []
    for pipe, name in ((a_pipeline, "value_a"), (b_pipeline, "value_b")):
        part = sub[sub["pipeline"] == pipe]
        part = part.groupby(key, dropna=False, sort=False)[value].mean().reset_index()
        sides.append(part.rename(columns={value: name}))
    joined = sides[0].merge(sides[1], on=key, how="inner")
    joined["diff"] = joined["value_a"] - joined["value_b"]
    return joined


def paired_diffs(df: pd.DataFrame, a: str, b: str, metric: str) -> np.ndarray:
    """The finite paired differences a_i − b_i of ``metric`` over the runs of ``df``
    (:func:`pair_runs`); empty unless both pipelines are present. Shape (n_runs,)."""
    sub = df[df["pipeline"].isin([a, b]) & (df["metric"] == metric)]
    if set(sub["pipeline"]) != {a, b}:
        return np.zeros(0)
    d = pair_runs(sub, metric=metric, a_pipeline=a, b_pipeline=b)["diff"].to_numpy(float)
    return d[np.isfinite(d)]


def paired_difference(
    df: pd.DataFrame,
    *,
    metric: str,
    a_pipeline: str,
    b_pipeline: str,
    by: Sequence[str],
    rng: np.random.Generator,
    value: str = "value",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Per-setting mean paired difference a − b of ``metric``, its CI and P(a > b).

    Within each group of ``by``, with pairs (a_i, b_i) from :func:`pair_runs` (same seeds and
    Config), d̄ = (1/n) Σ_i (a_i − b_i) with a bootstrap CI (:func:`mean_ci`), and the
    probability of improvement P(a > b) = (1/n²) Σ_i Σ_j S(a_i, b_j) (:func:`prob_improvement`,
    ties ½; rliable's estimator over all run pairs) with a bootstrap CI that resamples the
    runs of a and b independently (:func:`prob_improvement_ci`).

    Args:
        df: tidy results (columns ``pipeline, metric, value`` and the run identity).
        metric: the metric compared (e.g. ``"J_norm"``).
        a_pipeline: pipeline A (e.g. ``"rlhf"``); differences are A − B.
        b_pipeline: pipeline B (e.g. ``"dpo"``).
        by: setting columns (e.g. ``["horizon", "n_pairs"]``); empty = one pooled setting.
        rng: generator for every bootstrap, used in sorted group order.
        value: the value column.
        confidence: coverage of every interval.
        n_resamples: bootstrap resamples.

    Returns:
        columns ``[*by, mean, ci_low, ci_high, n, mean_a, mean_b, p_improve, p_ci_low,
        p_ci_high]``, one row per setting with at least one pair; ``n`` = number of pairs.
    """
    columns = [*by, *PAIRED_COLUMNS]
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"grouping columns not in the frame: {missing}")
    pairs = pair_runs(
        df, metric=metric, a_pipeline=a_pipeline, b_pipeline=b_pipeline, value=value, keep=by
    )
    pairs = pairs[np.isfinite(pairs["diff"].to_numpy(dtype=np.float64))]
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    kw = {"rng": rng, "confidence": confidence, "n_resamples": n_resamples}
    rows = []
    for keys, g in _groups(pairs, by):
        m, lo, hi = mean_ci(g["diff"], **kw)
        p, plo, phi = prob_improvement_ci(g["value_a"], g["value_b"], **kw)
        rows.append(
            {
                **keys,
                "mean": m,
                "ci_low": lo,
                "ci_high": hi,
                "n": len(g),
                "mean_a": float(g["value_a"].mean()),
                "mean_b": float(g["value_b"].mean()),
                "p_improve": p,
                "p_ci_low": plo,
                "p_ci_high": phi,
            }
        )
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- tidy-table helpers


def has_column(df: pd.DataFrame, col: str | None) -> bool:
    """True if ``col`` is a column with a value or a bare metric (pipeline ``""``) of ``df``."""
    if col is None:
        return False
    if col in df.columns:
        return bool(df[col].notna().any())
    return bool(((df["metric"] == col) & (df["pipeline"].fillna("") == "")).any())


def with_column(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """``df`` with ``col`` as a column: as is, or the bare metric ``col`` joined on ``run_id``.

    Raises:
        ValueError: ``col`` is neither a column nor a bare metric.
    """
    if col in df.columns:
        return df
    bare = df[(df["metric"] == col) & (df["pipeline"].fillna("") == "")]
    if bare.empty:
        raise ValueError(f"{col!r} is neither a column nor a bare metric of the frame")
    values = bare.groupby("run_id")["value"].mean().rename(col)
    return df.merge(values, left_on="run_id", right_index=True, how="left")


def at_cell(df: pd.DataFrame, cell: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of a cell: for every ``cell`` item whose column the table has, the column equals
    the value (any of them for a list, tuple or set; a NaN value matches NaN). Fields absent
    from the table are ignored."""
    mask = np.ones(len(df), bool)
    for col, val in cell.items():
        if col not in df.columns:
            continue
        if isinstance(val, (list, tuple, set)):
            hit = df[col].isin(list(val))
        else:
            hit = df[col].isna() if _is_nan(val) else df[col] == val
        mask &= hit.to_numpy(bool)
    return df[mask]


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and bool(np.isnan(value)))


def select(df: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.DataFrame:
    """:func:`at_cell` on columns or bare metrics (:func:`with_column`): rows with
    ``df[col] == value`` (or ``isin`` for a list/tuple) for every ``where`` item."""
    for col, val in (where or {}).items():
        df = at_cell(with_column(df, col), {col: val})
    return df


def runs_wide(df: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """One row per run: its identity columns (Config fields, seeds) and one column per name in
    ``names`` — ``"<pipeline>/<metric>"`` or a bare metric — holding that run's value (the
    mean of repeated rows; NaN where the run lacks it). Runs with none of ``names`` are
    dropped."""
    key = [c for c in df.columns if c not in NON_KEY_COLUMNS]
    pipe = df["pipeline"].fillna("").astype(str)
    label = np.where(pipe == "", df["metric"].astype(str), pipe + "/" + df["metric"].astype(str))
    mask = np.isin(label, list(names))
    sub = df.loc[mask, ["run_id", "value"]].assign(name=label[mask])
    if sub.empty:
        return pd.DataFrame(columns=["run_id", *key, *names])
    wide = sub.pivot_table(index="run_id", columns="name", values="value", aggfunc="mean")
    wide = wide.reindex(columns=list(names))
    ident = df.drop_duplicates("run_id").set_index("run_id")[key]
    return ident.join(wide, how="inner").reset_index()
