"""Registry of gap problem families (docs/theory.md §3 "proper learning", §4 H6, §6 items 9–11, 15).

Each family draws one :class:`~gvgap.envs.tree_env.TreeEnv` from a numpy Generator: a true
reward r*(x, ξ), a reference policy π_ref and the feature map φ of the simple reward class
R_sim = {r_w = w · φ} that a linear reward model will use (``env.features``, ``(m, V^H, k)``).
``env.info`` holds the family name, every knob value and the gap descriptor.

Families (knobs and defaults: ``FAMILIES[name].knobs``; ``gvgap list``):

* ``linear`` — r* = w · φ̃(ξ), φ̃ = k standardised columns of a feature dictionary
  (:mod:`gvgap.envs.features`), w ~ N(0, I_k) rescaled so that std_ξ r*(x, ·) = reward_scale
  (uniform weights over leaves). ``features`` = φ̃, so r* ∈ R_sim exactly: verifier
  complexity k. Weights are shared across prompts; with ``per_prompt_weights`` each prompt x
  has its own w_x and the features become the block map e_x ⊗ φ̃ (m k columns), so r* stays in
  R_sim. The generation-complexity knob is ``horizon`` (and ``vocab``): with dictionary
  ``counts`` or ``ngram`` the same seed and V give the same verifier direction w at every H
  (only its scale is renormalised); H ≤ 2 is the "two-word summary" analogue (no gap).
* ``policy_complex`` — r* = β (log P_π − log P_ref) for a random tabular π with node logits
  ~ N(0, logit_scale²): the local reward of a policy, so π*_{r*} = π (docs/theory.md §3) and
  verification is as hard as generation ("ROUGE-L against a reference" analogue).
  ``features`` = k columns of a generic small dictionary (default position×token), so
  r* ∉ R_sim in general.
* ``planning`` — r* = reward_scale · 1[check(ξ)] for a global check whose optimal policy needs
  lookahead: ``sum_mod`` (Σ_h a_h ≡ target mod V), ``ends_with_first`` (a_H = a_1, H ≥ 2) or
  ``motif`` (a given token string occurs contiguously anywhere). ``features`` = [1[check],
  k − 1 standardised distractor columns of ``dictionary``], so r* ∈ R_sim. With
  ``per_prompt_weights`` (sum_mod only) prompt x asks Σ_h a_h ≡ target + x (mod V) and the
  features become the block map e_x ⊗ [1[check_x], distractors].
* ``misspec`` — r* = r_lin + ε · reward_scale · u: r_lin as in ``linear``, u a residual
  (``noise``: i.i.d. N(0, 1); ``policy``: a policy_complex reward) projected off
  span{1, φ̃} per prompt and scaled to unit std. ``features`` = φ̃ only, so r* ∉ R_sim for
  ε > 0 and exactly a fraction ε²/(1 + ε²) of the variance of r* lies outside R_sim.

Gap descriptor (``env.info["gap"]``, :func:`gap_descriptor`), all scalars:

* ``n_params_pi`` = m (V^H − 1): free parameters of the tabular autoregressive class Π
  (Σ_{h<H} V^h states × (V − 1) per prompt).
* ``n_params_r`` = k: columns of ``env.features`` (parameters of R_sim).
* ``log_gap`` = log(n_params_pi / n_params_r): the nominal generation–verification gap.
* ``n_states`` = m (V^H − 1)/(V − 1) decision states; ``n_distinct_pi`` = the number of
  distinct next-token distributions π*_{r*}(·|s) over all (prompt, state) pairs (rows equal
  after rounding to 1e-9); ``distinct_frac_pi`` = n_distinct_pi / n_states ∈ (0, 1].
  ``n_distinct_tilt`` / ``distinct_frac_tilt``: the same for the tilt log π* − log π_ref up to
  a per-state constant, i.e. the rows V_{h+1}(s·a) − mean_a V_{h+1}(s·a) of soft values — what
  must be learnt beyond π_ref (equal to the π* count when π_ref is uniform).
* ``kl_markov_fwd`` = E_x KL(P* ‖ ∏_h P*_h): forward KL to the product of position marginals
  (the best position×token policy in forward KL; total correlation).
  ``kl_markov_rev`` ≈ E_x min_{q} KL(∏_h q_h ‖ P*): reverse-KL (soft-RL) projection onto
  position×token policies, by mean-field coordinate ascent from the marginals (a local
  optimum, hence an upper bound; NaN above ``REVERSE_KL_MAX_LEAVES`` leaves). Then
  J(π*) − max_{π Markov} J(π) = β · kl_markov_rev (Gibbs identity, docs/theory.md §3).
* ``misspec_frac``: fraction of Σ_x ρ_x Var_ξ r* outside span{per-prompt constants, R_sim}
  (least squares with shared w); 0 when r* ∈ R_sim.
* ``kl_star_ref`` = E_x KL(P* ‖ P_ref) and ``r_star_std`` = E_x std_ξ r*: reward scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace

import numpy as np

from gvgap.envs import features
from gvgap.envs.gap import gap_descriptor
from gvgap.envs.tree_env import TreeEnv, make_env, make_ref_policy
from gvgap.errors import INT64_MAX, UserError, check_choice, check_int, check_range
from gvgap.theory import (
    MAX_LEAVES_DEFAULT,
    check_tree_size,
    leaf_tokens,
    local_reward,
    log_softmax,
    node_to_leaf_logp,
)
from gvgap.theory.tree import NodeLogp

RESIDUALS = ("noise", "policy")
_MAX = MAX_LEAVES_DEFAULT

#: Knobs shared by every family.
COMMON_KNOBS = {
    "vocab": "V, tokens per step (required, >= 2)",
    "horizon": "H, completion length (required, >= 1); the generation-complexity knob",
    "n_prompts": "m, prompts (default 1)",
    "beta": "β > 0 of the true objective (default 1.0)",
    "k": "number of R_sim features, the verifier complexity (default 4)",
    "epsilon": "misspecification size; must be 0 except in family misspec (default 0.0)",
    "ref": "π_ref: 'uniform' or 'random' (Dirichlet per state) (default 'uniform')",
    "ref_concentration": "Dirichlet concentration of a random π_ref (default 1.0)",
    "max_leaves": f"refuse trees with more than this many m·V^H leaves (default {_MAX})",
}
# Family knobs: name -> (default, description[, allowed values]); validated by type of default.
_DICT = f"one of {', '.join(features.DICTIONARIES)}, ngram<n>, window<J>"
_NGRAM = (2, "window length of the 'ngram' dictionary")
_LINEAR = {
    "dictionary": ("dense", f"feature dictionary, {_DICT}"),
    "ngram_n": _NGRAM,
    "reward_scale": (2.0, "std of r* over the leaves of each prompt"),
    "per_prompt_weights": (False, "own w_x per prompt; features e_x ⊗ φ̃ (m k columns)"),
}
_POLICY = {
    "logit_scale": (1.0, "std of the random policy's node logits"),
    "dictionary": ("position_token", f"R_sim dictionary, {_DICT}"),
    "ngram_n": _NGRAM,
}
_PLANNING = {
    "check": ("sum_mod", f"global check, one of {', '.join(features.CHECKS)}", features.CHECKS),
    "target": (0, "c of sum_mod: Σ_h a_h ≡ c (mod V), 0 <= c < V"),
    "motif": (None, "motif tokens (sequence or 'a,b,..'); None draws one at random"),
    "motif_len": (2, "length of a random motif, 1 <= motif_len <= H"),
    "reward_scale": (3.0, "reward of a completion that passes the check"),
    "dictionary": ("position_token", f"k − 1 distractor features, {_DICT}"),
    "ngram_n": _NGRAM,
    "per_prompt_weights": (False, "sum_mod only: prompt x asks Σ_h a_h ≡ target + x (mod V)"),
}
_MISSPEC = {
    **_LINEAR,
    "residual": ("noise", f"complex residual, one of {', '.join(RESIDUALS)}", RESIDUALS),
    "logit_scale": (1.0, "node-logit std of the 'policy' residual's random π"),
}


@dataclass(frozen=True)
class Family:
    """A named problem family.

    Attributes:
        name: registry key.
        summary: one line for ``gvgap list``.
        make: ``make(*, vocab, horizon, n_prompts=1, beta=1.0, k=4, epsilon=0.0, ref='uniform',
            ref_concentration=1.0, rng, max_leaves=MAX_LEAVES_DEFAULT, **family_knobs)
            -> TreeEnv``.
        knobs: every accepted knob → its description with its default.
    """

    name: str
    summary: str
    make: Callable[..., TreeEnv]
    knobs: Mapping[str, str]


# ---------------------------------------------------------------- knob validation


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _int(name: str, v: object, lo: int, hi: int = INT64_MAX) -> int:
    """A whole number in [lo, hi] (an int, an integral float or a numeric string), as an int."""
    x = _num(v)
    whole = not isinstance(v, bool) and np.isfinite(x) and x == int(x)
    return check_int(name, int(x) if whole else v, lo, hi)


def _float(name: str, v: object, lo: float = 0.0, *, lo_open: bool = False) -> float:
    """A finite number ≥ lo (> lo if ``lo_open``; a number or a numeric string), as a float."""
    x = _num(v)
    check_range(name, x if np.isfinite(x) else v, lo, lo_open=lo_open)
    return x


def _knob(name: str, v: object, default: object, allowed: tuple[str, ...] = ()) -> object:
    """Validate a family knob by its allowed values or the type of its default."""
    if allowed:
        check_choice(name, v, allowed)
    if isinstance(default, bool):
        table = {"true": True, "1": True, "false": False, "0": False}
        if str(v).lower() not in table:
            raise UserError(f"{name} must be true or false; got {v!r}")
        return table[str(v).lower()]
    if isinstance(default, int):
        return _int(name, v, 0)
    return _float(name, v) if isinstance(default, float) else v


# ---------------------------------------------------------------- shared construction


def _begin(family: str, rng: np.random.Generator, c: dict) -> SimpleNamespace:
    """Validated common knobs, leaf tokens, π_ref and independent child generators."""
    b = SimpleNamespace(
        vocab=_int("vocab", c["vocab"], 2), horizon=_int("horizon", c["horizon"], 1)
    )
    b.m, b.k = _int("n_prompts", c["n_prompts"], 1), _int("k", c["k"], 1)
    b.beta = _float("beta", c["beta"], 0.0, lo_open=True)
    b.eps = _float("epsilon", c["epsilon"])
    if b.eps > 0 and family != "misspec":
        raise UserError(f"epsilon applies only to family 'misspec'; got {b.eps} for {family!r}")
    b.max_leaves = _int("max_leaves", c["max_leaves"], 1)
    check_tree_size(b.m, b.vocab, b.horizon, b.max_leaves)
    conc = _float("ref_concentration", c["ref_concentration"], 0.0, lo_open=True)
    # Independent streams: w (k draws, H-independent), columns/dense features, extras, π_ref.
    seeds = rng.integers(0, 2**63, size=4)
    b.rngs = dict(zip(("w", "cols", "extra", "ref"), map(np.random.default_rng, seeds)))
    b.logpi_ref = make_ref_policy(c["ref"], b.m, b.vocab, b.horizon, b.rngs["ref"], conc)
    b.tokens = leaf_tokens(b.vocab, b.horizon)
    ref = c["ref"] if isinstance(c["ref"], str) else "explicit"
    b.info = {"family": family, "vocab": b.vocab, "horizon": b.horizon, "n_prompts": b.m}
    b.info |= {"beta": b.beta, "k": b.k, "epsilon": b.eps, "ref": ref, "ref_concentration": conc}
    return b


def _features(b: SimpleNamespace, dictionary: str, k: int, ngram_n: int) -> np.ndarray:
    """k standardised columns of a dictionary, ``(N, k)``."""
    phi = features.dictionary(dictionary, b.tokens, b.vocab, b.rngs["cols"], k=k, n=ngram_n)
    return features.standardize(phi)


def _linear_part(b: SimpleNamespace, kn: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """r_lin ``(m, N)``, features ``(N, k)`` or ``(m, N, m k)``, and w* with r_lin = φ w*."""
    phi = _features(b, kn["dictionary"], b.k, kn["ngram_n"])
    w = b.rngs["w"].standard_normal((b.m if kn["per_prompt_weights"] else 1, b.k))
    w = w * (kn["reward_scale"] / np.maximum((w @ phi.T).std(axis=1), 1e-300))[:, None]
    r = np.broadcast_to(w @ phi.T, (b.m, phi.shape[0])).copy()
    if not kn["per_prompt_weights"]:
        return r, phi, w[0]
    return r, features.block_features(phi, b.m), w.ravel()


def _policy_reward(b: SimpleNamespace, logit_scale: float) -> np.ndarray:
    """β (log P_π − log P_ref) for π with node logits ~ N(0, logit_scale²), ``(m, N)``."""
    shapes = [(b.m, b.vocab**h, b.vocab) for h in range(b.horizon)]
    z = [logit_scale * b.rngs["extra"].standard_normal(s) for s in shapes]
    logp_pi = node_to_leaf_logp(tuple(log_softmax(a) for a in z))
    return local_reward(logp_pi, node_to_leaf_logp(b.logpi_ref), b.beta)


# ---------------------------------------------------------------- the families
# Each body maps (base, validated knobs) to (r* (m, N), features, info entries).

Out = tuple[np.ndarray, np.ndarray, dict]


def _linear(b: SimpleNamespace, kn: dict) -> Out:
    r, feats, w = _linear_part(b, kn)
    return r, feats, {**kn, "w_star": w}


def _policy_complex(b: SimpleNamespace, kn: dict) -> Out:
    feats = _features(b, kn["dictionary"], b.k, kn["ngram_n"])
    return _policy_reward(b, kn["logit_scale"]), feats, kn


def _planning(b: SimpleNamespace, kn: dict) -> Out:
    kn["target"] = _int("target", kn["target"], 0, b.vocab - 1)
    if kn["check"] == "ends_with_first" and b.horizon < 2:
        raise UserError("horizon must be >= 2 for check 'ends_with_first'")
    motif = kn["motif"]
    if kn["check"] != "motif":
        motif = None
    elif motif is None:
        size = _int("motif_len", kn["motif_len"], 1, b.horizon)
        motif = tuple(int(a) for a in b.rngs["extra"].integers(0, b.vocab, size=size))
    else:
        parts = motif.split(",") if isinstance(motif, str) else list(motif)
        motif = tuple(_int("motif", a, 0, b.vocab - 1) for a in parts)
        if not 1 <= len(motif) <= b.horizon:
            raise UserError(f"motif must have 1..horizon={b.horizon} tokens; got {motif}")
    kn["motif"] = motif
    size = features.dictionary_size(kn["dictionary"], b.vocab, b.horizon, n=kn["ngram_n"])
    if size is not None and b.k - 1 > size:
        raise UserError(
            f"k must be <= {size + 1} for planning with dictionary "
            f"{kn['dictionary']!r} (V={b.vocab}, H={b.horizon}); got {b.k}"
        )
    ind = features.check_indicator(
        b.tokens, b.vocab, kn["check"], target=kn["target"], motif=motif or ()
    )
    cols = [ind[:, None]]
    if b.k > 1:
        cols.append(_features(b, kn["dictionary"], b.k - 1, kn["ngram_n"]))
    w = np.zeros(b.k)
    w[0] = kn["reward_scale"]
    feats = np.concatenate(cols, axis=1)
    if not kn["per_prompt_weights"]:
        return w[0] * ind, feats, {**kn, "w_star": w}
    if kn["check"] != "sum_mod":
        raise UserError(f"per_prompt_weights applies to check 'sum_mod' only; got {kn['check']!r}")
    # prompt x: target (c + x) mod V; features e_x ⊗ [1[check_x], distractors]
    out = np.zeros((b.m, len(b.tokens), b.m * b.k))
    r = np.zeros((b.m, len(b.tokens)))
    for x in range(b.m):  # a loop over prompts, not leaves
        t = (kn["target"] + x) % b.vocab
        ind_x = features.check_indicator(b.tokens, b.vocab, "sum_mod", target=t)
        out[x, :, x * b.k : (x + 1) * b.k] = np.column_stack([ind_x, feats[:, 1:]])
        r[x] = w[0] * ind_x
    return r, out, {**kn, "w_star": np.tile(w, b.m)}


def _misspec(b: SimpleNamespace, kn: dict) -> Out:
    r, feats, w = _linear_part(b, kn)
    if b.eps > 0:
        if kn["residual"] == "noise":
            u = b.rngs["extra"].standard_normal(r.shape)
        else:
            u = _policy_reward(b, kn["logit_scale"])
        if feats.shape[-1] >= b.tokens.shape[0] - 1:
            raise UserError(
                f"epsilon > 0 needs k < vocab**horizon - 1 = {len(b.tokens) - 1} "
                f"(else R_sim holds every reward); got k={b.k}"
            )
        r = r + b.eps * kn["reward_scale"] * features.project_out(u, feats)
    return r, feats, {**kn, "w_star": w}


def _family(name: str, summary: str, body: Callable[..., Out], own: dict[str, tuple]) -> Family:
    """Wrap a body into the common ``make`` signature; knob docs come from ``own``."""

    def make(
        *,
        vocab: int,
        horizon: int,
        n_prompts: int = 1,
        beta: float = 1.0,
        k: int = 4,
        epsilon: float = 0.0,
        ref: str | NodeLogp = "uniform",
        ref_concentration: float = 1.0,
        rng: np.random.Generator,
        max_leaves: int = _MAX,
        **family_knobs: object,
    ) -> TreeEnv:
        unknown = sorted(set(family_knobs) - set(own))
        if unknown:
            raise UserError(
                f"unknown knob {unknown[0]!r} for family {name!r}; allowed: "
                f"{', '.join([*COMMON_KNOBS, *own])}"
            )
        b = _begin(name, rng, {key: v for key, v in locals().items() if key in COMMON_KNOBS})
        kn = {key: _knob(key, family_knobs.get(key, s[0]), *s[::2]) for key, s in own.items()}
        if "dictionary" in kn:  # named or patterned (ngram<n>, window<J>); UserError if unknown
            features.dictionary_size(kn["dictionary"], b.vocab, b.horizon, n=kn.get("ngram_n", 2))
        r, feats, extra = body(b, kn)
        env = make_env(
            vocab=b.vocab,
            horizon=b.horizon,
            n_prompts=b.m,
            beta=b.beta,
            r_star=r,
            ref=b.logpi_ref,
            features=feats,
            max_leaves=b.max_leaves,
            info={**b.info, **extra},
        )
        env.info["gap"] = gap_descriptor(env)
        return env

    make.__name__ = make.__qualname__ = f"make_{name}"
    make.__doc__ = f"Family ``{name}``: {summary} (see the module docstring)."
    knobs = {key: f"{s[1]} (default {s[0]!r})" for key, s in own.items()}
    return Family(name, summary, make, MappingProxyType({**COMMON_KNOBS, **knobs}))


FAMILIES: dict[str, Family] = {
    "linear": _family(
        "linear",
        "r* = w·φ(ξ) over k dictionary features: r* in R_sim, verifier size k",
        _linear,
        _LINEAR,
    ),
    "policy_complex": _family(
        "policy_complex",
        "r* = β log(P_π/P_ref) of a random tabular π: verification as hard as generation",
        _policy_complex,
        _POLICY,
    ),
    "planning": _family(
        "planning",
        "r* = scale·1[global check] (sum mod V, last = first, motif): needs lookahead",
        _planning,
        _PLANNING,
    ),
    "misspec": _family(
        "misspec",
        "r* = linear part + ε·residual ⊥ R_sim; features = linear part only",
        _misspec,
        _MISSPEC,
    ),
}


def make_family(name: str, *, rng: np.random.Generator, **knobs: object) -> TreeEnv:
    """Draw one instance of a registered family.

    Args:
        name: a key of :data:`FAMILIES`.
        rng: the only source of randomness (same seed ⇒ identical arrays).
        **knobs: ``vocab`` and ``horizon`` (required) and any knob in ``FAMILIES[name].knobs``.

    Returns:
        The :class:`TreeEnv`, with ``env.info["gap"]`` = :func:`gap_descriptor` (env).

    Raises:
        UserError: unknown family, unknown knob, missing or bad knob value (named).
    """
    check_choice("family", name, FAMILIES)
    missing = [req for req in ("vocab", "horizon") if req not in knobs]
    if missing:
        raise UserError(f"{missing[0]} is required by family {name!r}")
    return FAMILIES[name].make(rng=rng, **knobs)
