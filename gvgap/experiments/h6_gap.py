"""H6 — the generation–verification gap, measured as the theory defines it (docs/theory.md §3–§4,
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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gvgap.errors import UserError
from gvgap.experiments import common, h6_cells, h6_rule, hypothesis
from gvgap.experiments import h6_design as D
from gvgap.experiments.h6_protocols import (
    NON_ORACLE_DISTRACTORS,
    class_metrics,
    coverage,
    delta_c_star,
    fit_pipelines,
    instance,
    isomorphic,
    online_policy,
)
from gvgap.ladder.rungs import policy_order, window_order

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
    "cell": '"" or a key of h6_design.CELLS',
    "policy_class": "auto, product, markov<J>, tabular",
    "rm_class": "auto, oracle (linear), dictionary, window<J>, tabular, local",
    "online_policy_class": "tabular, product, markov<J>",
}


def _tree(tree: str) -> tuple[int, int]:
    try:
        v, h = (int(p) for p in tree.lower().split("x"))
    except ValueError:
        raise UserError(f"tree must look like 'VxH' (e.g. '3x4'); got {tree!r}") from None
    return v, h


@dataclass(frozen=True)
class Config(common.ProblemConfig):
    """One h6_gap setting. Shared problem fields: :class:`common.ProblemConfig`.

    Attributes:
        protocol: learned, well_specified, gift, gift_tabular or non_oracle (module docstring).
        cell: "" or a key of ``h6_design.CELLS``: a named design cell that sets generator, tree
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
            common.check_choice("cell", self.cell, tuple(D.CELLS))
            self._preset("cell", D.CELLS[self.cell])
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
        common.check_choice("generator", self.generator, tuple(GENERATORS))
        spec = dict(GENERATORS[self.generator])
        if spec["k"] != "all" and self.k != common.ProblemConfig.k:
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
        common.ProblemConfig.validate(dataclasses.replace(self, rm_class="linear"))
        common.check_choice("protocol", self.protocol, PROTOCOLS)
        common.check_range("rm_features", self.rm_features, 0, 4096)
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
    window features with their copies (RM, DPO fast path, their SVD bases and LAPACK work:
    8 N m_w d_J, m_w = m per-prompt
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
        total += 8.0 * 8 * leaves * blocks * sum(_window_dims(cfg))
        if cfg.shared_reward and m > 1:
            total += 8.0 * 2 * leaves * float(cfg.vocab) ** cfg.horizon
    return total


Config.memory_bytes = memory_bytes  # the hook base.estimate_memory reads

SMOKE = Config(generator="dense", tree="2x3", n_pairs=20, lam_grid="short")


def run(
    cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator
) -> dict[str, float]:
    """Offline (DPO over a policy rung) vs online (RM over a reward rung + soft RL)."""
    inst = instance(cfg, instance_rng)
    env = inst.env
    data = common.draw_pairs(env, cfg.n_pairs, rng)
    grid, split_seed = common.lambda_grid(cfg.lam, cfg.lam_grid), common.split_seed_from(rng)
    off, p_name, on, r_name = fit_pipelines(cfg, inst, data, grid, split_seed)
    out = {
        **hypothesis.metric_rows("offline", env, off),
        **hypothesis.metric_rows("online", env, on),
    }
    out |= common.gap_metrics(env) | inst.ladder.metrics()
    out |= class_metrics(inst, p_name, r_name, online_policy(cfg, env) is None)
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

SETTINGS = D.SETTINGS
QUICK = D.QUICK
ROBUSTNESS = D.ROBUSTNESS
ROBUST_SEEDS = D.ROBUST_SEEDS
PILOT = D.PILOT
plan_seeds = h6_rule.plan_seeds
STABILITY_BLOCKS = D.STABILITY_BLOCKS
HEADLINE = D.HEADLINE


def headline_effect(df: pd.DataFrame) -> dict[str, float]:
    """The headline effect (d at :data:`HEADLINE`) with its interval and seeds."""
    return h6_rule.headline_effect(df, HEADLINE)


#: The per-run contrast behind the rule, d = regret(offline) − regret(online) on the same
#: pairs: the report's per-cell table (the rule itself reads n·d against ΔC per cell).
TEST = hypothesis.Contrast("d = regret offline − online", "offline", "online", "regret")

#: What the paper concludes about H6, and the verdict on the hypothesis that agrees with it.
PAPER_POSITION = "most support: the gap, with RL restricted to the simple verifier's policies"
PAPER_EXPECTS = "supported"


def verdict(df: pd.DataFrame):
    """The dose–response rule of :mod:`gvgap.experiments.h6_rule` (P1, P2; P3 reported)."""
    return h6_rule.verdict(df, claim=CLAIM)


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
            D.HEADLINE_PROTOCOL
            if (df["protocol"] == D.HEADLINE_PROTOCOL).any()
            else (df["protocol"].iloc[0])
        )
        return dose_response(h6_cells.dose_table(df), ax, protocol=protocol, n_values=D.DOSE_N)
    if "generator" in df.columns and df["generator"].nunique() > 1:
        return h6_surface(df, ax)
    return h6_curves(df, ax, line=_curve_line(df))


def plot_control(df: pd.DataFrame, ax=None):
    """The positive control: the same law under ``gift`` (the online class handed the
    generating features), n·d against ΔC on log–log axes with the identity and the P1 band."""
    from gvgap.plots_h6 import dose_response

    return dose_response(
        h6_cells.dose_table(df), ax, protocol=D.CONTROL_PROTOCOL, n_values=D.DOSE_N
    )


def plot_d_vs_n(df: pd.DataFrame, ax=None):
    """d against n per gap cell (ΔC* > 0) under the headline protocol, log–log, with the law's
    prediction ΔC/n dashed in the cell's colour."""
    from gvgap.plots_h6 import d_against_n

    return d_against_n(h6_cells.dose_table(df), ax, protocol=D.HEADLINE_PROTOCOL)


def plot_rank(df: pd.DataFrame, ax=None):
    """Secondary (P3, reported): mean d at n = 16 per cell against its dims-gap, the former
    proxy of the gap, with each cell's ΔC printed beside it (headline protocol)."""
    from gvgap.plots_h6 import rank_scatter

    return rank_scatter(h6_cells.dose_table(df), ax, n=D.RANK_N[0], protocol=D.HEADLINE_PROTOCOL)


def extra_figures(df: pd.DataFrame) -> list[tuple]:
    """The design's further figures (control, d vs n, small-n ranking), as
    ``(kind, plot(df, ax), uses)``, on a dose–response table."""
    if not _dose_design(df):
        return []
    out = [("d_vs_n", plot_d_vs_n, ("*",)), ("rank", plot_rank, ("*",))]
    if (df["protocol"] == D.CONTROL_PROTOCOL).any():
        out.insert(0, ("control", plot_control, ("*",)))
    return out
