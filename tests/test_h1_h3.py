"""H1 (on-policy signal) and H3 (optimisation): SMOKE runs, the relabelling theorem on SMOKE,
config validation, and the verdict rules on hand-built tidy tables."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from gvgap.errors import UserError
from gvgap.experiments import h1_on_policy_signal as h1
from gvgap.experiments import h3_optimisation as h3
from gvgap.experiments.base import make_config
from gvgap.experiments.registry import EXPERIMENT_IDS

matplotlib.use("Agg")


def _smoke(module) -> dict[str, float]:
    return module.run(
        module.SMOKE, rng=np.random.default_rng(3), instance_rng=np.random.default_rng(4)
    )


@pytest.fixture(scope="module")
def h1_out() -> dict[str, float]:
    return _smoke(h1)


@pytest.fixture(scope="module")
def h3_out() -> dict[str, float]:
    return _smoke(h3)


def test_registered() -> None:
    assert "h1_on_policy_signal" in EXPERIMENT_IDS
    assert "h3_optimisation" in EXPERIMENT_IDS


@pytest.mark.parametrize("name", ["h1", "h3"])
def test_smoke_metrics_finite(name: str, h1_out, h3_out) -> None:
    out = h1_out if name == "h1" else h3_out
    assert out and all(np.isfinite(v) for v in out.values())
    for pipe in ("dpo", "online_dpo_local", "online_dpo_rsim", "online_dpo_bw_local"):
        for metric in ("J", "J_norm", "kl_ref", "win_rate", "grad_norm"):
            assert f"{pipe}/{metric}" in out


def test_h1_local_rm_changes_nothing(h1_out) -> None:
    """THEORY §6.7: started at π_off, a local-RM pipeline stays at π_off (the theorem)."""
    for pipe in ("online_dpo_local", "rlhf_local"):
        assert abs(h1_out[f"{pipe}/dJ_norm"]) <= 1e-6
        assert h1_out[f"{pipe}/tv_start"] <= 1e-6
    assert h1_out["max_grad_norm"] <= 1e-6


def test_h1_implicit_local_rm_changes_nothing() -> None:
    cfg = make_config(h1.Config, {**vars(h1.SMOKE), "local_rm": "implicit", "best_worst": False})
    out = h1.run(cfg, rng=np.random.default_rng(5), instance_rng=np.random.default_rng(6))
    assert abs(out["online_dpo_local/dJ_norm"]) <= 1e-6
    assert abs(out["rlhf_local/dJ_norm"]) <= 1e-6
    assert "online_dpo_bw_local/J" not in out


def test_h3_local_labeller_matches_dpo(h3_out) -> None:
    """The soft-labelled loop from π_ref with a local RM returns to the DPO optimum."""
    assert abs(h3_out["online_dpo_local/J_norm"] - h3_out["dpo/J_norm"]) <= 1e-6
    assert h3_out["max_grad_norm"] <= h3.MAX_GRAD_NORM
    assert h3_out["max_loop_delta"] <= h3.MAX_LOOP_DELTA


@pytest.mark.parametrize("module", [h1, h3])
@pytest.mark.parametrize(
    "bad", [{"vocab": 1}, {"beta": 0.0}, {"ref": "peaked"}, {"lam": 0.0}, {"family": "nope"}]
)
def test_validate_names_field(module, bad: dict) -> None:
    with pytest.raises(UserError):
        make_config(module.Config, bad)


def test_robustness_overrides_are_valid() -> None:
    for module in (h1, h3):
        assert len(module.ROBUSTNESS) >= 3
        for override in module.ROBUSTNESS:
            make_config(module.Config, override)


# ------------------------------------------------------------------ verdicts on synthetic tables


def _tidy(
    diffs: dict[str, np.ndarray], extra: dict[str, float] | None = None, horizon: int = 4
) -> pd.DataFrame:
    """A tidy table: per seed, ``dpo`` J_norm = 0.3 + noise and ``<pipe>`` = dpo + diff."""
    rows = []
    n = len(next(iter(diffs.values())))
    base = 0.3 + 0.05 * np.random.default_rng(0).standard_normal(n)
    for s in range(n):
        key = {
            "run_id": f"r{horizon}_{s}",
            "experiment": "x",
            "horizon": horizon,
            "seed": s,
            "instance_seed": s,
        }
        rows.append({**key, "pipeline": "dpo", "metric": "J_norm", "value": base[s]})
        for pipe, d in diffs.items():
            rows.append({**key, "pipeline": pipe, "metric": "J_norm", "value": base[s] + d[s]})
        for metric, value in (extra or {}).items():
            rows.append({**key, "pipeline": "", "metric": metric, "value": value})
    return pd.DataFrame(rows)


NOISE = np.random.default_rng(1).standard_normal(8)


@pytest.mark.parametrize(
    ("diff", "expected"),
    [
        (1e-9 * NOISE, "against"),
        (0.1 + 0.01 * NOISE, "supported"),
        (0.01 * NOISE, "inconclusive"),
        (-0.1 + 0.01 * NOISE, "inconclusive"),
    ],
)
def test_h1_verdict_labels(diff: np.ndarray, expected: str) -> None:
    df = _tidy({"online_dpo_local": diff, "online_dpo_rsim": 0.3 + 0.01 * NOISE})
    v = h1.verdict(df)
    assert v.verdict == expected
    assert v.n_runs == 8
    assert "online_dpo_rsim" in v.detail


def test_h1_verdict_worst_setting_decides() -> None:
    df = pd.concat(
        [
            _tidy({"online_dpo_local": 1e-9 * NOISE}, horizon=3),
            _tidy({"online_dpo_local": 0.2 + 0.01 * NOISE}, horizon=4),
        ]
    )
    assert h1.verdict(df).verdict == "supported"


CONVERGED = {"max_grad_norm": 1e-9, "max_loop_delta": 1e-8}


@pytest.mark.parametrize(
    ("rsim", "local", "extra", "expected"),
    [
        (0.3 + 0.02 * NOISE, 1e-9 * NOISE, CONVERGED, "against"),
        (0.01 * NOISE, 1e-9 * NOISE, CONVERGED, "supported"),
        (0.3 + 0.02 * NOISE, 0.05 + 0.01 * NOISE, CONVERGED, "inconclusive"),
        (0.3 + 0.02 * NOISE, 1e-9 * NOISE, {**CONVERGED, "max_grad_norm": 1e-3}, "inconclusive"),
        (0.3 + 0.02 * NOISE, 1e-9 * NOISE, {}, "inconclusive"),
    ],
)
def test_h3_verdict_labels(rsim, local, extra, expected: str) -> None:
    df = _tidy({"online_dpo_rsim": rsim, "online_dpo_local": local}, extra)
    v = h3.verdict(df)
    assert v.verdict == expected
    assert v.effect == pytest.approx(float(np.mean(rsim)))


def test_h3_headline_is_largest_horizon() -> None:
    df = pd.concat(
        [
            _tidy(
                {"online_dpo_rsim": 0.01 * NOISE, "online_dpo_local": 1e-9 * NOISE}, CONVERGED, 2
            ),
            _tidy(
                {"online_dpo_rsim": 0.4 + 0.01 * NOISE, "online_dpo_local": 1e-9 * NOISE},
                CONVERGED,
                5,
            ),
        ]
    )
    v = h3.verdict(df)
    assert v.verdict == "against"
    assert "horizon=5" in v.detail


@pytest.mark.parametrize("module", [h1, h3])
def test_plot_returns_axes(module) -> None:
    import matplotlib.pyplot as plt

    df = pd.concat(
        [
            _tidy(
                {
                    p: 0.1 + 0.01 * NOISE
                    for p in ("online_dpo_local", "online_dpo_rsim", "online_dpo_bw_local")
                },
                CONVERGED,
                h,
            )
            for h in (3, 4)
        ]
    )
    fig, ax = plt.subplots()
    try:
        out = module.plot(df, ax)
        assert out is ax
        assert ax.get_xlabel() and ax.get_ylabel()
    finally:
        plt.close(fig)
