"""h6_gap: config fields, protocols and their classes, the per-run constants, the symmetric
learned protocol, and the dose-response rule on constructed tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from gvgap.errors import UserError
from gvgap.experiments import common, h6_cells, h6_protocols, h6_rule
from gvgap.experiments import h6_design as D
from gvgap.experiments import h6_gap as M
from gvgap.experiments.base import make_config


def _cfg(**overrides):
    return make_config(M.Config, {"lam_grid": "short", "n_pairs": 24, **overrides})


def _run(seed=5, **overrides):
    cfg = _cfg(**overrides)
    return M.run(cfg, rng=np.random.default_rng(seed), instance_rng=np.random.default_rng(6))


# ---------------------------------------------------------------- fields


def test_fields_reachable_from_set_strings():
    cfg = make_config(
        M.Config,
        {
            "family": "linear",
            "dictionary": "window1",
            "shared_reward": "false",
            "n_prompts": "2",
            "protocol": "non_oracle",
            "policy_class": "markov2",
            "rm_class": "window1",
            "rm_features": "9",
        },
    )
    assert cfg.per_prompt_weights is True and cfg.rm_features == 9  # set by shared_reward
    assert common.family_knobs(cfg) == {"dictionary": "window1", "per_prompt_weights": True}
    gen = make_config(M.Config, {"generator": "additive_full", "tree": "2x4"})
    assert (gen.vocab, gen.horizon, gen.k, gen.dictionary) == (2, 4, 8, "position_token")
    cell = make_config(M.Config, {"cell": "sum_mod_2x4_b0.1"})
    assert (cell.generator, cell.vocab, cell.horizon, cell.beta) == ("sum_mod", 2, 4, 0.1)
    k7 = make_config(M.Config, {"generator": "dense", "k": 7})  # an explicit k is kept
    assert k7.k == 7


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"protocol": "common"}, "protocol"),  # the old gift protocol has a gift's name now
        ({"policy_class": "markovy"}, "policy_class"),
        ({"rm_class": "quadratic"}, "rm_class"),
        ({"rm_features": -1}, "rm_features"),
        ({"dictionary": "fourier"}, "dictionary"),
        ({"check": "sum_mod"}, "check"),  # family linear has no check
        ({"generator": "dense", "family": "planning"}, "family"),
        ({"generator": "nope"}, "generator"),
        ({"cell": "nope"}, "cell"),
        ({"cell": "dense_2x4", "tree": "3x3"}, "tree"),
        ({"tree": "3by4"}, "tree"),
        ({"tree": "2x4", "vocab": 5}, "vocab"),
        ({"n_prompts": 2, "per_prompt_weights": True}, "shared_reward"),
    ],
)
def test_bad_fields_raise_naming_the_field(overrides, field):
    with pytest.raises(UserError, match=field):
        make_config(M.Config, overrides)


# ---------------------------------------------------------------- protocols and classes


@pytest.mark.parametrize(
    "overrides",
    [
        {"protocol": "well_specified", "dictionary": "position_token", "k": 12},
        {"protocol": "well_specified", "generator": "window1_full", "tree": "2x3"},
        {"protocol": "gift", "generator": "additive_full", "tree": "2x4"},
    ],
)
def test_isomorphic_classes_give_identical_objectives(overrides):
    """DPO over markovJ and a BT RM over window<J> (or features spanning it) + soft RL fit the
    same reward set (R(markovJ) = window<J> with uniform π_ref, docs/theory.md §3 claim 8) under the
    same λ protocol: equal outputs, ΔC = 0 exactly."""
    out = _run(**overrides)
    assert out["isomorphic"] == 1.0 and out["delta_C"] == pytest.approx(0.0, abs=1e-9)
    assert out["offline/J"] == pytest.approx(out["online/J"], abs=1e-6)
    assert out["offline/lam"] == out["online/lam"]
    assert max(out["offline/grad_norm"], out["online/grad_norm"]) < 1e-5


def test_protocols_pick_the_classes():
    # sum_mod at V=2, H=3: π* needs the whole prefix (tabular, dim 7); the check is one feature
    gift = _run(generator="sum_mod", tree="2x3", protocol="gift")
    assert (gift["offline_dim"], gift["online_dim"], gift["gift"]) == (7, 1, 1.0)
    ws = _run(generator="sum_mod", tree="2x3", protocol="well_specified")
    # the smallest learnable reward rung holding r*: the dictionary, the check among 5
    # position×token distractors (rank 3 at V=2, H=3: H(V−1)), so dim 1 + 3 = 4 < 7
    assert ws["offline_dim"] == 7 and ws["online_dim"] == 4 and ws["gift"] == 0.0
    tab = _run(generator="additive", tree="2x3", protocol="gift_tabular")
    assert tab["offline_dim"] == 7 and tab["online/contains"] == 1.0
    non = _run(generator="dense", tree="2x3", protocol="non_oracle", rm_features=6)
    assert non["online_dim"] == 6 and non["online_order"] == -1
    for out in (gift, ws, tab, non):
        assert out["offline/regret"] >= -1e-9 and out["online/regret"] >= -1e-9
        assert out["delta_C"] == pytest.approx(out["offline/C"] - out["online/C"])


def test_dictionary_holds_the_generating_features_among_distractors():
    from gvgap.ladder import classes as ladder_classes
    from gvgap.theory import spans

    cfg = make_config(M.Config, {"generator": "dense", "tree": "2x3"})
    env = common.build_env(cfg, np.random.default_rng(0))
    feats = ladder_classes.dictionary_features(env, 4, np.random.default_rng(1), shared=True)
    assert feats.shape[-1] == 7
    outside, dim = spans.span_residual(env.r_star, feats, env.rho, shared=True)
    assert outside.max() < 1e-25 and dim == 7  # r* ∈ span of the K candidates
    hits = [j for j in range(7) if np.allclose(feats[0, :, j], env.features[0, :, 0])]
    assert len(hits) == 1  # the generating column is one of the K, unmarked


def test_constants_and_metrics_of_a_run():
    out = _run(generator="dense", tree="2x4", protocol="gift", n_pairs=64)
    for key in (
        "offline/C",
        "online/C",
        "delta_C",
        "delta_C_within",
        "offline/bias",
        "online/bias",
        "coverage",
        "concentrability",
        "delta_C_star",
        "rarest_count",
    ):
        assert key in out and np.isfinite(out[key]), key
    assert out["offline/bias"] == 0.0 == out["online/bias"]  # both classes hold their targets
    assert out["delta_C_within"] == out["delta_C"]  # m = 1: nothing to pool
    assert 0.0 < out["coverage"] <= 1.0 and out["concentrability"] >= 1.0
    # uniform μ over 16 leaves, one prompt: D draws each leaf 2n/16 times in expectation
    assert out["rarest_count"] == pytest.approx(2 * 64 / 16)


def test_pooling_is_a_named_share_of_the_gap():
    """m = 4 prompts sharing an additive r*: per prompt there is no gap (product ≅ window0),
    so ΔC_within = 0, while the pooled RM has ΔC > 0 — the pooling share ΔC − ΔC_within.
    With per-prompt rewards nothing is pooled: both are 0."""
    shared = _run(generator="additive_full", tree="2x4", n_prompts=4, protocol="well_specified")
    assert shared["delta_C"] > 1.0 and shared["delta_C_within"] == pytest.approx(0.0, abs=1e-9)
    own = _run(
        generator="additive_full",
        tree="2x4",
        n_prompts=4,
        shared_reward=False,
        protocol="well_specified",
    )
    assert own["delta_C"] == pytest.approx(0.0, abs=1e-9)


def test_coverage_by_hand():
    """coverage = Σ_x ρ_x Σ_{ξ ∈ D_x} P*(ξ|x): two pairs touching leaves {0, 1} and {1, 3}."""
    from gvgap.data import Preferences

    env = common.build_env(_cfg(generator="dense", tree="2x2"), np.random.default_rng(0))
    data = Preferences(np.zeros(2, int), np.array([0, 1]), np.array([1, 3]), np.ones(2))
    p = np.exp(env.logp_star[0])
    assert M.coverage(env, data) == pytest.approx(p[0] + p[1] + p[3])


def test_learned_protocol_has_no_access_to_r_star():
    """Everything ``learned`` decides — each side's class and λ — comes from D and the
    instance's classes: with r* replaced by another reward (same classes, same D) the
    selected rungs and fitted policies are identical."""
    cfg = _cfg(generator="dense", tree="2x4", protocol="learned", n_pairs=128)
    inst = M.instance(cfg, np.random.default_rng(3))
    data = common.draw_pairs(inst.env, cfg.n_pairs, np.random.default_rng(4))
    grid = common.lambda_grid(cfg.lam, cfg.lam_grid)
    a = M.fit_pipelines(cfg, inst, data, grid, 11)
    other = dataclasses.replace(inst.env, r_star=np.random.default_rng(9).normal(size=(1, 16)))
    b = M.fit_pipelines(cfg, dataclasses.replace(inst, env=other), data, grid, 11)
    assert (a[1], a[3]) == (b[1], b[3])
    np.testing.assert_array_equal(a[0].logp, b[0].logp)
    np.testing.assert_array_equal(a[2].logp, b[2].logp)


def test_instance_cache_changes_nothing():
    h6_protocols.clear_cache()
    cold = _run(generator="sum_mod", tree="2x4", protocol="learned")
    warm = _run(generator="sum_mod", tree="2x4", protocol="learned")
    h6_protocols.clear_cache()
    np.testing.assert_equal(cold, warm)
    assert len(h6_protocols._CACHE) == 0


def test_tabular_rm_with_tabular_policy_is_exact():
    # Theorem (docs/theory.md §3): with a tabular RM (R = R(Π)) RLHF and DPO over tabular Π have the
    # same optimum and the shared λ protocol selects the same λ.
    out = _run(vocab=2, horizon=3, protocol="gift_tabular", rm_class="tabular")
    assert out["isomorphic"] == 1.0 and out["online/lam"] == out["offline/lam"]
    assert abs(out["online/J"] - out["offline/J"]) < 1e-6


def test_online_projection_onto_a_rung():
    """RL step onto a policy rung: the reverse-KL projection of π*_{r̂} (no constant then)."""
    kw = {"generator": "dense", "tree": "2x3", "protocol": "gift_tabular"}
    tab, prod = _run(**kw), _run(**kw, online_policy_class="product")
    assert prod["online/J"] <= tab["online/J"] + 1e-9 and np.isnan(prod["online/C"])
    with pytest.raises(UserError, match="online_policy_class"):
        make_config(M.Config, {"online_policy_class": "lstm"})


def test_dense_reward_depends_on_output_size_not_horizon():
    """Dense r* is i.i.d. over leaf indices, π_ref uniform, tabular Π = every leaf distribution
    and the RM uses the same features: (4, 2) and (2, 4) are one problem relabelled."""
    outs = [_run(generator="dense", tree=t, protocol="gift_tabular") for t in ("4x2", "2x4")]
    for key in ("offline/J", "online/J", "delta_C"):
        assert outs[0][key] == pytest.approx(outs[1][key], rel=1e-6)


# ---------------------------------------------------------------- the rule on constructed tables


def _table(cells, *, slope=1.0, noise=0.1, seeds=20, protocol="learned", seed=0):
    """A tidy h6 frame: per (cell, n, seed) a run whose n·d = slope·ΔC·(1 + noise·ε) and whose
    online n·regret is C_on times a positive noise (n·regret constant in n: no growth)."""
    rng = np.random.default_rng(seed)
    rows = []
    for cell, dc, c_off in cells:
        for n in (*D.RANK_N, *D.DOSE_N):
            for s in range(seeds):
                nd = slope * dc * (1 + noise * rng.standard_normal()) + noise * c_off * (
                    rng.standard_normal() if dc == 0 else 0.0
                )
                rid = f"{protocol}{cell}{n}{s}"
                base = {"run_id": rid, "experiment": "h6_gap", "cell": cell, "protocol": protocol}
                base |= {"n_pairs": n, "seed": s, "instance_seed": s}
                on = (c_off - dc) * (1 + 0.3 * rng.standard_normal() ** 2) / n
                vals = {
                    "offline/regret": on + nd / n,
                    "online/regret": on,
                    "offline/C": c_off,
                    "online/C": c_off - dc,
                    "delta_C": dc,
                    "delta_C_star": dc,
                    "offline/contains": 1.0,
                    "online/contains": 1.0,
                    "dims_gap": np.log1p(dc),
                    "gap": np.log1p(dc),
                    "rarest_count": 100.0,
                }
                for name, v in vals.items():
                    pipe, _, metric = name.rpartition("/")
                    rows.append({**base, "pipeline": pipe, "metric": metric, "value": v})
    return pd.DataFrame(rows)


GAP_CELLS = [("a", 4.0, 20.0), ("b", 20.0, 40.0), ("c", 60.0, 90.0)]
NULL_CELLS = [("z", 0.0, 20.0)]


def _frame(slope, ctrl_slope=1.0, noise=0.1, null_shift=0.0):
    df = _table([*GAP_CELLS, *NULL_CELLS], slope=slope, noise=noise)
    if null_shift:
        z = (df["cell"] == "z") & (df["pipeline"] == "offline") & (df["metric"] == "regret")
        df.loc[z, "value"] += null_shift * 20.0 / df.loc[z, "n_pairs"]
    ctrl = _table(GAP_CELLS, slope=ctrl_slope, noise=0.1, protocol="gift", seed=1)
    return pd.concat([df, ctrl], ignore_index=True)


def test_rule_supported_when_the_law_holds():
    dec = h6_rule.decide(_frame(1.0))
    assert (
        dec.p1.outcome == "holds" and dec.p2.outcome == "holds" and dec.control.outcome == "holds"
    )
    assert dec.verdict == "supported" and dec.held is True
    assert abs(dec.p1.value - 1.0) < 0.05 and dec.p1.ci_high - dec.p1.ci_low < 0.2


def test_rule_against_when_the_slope_misses_the_band_or_the_null_fails():
    low = h6_rule.decide(_frame(0.3))
    assert low.p1.outcome == "fails" and low.verdict == "against" and low.held is False
    high = h6_rule.decide(_frame(2.5))
    assert high.p1.outcome == "fails" and high.verdict == "against"
    # an advantage of 2 C̄_off where ΔC* = 0: P2 decides "greater"
    null = h6_rule.decide(_frame(1.0, null_shift=2.0))
    assert null.p2.outcome == "fails" and null.verdict == "against"


def test_rule_inconclusive_without_a_detecting_control_or_with_noise():
    blind = h6_rule.decide(_frame(1.0, ctrl_slope=0.2))
    assert blind.control.outcome == "fails" and blind.verdict == "inconclusive"
    noisy = h6_rule.decide(_frame(1.0, noise=3.0))
    assert noisy.verdict == "inconclusive" and noisy.p1.outcome == "undetermined"


def test_cells_outside_the_regime_or_misspecified_are_left_out():
    df = _frame(1.0)
    far = (df["cell"] == "c") & (df["metric"] == "rarest_count")
    df.loc[far, "value"] = 1.0  # the rarest leaf drawn once: not asymptotic
    dec = h6_rule.decide(df)
    assert dec.p1.n_cells == 2 * len(D.DOSE_N)  # a and b at both n; c out
    miss = _frame(1.0)
    bad = (miss["cell"] == "b") & (miss["metric"] == "contains") & (miss["seed"] < 10)
    miss.loc[bad & (miss["pipeline"] == "online"), "value"] = 0.0
    dec2 = h6_rule.decide(miss)
    # b flagged; a at both n, c only at 4096 (C_off/n = 90/1024 > REGIME_C at 1024)
    assert ("b",) in dec2.flagged and dec2.p1.n_cells == 3


def test_slope_power_by_hand():
    # cv = 0, any seeds: b̂ = 1 exactly, the interval is the point: power 1.
    assert h6_rule.slope_power(0.0, 5, 10) == 1.0
    # SE = 1/√(4·25) = 0.1: P(1 − 1.96·0.1 ≥ 0.67 …) = Φ((1.5 − 0.196 − 1)/0.1) − Φ((0.67 +
    # 0.196 − 1)/0.1) = Φ(3.04) − Φ(−1.34) = 0.9988 − 0.0901 = 0.909.
    assert h6_rule.slope_power(1.0, 4, 25) == pytest.approx(0.909, abs=2e-3)


def test_verdict_record_fields():
    v = M.verdict(_frame(1.0))
    rec = v.to_json()
    assert rec["verdict"] == "supported" and rec["n_runs"] > 0
    assert {"effect", "ci_low", "ci_high"} <= set(rec["positive_control"])
    assert "P1 slope" in rec["detail"] and "P2" in rec["detail"] and "P3" in rec["detail"]


def test_surface_plot_on_a_tidy_frame():
    from matplotlib.figure import Figure

    from gvgap import plots_h6 as plots

    table = h6_cells.dose_table(_frame(1.0))
    ax = plots.dose_response(table, Figure().subplots())
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
