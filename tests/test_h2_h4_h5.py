"""Experiments h2_regularisation, h4_data, h5_rm_generalisation: SMOKE runs, the exact
helpers (ranking accuracy, tie snapping, KL matching), best-of-1 = π_ref, and verdict labels
on synthetic tidy frames."""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from gvgap.experiments import h2_regularisation as h2
from gvgap.experiments import h4_data as h4
from gvgap.experiments import h5_rm_generalisation as h5
from gvgap.experiments.base import make_config
from gvgap.experiments.registry import EXPERIMENTS

matplotlib.use("Agg")

MODULES = (h2, h4, h5)


def smoke(module, **changes) -> dict[str, float]:
    cfg = dataclasses.replace(module.SMOKE, **changes)
    return module.run(cfg, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))


# ---------------------------------------------------------------- contract and SMOKE runs


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.ID)
def test_smoke_runs_with_finite_metrics(module) -> None:
    out = smoke(module)
    assert out and all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert all(k.count("/") <= 1 for k in out)
    assert module.ID in EXPERIMENTS
    contract = "Config SMOKE SETTINGS QUICK CLAIM NOTES DESIGN_NOTE ROBUSTNESS verdict plot"
    for name in contract.split():
        assert hasattr(module, name), name
    assert len(module.ROBUSTNESS) >= 3
    for override in module.ROBUSTNESS:  # every robustness override is a valid config
        make_config(module.Config, {**module.QUICK["fixed"], **override})


def test_smoke_is_deterministic() -> None:
    assert smoke(h4) == smoke(h4)


# ---------------------------------------------------------------- h5: exact accuracy


def test_pairwise_accuracy_hand_derived_three_leaves() -> None:
    # One prompt, leaves 0, 1, 2 with q = (1/2, 1/4, 1/4), r* = (0, 1, 2), r̂ = (0, 2, 1).
    # Ordered pairs with r* distinct: all 6; weights q q': (0,1) 1/8, (0,2) 1/8, (1,2) 1/16,
    # each twice. r̂ orders (0,1) and (0,2) like r* and (1,2) the other way, so
    # acc = 2(1/8 + 1/8) / 2(1/8 + 1/8 + 1/16) = (1/2) / (5/8) = 4/5.
    q = np.log(np.array([[0.5, 0.25, 0.25]]))
    rho = np.ones(1)
    r_star = np.array([[0.0, 1.0, 2.0]])
    assert h5.pairwise_accuracy(np.array([[0.0, 2.0, 1.0]]), r_star, q, rho) == pytest.approx(0.8)
    # r̂ = (0, 1, 1) ties the pair (1, 2): it scores ½ → (1/2 + 1/16) / (5/8) = 9/10; 0 with tie=0.
    tied = np.array([[0.0, 1.0, 1.0]])
    assert h5.pairwise_accuracy(tied, r_star, q, rho) == pytest.approx(0.9)
    assert h5.pairwise_accuracy(tied, r_star, q, rho, tie=0.0) == pytest.approx(0.8)
    # r* = (0, 1, 1) excludes (1, 2): both remaining pairs are right → 1.
    r_tie = np.array([[0.0, 1.0, 1.0]])
    assert h5.pairwise_accuracy(np.array([[0.0, 2.0, 1.0]]), r_tie, q, rho) == pytest.approx(1.0)
    # Two prompts: ρ-weighted numerators over ρ-weighted denominators. Prompt 2 is the first
    # example reversed (r̂ = −r*: acc 0, den 5/8): (0.3 · 1/2 + 0) / (5/8) = 0.24.
    two = h5.pairwise_accuracy(
        np.array([[0.0, 2.0, 1.0], [0.0, -1.0, -2.0]]), np.vstack([r_star, r_star]),
        np.vstack([q, q]), np.array([0.3, 0.7]))  # fmt: skip
    assert two == pytest.approx(0.3 * 0.5 / (5 / 8))


def test_pairwise_accuracy_blocks_match_and_extremes() -> None:
    rng = np.random.default_rng(3)
    r = rng.normal(size=(2, 40))
    q = np.log(rng.dirichlet(np.ones(40), size=2))
    rho = np.array([0.4, 0.6])
    assert h5.pairwise_accuracy(r, r, q, rho) == pytest.approx(1.0)
    assert h5.pairwise_accuracy(-r, r, q, rho) == pytest.approx(0.0)
    assert h5.pairwise_accuracy(0 * r, r, q, rho) == pytest.approx(0.5)
    noisy = r + rng.normal(size=r.shape)
    full = h5.pairwise_accuracy(noisy, r, q, rho)
    old, h5.BLOCK = h5.BLOCK, 7
    try:
        assert h5.pairwise_accuracy(noisy, r, q, rho) == pytest.approx(full, abs=1e-12)
    finally:
        h5.BLOCK = old


def test_snap_ties_merges_only_near_ties() -> None:
    r = np.array([[0.0, 1e-9, 3e-9, 0.5, 0.5 + 2e-6, 2.0]])
    s = h5.snap_ties(r)
    assert len(np.unique(s[0])) == 3 and s[0, 5] == 2.0
    assert h5.parse_bon(h5.bon_pipeline("tabular", 16)) == ("tabular", 16)
    assert h5.parse_bon("dpo") is None


def test_best_of_one_is_reference_policy() -> None:
    out = smoke(h5)
    env = h5.build_env(h5.SMOKE, np.random.default_rng(1))
    ref = env.metrics(env.logp_ref)
    for rm in (*h5.RMS, "star"):
        for k, v in ref.items():
            assert out[f"{h5.bon_pipeline(rm, 1)}/{k}"] == pytest.approx(v, abs=1e-10), (rm, k)
    # the isomorphic tabular RM ranks exactly like the local RM (the theorem)
    for k in ("J_norm", "reward"):
        assert out[f"bon_tabular_n16/{k}"] == pytest.approx(out[f"bon_local_n16/{k}"], abs=1e-8)


# ---------------------------------------------------------------- h2: exact KL matching


def test_match_kl_hits_target_and_isomorphic_control_has_no_gap() -> None:
    env = h2.build_env(h2.SMOKE, np.random.default_rng(2))
    r = env.r_star
    for target in (1e-3, 0.1, 0.5 * h2.kl_limit(env.logp_ref, r, env.rho)):
        logp, beta_eff = h2.match_kl(env, r, target)
        assert env.metrics(logp)["kl_ref"] == pytest.approx(target, rel=1e-9)
        assert beta_eff > 0
    assert h2.match_kl(env, r, 2 * h2.kl_limit(env.logp_ref, r, env.rho)) is None
    out = smoke(h2, rm_class="tabular")  # DPO ≡ tabular RLHF: same policy at α = 0, β' = β
    assert abs(out["matched_gap_dpo"]) < 1e-6
    tag = f"l{out['dpo/lam']:g}"  # the shared-protocol DPO on the λ frontier
    assert out[f"dpo_{tag}/kl_ref"] == out["dpo/kl_ref"]
    assert out[f"rlhf_at_{tag}/beta_eff"] == pytest.approx(h2.SMOKE.beta, rel=1e-5)
    assert out["kl_match_err"] < 1e-9


def test_h4_single_prompt_prompts_variant_equals_same() -> None:
    out = smoke(h4, n_prompts=1)
    assert out["prompt_coverage"] == 1.0
    assert out["rlhf_prompts/J"] == out["rlhf_same/J"]


# ---------------------------------------------------------------- verdicts on synthetic frames


def tidy(runs: list[dict], metrics: list[dict[str, float]]) -> pd.DataFrame:
    """A results.parquet-shaped frame: one row per run and ``pipeline/metric`` key."""
    rows = []
    for i, (cfg, out) in enumerate(zip(runs, metrics)):
        for key, value in out.items():
            pipe, _, metric = key.rpartition("/")
            rows.append({"run_id": f"r{i}", "experiment": "x", **cfg, "seed": cfg["seed"],
                         "instance_seed": cfg["seed"], "pipeline": pipe, "metric": metric,
                         "value": value})  # fmt: skip
    return pd.DataFrame(rows)


def synthetic(make, n_seeds: int = 8, n_values=(16, 64)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    runs, outs = [], []
    for n in n_values:
        for seed in range(n_seeds):
            runs.append({"horizon": 4, "n_pairs": n, "rm_class": "linear", "seed": seed})
            outs.append(make(rng))
    return tidy(runs, outs)


def h2_run(mean: float, sd: float):
    def make(rng):
        g = mean + sd * rng.normal()
        return {"matched_gap": g, "matched_gap_dpo": g, "matched_gap_lam": g,
                "dpo/J_norm": 0.1, "rlhf/J_norm": 0.1 + g}  # fmt: skip

    return make


def h4_run(same: float, extra: float, sd: float):
    def make(rng):
        d = rng.uniform(0, 0.2)
        return {"dpo/J_norm": d, "rlhf_same/J_norm": d + same + sd * rng.normal(),
                "rlhf_extra/J_norm": d + extra + sd * rng.normal(),
                "rlhf_prompts/J_norm": d + same}  # fmt: skip

    return make


def h5_run(adv: float, sd: float):
    def make(rng):
        loc = rng.uniform(0, 0.3)
        out = {"bon_local_n16/J_norm": loc, "bon_tabular_n16/J_norm": loc,
               "bon_linear_n16/J_norm": loc + adv + sd * rng.normal()}  # fmt: skip
        for rm in h5.RMS:
            out[f"rm_{rm}/acc_ref"] = 0.8
            out[f"rm_{rm}/acc_bon"] = 0.7
        return out

    return make


@pytest.mark.parametrize(
    ("module", "make", "label"),
    [
        (h2, h2_run(0.3, 0.05), "against"),
        (h2, h2_run(0.0, 0.002), "supported"),
        (h2, h2_run(0.02, 0.2), "inconclusive"),
        (h4, h4_run(0.4, 0.5, 0.05), "against"),
        (h4, h4_run(0.0, 0.4, 0.1), "supported"),
        (h4, h4_run(0.01, 0.01, 0.001), "inconclusive"),
        (h5, h5_run(0.4, 0.05), "supported"),
        (h5, h5_run(-0.3, 0.05), "against"),
        (h5, h5_run(0.0, 0.2), "inconclusive"),
    ],
)
def test_verdict_labels_on_synthetic_frames(module, make, label) -> None:
    df = synthetic(make)
    v = module.verdict(df)
    assert v.verdict == label, v
    assert v.n_runs == df["run_id"].nunique()
    assert v.ci_low <= v.effect <= v.ci_high
    ax = module.plot(df)
    assert ax.get_ylabel()
    matplotlib.pyplot.close("all")
