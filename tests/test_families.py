"""Gap problem families and feature dictionaries (gvgap.envs.families, gvgap.envs.features)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp

from gvgap.envs import features
from gvgap.envs.families import FAMILIES, gap_descriptor, make_family
from gvgap.envs.tree_env import make_env
from gvgap.errors import UserError
from gvgap.theory import leaf_tokens, tokens_to_leaf

# V=2, H=2 by hand (leaf index = 2 a_1 + a_2, first token most significant):
#   leaf 0: (0, 0)   leaf 1: (0, 1)   leaf 2: (1, 0)   leaf 3: (1, 1)
TOK_22 = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])


def _env(name: str, seed: int = 0, **knobs):
    return make_family(name, rng=np.random.default_rng(seed), **knobs)


# ---------------------------------------------------------------- feature builders


def test_leaf_tokens_match_hand_enumeration():
    np.testing.assert_array_equal(leaf_tokens(2, 2), TOK_22)


def test_feature_builders_hand_case():
    # counts (#0, #1): (0,0)->(2,0), (0,1)->(1,1), (1,0)->(1,1), (1,1)->(0,2)
    np.testing.assert_array_equal(
        features.token_counts(TOK_22, 2), [[2, 0], [1, 1], [1, 1], [0, 2]]
    )
    # position_token columns (h0:a=0, h0:a=1, h1:a=0, h1:a=1)
    np.testing.assert_array_equal(
        features.position_token(TOK_22, 2),
        [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]],
    )
    # bigrams: each leaf has one window, its own bigram, column 2 g_1 + g_2 = leaf index
    np.testing.assert_array_equal(features.ngram_indicators(TOK_22, 2, 2), np.eye(4))
    # unigrams are token counts
    np.testing.assert_array_equal(
        features.ngram_indicators(TOK_22, 2, 1), features.token_counts(TOK_22, 2)
    )


def test_ngram_counts_repeated_windows():
    # V=3: (1,1,1) has the bigram (1,1) (column 3*1+1 = 4) twice; (2,0,1): (2,0)->6, (0,1)->1
    phi = features.ngram_indicators(np.array([[1, 1, 1], [2, 0, 1]]), 3, 2)
    expected = np.zeros((2, 9))
    expected[0, 4] = 2
    expected[1, [6, 1]] = 1
    np.testing.assert_array_equal(phi, expected)
    with pytest.raises(UserError, match="ngram_n"):
        features.ngram_indicators(TOK_22, 2, 3)


def test_check_indicators_hand_case():
    # sums 0,1,1,2: ≡ 0 (mod 2) for leaves 0 and 3; last = first for leaves 0 and 3;
    # motif (0,1) only in leaf 1
    np.testing.assert_array_equal(features.check_indicator(TOK_22, 2, "sum_mod"), [1, 0, 0, 1])
    np.testing.assert_array_equal(
        features.check_indicator(TOK_22, 2, "ends_with_first"), [1, 0, 0, 1]
    )
    np.testing.assert_array_equal(
        features.check_indicator(TOK_22, 2, "motif", motif=(0, 1)), [0, 1, 0, 0]
    )


def test_dictionary_subsets_and_dense():
    tok = leaf_tokens(3, 3)
    full = features.dictionary("position_token", tok, 3, np.random.default_rng(0))
    sub = features.dictionary("position_token", tok, 3, np.random.default_rng(0), k=4)
    assert full.shape == (27, 9) and sub.shape == (27, 4)
    assert all(any(np.array_equal(c, f) for f in full.T) for c in sub.T)
    d1 = features.dictionary("dense", tok, 3, np.random.default_rng(5), k=3)
    np.testing.assert_array_equal(d1, features.dense_random(27, 3, np.random.default_rng(5)))
    with pytest.raises(UserError, match="k must be in"):
        features.dictionary("counts", tok, 3, np.random.default_rng(0), k=4)
    with pytest.raises(UserError, match="dictionary"):
        features.dictionary("nope", tok, 3, np.random.default_rng(0), k=1)
    z = features.standardize(full)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-12)


# ---------------------------------------------------------------- every family builds


def _knobs(name: str, vocab: int, horizon: int) -> dict:
    k = 1 if vocab**horizon <= 2 else 3
    out = {"vocab": vocab, "horizon": horizon, "n_prompts": 2, "k": k}
    if name == "misspec" and vocab**horizon > 4:
        out["epsilon"] = 0.5
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("vocab,horizon", [(2, 1), (2, 3), (3, 4)])
def test_family_shapes_and_info(name, vocab, horizon):
    kn = _knobs(name, vocab, horizon)
    env = _env(name, **kn)
    n = vocab**horizon
    assert env.r_star.shape == (2, n)
    assert env.features.shape == (2, n, kn["k"])
    assert np.isfinite(env.r_star).all() and np.isfinite(env.features).all()
    assert env.info["family"] == name and env.info["k"] == kn["k"]
    gap = env.info["gap"]
    assert gap["n_params_pi"] == 2 * (n - 1) and gap["n_params_r"] == kn["k"]
    assert all(isinstance(v, float) for v in gap.values())
    assert 0 < gap["distinct_frac_pi"] <= 1


def test_knobs_are_documented_with_defaults():
    for fam in FAMILIES.values():
        assert fam.summary and callable(fam.make)
        for key, doc in fam.knobs.items():
            assert doc and ("default" in doc or key in ("vocab", "horizon")), key


def test_rewards_are_order_one():
    for name in FAMILIES:
        kn = {"vocab": 3, "horizon": 4, "k": 3, **({"epsilon": 0.3} if name == "misspec" else {})}
        gap = _env(name, **kn).info["gap"]
        assert 0.5 < gap["r_star_std"] < 4 and 0.2 < gap["kl_star_ref"] < 3, name


# ---------------------------------------------------------------- reward classes


def _span_residual(r: np.ndarray, feats: np.ndarray) -> float:
    """Max relative least-squares residual of r[x] on the columns of feats[x]."""
    out = 0.0
    for x in range(r.shape[0]):
        w = np.linalg.lstsq(feats[x], r[x], rcond=None)[0]
        out = max(out, np.linalg.norm(r[x] - feats[x] @ w) / np.linalg.norm(r[x]))
    return out


@pytest.mark.parametrize("dictionary", ["dense", "counts", "position_token", "ngram"])
@pytest.mark.parametrize("per_prompt", [False, True])
def test_linear_reward_lies_in_feature_span(dictionary, per_prompt):
    env = _env(
        "linear",
        vocab=3,
        horizon=4,
        n_prompts=2,
        k=3,
        dictionary=dictionary,
        per_prompt_weights=per_prompt,
    )
    assert _span_residual(env.r_star, env.features) < 1e-12
    np.testing.assert_allclose(env.r_star, env.features @ env.info["w_star"], atol=1e-12)
    np.testing.assert_allclose(env.r_star.std(axis=1), 2.0)  # reward_scale default
    assert env.info["gap"]["misspec_frac"] < 1e-20


@pytest.mark.parametrize("residual", ["noise", "policy"])
def test_misspec_leaves_feature_span_by_epsilon(residual):
    eps = 0.5
    env = _env("misspec", vocab=3, horizon=4, k=3, epsilon=eps, residual=residual)
    assert _span_residual(env.r_star, env.features) > 0.1
    # the residual is ⊥ span{1, φ} with std ε·scale: a fraction ε²/(1+ε²) of Var r*
    np.testing.assert_allclose(env.info["gap"]["misspec_frac"], eps**2 / (1 + eps**2))
    exact = _env("misspec", vocab=3, horizon=4, k=3, epsilon=0.0, residual=residual)
    assert _span_residual(exact.r_star, exact.features) < 1e-12


@pytest.mark.parametrize("ref", ["uniform", "random"])
def test_policy_complex_is_a_normalised_local_reward(ref):
    # r* = β(log P_π − log P_ref) ⇒ Σ_ξ P_ref e^{r*/β} = Σ_ξ P_π = 1 (docs/theory.md §3), and
    # P*_{r*} ∝ P_ref e^{r*/β} = P_π.
    beta = 0.5
    env = _env("policy_complex", vocab=3, horizon=3, n_prompts=3, beta=beta, ref=ref, k=2)
    np.testing.assert_allclose(logsumexp(env.logp_ref + env.r_star / beta, axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(env.logp_star, env.logp_ref + env.r_star / beta, atol=1e-10)
    assert env.info["gap"]["misspec_frac"] > 0.3  # r* ∉ R_sim


def test_planning_sum_mod_matches_brute_force():
    # V=3, H=4, target c=1, scale 3: r* = 3·1[Σ a_h ≡ 1 (mod 3)].
    # (0,0,0,1): 1 ≡ 1 pass; (2,2,0,0): 4 ≡ 1 pass; (1,1,1,0): 3 ≡ 0 fail;
    # (2,2,2,2): 8 ≡ 2 fail; (1,2,1,0): 4 ≡ 1 pass.
    env = _env("planning", vocab=3, horizon=4, check="sum_mod", target=1, k=1)
    seqs = {
        (0, 0, 0, 1): 3.0,
        (2, 2, 0, 0): 3.0,
        (1, 1, 1, 0): 0.0,
        (2, 2, 2, 2): 0.0,
        (1, 2, 1, 0): 3.0,
    }
    for seq, want in seqs.items():
        brute = 3.0 * (sum(seq) % 3 == 1)
        assert brute == want
        assert env.r_star[0, tokens_to_leaf(np.array(seq), 3)] == want
    np.testing.assert_array_equal(env.features[0, :, 0] * 3.0, env.r_star[0])


def test_planning_other_checks():
    env = _env("planning", vocab=3, horizon=4, check="ends_with_first", k=2)
    tok = env.tokens
    np.testing.assert_array_equal(env.r_star[0], 3.0 * (tok[:, 0] == tok[:, -1]))
    assert _span_residual(env.r_star, env.features) < 1e-12
    env = _env("planning", vocab=3, horizon=4, check="motif", motif="2,0", k=1)
    # (1,2,0,1) contains (2,0) at offset 1; (0,2,1,0) does not
    assert env.r_star[0, tokens_to_leaf(np.array([1, 2, 0, 1]), 3)] == 3.0
    assert env.r_star[0, tokens_to_leaf(np.array([0, 2, 1, 0]), 3)] == 0.0
    assert env.info["motif"] == (2, 0)


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", list(FAMILIES))
def test_same_seed_same_arrays(name):
    kn = {"vocab": 3, "horizon": 3, "n_prompts": 2, "k": 3, "ref": "random"}
    if name == "misspec":
        kn["epsilon"] = 0.3
    a, b, c = _env(name, 7, **kn), _env(name, 7, **kn), _env(name, 8, **kn)
    for x, y in ((a, b), (a, c)):
        same = [np.array_equal(x.r_star, y.r_star), np.array_equal(x.features, y.features)]
        same += [np.array_equal(p, q) for p, q in zip(x.logpi_ref, y.logpi_ref)]
        assert all(same) if y is b else not all(same)


def test_same_verifier_direction_across_horizons():
    # counts: r* = a_H Σ_h w_{a_h} + const; w's direction does not depend on H
    dirs = []
    for horizon in (1, 2, 4):
        w = _env("linear", vocab=3, horizon=horizon, k=3, dictionary="counts").info["w_star"]
        dirs.append(w / np.linalg.norm(w))
    np.testing.assert_allclose(dirs[0], dirs[1], atol=1e-12)
    np.testing.assert_allclose(dirs[0], dirs[2], atol=1e-12)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name,knobs,match",
    [
        ("nope", {}, "linear, policy_complex, planning, misspec"),
        ("linear", {"colour": 1}, "colour"),
        ("linear", {"vocab": 1}, "vocab"),
        ("linear", {"k": 0}, "k must"),
        ("linear", {"dictionary": "foo"}, "dictionary"),
        ("linear", {"epsilon": 0.1}, "epsilon"),
        ("linear", {"per_prompt_weights": "maybe"}, "per_prompt_weights"),
        ("linear", {"reward_scale": -1}, "reward_scale"),
        ("linear", {"max_leaves": 10}, "max_leaves"),
        ("policy_complex", {"k": 99}, "k must"),
        ("planning", {"check": "bar"}, "check"),
        ("planning", {"target": 3}, "target"),
        ("planning", {"check": "motif", "motif": [0, 5]}, "motif"),
        ("misspec", {"residual": "x"}, "residual"),
        ("misspec", {"ref": "weird"}, "ref"),
    ],
)
def test_bad_input_is_a_user_error(name, knobs, match):
    full = {"vocab": 3, "horizon": 3, **knobs}
    with pytest.raises(UserError, match=match):
        _env(name, **full)


def test_missing_vocab_is_a_user_error():
    with pytest.raises(UserError, match="vocab"):
        make_family("linear", rng=np.random.default_rng(0), horizon=2)


# ---------------------------------------------------------------- gap descriptor


def test_gap_descriptor_counts_hand_case():
    # V=2, H=3, m=1: states 1 + 2 + 4 = 7, one free parameter each ⇒ n_params_pi = 7 = 2^3 − 1
    env = _env("linear", vocab=2, horizon=3, k=2)
    gap = env.info["gap"]
    assert gap["n_params_pi"] == 7 and gap["n_states"] == 7 and gap["n_params_r"] == 2
    np.testing.assert_allclose(gap["log_gap"], np.log(7 / 2))
    assert gap_descriptor(env) == gap
    bare = make_env(vocab=2, horizon=3, r_star=np.arange(8.0))
    assert np.isnan(gap_descriptor(bare)["n_params_r"])


def test_additive_reward_gives_a_markov_optimal_policy():
    # r* = Σ_h w_{h,a_h} and uniform π_ref ⇒ P* ∝ ∏_h e^{w_{h,a_h}}: π*(·|s_h) depends on h only,
    # so at most H distinct rows and both Markov KLs vanish.
    gap = _env("linear", vocab=3, horizon=4, k=12, dictionary="position_token").info["gap"]
    assert gap["n_distinct_pi"] <= 4
    assert gap["kl_markov_fwd"] < 1e-10 and gap["kl_markov_rev"] < 1e-10


def test_sum_mod_optimal_policy_rows():
    # uniform π_ref: until the last step the future sum is uniform mod V whatever the prefix, so
    # π* is uniform there; the last step puts e^scale on one of V tokens, chosen by the partial
    # sum: 1 uniform row + V distinct last-step rows.
    gap = _env("planning", vocab=3, horizon=4, k=1).info["gap"]
    assert gap["n_distinct_pi"] == 1 + 3


def test_policy_complex_has_a_complex_optimal_policy():
    lin = _env("linear", vocab=3, horizon=4, k=4).info["gap"]
    pol = _env("policy_complex", vocab=3, horizon=4, k=4).info["gap"]
    assert pol["distinct_frac_pi"] == 1.0 and pol["n_distinct_tilt"] == pol["n_states"]
    assert lin["log_gap"] == pol["log_gap"]


def test_reverse_markov_kl_matches_direct_minimisation():
    env = _env("planning", vocab=2, horizon=3, k=1, ref="random")
    logp = env.logp_star[0].reshape(2, 2, 2)

    def rev_kl(z: np.ndarray) -> float:
        q = [log_softmax(z[2 * h : 2 * h + 2]) for h in range(3)]
        lq = q[0][:, None, None] + q[1][None, :, None] + q[2][None, None, :]
        return float((np.exp(lq) * (lq - logp)).sum())

    best = min(
        minimize(rev_kl, np.random.default_rng(s).normal(size=6), method="BFGS").fun
        for s in range(8)
    )
    assert env.info["gap"]["kl_markov_rev"] == pytest.approx(best, abs=1e-7)
