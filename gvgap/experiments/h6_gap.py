"""H6 — the generation–verification gap, measured as the theory defines it (THEORY §3–§4,
§6 items 9–11; docs/theory.md "The sample-complexity constant").

Design. One instance (``generator`` → family, dictionary, check, k; ``tree`` → V, H; β, π_ref,
m prompts and ``shared_reward``) and one preference dataset D of n pairs from π_ref ⊗ π_ref
labelled by the true BT model. Two pipelines run on the same D with the same held-out split:
offline DPO over a policy rung, online BT RM over a reward rung then exact soft RL over the
tabular class. The class ladder is measured on the instance once (:class:`gvgap.ladder.Ladder`):
exact containment of π* and r* in every rung, certified residual bounds, and for each class
that holds its target the **regret constant** C = tr(Σ_* I⁻¹)/(2β), so that
n · E[regret] → C (well-specified MLE asymptotics, :mod:`gvgap.theory.asymptotics`). The gap
the theory means is ΔC = C_offline − C_online: the online advantage n · d → ΔC, with
d = regret(offline) − regret(online) on the same pairs.

Protocols (``protocol``; classes are chosen before seeing D unless said otherwise):

* ``learned`` (the headline): each side picks its class and λ by held-out BT likelihood on
  the same split, with no access to r*: offline over the policy rungs product … tabular,
  online over window0 … tabular plus the ``dictionary`` of K = ``rm_features`` candidates
  (the generating features shuffled among distractors). Under uniform π_ref the window and
  Markov rungs are the same estimator rung by rung, so the online side differs only by the
  dictionary: the verifier class the offline side cannot express without planning.
* ``well_specified``: each side its smallest class that holds its target, decided exactly on
  the instance (offline: the smallest markovJ containing π*, equivalently whose local-reward
  class holds r* — the rung where DPO is consistent; online: the smallest of window<J>,
  tabular, dictionary holding r*). r* chooses the rung on both sides; its features do not.
* ``gift``: offline as ``well_specified``; online = the ``oracle`` rung, the k generating
  features of r* handed to the RM (a gift, labelled so in every table and figure).
* ``gift_tabular``: offline DPO over tabular Π; online the oracle rung (the first design).
* ``non_oracle``: offline DPO over tabular Π; online the dictionary rung (no selection).

Per run (bare metrics unless named): ``offline/C``, ``online/C`` (NaN for a class that does
not hold its target), ``delta_C``, ``delta_C_within`` (ΔC with the online rung fitted per
prompt: no pooling; = ``delta_C`` for m = 1 or per-prompt rewards), ``offline/bias``,
``online/bias`` (regret of the class's large-n limit: 0 when it holds its target),
``delta_C_star`` (ΔC of the smallest classes holding the targets, the instance's gap),
``coverage`` (π*-mass of the leaves D touches), ``concentrability`` (max P*/P_ref),
``rarest_count`` (2n min_{x,ξ} ρ_x μ(ξ|x): how often D is expected to draw its rarest leaf),
``dims_gap`` = log(dim offline class / dim online class), the instance's ladder
(``res_pi/<rung>``, ``res_r/<rung>``, ``dim_*``, ``pi_order_min``, ``gap`` …) and each
pipeline's exact metrics with ``regret``. The verdict is the dose–response rule of
:mod:`gvgap.experiments.h6_rule`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gvgap.errors import UserError
from gvgap.experiments import common as C
from gvgap.experiments import h6_rule as R
from gvgap.experiments import hypothesis as Hy
from gvgap.ladder import Ladder
from gvgap.ladder import classes as LC
from gvgap.ladder.rungs import policy_order, rung_name, window_name, window_order

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

ID = "h6_gap"
CLAIM = (
    "The online advantage is the generation-verification gap the theory defines: n times the "
    "regret difference offline - online tends to Delta C = C(offline class) - C(online class), "
    "with classes learned from the data on both sides, and vanishes where Delta C = 0."
)
NOTES = "H6"
DESIGN_NOTE = __doc__

PROTOCOLS = ("learned", "well_specified", "gift", "gift_tabular", "non_oracle")
#: Protocols whose online class is handed the generating features (labelled ``gift``).
GIFT_PROTOCOLS = ("gift", "gift_tabular")
#: Instance generators: family knobs (k = "all" → every column of the dictionary).
GENERATORS: dict[str, dict] = {
    "additive_full": {"family": "linear", "dictionary": "position_token", "k": "all"},
    "additive": {"family": "linear", "dictionary": "position_token", "k": 3},
    "window1_full": {"family": "linear", "dictionary": "window1", "k": "all"},
    "dense": {"family": "linear", "dictionary": "dense", "k": 3},
    "sum_mod": {"family": "planning", "check": "sum_mod", "dictionary": "position_token", "k": 1},
    "last_first": {
        "family": "planning",
        "check": "ends_with_first",
        "dictionary": "position_token",
        "k": 1,
    },
}
#: Allowed values of this experiment's own fields (``gvgap show h6_gap``).
ALLOWED = {
    "protocol": ", ".join(PROTOCOLS),
    "generator": '"", ' + ", ".join(GENERATORS),
    "tree": '"" or "VxH"',
    "cell": '"" or a key of h6_rule.CELLS',
    "policy_class": "auto, product, markov<J>, tabular",
    "rm_class": "auto, oracle (linear), dictionary, window<J>, tabular, local",
    "online_policy_class": "tabular, product, markov<J>",
}
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


def _tree(tree: str) -> tuple[int, int]:
    try:
        v, h = (int(p) for p in tree.lower().split("x"))
    except ValueError:
        raise UserError(f"tree must look like 'VxH' (e.g. '3x4'); got {tree!r}") from None
    return v, h


@dataclass(frozen=True)
class Config(C.ProblemConfig):
    """One h6_gap setting. Shared problem fields: :class:`common.ProblemConfig`.

    Attributes:
        protocol: learned, well_specified, gift, gift_tabular or non_oracle (module docstring).
        cell: "" or a key of ``h6_rule.CELLS``: a named design cell that sets generator, tree
            and any of β, π_ref, m, shared_reward, k (the resolved values are recorded).
        generator: "" or a key of ``GENERATORS``; sets family, dictionary, check and k (the
            resolved values are the recorded fields; setting both differently is an error,
            except k, which an explicit value other than the default overrides).
        tree: "" or "VxH" (e.g. "2x4"); sets vocab and horizon.
        shared_reward: with m > 1 prompts, whether r* is shared by the prompts (one weight
            vector; the RM pools every prompt's pairs) or each prompt has its own
            (``per_prompt_weights``; per-prompt RMs).
        policy_class: offline policy rung (product, markov<J>, tabular) or auto (protocol).
        rm_class: online reward rung (oracle, dictionary, window<J>, tabular, local) or auto.
        rm_features: K of the dictionary rung: K = max(rm_features, k) candidate features;
            0 = k + ``NON_ORACLE_DISTRACTORS``.
        online_policy_class: policy class of the online RL step: tabular (exact soft RL) or a
            rung (product, markov<J>): the reverse-KL projection of π*_{r̂} onto it.
    """

    protocol: str = "learned"
    cell: str = ""
    generator: str = ""
    tree: str = ""
    shared_reward: bool = True
    policy_class: str = "auto"
    rm_class: str = "auto"
    rm_features: int = 0
    online_policy_class: str = "tabular"

    def __post_init__(self) -> None:
        if self.cell:
            C.check_choice("cell", self.cell, tuple(R.CELLS))
            self._preset("cell", R.CELLS[self.cell])
        if self.tree:
            v, h = _tree(self.tree)
            self._preset("tree", {"vocab": v, "horizon": h})
        if not self.shared_reward and self.n_prompts > 1:
            self._preset("shared_reward", {"per_prompt_weights": True})
        elif self.per_prompt_weights and self.n_prompts > 1:
            raise UserError(
                "per_prompt_weights=true conflicts with shared_reward=true; set "
                "shared_reward=false for per-prompt rewards"
            )
        if not self.generator:
            return
        C.check_choice("generator", self.generator, tuple(GENERATORS))
        spec = dict(GENERATORS[self.generator])
        if spec["k"] != "all" and self.k != C.ProblemConfig.k:
            del spec["k"]  # a generator's k is a default: an explicit k (≠ 3) is kept
        elif spec["k"] == "all":
            from gvgap.envs.features import dictionary_size

            spec["k"] = dictionary_size(spec["dictionary"], self.vocab, self.horizon)
        spec.setdefault("check", "")
        self._preset("generator", spec)

    def _preset(self, field: str, spec: dict) -> None:
        """Write a preset's fields; UserError if one was set to another non-default value."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, value in spec.items():
            if getattr(self, name) not in (value, defaults[name]):
                raise UserError(
                    f"{name}={getattr(self, name)!r} conflicts with {field}="
                    f"{getattr(self, field)!r} (which sets {name}={value!r}); set one of them"
                )
            object.__setattr__(self, name, value)

    def validate(self) -> None:
        """Raise UserError naming the first bad field (rm_class: the ladder's names)."""
        C.ProblemConfig.validate(dataclasses.replace(self, rm_class="linear"))
        C.check_choice("protocol", self.protocol, PROTOCOLS)
        C.check_range("rm_features", self.rm_features, 0, 4096)
        if self.policy_class != "auto":
            policy_order(self.policy_class, self.horizon)
        try:
            policy_order(self.online_policy_class, self.horizon)
        except UserError:
            raise UserError(
                "online_policy_class must be one of product, markov1, ..., tabular; "
                f"got {self.online_policy_class!r}"
            ) from None
        if self.rm_class != "auto":
            window_order(self.rm_class, self.horizon)


def _window_dims(cfg: Config) -> list[int]:
    from gvgap.theory.spans import window_dim

    return [window_dim(cfg.vocab, cfg.horizon, j) for j in range(max(cfg.horizon - 1, 0))]


def memory_bytes(cfg: Config) -> float:
    """Bytes this experiment adds to the generic estimate of a run (``base.estimate_memory``):
    the pair-kernel factor and Woodbury work arrays (5 N q floats), the dictionary (3 N K),
    the exact tables of the ladder (soft values, tilts, ANOVA pieces: 8 N) and, for the
    protocols that fit window rungs (``learned``, ``well_specified``), every rung's dense
    window features with their copies (RM, DPO fast path, basis: 4 N m_w d_J, m_w = m per-prompt
    blocks) and a shared tabular reward's (m, N, N) features; N = m V^H leaves."""
    from gvgap.theory.asymptotics import KERNEL_MAX_COLUMNS

    m = cfg.n_prompts
    leaves = float(m) * float(cfg.vocab) ** cfg.horizon
    k_dict = max(cfg.rm_features, cfg.k) if cfg.rm_features else cfg.k + NON_ORACLE_DISTRACTORS
    total = (
        8.0
        * leaves
        * (5 * KERNEL_MAX_COLUMNS + 3 * k_dict * (m if not cfg.shared_reward else 1) + 8)
    )
    fits_windows = cfg.protocol in ("learned", "well_specified") or cfg.rm_class.startswith(
        "window"
    )
    if fits_windows:
        blocks = 1 if cfg.shared_reward else m
        total += 8.0 * 4 * leaves * blocks * sum(_window_dims(cfg))
        if cfg.shared_reward and m > 1:
            total += 8.0 * 2 * leaves * float(cfg.vocab) ** cfg.horizon
    return total


Config.memory_bytes = memory_bytes  # the hook base.estimate_memory reads

SMOKE = Config(generator="dense", tree="2x3", n_pairs=20, lam_grid="short")


def n_extra(cfg: Config) -> int:
    """Distractors of the dictionary rung: K − k."""
    if cfg.rm_features:
        return max(cfg.rm_features, cfg.k) - cfg.k
    return NON_ORACLE_DISTRACTORS


# ---------------------------------------------------------------- the instance, once


def instance_key(cfg: Config) -> tuple:
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


def instance(cfg: Config, instance_rng: np.random.Generator) -> Instance:
    """The run's instance (drawn from ``instance_rng`` only), cached (:data:`_CACHE`)."""
    import json

    key = (instance_key(cfg), json.dumps(instance_rng.bit_generator.state, sort_keys=True))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    env = C.build_env(cfg, instance_rng)
    shared = cfg.shared_reward or env.n_prompts == 1
    dictionary = LC.dictionary_features(env, n_extra(cfg), instance_rng, shared=shared)
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


def fixed_classes(cfg: Config, inst: Instance) -> tuple[str, str]:
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
    return LC.reward_class(
        name, env, shared=inst.ladder.shared or env.n_prompts == 1, dictionary=inst.dictionary
    )


def _online_policy(cfg: Config, env):
    if policy_order(cfg.online_policy_class, env.horizon) < env.horizon - 1:
        return LC.policy_class(cfg.online_policy_class, env)
    return None


def _dpo_fit(pol, env):
    from gvgap.learners import dpo

    return lambda d, lam: dpo(pol, env, d, lam=lam)


def _rlhf_fit(rc, env, on_pol):
    from gvgap.learners import rlhf

    return lambda d, lam: rlhf(rc, env, d, lam=lam, policy=on_pol)


def fit_pipelines(cfg: Config, inst: Instance, data, grid, split_seed) -> tuple:
    """(offline Result, its rung, online Result, its rung) under ``cfg.protocol``."""
    from gvgap.learners.select import select_model

    env = inst.env
    on_pol = _online_policy(cfg, env)
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
        off_fits = {n: _dpo_fit(LC.policy_class(n, env), env) for n in offs}
        on_fits = {n: _rlhf_fit(_reward_class(n, inst), env, on_pol) for n in ons}
        p_name, off, _ = select_model(off_fits, data, split_seed=split_seed, grid=grid)
        r_name, on, _ = select_model(on_fits, data, split_seed=split_seed, grid=grid)
        return off, p_name, on, r_name
    p_name, r_name = fixed_classes(cfg, inst)
    off = C.fit_dpo(env, data, grid, split_seed, policy=LC.policy_class(p_name, env))
    on = C.fit_rlhf(env, data, _reward_class(r_name, inst), grid, split_seed, policy=on_pol)
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
    """Whether the two classes are isomorphic (offline = online by theorem, THEORY §3):
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


def run(
    cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator
) -> dict[str, float]:
    """Offline (DPO over a policy rung) vs online (RM over a reward rung + soft RL)."""
    inst = instance(cfg, instance_rng)
    env = inst.env
    data = C.draw_pairs(env, cfg.n_pairs, rng)
    grid, split_seed = C.lambda_grid(cfg.lam, cfg.lam_grid), C.split_seed_from(rng)
    off, p_name, on, r_name = fit_pipelines(cfg, inst, data, grid, split_seed)
    out = {**Hy.metric_rows("offline", env, off), **Hy.metric_rows("online", env, on)}
    out |= C.gap_metrics(env) | inst.ladder.metrics()
    out |= class_metrics(inst, p_name, r_name, _online_policy(cfg, env) is None)
    out["delta_C_star"] = delta_c_star(inst)
    out["isomorphic"] = float(isomorphic(inst, p_name, r_name))
    out["coverage"] = coverage(env, data)
    out["rarest_count"] = float(2 * cfg.n_pairs * (env.rho[:, None] * np.exp(env.logp_ref)).min())
    out["n_leaves"] = float(env.n_leaves)
    out["gift"] = float(cfg.protocol in GIFT_PROTOCOLS or r_name == "oracle")
    return out


def run_batch(cfgs, *, rngs, instance_rngs) -> list[dict[str, float]]:
    """:func:`run` on each config in turn (identical results; runs of one instance share its
    measured ladder through the cache)."""
    return [run(c, rng=r, instance_rng=i) for c, r, i in zip(cfgs, rngs, instance_rngs)]


#: Runs per task of the sweep runner (it groups the runs of one instance together).
BATCH_SIZE = 16

# ---------------------------------------------------------------- sweeps and verdict

SETTINGS = R.SETTINGS
QUICK = R.QUICK
ROBUSTNESS = R.ROBUSTNESS
ROBUST_SEEDS = R.ROBUST_SEEDS
PILOT = R.PILOT
plan_seeds = R.plan_seeds
STABILITY_BLOCKS = R.STABILITY_BLOCKS
HEADLINE = R.HEADLINE


def headline_effect(df: pd.DataFrame) -> dict[str, float]:
    """The headline effect (d at :data:`HEADLINE`) with its interval and seeds."""
    return R.headline_effect(df, HEADLINE)


#: The per-run contrast behind the rule, d = regret(offline) − regret(online) on the same
#: pairs: the report's per-cell table (the rule itself reads n·d against ΔC per cell).
TEST = Hy.Contrast("d = regret offline − online", "offline", "online", "regret")

#: What the paper concludes about H6, and the verdict on the hypothesis that agrees with it.
PAPER_POSITION = "most support: the gap, with RL restricted to the simple verifier's policies"
PAPER_EXPECTS = "supported"


def verdict(df: pd.DataFrame):
    """The dose–response rule of :mod:`gvgap.experiments.h6_rule` (P1, P2; P3 reported)."""
    return R.verdict(df, claim=CLAIM)


#: Columns the surface figure distinguishes itself; other varying fields become panels.
SURFACE_USES = ("generator", "tree", "protocol")
#: Candidates for the line of the n-curve figure (tables where ``generator`` does not vary).
CURVE_LINES = ("epsilon", "k", "tree", "horizon", "protocol", "rm_class", "policy_class")


def _dose_design(df: pd.DataFrame) -> bool:
    """A table of the dose–response design (named cells, several n)."""
    return "cell" in df.columns and df["cell"].astype(str).str.len().gt(0).any()


def _curve_line(df: pd.DataFrame) -> str | None:
    return next((c for c in CURVE_LINES if c in df.columns and df[c].nunique() > 1), None)


def plot_uses(df: pd.DataFrame) -> tuple[str, ...]:
    """Columns :func:`plot` distinguishes on ``df`` (the rest become facets)."""
    if _dose_design(df):
        return ("*",)
    if "generator" in df.columns and df["generator"].nunique() > 1:
        return SURFACE_USES
    return tuple(c for c in ("n_pairs", _curve_line(df)) if c)


def plot(df: pd.DataFrame, ax=None):
    """H6 law under the headline protocol: mean n·d (95% CI) against ΔC on log–log axes, one
    point per (cell, n) at n ∈ DOSE_N, with the identity and the P1 band; filled = law cells
    of the rule. On a user sweep over generators: the surface of paired regret differences per
    generator (x, ordered by the dims-gap), tree (colour) and protocol (marker); else d vs n."""
    from gvgap.plots_h6 import dose_response, h6_curves, h6_surface

    if _dose_design(df):
        protocol = (
            R.HEADLINE_PROTOCOL
            if (df["protocol"] == R.HEADLINE_PROTOCOL).any()
            else (df["protocol"].iloc[0])
        )
        return dose_response(R.dose_table(df), ax, protocol=protocol, n_values=R.DOSE_N)
    if "generator" in df.columns and df["generator"].nunique() > 1:
        return h6_surface(df, ax)
    return h6_curves(df, ax, line=_curve_line(df))


def plot_control(df: pd.DataFrame, ax=None):
    """The positive control: the same law under ``gift`` (the online class handed the
    generating features), n·d against ΔC on log–log axes with the identity and the P1 band."""
    from gvgap.plots_h6 import dose_response

    return dose_response(R.dose_table(df), ax, protocol=R.CONTROL_PROTOCOL, n_values=R.DOSE_N)


def plot_d_vs_n(df: pd.DataFrame, ax=None):
    """d against n per gap cell (ΔC* > 0) under the headline protocol, log–log, with the law's
    prediction ΔC/n dashed in the cell's colour."""
    from gvgap.plots_h6 import d_against_n

    return d_against_n(R.dose_table(df), ax, protocol=R.HEADLINE_PROTOCOL)


def plot_rank(df: pd.DataFrame, ax=None):
    """Secondary (P3, reported): mean d at n = 16 per cell against its dims-gap, the former
    proxy of the gap, with each cell's ΔC printed beside it (headline protocol)."""
    from gvgap.plots_h6 import rank_scatter

    return rank_scatter(R.dose_table(df), ax, n=R.RANK_N[0], protocol=R.HEADLINE_PROTOCOL)


def extra_figures(df: pd.DataFrame) -> list[tuple]:
    """The design's further figures (control, d vs n, small-n ranking), as
    ``(kind, plot(df, ax), uses)``, on a dose–response table."""
    if not _dose_design(df):
        return []
    out = [("d_vs_n", plot_d_vs_n, ("*",)), ("rank", plot_rank, ("*",))]
    if (df["protocol"] == R.CONTROL_PROTOCOL).any():
        out.insert(0, ("control", plot_control, ("*",)))
    return out
