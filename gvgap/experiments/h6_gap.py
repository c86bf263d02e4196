"""H6 — the generation–verification gap, dialled on both sides (THEORY §3, §4, §6 items 9–11).

Design. One instance (``generator`` → family, dictionary, check, k; ``tree`` → V, H) and one
preference dataset D of n pairs from π_ref labelled by the true BT model. The gap is
*measured* on the instance (:mod:`gvgap.envs.ladder`): the smallest policy rung containing
π* (reverse-KL residual ≤ ``CONTAIN_TOL``), the smallest reward rung containing r*
(least-squares residual), their dimensions ``dim_pi_min``, ``dim_r_min`` and
``gap = log(dim_pi_min / dim_r_min)``. Two pipelines run on the same D with the same λ
protocol, chosen by ``protocol``:

* ``well_specified``: offline = DPO over the smallest policy rung containing π*; online = BT
  RM over the smallest reward rung containing r*, then exact soft RL over tabular Π.
* ``common``: offline = DPO over tabular Π; online = RM over the oracle (generating) features
  (the earlier design: it compares class sizes, not the gap).
* ``non_oracle``: offline = DPO over tabular Π; online = RM over K = max(rm_features, k)
  candidate features (default k + 5) — the generating ones plus distractor columns of the
  same dictionary outside their span (fresh Gaussian columns for dense or when exhausted).

``policy_class`` / ``rm_class`` (not ``auto``) override either side. Verdict metric: paired
regret difference d = regret(offline) − regret(online), regret = J(π*) − J(π) (ratio-free;
positive = online better); KL(π‖π*) and win rate are recorded beside it, J_norm for plots.
Prediction (under ``well_specified``): the advantage tracks the measured gap — it shows where
gap ≥ ``GAP_BIG`` and is nil (TOST, margin ``REGRET_MARGIN``) where gap ≤ ``GAP_SMALL``, at
either horizon of a pair of trees with equal V^H. Cells whose two classes are isomorphic
(``isomorphic`` = 1: equal by theorem, checked in tests/verify) are reported, not tested.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gvgap.envs.ladder import CONTAIN_TOL, ladder_gap, smallest_reward_rung
from gvgap.errors import UserError
from gvgap.experiments import common as C
from gvgap.experiments import h6_rule as R
from gvgap.experiments import hypothesis as Hy
from gvgap.experiments import rungs as RG
from gvgap.policies.ladder import policy_order, rung_name

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

ID = "h6_gap"
CLAIM = (
    "Online PFT (RM over the smallest reward class containing r* + soft RL) beats offline "
    "DPO over the smallest policy class containing π* exactly where the measured "
    "generation-verification gap log(dim Π_min / dim R_min) is large, and not where it is small."
)
NOTES = "H6"
DESIGN_NOTE = __doc__

PROTOCOLS = ("well_specified", "common", "non_oracle")
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
    "policy_class": "auto, product, markov<J>, tabular",
    "rm_class": "auto, linear, window<J>, tabular, local",
    "online_policy_class": "tabular, product, markov<J>",
}
# Verdict constants, fixed before reading results.
#: Cells with measured gap ≥ this are predicted to show an online advantage.
GAP_BIG = 1.5
#: Cells with measured gap ≤ this are predicted to show none (TOST).
GAP_SMALL = 0.75
#: Equivalence margin of "no advantage" on the regret difference (nats of J).
REGRET_MARGIN = R.REGRET_MARGIN
#: Protocol of the hypothesis test.
HEADLINE_PROTOCOL = "well_specified"
#: Headline cell (generator, tree) reported as the verdict's effect…
HEADLINE_CELL = ("dense", "2x4")
#: …and the positive control, which must show the advantage for the test to decide.
POSITIVE_CELL = ("sum_mod", "2x4")
#: Distractor columns of the non_oracle RM when ``rm_features`` = 0.
NON_ORACLE_DISTRACTORS = 5
#: Sample size of every tested cell (the smallest n, where the gap matters most).
HEADLINE_N = 16


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
        protocol: well_specified, common or non_oracle (module docstring).
        generator: "" or a key of ``GENERATORS``; sets family, dictionary, check and k (the
            resolved values are the recorded fields; setting both differently is an error).
        tree: "" or "VxH" (e.g. "2x4"); sets vocab and horizon.
        policy_class: offline policy rung (product, markov<J>, tabular) or auto (protocol).
        rm_class: online reward rung (linear = oracle features, window<J>, tabular, local) or
            auto (protocol).
        rm_features: K of the non_oracle RM: K = max(rm_features, k) candidate features;
            0 = k + ``NON_ORACLE_DISTRACTORS`` (so the non-oracle RM always has distractors).
        online_policy_class: policy class of the online RL step: tabular (exact soft RL) or a
            rung (product, markov<J>): the reverse-KL projection of π*_{r̂} onto it.
    """

    protocol: str = "well_specified"
    generator: str = ""
    tree: str = ""
    policy_class: str = "auto"
    rm_class: str = "auto"
    rm_features: int = 0
    online_policy_class: str = "tabular"

    def __post_init__(self) -> None:
        if self.tree:
            v, h = _tree(self.tree)
            self._preset("tree", {"vocab": v, "horizon": h})
        if not self.generator:
            return
        C.check_choice("generator", self.generator, tuple(GENERATORS))
        spec = dict(GENERATORS[self.generator])
        if spec["k"] == "all":
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
        C.check_range("rm_features", self.rm_features, 0)
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
            RG.check_reward_rung(self.rm_class)


SMOKE = Config(generator="dense", tree="2x3", n_pairs=20, lam_grid="short")
_TREES = ["4x2", "2x4"]  # equal output size V^H = 16, horizon 2 vs 4
SETTINGS = {
    "seeds": 20,
    "fixed": {},
    "grid": {
        "generator": ["additive_full", "additive", "window1_full", "dense", "sum_mod"],
        "tree": ["9x2", "3x4", "4x2", "2x4"],
        "n_pairs": [16, 64, 256, 1024],
        "protocol": list(PROTOCOLS),
    },
}
QUICK = {
    "seeds": 20,
    "fixed": {"lam_grid": "short"},
    "grid": {
        "generator": ["additive_full", "additive", "dense", "sum_mod"],
        "tree": _TREES,
        "n_pairs": [HEADLINE_N, 64],
        "protocol": list(PROTOCOLS),
    },
}
#: Seeds of each robustness re-check in ``reproduce --quick`` (10: the smallest one-sided
#: signed-rank p is 2^-10, enough for Holm over the few cells of a re-check).
ROBUST_SEEDS = 10
_AT = {"n_pairs": HEADLINE_N, "protocol": HEADLINE_PROTOCOL, "tree": POSITIVE_CELL[1]}
#: Re-checks (fields leave the grid), at the headline n, protocol and tree: peaked π_ref
#: (Dirichlet 0.1, 0.3, 1), β ∈ {0.1, 3}, and m = 2 prompts with per-prompt rewards (own w_x;
#: sum_mod: own target c + x).
ROBUSTNESS = [{**o, **_AT} for o in C.robustness(per_prompt=True)]


#: The problem instance (drawn only from ``instance_rng``).
build_env = C.build_env


def classes(cfg: Config, env, gap: dict, instance_rng: np.random.Generator):
    """(offline policy class, its rung name, online reward class, its rung name)."""
    if cfg.policy_class != "auto":
        p_name = rung_name(policy_order(cfg.policy_class, env.horizon), env.horizon)
    elif cfg.protocol == "well_specified":
        p_name = rung_name(int(gap["pi_order_min"]), env.horizon)
    else:
        p_name = "tabular"
    if cfg.rm_class != "auto":
        r_name = cfg.rm_class
    elif cfg.protocol == "well_specified":
        r_name = smallest_reward_rung(gap)
    else:
        r_name = "linear"
    extra = 0
    if cfg.protocol == "non_oracle":
        extra = max(cfg.rm_features, cfg.k) - cfg.k if cfg.rm_features else NON_ORACLE_DISTRACTORS
    rc = RG.reward_rung(r_name, env, n_distractors=extra, rng=instance_rng)
    return C.policy_class(p_name, env), p_name, rc, r_name


def run(
    cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator
) -> dict[str, float]:
    """Offline (DPO over a policy rung) vs online (RM over a reward rung + soft RL)."""
    env, data, grid, split_seed = C.prepare(cfg, rng, instance_rng)
    gap = ladder_gap(env)
    pol, p_name, rc, _r_name = classes(cfg, env, gap, instance_rng)
    off = C.fit_dpo(env, data, grid, split_seed, policy=pol)
    on_pol = None
    if policy_order(cfg.online_policy_class, env.horizon) < env.horizon - 1:
        on_pol = C.policy_class(cfg.online_policy_class, env)
    on = C.fit_rlhf(env, data, rc, grid, split_seed, policy=on_pol)
    out = {**Hy.metric_rows("offline", env, off), **Hy.metric_rows("online", env, on)}
    out |= C.gap_metrics(env) | gap
    order = policy_order(p_name, env.horizon)
    out["offline_dim"] = gap[f"dim_pi/{p_name}"]
    out["online_dim"] = float(RG.reward_dim(rc, env))
    out["isomorphic"] = float(RG.isomorphic(env, rc, order))
    out["n_leaves"] = float(env.n_leaves)
    out["contain_tol"] = CONTAIN_TOL
    return out


# ---------------------------------------------------------------- verdict


def cell_table(df: pd.DataFrame, protocol: str = HEADLINE_PROTOCOL) -> pd.DataFrame:
    """Per (generator, tree, n_pairs) cell of ``protocol``: the paired regret differences
    offline − online (``d``, a list), the measured gap and the isomorphism flag."""
    return R.cell_table(df, protocol)


def verdict(df: pd.DataFrame):
    """The rule of :mod:`gvgap.experiments.h6_rule` on the ``well_specified`` cells at n =
    ``HEADLINE_N`` (fewest pairs present if absent): positive control ``POSITIVE_CELL`` must be
    ``greater``; every non-isomorphic cell with gap ≥ GAP_BIG is predicted ``greater``, with
    gap ≤ GAP_SMALL ``equivalent`` (margin REGRET_MARGIN); Holm across the cells."""
    return R.verdict(
        df,
        claim=CLAIM,
        protocol=HEADLINE_PROTOCOL,
        n_pairs=HEADLINE_N,
        headline=HEADLINE_CELL,
        positive=POSITIVE_CELL,
        gap_big=GAP_BIG,
        gap_small=GAP_SMALL,
    )


#: Columns the surface figure distinguishes itself; other varying fields become panels.
SURFACE_USES = ("generator", "tree", "protocol")
#: Candidates for the line of the n-curve figure (tables where ``generator`` does not vary).
CURVE_LINES = ("epsilon", "k", "tree", "horizon", "protocol", "rm_class", "policy_class")


def _curve_line(df: pd.DataFrame) -> str | None:
    return next((c for c in CURVE_LINES if c in df.columns and df[c].nunique() > 1), None)


def plot_uses(df: pd.DataFrame) -> tuple[str, ...]:
    """Columns :func:`plot` distinguishes on ``df`` (the rest become facets)."""
    if "generator" in df.columns and df["generator"].nunique() > 1:
        return SURFACE_USES
    return tuple(c for c in ("n_pairs", _curve_line(df)) if c)


def plot(df: pd.DataFrame, ax=None):
    """H6: paired regret difference offline − online (95% bootstrap CI; positive = online
    better; seeds per point in the legend). With several generators: the surface per generator
    (x, ordered by measured gap), tree V×H (colour) and protocol (marker); else vs n (log x)
    with one line per level of the first varying of epsilon, k, tree, horizon, protocol."""
    from gvgap.plots_h6 import h6_curves, h6_surface

    if "generator" in df.columns and df["generator"].nunique() > 1:
        return h6_surface(df, ax)
    return h6_curves(df, ax, line=_curve_line(df))
