"""H1–H5 (experiments h1–h5 and their shared verdict rule, hypothesis.py): SMOKE runs, the
exact helpers, the finite-compute trainers, and each verdict rule returning supported /
against / inconclusive on constructed tables."""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from gvgap import losses
from gvgap.envs.tree_env import make_env
from gvgap.experiments import common
from gvgap.experiments import h1_on_policy_signal as h1
from gvgap.experiments import h2_regularisation as h2
from gvgap.experiments import h3_optimisation as h3
from gvgap.experiments import h4_data as h4
from gvgap.experiments import h5_rm_generalisation as h5
from gvgap.experiments.base import make_config
from gvgap.experiments.registry import EXPERIMENTS
from gvgap.learners.sgd import dpo_grad, rloo_grad, run_steps
from gvgap.policies import TabularPolicy
from gvgap.theory import metrics

matplotlib.use("Agg")

MODULES = (h1, h2, h3, h4, h5)


def smoke(module, **changes) -> dict[str, float]:
    cfg = dataclasses.replace(module.SMOKE, **changes)
    return module.run(cfg, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))


@pytest.fixture(scope="module")
def outs() -> dict[str, dict[str, float]]:
    return {m.ID: smoke(m) for m in MODULES}


# ---------------------------------------------------------------- contract and SMOKE runs


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.ID)
def test_smoke_runs_with_every_compared_pipeline(module, outs) -> None:
    out = outs[module.ID]
    assert out and all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert module.ID in EXPERIMENTS
    for name in ["HYPOTHESIS", "PREDICTION", "HEADLINE", "TEST", "CONTROL", "MARGIN", "ROBUSTNESS"]:
        assert hasattr(module, name), name
    for c in (module.TEST, module.CONTROL, *module.REPORTED):
        assert f"{c.a}/{c.metric}" in out and f"{c.b}/{c.metric}" in out, c
    # the paper's online DPO round is in every comparison, with J and win rate
    rounds = [k for k in out if "round" in k.split("/")[0]]
    assert any(k.endswith("/J") for k in rounds) and any(k.endswith("/win_rate") for k in rounds)
    assert module.QUICK["seeds"] >= 20
    cell = {**module.QUICK["fixed"], **{k: v[0] for k, v in module.QUICK["grid"].items()}}
    assert all(cell.get(k) == v for k, v in module.HEADLINE.items())  # QUICK runs the headline
    for override in module.ROBUSTNESS:
        make_config(module.Config, {**module.QUICK["fixed"], **override})


def test_h1_local_rm_relabelling_is_the_theorem_not_an_arm(outs) -> None:
    """docs/theory.md §6.7 (gvgap verify item 7): exact BT labels σ(r̂(a) − r̂(b)) from π_off's
    own implicit reward leave π_off stationary, on off-policy pairs and through every round
    of the on-policy loop alike — an identity, so h1 keeps it out of its arms (they share the
    R_sim RM or r*) and leaves it to `gvgap verify`."""
    from gvgap.learners import dpo

    cfg = h1.SMOKE
    rng = np.random.default_rng(0)
    env, data, grid, split = common.prepare(cfg, rng, np.random.default_rng(1))
    off = common.fit_dpo(env, data, grid, split)
    pol = common.tabular_policy(env)
    x, a, b = h1.pair_draw(env.logp_ref, env.rho, 9, rng)
    both = h1.Preferences.concat([data, h1.soft_labels(x, a, b, off.r_hat)])
    refit = dpo(pol, env, both, lam=off.lam, theta0=off.params)
    assert env.objective(refit.logp) == pytest.approx(env.objective(off.logp), abs=1e-7)
    looped = h1.on_policy_loop(pol, env, data, off, off.r_hat, 9, 3, rng)
    assert env.objective(looped.logp) == pytest.approx(env.objective(off.logp), abs=1e-7)
    told = h1.Preferences.concat([data, h1.soft_labels(x, a, b, env.r_star)])
    moved = dpo(pol, env, told, lam=off.lam, theta0=off.params)
    assert abs(env.objective(moved.logp) - env.objective(off.logp)) > 1e-3  # r* teaches
    arms = {k.split("/")[0] for k in outs[h1.ID]}
    assert {"on_rm", "off_rm", "on_true", "off_true"} <= arms
    assert not {"relabel", "relabel_exact"} & arms


def test_h1_on_policy_loop_spends_the_budget_over_the_rounds(monkeypatch) -> None:
    """The on-policy arm labels exactly B pairs in total, B/rounds per round (the remainder to
    the first rounds), each round drawn from the policy of the previous fit."""
    seen: list[int] = []
    real = h1.pair_draw

    def spy(logp, rho, n, rng):
        seen.append(n)
        return real(logp, rho, n, rng)

    monkeypatch.setattr(h1, "pair_draw", spy)
    cfg = h1.SMOKE
    rng = np.random.default_rng(0)
    env, data, grid, split = common.prepare(cfg, rng, np.random.default_rng(1))
    off = common.fit_dpo(env, data, grid, split)
    h1.on_policy_loop(common.tabular_policy(env), env, data, off, env.r_star, 11, 4, rng)
    assert seen == [3, 3, 3, 2]


def test_h5_reference_free_local_rm_equals_dpo_implicit_under_uniform_ref(outs) -> None:
    """With uniform π_ref, log π_ref is constant per prompt, so β log π and β log π/π_ref
    rank identically (and the fits coincide mod constants): same accuracies."""
    out = outs[h5.ID]
    for q in ("ref", "opt"):
        assert out[f"rm_reffree/acc_{q}"] == pytest.approx(out[f"rm_local/acc_{q}"], abs=1e-6)
    assert 1 <= out["match_factor"] <= max(h5.FACTORS)


# ---------------------------------------------------------------- exact helpers


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
    old, metrics.ACC_BLOCK = metrics.ACC_BLOCK, 7
    try:
        assert h5.pairwise_accuracy(noisy, r, q, rho) == pytest.approx(full, abs=1e-12)
    finally:
        metrics.ACC_BLOCK = old


def test_snap_ties_merges_only_near_ties() -> None:
    r = np.array([[0.0, 1e-9, 3e-9, 0.5, 0.5 + 2e-6, 2.0]])
    s = h5.snap_ties(r)
    assert len(np.unique(s[0])) == 3 and s[0, 5] == 2.0
    assert h5.parse_bon(h5.bon_pipeline("tabular", 16)) == ("tabular", 16)
    assert h5.parse_bon("dpo") is None


def test_val_loglik_hand_derived_two_leaves() -> None:
    # One prompt, q = (1/2, 1/2), r* = (0, 1), r̂ = (0, 2). Ordered pairs (a, b) with a ≠ b,
    # weight 1/4 each: (1,0): σ(1) log σ(2); (0,1): σ(−1) log σ(−2). Diagonal pairs: r̂ tie,
    # σ(0) log σ(0) = ½ log ½ each, weight 1/4, two of them.
    from scipy.special import expit, log_expit

    q = np.log(np.array([[0.5, 0.5]]))
    want = 0.25 * (expit(1) * log_expit(2) + expit(-1) * log_expit(-2)) + 0.25 * np.log(0.5)
    got = h5.val_loglik(np.array([[0.0, 2.0]]), np.array([[0.0, 1.0]]), q, np.ones(1))
    assert got == pytest.approx(want, abs=1e-12)


def test_per_prompt_linear_reward_vjp_and_no_pooling() -> None:
    rng = np.random.default_rng(0)
    rc = h4.PerPromptLinearReward(rng.normal(size=(3, 5, 2)))
    w, g = rng.normal(size=6), rng.normal(size=(3, 5))
    eps = 1e-6
    fd = [
        ((rc.leaf_reward(w + eps * e) - rc.leaf_reward(w - eps * e)) * g).sum() / (2 * eps)
        for e in np.eye(6)
    ]
    np.testing.assert_allclose(rc.vjp(w, g), fd, atol=1e-6)
    w2 = w.copy()
    w2[:2] += 1.0  # prompt 0's weights only
    diff = rc.leaf_reward(w2) - rc.leaf_reward(w)
    assert np.abs(diff[1:]).max() == 0.0 and np.abs(diff[0]).max() > 0


def test_dpo_data_only_leaves_unseen_completions_unregularised() -> None:
    """With a huge λ the data-only prior pins r_θ = 0 on D's completions only: the
    completions D shows keep their π_ref probability ratios (r ≈ 0 there)."""
    env = h2.build_env(h2.SMOKE, np.random.default_rng(2))
    from gvgap.data import Preferences

    data = Preferences(np.zeros(2, int), np.array([0, 2]), np.array([1, 3]), np.ones(2))
    pol = TabularPolicy(env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref)
    res = h2.dpo_data_only(pol, env, data, lam=1e6)
    r = env.beta * (res.logp - env.logp_ref)
    assert np.abs(r[0, :4]).max() < 1e-3
    weak = h2.dpo_data_only(pol, env, data, lam=1e-3)
    rw = env.beta * (weak.logp - env.logp_ref)
    assert rw[0, 0] - rw[0, 1] > 1.0  # the data term dominates: chosen above rejected
    assert weak.grad_norm < 1e-6


def test_adam_and_sgd_minimise_a_quadratic() -> None:
    target = np.array([1.0, -2.0])
    for opt, lr in (("adam", 0.05), ("sgd", 0.1)):
        th, saved = run_steps(lambda t: 2 * (t - target), np.zeros(2), steps=400, lr=lr,
                              optimiser=opt, checkpoints=(10, 400))  # fmt: skip
        np.testing.assert_allclose(th, target, atol=1e-3)
        assert set(saved) == {10, 400}
        np.testing.assert_array_equal(saved[400], th)


def _tiny_env(seed: int = 0):
    rng = np.random.default_rng(seed)
    return make_env(vocab=2, horizon=2, n_prompts=2, beta=0.7,
                    r_star=rng.normal(size=(2, 4)), ref="random", rng=rng)  # fmt: skip


def test_rloo_gradient_is_unbiased() -> None:
    """Mean of many RLOO estimates = the exact gradient of −J_r̂ (losses.reverse_kl_objective
    through the policy's VJP), within Monte Carlo error."""
    env = _tiny_env(1)
    pol = TabularPolicy(env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref)
    theta = pol.init_params() + np.random.default_rng(2).normal(size=pol.n_params) * 0.3
    r = env.r_star
    _, g_leaf = losses.reverse_kl_objective(pol.leaf_logp(theta), r, env.logp_ref, env.beta,
                                            env.rho)  # fmt: skip
    exact = pol.vjp(theta, g_leaf)
    grad = rloo_grad(pol, env, r, prompts=64, k=4, rng=np.random.default_rng(3))
    est = np.mean([grad(theta) for _ in range(3000)], axis=0)
    np.testing.assert_allclose(est, exact, atol=0.02)


def test_dpo_minibatch_gradient_is_unbiased() -> None:
    from gvgap.data import sample_pairs
    from gvgap.learners.offline import preference_fit  # noqa: F401 (objective reference)

    env = _tiny_env(4)
    pol = TabularPolicy(env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref)
    data = sample_pairs(env.logp_ref, env.r_star, env.rho, 10, np.random.default_rng(5))
    theta = pol.init_params() + 0.2
    full = dpo_grad(pol, env, data, lam=0.3, batch=len(data), rng=np.random.default_rng(6))
    # exact full-batch gradient: average over all rows (batch = all rows, each once)
    p, c, r = data.prompt, data.chosen, data.rejected
    lp = pol.leaf_logp(theta)
    ref = env.logp_ref
    _, (dc, dr) = losses.dpo_loss(lp[p, c], lp[p, r], ref[p, c], ref[p, r], env.beta,
                                  data.weight)  # fmt: skip
    from gvgap.learners.offline import scatter

    g = scatter(dc, p, c, lp.shape) + scatter(dr, p, r, lp.shape)
    g = g + env.beta * (0.3 / len(data)) * losses.centred_sq(env.beta * (lp - ref))[1]
    exact = pol.vjp(theta, g)
    est = np.mean([full(theta) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(est, exact, atol=0.01)


# ---------------------------------------------------------------- verdict rules


def table(module, d_test: np.ndarray, d_ctrl: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """A tidy table at the module's headline cell: per seed i, the test contrast's pipelines
    differ by d_test[i] and the control's by d_ctrl[i] (on their metrics), around random
    base values."""
    rng = np.random.default_rng(seed)
    t, c = module.TEST, module.CONTROL
    rows = []
    for i in range(len(d_test)):
        vals = {}
        vals[(t.b, t.metric)] = rng.uniform(0.2, 0.6)
        vals[(t.a, t.metric)] = vals[(t.b, t.metric)] + d_test[i]
        if (c.b, c.metric) in vals:
            vals[(c.a, c.metric)] = vals[(c.b, c.metric)] + d_ctrl[i]
        elif (c.a, c.metric) in vals:
            vals[(c.b, c.metric)] = vals[(c.a, c.metric)] - d_ctrl[i]
        else:
            vals[(c.b, c.metric)] = rng.uniform(0.2, 0.6)
            vals[(c.a, c.metric)] = vals[(c.b, c.metric)] + d_ctrl[i]
        for (p, m), v in vals.items():
            rows.append({"run_id": i, "seed": i, "instance_seed": i, "pipeline": p, "metric": m,
                         "value": float(v)})  # fmt: skip
    return pd.DataFrame(rows).assign(**module.HEADLINE)


def _effects(module, kind: str, rng) -> tuple[np.ndarray, np.ndarray]:
    n, big = 24, 0.3
    noise = 0.1 * rng.normal(size=n)
    detects = big + noise
    tiny = 0.002 * rng.normal(size=n)
    predicted = {"greater": big + noise, "less": -big + noise, "equivalent": tiny}
    other = {"greater": -big + noise, "less": big + noise, "equivalent": big + noise}
    p = PREDICTED[module.ID]
    if kind == "supported":
        return predicted[p], detects
    if kind == "against":
        return other[p], detects
    if kind == "no_control":  # prediction shown, but the control does not detect
        return predicted[p], 0.3 * rng.normal(size=n)
    return 0.05 * rng.normal(size=n) + 0.2 * rng.normal(size=n), detects  # undetermined


PREDICTED = {m.ID: m.PREDICTED for m in MODULES}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.ID)
@pytest.mark.parametrize(
    ("kind", "label", "held"),
    [("supported", "supported", True), ("against", "against", False),
     ("no_control", "inconclusive", True), ("undetermined", "inconclusive", False)],
)  # fmt: skip
def test_verdict_rule_returns_each_outcome(module, kind, label, held) -> None:
    d_test, d_ctrl = _effects(module, kind, np.random.default_rng(7))
    df = table(module, d_test, d_ctrl)
    v = module.verdict(df)
    assert v.verdict == label, v.detail
    assert v.prediction_held is held, v.detail
    assert v.hypothesis == module.HYPOTHESIS
    assert v.n_runs == len(d_test)
    assert v.ci_low <= v.effect <= v.ci_high
    assert set(v.positive_control) == {"effect", "ci_low", "ci_high"}
    assert v.positive_control["effect"] == pytest.approx(d_ctrl.mean(), abs=1e-12)
    rec = v.to_json()
    assert rec["prediction_held"] is held and rec["positive_control"]["ci_low"] <= rec[
        "positive_control"]["ci_high"]  # fmt: skip


def test_missing_headline_is_inconclusive() -> None:
    d = np.full(10, 0.3)
    df = pd.concat([table(h1, d, d).assign(n_pairs=999), table(h1, d, d).assign(n_pairs=998)])
    v = h1.verdict(df)
    assert v.verdict == "inconclusive" and v.n_runs == 0


def test_holm_across_cells_can_remove_a_marginal_headline() -> None:
    """The headline decision is Holm-adjusted across the cells present: a headline effect
    significant alone becomes undetermined when many null cells join the family."""
    rng = np.random.default_rng(11)
    n = 8
    d = 0.05 + 0.06 * rng.normal(size=n)  # marginal superiority at n = 8
    head = table(h1, d, np.full(n, 0.5) + 0.01 * rng.normal(size=n))
    alone = h1.verdict(head)
    others = [table(h1, 0.05 * rng.normal(size=n), np.full(n, 0.5), seed=s).assign(n_pairs=100 + s)
              for s in range(6)]  # fmt: skip
    fam = h1.verdict(pd.concat([head, *others], ignore_index=True))
    assert fam.verdict in ("inconclusive", alone.verdict)
    p_alone = float(alone.detail.split("p> ")[1].split(",")[0])
    p_fam = float(fam.detail.split("p> ")[1].split(",")[0])
    assert p_fam >= p_alone


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.ID)
def test_plot_returns_axes(module) -> None:
    rng = np.random.default_rng(0)
    df = table(module, 0.3 + 0.1 * rng.normal(size=20), 0.3 + 0.1 * rng.normal(size=20))
    ax = module.plot(df)
    assert ax.get_title()
    matplotlib.pyplot.close("all")


def test_identities_are_cross_referenced_in_verify() -> None:
    """The identities H1, H3 and H5 used to report are checks of `gvgap verify`."""
    from gvgap import verify

    names = {c.name for c in verify.CHECKS}
    assert set(verify.HYPOTHESIS_IDENTITIES) <= names
    used = " ".join(u for v in verify.HYPOTHESIS_IDENTITIES.values() for u in v)
    for eid in (h1.ID, h3.ID, h5.ID):
        assert eid in used
    table = verify.format_table(
        [verify.evaluate(i, [0.0]) for i, c in enumerate(verify.CHECKS) if not c.control]
    )
    assert "relabel_no_information: h1_on_policy_signal" in table


def test_a_single_other_cell_is_read_as_the_headline() -> None:
    """A robustness re-check holds one setting other than the headline: it is decided there
    (with 6 seeds a one-sided signed-rank test can reach p = 1/64)."""
    rng = np.random.default_rng(3)
    d = 0.3 + 0.05 * rng.normal(size=6)
    df = table(h1, -d, d).assign(vocab=4)
    v = h1.verdict(df)
    assert v.verdict == "against" and v.n_runs == 6


def test_headline_effect_is_read_in_the_decided_cell_only() -> None:
    """H4's grid sweeps extra_factor ∈ {1, 4}, which HEADLINE leaves open: the verdict is read
    at HEAD_CELL (extra_factor = the Config default, what the quick run reads), and its effect,
    positive control and n come from that cell alone, never from both cells pooled (which
    would double n with duplicated seeds and mix the control's two settings)."""
    rng = np.random.default_rng(5)
    n = 20
    tiny = 0.002 * rng.normal(size=n)
    at_default = table(h4, 0.3 + tiny, np.full(n, 0.4) + 0.05 * rng.normal(size=n)).assign(
        extra_factor=h4.Config.extra_factor
    )
    other = table(h4, tiny, np.full(n, -0.4), seed=1).assign(extra_factor=1.0)
    other["run_id"] += n
    v = h4.verdict(pd.concat([other, at_default], ignore_index=True))
    assert v.n_runs == n, v.detail
    assert v.effect == pytest.approx(0.3 + tiny.mean(), abs=1e-12)
    assert v.positive_control["effect"] > 0.3, v.detail
    assert v.verdict == "supported", v.detail


def test_h5_matched_pool_is_nested_in_d() -> None:
    """H5's matched local RM is D plus more pairs (its design): the pool's first n pairs are D
    itself, so every prefix of n·f pairs contains D (it used to be an independent draw)."""
    cfg = h5.SMOKE
    rng = np.random.default_rng(0)
    env, data, _, _ = common.prepare(cfg, rng, np.random.default_rng(1))
    pool = h5.nested_pool(env, data, 4 * len(data), rng)
    assert len(pool) == 4 * len(data)
    for f in ("prompt", "chosen", "rejected", "weight"):
        np.testing.assert_array_equal(getattr(pool, f)[: len(data)], getattr(data, f))


def test_reported_lines_and_notes_are_read_in_the_decided_cell() -> None:
    """In a robustness re-check (one cell other than HEADLINE) the reported contrasts and
    H5's match note come from that cell (they used to be read at HEADLINE: empty there)."""
    rng = np.random.default_rng(4)
    n = 8
    df = table(h5, 0.3 + 0.05 * rng.normal(size=n), 0.3 + 0.05 * rng.normal(size=n))
    extra = []
    for i in range(n):
        base = {"run_id": i, "seed": i, "instance_seed": i}
        extra += [
            {**base, "pipeline": "rm_linear", "metric": "acc_ref", "value": 0.9},
            {**base, "pipeline": "rm_local_matched", "metric": "acc_ref", "value": 0.8},
            {**base, "pipeline": "", "metric": "matched", "value": 1.0},
            {**base, "pipeline": "", "metric": "match_factor", "value": 4.0},
        ]
    df = pd.concat([df, pd.DataFrame(extra).assign(**h5.HEADLINE)], ignore_index=True)
    v = h5.verdict(df.assign(vocab=4))
    assert "Matched held-out likelihood in 100% of runs (median data factor 4)" in v.detail, (
        v.detail
    )
    assert "ID acc linear − matched local (acc_ref) +0.1 [+0.1, +0.1]" in v.detail, v.detail


def test_headline_rows_on_a_recheck_table_are_its_rows_not_empty() -> None:
    """A robustness re-check overrides the headline's vocab: its figure shows its one cell
    (as its verdict does); a table holding the headline keeps only the headline's rows; a
    table of two other cells shows nothing rather than pooling them."""
    from gvgap.experiments import hypothesis

    base = hypothesis.synthetic_table({"a": np.ones(3)}, cell={"vocab": 3, "n_pairs": 16})
    other = base.assign(vocab=2)
    head = {"vocab": 3, "n_pairs": 16}
    assert len(hypothesis.headline_rows(other, head)) == len(other)
    both = pd.concat([base, other])
    assert (hypothesis.headline_rows(both, head)["vocab"] == 3).all()
    two_others = pd.concat([other, base.assign(vocab=4)])
    assert hypothesis.headline_rows(two_others, head).empty


# ---------------------------------------------------------------- the issue-17 designs


def test_h2_completions_of_the_data_only_optimum_hand_derived() -> None:
    """One prompt, leaves 0–3, leaves 0 and 1 seen with P = 0.5 and 0.3 (unseen mass 0.2);
    π_ref = (.25, .25, .4, .1). Min-KL member: the unseen mass ∝ π_ref → (0.16, 0.04). Bad
    member: r* = (0, 0, 1, 0) on the unseen leaves (1, 0), median 0.5, so all 0.2 on leaf 3."""
    logp = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    ref = np.log(np.array([[0.25, 0.25, 0.4, 0.1]]))
    seen = np.array([[True, True, False, False]])
    got = np.exp(h2.min_kl_completion(logp, ref, seen))
    np.testing.assert_allclose(got, [[0.5, 0.3, 0.16, 0.04]], atol=1e-12)
    bad = np.exp(h2.worst_completion(logp, ref, np.array([[0.0, 0.0, 1.0, 0.0]]), seen))
    np.testing.assert_allclose(bad, [[0.5, 0.3, 0.0, 0.2]], atol=1e-12)


def test_h2_unseen_mass_does_not_change_the_data_only_objective() -> None:
    """The data-only DPO objective depends on the completions D never shows only through their
    total mass: the min-KL and the bad member of the optimal set have the same DPO loss and
    data term (so the positive control's arm is an optimum of the same objective)."""
    from gvgap import losses

    env = h2.build_env(dataclasses.replace(h2.SMOKE, vocab=3), np.random.default_rng(2))
    data = common.draw_pairs(env, 6, np.random.default_rng(3))
    leaf = h2.leaf_class(env)
    res = h2.dpo_data_only(leaf, env, data, lam=0.1)
    seen = np.zeros(env.logp_ref.shape, bool)
    seen[data.prompt, data.chosen] = seen[data.prompt, data.rejected] = True
    assert (~seen).sum() >= 2

    def objective(lp):
        p, c, r = data.prompt, data.chosen, data.rejected
        v, _ = losses.dpo_loss(lp[p, c], lp[p, r], env.logp_ref[p, c], env.logp_ref[p, r],
                               env.beta, data.weight)  # fmt: skip
        rew = np.where(seen, env.beta * (lp - env.logp_ref), 0.0)
        return v + 0.5 * 0.1 / data.weight.sum() / lp.shape[0] * (rew**2).sum()

    bad = h2.worst_completion(res.logp, env.logp_ref, env.r_star, seen)
    assert objective(bad) == pytest.approx(objective(res.logp), abs=1e-12)
    assert env.objective(bad) < env.objective(res.logp)
    assert res.grad_norm < 1e-6


def test_h2_on_policy_arm_is_matched_in_kl() -> None:
    """The on-policy arm reaches the data-only arm's KL(π‖π_ref) to 1e-6 (relative), on the
    node-logit and the leaf form of the tabular class alike (one class, two coordinates)."""
    env, data, grid, split = common.prepare(h2.SMOKE, np.random.default_rng(0),
                                          np.random.default_rng(1))  # fmt: skip
    leaf = h2.leaf_class(env)
    dd, on, err = h2.data_vs_onpolicy(leaf, env, data, grid, split)
    assert err < 1e-6
    assert h2.kl_ref(env, on.logp) == pytest.approx(h2.kl_ref(env, dd.logp), rel=1e-6)
    tab = common.tabular_policy(env)
    dd_t = h2.dpo_data_only(tab, env, data, lam=dd.lam)
    np.testing.assert_allclose(np.exp(dd_t.logp), np.exp(dd.logp), atol=1e-6)


def test_h3_paths_and_the_split_of_the_shortfall() -> None:
    """DPO's λ-path and soft RL's β'-path hit a requested KL; the J shortfall of an iterate is
    the part along its path (early stopping) plus the part off it, exactly."""
    cfg = h3.SMOKE
    env, data, grid, split = common.prepare(cfg, np.random.default_rng(0), np.random.default_rng(1))
    pol = common.tabular_policy(env)
    off = common.fit_dpo(env, data, grid, split)
    kappa = 0.5 * h2.kl_ref(env, off.logp)
    lp = h3.dpo_path_at_kl(env, pol, data, kappa, off.params)
    assert h2.kl_ref(env, lp) == pytest.approx(kappa, rel=1e-5)
    rm = common.fit_rlhf(env, data, "linear", grid, split)
    matched = common.match_kl(env, rm.r_hat, kappa)
    assert matched is not None and h2.kl_ref(env, matched[0]) == pytest.approx(kappa, rel=1e-9)
    out = smoke(h3)
    for p in ("dpo_sgd", "rlhf_sgd"):
        if f"{p}/stop_reg" in out:
            total = out[f"{p}/stop_reg"] + out[f"{p}/stop_opt"]
            assert total == pytest.approx(out[f"{p}/shortfall"], abs=1e-12)
        assert out[f"{p}/kl_to_opt"] >= 0
    assert out["kl_matched"] == 1.0  # RLHF's optimum at DPO's KL from π_ref


def test_h4_pooling_is_the_only_difference_of_its_arms() -> None:
    """With one prompt, pooled and per-prompt RMs are the same estimator (identical J); with
    per-prompt r* (shared_reward = false) the base features are recovered from the block
    features e_x ⊗ φ and r* differs across prompts."""
    one = smoke(h4, n_prompts=1)
    assert one["rlhf_pooled/J"] == pytest.approx(one["rlhf_same/J"], abs=1e-7)
    cfg = dataclasses.replace(h4.SMOKE, shared_reward=False)
    env = h4.build_env(cfg, np.random.default_rng(1))
    phi = h4.shared_features(env, cfg.k)
    assert phi.shape == (cfg.n_prompts, env.n_leaves, cfg.k)
    np.testing.assert_allclose(phi[0], phi[1])
    assert np.abs(env.r_star[0] - env.r_star[1]).max() > 1e-6
    shared = h4.build_env(h4.SMOKE, np.random.default_rng(1))
    np.testing.assert_allclose(shared.r_star[0], shared.r_star[1])
    with pytest.raises(Exception, match="shared_reward"):
        make_config(h4.Config, {"per_prompt_weights": True})


def test_h5_match_uses_held_out_likelihood_not_r_star(outs) -> None:
    """A matched run has the local RM's held-out BT log-likelihood at or above the linear
    RM's on the same held-out pairs (the match never reads r*)."""
    out = outs[h5.ID]
    if out["matched"]:
        assert out["rm_local_matched/heldout_ll"] >= out["rm_linear/heldout_ll"]
    assert np.isfinite(out["rm_linear/heldout_ll"])


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.ID)
def test_design_blocks_and_paper_position(module) -> None:
    """The confirmatory sweep runs on the CONFIRM block, the pilot on its own block, and the
    paper's position is stated with the verdict that agrees with it."""
    from gvgap.experiments import hypothesis

    assert module.QUICK["seed_start"] == hypothesis.CONFIRM_BLOCK
    assert module.PILOT["seed_start"] == hypothesis.PILOT_BLOCK != hypothesis.DEV_BLOCK
    assert module.PILOT["fixed"] == module.QUICK["fixed"]
    assert module.PAPER_EXPECTS == "against" and module.PAPER_POSITION
    assert module.PREDICTED == module.CONTROL_EXPECTED == "greater"
    for k in ("mechanism", "design", "test", "positive control"):
        assert f"**{k}" in module.__doc__.lower(), k


def test_plan_seeds_reaches_the_target_power_and_powers_the_rechecks() -> None:
    """The plan gives the fewest seeds (within the bounds) at which the positive control's
    one-sided signed-rank test has ≥ 80 % power at the pilot's effect, the same seeds to every
    re-check, and the test's powers beside; a huge effect gets the floor."""
    from gvgap import inference
    from gvgap.experiments import hypothesis

    rng = np.random.default_rng(0)
    pilot_ctrl = 0.5 + rng.standard_normal(12)
    df = table(h1, 0.1 * rng.standard_normal(12), pilot_ctrl)
    plan = h1.plan_seeds(df)
    lo, hi = hypothesis.SEED_BOUNDS
    assert lo <= plan["seeds"] <= hi and plan["robust_seeds"] == plan["seeds"]
    assert plan["power"] == plan["robust_power"] >= inference.TARGET_POWER
    fewer = inference.power(
        pilot_ctrl, plan["seeds"] - 1, test="greater", rng=np.random.default_rng(0)
    )
    assert plan["seeds"] == lo or fewer < inference.TARGET_POWER
    assert {"control", "test"} <= set(plan["parts"])
    huge = h1.plan_seeds(table(h1, np.zeros(12), 5.0 + 0.1 * rng.standard_normal(12)))
    assert huge["seeds"] == lo and huge["power"] > 0.99


def test_verdict_record_says_what_it_means() -> None:
    """The record `gvgap reproduce` writes for an H1–H5 experiment: the paper's position, the
    verdict's consistency with it (against = the paper's for H1–H5), the seeds and power of the
    plan, and each re-check with its setting, verdict, effect, seeds and the plan's power."""
    from gvgap.reproduce import experiment_record

    main = {"verdict": "against", "effect": -0.02, "ci_low": -0.05, "ci_high": 0.01}
    plan = {"seeds": 20, "power": 0.9, "robust_seeds": 20, "robust_power": 0.9}
    checks = [({"beta": 0.1}, {"verdict": "inconclusive", "effect": 0.0, "ci_low": -0.1,
                              "ci_high": 0.1}, 20)]  # fmt: skip
    rec = experiment_record(main, checks, eid=h2.ID, plan=plan, seeds=20)
    assert rec["paper_position"] == h2.PAPER_POSITION and rec["consistent_with_paper"] == "yes"
    assert rec["seeds"] == 20 and rec["power"] == 0.9 and rec["robust"] is False
    (c,) = rec["robustness"]
    assert c["override"] == {"beta": 0.1} and c["seeds"] == 20 and c["power"] == 0.9
    assert c["verdict"] == "inconclusive" and {"effect", "ci_low", "ci_high"} <= set(c)
    other = experiment_record({**main, "verdict": "supported"}, [], eid=h4.ID, plan=plan)
    assert other["consistent_with_paper"] == "no"
    undecided = experiment_record({**main, "verdict": "inconclusive"}, [], eid=h1.ID, plan=plan)
    assert undecided["consistent_with_paper"] == "undecided"
