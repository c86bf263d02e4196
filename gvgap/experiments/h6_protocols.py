"""H6's protocols: the instance measured once per process (:func:`instance`), the classes each
protocol fits (:func:`fit_pipelines`) and the per-run constants and flags of the two classes
(:func:`class_metrics`). The protocols are described in :mod:`gvgap.experiments.h6_gap`; a
Config here is any object with h6_gap's fields."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from gvgap.experiments import common
from gvgap.ladder import Ladder
from gvgap.ladder import classes as ladder_classes
from gvgap.ladder.rungs import policy_order, rung_name, window_name, window_order

#: Distractor columns of the dictionary rung when ``rm_features`` = 0.
NON_ORACLE_DISTRACTORS = 5
#: Config fields that do not change the instance (runs differing only in them share one
#: measured ladder: :func:`instance_key`, and the sweep runner groups them).
RUN_FIELDS = (
    "n_pairs",
    "protocol",
    "lam",
    "lam_grid",
    "policy_class",
    "rm_class",
    "online_policy_class",
)


def n_extra(cfg) -> int:
    """Distractors of the dictionary rung: K − k."""
    if cfg.rm_features:
        return max(cfg.rm_features, cfg.k) - cfg.k
    return NON_ORACLE_DISTRACTORS


# ---------------------------------------------------------------- the instance, once


def instance_key(cfg) -> tuple:
    """The Config fields that define the instance (all but :data:`RUN_FIELDS`)."""
    return tuple(
        (f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in RUN_FIELDS
    )


@dataclass
class Instance:
    """The instance of a run and everything measured on it once."""

    env: object
    ladder: Ladder
    dictionary: np.ndarray


#: Instances measured in this process, by (instance fields, instance stream state): runs that
#: differ only in n, protocol or λ reuse one measured ladder (results do not depend on it:
#: the ladder is a pure function of the instance).
_CACHE: OrderedDict = OrderedDict()
#: Instances kept (least recently used dropped) and their total leaves.
CACHE_ENTRIES, CACHE_LEAVES = 64, 1 << 22


def clear_cache() -> None:
    """Forget every measured instance of this process."""
    _CACHE.clear()


def instance(cfg, instance_rng: np.random.Generator) -> Instance:
    """The run's instance (drawn from ``instance_rng`` only), cached (:data:`_CACHE`)."""
    import json

    key = (instance_key(cfg), json.dumps(instance_rng.bit_generator.state, sort_keys=True))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    env = common.build_env(cfg, instance_rng)
    shared = cfg.shared_reward or env.n_prompts == 1
    dictionary = ladder_classes.dictionary_features(env, n_extra(cfg), instance_rng, shared=shared)
    ladder = Ladder(env, oracle=env.features, dictionary=dictionary, shared=shared)
    inst = _CACHE[key] = Instance(env, ladder, dictionary)
    while len(_CACHE) > CACHE_ENTRIES or (
        len(_CACHE) > 1
        and sum(i.env.n_prompts * i.env.n_leaves for i in _CACHE.values()) > CACHE_LEAVES
    ):
        _CACHE.popitem(last=False)
    return inst


# ---------------------------------------------------------------- classes per protocol


def _windows(horizon: int) -> tuple[str, ...]:
    return tuple(window_name(j, horizon) for j in range(horizon))


def policy_ladder(horizon: int) -> list[str]:
    """Offline candidates of ``learned``, smallest first."""
    return [rung_name(j, horizon) for j in range(horizon)]


def reward_ladder(inst: Instance) -> list[str]:
    """Online candidates of ``learned``: window0 … tabular and the dictionary, ordered by
    their dimension on the instance (smallest first; a window before the dictionary on a tie),
    the order the selection rule prefers."""
    lad = inst.ladder
    names = [*_windows(inst.env.horizon), "dictionary"]
    return sorted(names, key=lambda n: (lad.rung("reward", n).dim, n == "dictionary"))


def fixed_classes(cfg, inst: Instance) -> tuple[str, str]:
    """(offline policy rung, online reward rung) of a protocol other than ``learned``."""
    lad, horizon = inst.ladder, inst.env.horizon
    if cfg.protocol in ("gift_tabular", "non_oracle"):
        p_name = "tabular"
    else:
        p_name = lad.smallest("policy").name
    r_name = {
        "well_specified": lad.smallest("reward", (*_windows(horizon), "dictionary")).name,
        "gift": "oracle",
        "gift_tabular": "oracle",
        "non_oracle": "dictionary",
    }.get(cfg.protocol)
    if cfg.policy_class != "auto":
        p_name = rung_name(policy_order(cfg.policy_class, horizon), horizon)
    if cfg.rm_class != "auto":
        r_name = _reward_name(cfg.rm_class, horizon)
    return p_name, r_name


def _reward_name(name: str, horizon: int) -> str:
    order = window_order(name, horizon)
    if name == "linear":
        return "oracle"
    return name if order is None else window_name(order, horizon)


def _reward_class(name: str, inst: Instance):
    env = inst.env
    return ladder_classes.reward_class(
        name, env, shared=inst.ladder.shared or env.n_prompts == 1, dictionary=inst.dictionary
    )


def online_policy(cfg, env):
    if policy_order(cfg.online_policy_class, env.horizon) < env.horizon - 1:
        return ladder_classes.policy_class(cfg.online_policy_class, env)
    return None


def _dpo_fit(pol, env):
    from gvgap.learners import dpo

    return lambda d, lam: dpo(pol, env, d, lam=lam)


def _rlhf_fit(rc, env, on_pol):
    from gvgap.learners import rlhf

    return lambda d, lam: rlhf(rc, env, d, lam=lam, policy=on_pol)


def fit_pipelines(cfg, inst: Instance, data, grid, split_seed) -> tuple:
    """(offline Result, its rung, online Result, its rung) under ``cfg.protocol``."""
    from gvgap.learners.select import select_model

    env = inst.env
    on_pol = online_policy(cfg, env)
    if cfg.protocol == "learned":
        offs = (
            [rung_name(policy_order(cfg.policy_class, env.horizon), env.horizon)]
            if cfg.policy_class != "auto"
            else policy_ladder(env.horizon)
        )
        ons = (
            [_reward_name(cfg.rm_class, env.horizon)]
            if cfg.rm_class != "auto"
            else reward_ladder(inst)
        )
        off_fits = {n: _dpo_fit(ladder_classes.policy_class(n, env), env) for n in offs}
        on_fits = {n: _rlhf_fit(_reward_class(n, inst), env, on_pol) for n in ons}
        p_name, off, _ = select_model(off_fits, data, split_seed=split_seed, grid=grid)
        r_name, on, _ = select_model(on_fits, data, split_seed=split_seed, grid=grid)
        return off, p_name, on, r_name
    p_name, r_name = fixed_classes(cfg, inst)
    off = common.fit_dpo(
        env, data, grid, split_seed, policy=ladder_classes.policy_class(p_name, env)
    )
    on = common.fit_rlhf(env, data, _reward_class(r_name, inst), grid, split_seed, policy=on_pol)
    return off, p_name, on, r_name


# ---------------------------------------------------------------- one run


def coverage(env, data) -> float:
    """π*-mass of the leaves D touches: Σ_x ρ_x Σ_{ξ ∈ D_x} P*(ξ|x)."""
    touched = np.zeros(env.logp_star.shape, bool)
    touched[data.prompt, data.chosen] = True
    touched[data.prompt, data.rejected] = True
    return float(env.rho @ (np.exp(env.logp_star) * touched).sum(axis=1))


def class_metrics(inst: Instance, p_name: str, r_name: str, tabular_rl: bool) -> dict:
    """The constants, bias floors, dimensions and dims-gap of the two classes of a run."""
    lad = inst.ladder
    off, on = lad.rung("policy", p_name), lad.rung("reward", r_name)
    c_off = lad.constant("policy", p_name)
    c_on = lad.constant("reward", r_name) if tabular_rl else np.nan
    c_in = lad.constant("reward", r_name, shared=False) if tabular_rl else np.nan
    b_on = lad.bias("reward", r_name) if tabular_rl else np.nan
    return {
        "offline/C": c_off,
        "online/C": c_on,
        "delta_C": c_off - c_on,
        "delta_C_within": c_off - c_in,
        "offline/bias": lad.bias("policy", p_name),
        "online/bias": b_on,
        "offline/contains": float(off.contains),
        "online/contains": float(on.contains),
        "offline_dim": float(off.dim),
        "online_dim": float(on.dim),
        "dims_gap": float(np.log(off.dim / max(on.dim, 1))),
        "offline_order": float(off.order),
        "online_order": float(-1 if on.order is None else on.order),
    }


def delta_c_star(inst: Instance) -> float:
    """ΔC* of the instance: C of the smallest policy rung holding π* minus C of the smallest
    learnable reward rung holding r* (window<J>, tabular, dictionary): the gap the two sides
    face in the limit where each has found its smallest correct class."""
    lad, horizon = inst.ladder, inst.env.horizon
    p_name = lad.smallest("policy").name
    r_name = lad.smallest("reward", (*_windows(horizon), "dictionary")).name
    return lad.constant("policy", p_name) - lad.constant("reward", r_name)


def isomorphic(inst: Instance, p_name: str, r_name: str) -> bool:
    """Whether the two classes are isomorphic (offline = online by theorem, docs/theory.md §3):
    both tabular (per-prompt rewards), or with uniform π_ref the online span equals the local
    rewards of the offline rung (window<J> ↔ markovJ, compared by exact span residuals)."""
    env, lad = inst.env, inst.ladder
    off, on = lad.rung("policy", p_name), lad.rung("reward", r_name)
    if off.name == "tabular":
        return on.order == env.horizon - 1 and not lad.shared
    if lad.shared or not lad._uniform_ref:
        return False
    if on.order is not None:
        return on.order == off.order
    feats = inst.dictionary if r_name == "dictionary" else env.features
    return _same_span(feats, off.order, env)


def _same_span(feats: np.ndarray, order: int, env) -> bool:
    """Per prompt, span{1, feats} = span{1, window<J>} (equal ranks of the centred blocks and
    of their union; numpy's rank cut max(N, d)·ε·σ_max)."""
    from gvgap.envs.features import position_window

    win = position_window(env.tokens, env.vocab, order)
    win = win - win.mean(axis=0)
    rank = np.linalg.matrix_rank
    for x in range(env.n_prompts):  # prompts, not leaves
        f = feats[x] - feats[x].mean(axis=0)
        r_w, r_f = rank(win), rank(f)
        if not r_w == r_f == rank(np.concatenate([win, f], axis=1)):
            return False
    return True
