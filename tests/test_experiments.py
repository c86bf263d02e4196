"""Every registered experiment honours the contract (DESIGN §2) and its SMOKE runs; h6_gap's
isomorphic control reproduces the theorem and its verdict reads a tidy frame correctly."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from gvgap.experiments import h6_gap
from gvgap.experiments.base import Verdict, make_config
from gvgap.experiments.registry import EXPERIMENTS

CONTRACT = ("ID", "Config", "SETTINGS", "SMOKE", "CLAIM", "run", "verdict", "plot")


@pytest.mark.parametrize("eid", list(EXPERIMENTS))
def test_contract_and_smoke(eid):
    mod = EXPERIMENTS[eid]
    for name in CONTRACT:
        assert hasattr(mod, name), f"{eid} lacks {name}"
    assert eid == mod.ID
    assert dataclasses.is_dataclass(mod.SMOKE) and isinstance(mod.SMOKE, mod.Config)
    docs = " ".join(c.__doc__ or "" for c in mod.Config.__mro__)  # own + inherited docs
    for field in dataclasses.fields(mod.Config):  # every field documented
        assert f"{field.name}:" in docs, f"{eid}.Config.{field.name} undocumented"
    out = mod.run(mod.SMOKE, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))
    assert out and all(isinstance(v, float) for v in out.values())
    assert all(math.isfinite(v) or math.isnan(v) for v in out.values())
    again = mod.run(mod.SMOKE, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))
    assert out == again  # determinism: same seeds, identical metrics


def test_h6_isomorphic_control_is_exact():
    # Theorem (THEORY §3): with a tabular RM (R = R(Π)) RLHF and DPO have the same optimum,
    # and the shared λ protocol selects the same λ, so J_norm must agree to optimiser precision.
    cfg = make_config(
        h6_gap.Config,
        {
            "vocab": 2,
            "horizon": 3,
            "n_pairs": 24,
            "rm_class": "tabular",
            "lam_grid": "short",
            "online_dpo": False,
        },
    )
    out = h6_gap.run(cfg, rng=np.random.default_rng(3), instance_rng=np.random.default_rng(4))
    assert out["rlhf/lam"] == out["dpo/lam"]
    assert abs(out["rlhf/J_norm"] - out["dpo/J_norm"]) < 1e-6


def test_h6_gap_gives_an_advantage_on_a_long_horizon():
    # Not a theorem, a measured effect: k = 3 features, 243 completions, 16 pairs.
    cfg = make_config(
        h6_gap.Config,
        {"vocab": 3, "horizon": 5, "n_pairs": 16, "lam_grid": "short", "online_dpo": False},
    )
    wins = 0
    for seed in range(3):
        out = h6_gap.run(
            cfg, rng=np.random.default_rng(seed), instance_rng=np.random.default_rng(seed + 10)
        )
        wins += out["rlhf/J_norm"] > out["dpo/J_norm"]
    assert wins >= 2


def _frame(adv_linear: float, adv_tabular: float, n_seeds: int = 6) -> pd.DataFrame:
    """A tidy h6 frame: J_norm of dpo / rlhf per seed at one (H, n); rlhf = dpo + advantage
    (+ small seed noise)."""
    rows = []
    for rm, adv in (("linear", adv_linear), ("tabular", adv_tabular)):
        for seed in range(n_seeds):
            base = 0.1 * seed
            noise = 0.001 * ((-1) ** seed) if rm == "linear" else 0.0
            for pipe, val in (("dpo", base), ("rlhf", base + adv + noise)):
                rows.append(
                    {
                        "run_id": f"{rm}{seed}",
                        "experiment": "h6_gap",
                        "family": "linear",
                        "horizon": 4,
                        "n_pairs": 16,
                        "rm_class": rm,
                        "seed": seed,
                        "instance_seed": seed,
                        "pipeline": pipe,
                        "metric": "J_norm",
                        "value": val,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("adv_lin", "adv_tab", "label"),
    [
        (0.3, 0.0, "supported"),
        (-0.3, 0.0, "against"),
        (0.005, 0.0, "inconclusive"),
        (0.3, 0.2, "inconclusive"),  # the isomorphic control must show no difference
    ],
)
def test_h6_verdict_labels(adv_lin, adv_tab, label):
    v = h6_gap.verdict(_frame(adv_lin, adv_tab))
    assert isinstance(v, Verdict) and v.verdict == label
    assert v.ci_low <= v.effect <= v.ci_high


def test_h6_config_validation_names_the_field():
    from gvgap.errors import UserError

    with pytest.raises(UserError, match="rm_class"):
        make_config(h6_gap.Config, {"rm_class": "neural"})
    with pytest.raises(UserError, match="beta"):
        make_config(h6_gap.Config, {"beta": 0})
