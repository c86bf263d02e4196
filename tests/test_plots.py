"""gvgap.plots on a synthetic tidy frame: axes labelled, the right number of curves/points."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from gvgap import plots

HORIZONS, NS, RMS, SEEDS = (1, 3), (10, 100), ("linear", "tabular"), range(4)
PIPES = ("dpo", "rlhf", "online_dpo")


def synthetic(epsilons: tuple[float, ...] = (0.0,)) -> pd.DataFrame:
    """A tidy frame shaped like h6_gap: J, J_norm per pipeline, bare ``log_gap`` per run.

    J_norm(dpo) = 1 − H/(n^½) + noise; rlhf adds 0.1·H with a linear RM, nothing otherwise.
    """
    rng = np.random.default_rng(0)
    rows = []
    grid = itertools.product(HORIZONS, NS, RMS, epsilons, SEEDS)
    for h, n, rm, eps, s in grid:
        base = {
            "run_id": f"{h}-{n}-{rm}-{eps}-{s}",
            "experiment": "h6_gap",
            "horizon": h,
            "n_pairs": n,
            "rm_class": rm,
            "epsilon": eps,
            "seed": s,
            "instance_seed": 1000 + s,
        }
        dpo = 1 - h / np.sqrt(n) + 0.01 * rng.standard_normal()
        vals = {"dpo": dpo, "rlhf": dpo + (0.1 * h - eps if rm == "linear" else 0.0)}
        vals["online_dpo"] = vals["rlhf"] - 0.01
        for p, v in vals.items():
            rows.append({**base, "pipeline": p, "metric": "J_norm", "value": v})
            rows.append({**base, "pipeline": p, "metric": "J", "value": 2 * v})
        rows.append({**base, "pipeline": "", "metric": "log_gap", "value": np.log(2**h)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return synthetic()


def new_ax():
    return Figure().subplots()


def curves(ax) -> list:
    """Lines that carry a legend label (the zero/reference lines do not)."""
    return [ln for ln in ax.lines if not ln.get_label().startswith("_")]


def assert_labelled(ax) -> None:
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_advantage_vs_gap(df: pd.DataFrame) -> None:
    ax = plots.advantage_vs_gap(df, new_ax(), gap_col="log_gap")
    assert_labelled(ax)
    assert "log" in ax.get_xlabel() and "rlhf − dpo" in ax.get_ylabel()
    lines = curves(ax)
    assert len(lines) == len(NS) * len(RMS)  # one per n × rm_class
    assert all(len(ln.get_xdata()) == len(HORIZONS) for ln in lines)
    assert len(ax.collections) == len(lines)  # one CI band each
    lin = next(ln for ln in lines if "n_pairs=10, rm_class=linear" in ln.get_label())
    np.testing.assert_allclose(lin.get_ydata(), [0.1, 0.3], atol=1e-9)
    assert any(np.allclose(ln.get_ydata(), 0.0) for ln in ax.lines if ln not in lines)


def test_advantage_vs_gap_with_column_and_where(df: pd.DataFrame) -> None:
    ax = plots.advantage_vs_gap(
        df, new_ax(), gap_col="horizon", where={"rm_class": "linear"}, online="online_dpo"
    )
    assert len(curves(ax)) == len(NS)
    assert ax.get_xlabel() == plots.label("horizon")


def test_sample_complexity(df: pd.DataFrame) -> None:
    ax = plots.sample_complexity(df, new_ax(), gap_col="horizon")
    assert_labelled(ax)
    assert ax.get_xscale() == "log"
    lines = curves(ax)
    assert len(lines) == len(PIPES) * len(HORIZONS)
    assert all(list(ln.get_xdata()) == list(NS) for ln in lines)
    ax = plots.sample_complexity(df, new_ax(), pipelines=["dpo"], gap_col=None)
    assert len(curves(ax)) == 1


def test_equivalence_scatter(df: pd.DataFrame) -> None:
    ax = plots.equivalence_scatter(df, new_ax())
    assert_labelled(ax)
    n_runs = len(HORIZONS) * len(NS) * len(RMS) * len(SEEDS)
    assert sum(len(c.get_offsets()) for c in ax.collections) == n_runs
    diag = [ln for ln in ax.lines if ln.get_label() == "y = x"]
    assert len(diag) == 1


def test_phase_heatmap(df: pd.DataFrame) -> None:
    ax = plots.phase_heatmap(df, new_ax(), where={"rm_class": "linear"})
    assert_labelled(ax)
    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(mesh) == 1 and mesh[0].get_array().size == len(HORIZONS) * len(NS)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == len(HORIZONS) * len(NS)
    assert "0.30*" in texts and "0.10*" in texts
    # the isomorphic control: exact zeros, no stars
    ax = plots.phase_heatmap(df, new_ax(), where={"rm_class": "tabular"})
    assert {t.get_text() for t in ax.texts} == {"0.00"}


def test_horizon_scaling(df: pd.DataFrame) -> None:
    ax = plots.horizon_scaling(df, new_ax())
    assert_labelled(ax)
    assert "n_pairs = 10" in ax.get_title()
    lines = curves(ax)
    assert len(lines) == len(RMS)
    assert all(list(ln.get_xdata()) == list(HORIZONS) for ln in lines)


def test_misspecification_crossover() -> None:
    frame = synthetic(epsilons=(0.0, 0.5))
    ax = plots.misspecification_crossover(frame, new_ax(), where={"rm_class": "linear"})
    assert_labelled(ax)
    assert ax.get_xscale() == "log"
    assert len(curves(ax)) == 2  # one per ε


def test_h6_curves_legend_orders_numeric_levels_numerically() -> None:
    """k = 1, 2, 4, 16, 32 in the legend, not the string order 1, 16, 2, 32, 4."""
    import matplotlib.pyplot as plt

    from gvgap.plots_h6 import h6_curves

    rows = [
        {
            "run_id": f"{k}-{s}",
            "seed": s,
            "instance_seed": s,
            "k": k,
            "n_pairs": 16,
            "pipeline": p,
            "metric": "regret",
            "value": v,
        }
        for k in (1, 2, 4, 16, 32)
        for s in range(3)
        for p, v in (("offline", 1.0 + s), ("online", 0.5))
    ]
    ax = h6_curves(pd.DataFrame(rows), line="k")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lb.split(" ")[0] for lb in labels] == ["k=1", "k=2", "k=4", "k=16", "k=32"]
    plt.close(ax.figure)


# ---------------------------------------------------------------- figures a referee reads


def test_panels_share_one_y_axis_and_titles_fit(df: pd.DataFrame) -> None:
    """A faceted figure reads every panel on one y scale (an effect shrinking with n must not
    be hidden by rescaled panels); a heat map keeps its own categorical axes; titles are
    wrapped to fit their panel."""
    from gvgap import figures

    specs = {s.name.split("__")[-1]: s for s in figures.generic_specs("h6_gap", df)}
    fig, panels, _ = figures.render(specs["advantage_vs_gap"], df.assign(k=df["seed"] % 2))
    axes = [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>"]
    assert len(panels) == 2 and len(axes) >= 2
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    assert all(a.get_ylim() == axes[0].get_ylim() for a in axes[1:2])
    assert not specs["phase"].sharey
    for a in axes:
        assert max(len(line) for line in a.get_title().split("\n")) <= figures.TITLE_WIDTH
    long = "x " * 80
    assert all(len(line) <= 60 for line in figures.fit_title(long).split("\n"))


def test_equivalence_caption_describes_what_is_drawn(df: pd.DataFrame) -> None:
    from gvgap import figures

    spec = next(s for s in figures.generic_specs("h6_gap", df) if s.name.endswith("equivalence"))
    assert "isomorphic control" not in spec.caption and "y = x" in spec.caption


def test_contrast_plot_one_metric_roles_apart() -> None:
    """The contrast figure of a hypothesis draws one metric (its y label names it), tells the
    test, the positive control and reported contrasts apart in its legend, and the other
    metrics get figures of their own (one metric each)."""
    from test_hypotheses import table

    from gvgap.experiments import h5_rm_generalisation as h5

    rng = np.random.default_rng(0)
    t = table(h5, 0.1 + 0.05 * rng.normal(size=12), 0.3 + 0.05 * rng.normal(size=12))
    extra = t[t["pipeline"].isin(["rm_linear", "rm_local_matched"])].assign(
        metric="acc_ref", value=lambda x: x["value"] * 0.5
    )
    t = pd.concat([t, extra], ignore_index=True)
    ax = h5.plot(t, new_ax())
    assert "π*" in ax.get_ylabel() and "accuracy" in ax.get_ylabel()
    texts = [x.get_text() for x in ax.get_legend().get_texts()]
    assert texts[:2] == ["test (decides the verdict)", "positive control"]
    assert all("acc_ref" not in x.get_text() for x in ax.get_xticklabels())
    figs = dict((k, f) for k, f, _ in h5.extra_figures(t))
    assert set(figs) == {"contrasts_acc_ref"}
    ax2 = figs["contrasts_acc_ref"](t, new_ax())
    assert "pairs from π_ref" in ax2.get_ylabel()
    assert [x.get_text() for x in ax2.get_legend().get_texts()] == ["reported only (not evidence)"]


def test_h6_surface_has_one_category_per_generator_and_tree() -> None:
    """No category pools trees of different measured gaps: x has one tick per (generator,
    tree), each with its own gap."""
    from gvgap import plots_h6

    rows = []
    for gen, tree, gap in (
        ("additive", "2x4", 0.29),
        ("additive", "3x3", 0.69),
        ("dense", "2x4", 2.0),
    ):
        for s in range(4):
            run = f"{gen}{tree}{s}"
            base = {"run_id": run, "seed": s, "instance_seed": s, "generator": gen, "tree": tree,
                    "protocol": "learned"}  # fmt: skip
            rows += [
                {**base, "pipeline": "offline", "metric": "regret", "value": 1.0 + 0.1 * s},
                {**base, "pipeline": "online", "metric": "regret", "value": 0.5},
                {**base, "pipeline": "", "metric": "gap", "value": gap},
            ]
    ax = plots_h6.h6_surface(pd.DataFrame(rows), new_ax())
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["additive 2x4\ngap 0.29", "additive 3x3\ngap 0.69", "dense 2x4\ngap 2.00"]
