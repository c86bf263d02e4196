"""H6's decision rule on per-cell paired differences (pure functions; used by ``h6_gap``).

A *cell* is one (generator, tree, n_pairs) setting under one protocol. Its data are the
paired differences d_i = regret(offline) − regret(online) over seeds (same D, same
instance; positive = online better), its measured gap (median over seeds) and whether its
two classes are isomorphic (then d ≡ 0 by theorem: reported, never tested).

Rule (:func:`rule`):

1. Each testable cell gets a three-way outcome by :func:`gvgap.inference.decide_family`
   (one-sided signed-rank superiority / inferiority, TOST with margin ``REGRET_MARGIN``),
   Holm-adjusted across the testable cells.
2. Positive control: the given cell (else the largest-gap testable cell) must come out
   ``greater``; otherwise the test cannot detect its effect → ``inconclusive``.
3. Predictions: gap ≥ gap_big → ``greater``; gap ≤ gap_small → ``equivalent``; between →
   none. Each predicted cell other than the control is mapped by
   :func:`gvgap.inference.hypothesis_verdict`.
4. ``against`` if any predicted cell is decided the other way; ``supported`` if every
   predicted cell is supported (and there is at least one); else ``inconclusive``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gvgap import inference as I
from gvgap.experiments.base import Verdict

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

#: Equivalence margin δ of "no advantage" on the regret difference (nats of J; J* − J_ref is
#: about 1–3 nats in the h6 generators, so δ is a few percent of the attainable improvement).
REGRET_MARGIN = 0.05
#: The verdict metric (ratio-free).
METRIC = "regret"
CELL = ("generator", "tree", "n_pairs")


def cell_table(df: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """One row per cell of ``protocol``: ``generator, tree, n_pairs, gap, isomorphic, d``
    (``d``: array of paired differences offline − online of ``regret``), ``n``."""
    import pandas as pd

    from gvgap.stats import pair_runs

    sub = df[df["protocol"] == protocol] if "protocol" in df.columns else df
    cols = [c for c in CELL if c in sub.columns]
    if sub.empty:
        return pd.DataFrame(columns=[*CELL, "gap", "isomorphic", "d", "n"])
    pairs = pair_runs(sub, metric=METRIC, a_pipeline="offline", b_pipeline="online", keep=cols)
    bare = sub[(sub["pipeline"].fillna("") == "") & sub["metric"].isin(["gap", "isomorphic"])]
    desc = bare.pivot_table(index=cols, columns="metric", values="value", aggfunc="median")
    rows = []
    for key, g in pairs.groupby(cols, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        info = desc.loc[key] if key in desc.index else {}
        rows.append(
            {
                **dict(zip(cols, key)),
                "gap": float(info.get("gap", np.nan)),
                "isomorphic": bool(info.get("isomorphic", 0.0) > 0.5),
                "d": g["diff"].to_numpy(float),
                "n": len(g),
            }
        )
    return pd.DataFrame(rows)


def at_cell(cells: pd.DataFrame, key: tuple) -> pd.Series:
    """Rows whose leading cell keys (generator, tree, …) equal ``key``."""
    import pandas as pd

    cols = list(CELL[: len(key)])
    return (cells[cols] == pd.Series(key, cols)).all(axis=1)


def prediction(gap: float, gap_big: float, gap_small: float) -> str | None:
    """``greater`` (gap ≥ gap_big), ``equivalent`` (gap ≤ gap_small) or None."""
    if gap >= gap_big:
        return "greater"
    if gap <= gap_small:
        return "equivalent"
    return None


def rule(
    cells: pd.DataFrame,
    *,
    positive: tuple | None,
    gap_big: float,
    gap_small: float,
    margin: float = REGRET_MARGIN,
) -> tuple[str, bool | None, pd.DataFrame]:
    """The module's rule on a cell table (columns ``gap, isomorphic, d`` and the cell keys).

    Returns:
        ``(verdict, prediction_held, cells)`` with columns ``outcome, predicted, label,
        control`` added (testable cells only carry an outcome).
    """
    cells = cells.copy().reset_index(drop=True)
    test = ~cells["isomorphic"].astype(bool)
    cells["outcome"], cells["predicted"], cells["label"] = None, None, None
    cells["control"] = False
    if not test.any():
        return "inconclusive", None, cells
    decisions = I.decide_family(list(cells.loc[test, "d"]), margin=margin)
    for i, dec in zip(cells.index[test], decisions):
        cells.at[i, "outcome"] = dec.outcome
    ctrl = None
    if positive is not None:
        hit = cells[test & at_cell(cells, positive)]
        ctrl = hit.index[0] if not hit.empty else None
    gaps = cells.loc[test, "gap"]
    if ctrl is None and gaps.notna().any():
        ctrl = gaps.idxmax()
    if ctrl is None:  # no positive-control cell and no measured gap: nothing can detect
        return "inconclusive", None, cells
    cells.at[ctrl, "control"] = True
    detects = cells.at[ctrl, "outcome"] == "greater"
    labels = []
    for i in cells.index[test]:
        pred = prediction(cells.at[i, "gap"], gap_big, gap_small)
        cells.at[i, "predicted"] = pred
        if pred is None or i == ctrl:
            continue
        label, _ = I.hypothesis_verdict(
            cells.at[i, "outcome"], predicted=pred, control_detects=detects
        )
        cells.at[i, "label"] = label
        labels.append(label)
    if not detects or not labels:
        return "inconclusive", None, cells
    if "against" in labels:
        return "against", False, cells
    if all(lab == "supported" for lab in labels):
        return "supported", True, cells
    return "inconclusive", None, cells


def _ci(d: np.ndarray) -> dict[str, float]:
    from gvgap.stats import mean_ci

    mean, lo, hi = mean_ci(d, rng=np.random.default_rng(0))
    out = {"mean": mean, "ci_low": lo, "ci_high": hi, "p_improve": p_improve(d)}
    return out | I.robust_summary(d)


def p_improve(d: np.ndarray) -> float:
    """Paired probability of improvement P(d > 0) + ½ P(d = 0) over the seeds."""
    d = np.asarray(d, float)
    return float(np.mean(d > 0) + 0.5 * np.mean(d == 0)) if d.size else float("nan")


def describe(cells: pd.DataFrame) -> str:
    """One clause per cell: key, gap, mean d with its median, outcome/prediction."""
    parts = []
    for _, c in cells.iterrows():
        key = "/".join(str(c[k]) for k in CELL if k in c)
        s = I.robust_summary(c["d"])
        tag = "isomorphic" if c["isomorphic"] else f"{c['outcome']} (pred {c['predicted']})"
        parts.append(
            f"{key}: gap {c['gap']:.2f}, d̄ {s['mean']:.3g} (med {s['median']:.3g}, "
            f"trim {s['trimmed_mean']:.3g}, P(d>0) {p_improve(c['d']):.2f}, {s['n']} seeds) {tag}"
        )
    return "; ".join(parts)


def verdict(
    df: pd.DataFrame,
    *,
    claim: str,
    protocol: str,
    n_pairs: int,
    headline: tuple,
    positive: tuple,
    gap_big: float,
    gap_small: float,
) -> Verdict:
    """The H6 verdict from a tidy table (see the module docstring)."""
    nan = float("nan")
    cells = cell_table(df, protocol)
    if cells.empty:
        return Verdict(claim, "inconclusive", nan, nan, nan, 0, f"no {protocol} runs")
    n = n_pairs if (cells["n_pairs"] == n_pairs).any() else cells["n_pairs"].min()
    cells = cells[cells["n_pairs"] == n]
    label, held, cells = rule(cells, positive=positive, gap_big=gap_big, gap_small=gap_small)
    head = cells[at_cell(cells, headline)]
    head = head if not head.empty else cells[~cells["isomorphic"]].sort_values("gap").tail(1)
    eff = _ci(head.iloc[0]["d"]) if not head.empty else {"mean": nan, "ci_low": nan, "ci_high": nan}
    ctrl = cells[cells["control"]]
    pc = _ci(ctrl.iloc[0]["d"]) if not ctrl.empty else None
    detail = f"{protocol}, n={n}, metric regret(offline) − regret(online): " + describe(cells)
    common = cell_table(df, "common")
    if not common.empty:
        common = common[common["n_pairs"] == n]
        detail += " | common protocol (DPO over tabular Π): " + "; ".join(
            f"{c['generator']}/{c['tree']}: d̄ {np.mean(c['d']):.3g}" for _, c in common.iterrows()
        )
    return Verdict(
        claim,
        label,
        float(eff["mean"]),
        float(eff["ci_low"]),
        float(eff["ci_high"]),
        int(np.isfinite(head.iloc[0]["d"]).sum()) if not head.empty else 0,  # behind the effect
        detail,
        hypothesis="advantage tracks the measured gap under well_specified classes",
        prediction_held=held,
        positive_control=None
        if pc is None
        else {"effect": pc["mean"], **{k: v for k, v in pc.items() if k != "mean"}},
    )
