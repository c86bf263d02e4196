"""Pipelines shared by the hypothesis experiments, run under one protocol (docs/design.md §3).

Offline and online pipelines get the same preference pairs D, the same λ-selection protocol
(held-out split of D drawn from one ``split_seed``; validation BT likelihood of each
pipeline's reward coordinates; refit on all of D), and converged optimisers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from gvgap import theory
from gvgap.data import Preferences, sample_pairs
from gvgap.envs.families import FAMILIES, make_family
from gvgap.envs.tree_env import TreeEnv
from gvgap.errors import UserError, check_choice, check_range
from gvgap.experiments.base import BETA_RANGE
from gvgap.ladder.classes import RM_CLASSES, reward_class, tabular_policy
from gvgap.learners import (
    LAMBDA_GRID,
    Result,
    dpo,
    ipo,
    online_dpo_exact,
    rlhf,
    select_lambda,
)

#: Shorter λ grid used when a Config asks for ``lam_grid="short"`` (quick runs).
SHORT_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)


#: Allowed values of the shared problem fields, checked by :func:`validate_problem` and shown
#: by ``gvgap show``: ``(lo, hi, lo_open)`` for numbers, a tuple of strings for choices. The
#: upper bounds keep one run's work bounded (the tree size and memory are checked on top, by
#: :func:`gvgap.experiments.base.check_resources`); β's range is where the numerics are exact.
PROBLEM_LIMITS: dict[str, tuple] = {
    "family": tuple(FAMILIES),
    "vocab": (2, 4096, False),
    "horizon": (1, 24, False),
    "n_prompts": (1, 4096, False),
    "beta": (*BETA_RANGE, False),
    "n_pairs": (4, 1_000_000, False),
    "k": (1, 4096, False),
    "rm_class": RM_CLASSES,
    "epsilon": (0.0, 100.0, False),
    "ref": ("uniform", "random"),
    "ref_concentration": (1e-3, 1e3, False),
    "lam": (None, 1e6, False),
    "lam_grid": ("full", "short"),
    "online_lam": (None, 1e6, False),
    "online_samples": (2, 10_000, False),
    "iters": (1, 10_000, False),
}


def validate_problem(cfg) -> None:
    """UserError naming the first bad field among the problem fields shared by the hypothesis
    Configs (:data:`PROBLEM_LIMITS`); fields the Config lacks are skipped. ``epsilon > 0``
    needs ``family = "misspec"`` (other families ignore it)."""
    for name, rule in PROBLEM_LIMITS.items():
        if not hasattr(cfg, name):
            continue
        value = getattr(cfg, name)
        if isinstance(rule[0], str):
            check_choice(name, value, rule)
        else:
            check_range(name, value, rule[0], rule[1], lo_open=rule[2])
    if getattr(cfg, "epsilon", 0.0) > 0 and getattr(cfg, "family", "misspec") != "misspec":
        raise UserError(
            f"epsilon must be 0 unless family = 'misspec' (got epsilon={cfg.epsilon}, "
            f"family={cfg.family!r})"
        )
    _check_misspec_k(cfg)


def _check_misspec_k(cfg) -> None:
    """``epsilon > 0`` in family misspec needs k < V^H − 1 (else R_sim spans every reward)."""
    if getattr(cfg, "family", None) != "misspec" or not getattr(cfg, "epsilon", 0.0) > 0:
        return
    if cfg.horizon * np.log2(cfg.vocab) > 40:  # V^H − 1 > 10^12 > any allowed k
        return
    leaves = cfg.vocab**cfg.horizon
    if cfg.k >= leaves - 1:
        raise UserError(
            f"k must be < vocab**horizon - 1 = {leaves - 1} when epsilon > 0 in family "
            f"misspec (else R_sim holds every reward); got k={cfg.k}"
        )


@dataclass(frozen=True)
class ProblemConfig:
    """The problem and protocol knobs shared by the hypothesis experiments (h1–h6); each
    experiment's ``Config`` subclasses it, adds its own fields and may override a default.

    Attributes:
        family: problem family (``gvgap list``): linear, policy_complex, planning, misspec.
        vocab: V, tokens per step.
        horizon: H, completion length — the generation-complexity knob (H ≤ 2: little gap).
        n_prompts: m, prompts.
        beta: KL strength β of the true objective and of every learner.
        n_pairs: |D|, preference pairs shared by all pipelines.
        k: verifier complexity (features of R_sim).
        epsilon: misspecification size (family ``misspec``).
        ref: π_ref family, uniform or random.
        ref_concentration: Dirichlet concentration of a random π_ref.
        lam: regularisation λ; negative = select on a held-out split (shared protocol).
        lam_grid: ``full`` or ``short`` λ grid for selection.
        dictionary: feature dictionary of the family (``gvgap list``: dense, counts,
            position_token, ngram<n>, window<J>); "" = the family's default.
        per_prompt_weights: own r* per prompt: weights w_x (linear, misspec), target c + x
            (planning sum_mod).
        check: global check of family ``planning`` (sum_mod, ends_with_first, motif);
            "" = the family's default.
    """

    family: str = "linear"
    vocab: int = 3
    horizon: int = 4
    n_prompts: int = 1
    beta: float = 1.0
    n_pairs: int = 50
    k: int = 3
    epsilon: float = 0.0
    ref: str = "uniform"
    ref_concentration: float = 1.0
    lam: float = -1.0
    lam_grid: str = "full"
    dictionary: str = ""
    per_prompt_weights: bool = False
    check: str = ""

    def validate(self) -> None:
        """Raise UserError naming the first bad field."""
        validate_problem(self)
        validate_knobs(self)


#: Families that accept ``per_prompt_weights``.
PER_PROMPT_FAMILIES = ("linear", "misspec", "planning")


def validate_knobs(cfg) -> None:
    """UserError naming the first bad family knob (``dictionary``, ``check``,
    ``per_prompt_weights``) of a ProblemConfig."""
    from gvgap.envs.features import CHECKS, dictionary_size

    if cfg.dictionary:
        dictionary_size(cfg.dictionary, 2, 1)  # names only: sizes are checked by the family
    if cfg.check:
        check_choice("check", cfg.check, CHECKS)
        if cfg.family != "planning":
            raise UserError(f"check applies only to family 'planning'; got family {cfg.family!r}")
    if cfg.per_prompt_weights and cfg.family == "planning" and cfg.check not in ("", "sum_mod"):
        raise UserError(f"per_prompt_weights applies to check 'sum_mod' only; got {cfg.check!r}")
    if cfg.per_prompt_weights and cfg.family not in PER_PROMPT_FAMILIES:
        raise UserError(
            f"per_prompt_weights applies only to families {', '.join(PER_PROMPT_FAMILIES)}; "
            f"got family {cfg.family!r}"
        )


def prepare(
    cfg: ProblemConfig, rng: np.random.Generator, instance_rng: np.random.Generator
) -> tuple[TreeEnv, Preferences, tuple[float, ...], int]:
    """The setting every hypothesis run starts from, in one fixed draw order: the instance
    (from ``instance_rng`` only), then D (n pairs from π_ref, BT labels by r*), the λ grid, and
    the seed of the train/validation split shared by every pipeline (both from ``rng``)."""
    env = build_env(cfg, instance_rng)
    data = draw_pairs(env, cfg.n_pairs, rng)
    return env, data, lambda_grid(cfg.lam, cfg.lam_grid), split_seed_from(rng)


def family_knobs(cfg) -> dict:
    """The optional family knobs a Config sets (``dictionary``, ``check``,
    ``per_prompt_weights``); unset ones are left to the family's defaults."""
    out: dict = {}
    if getattr(cfg, "dictionary", ""):
        out["dictionary"] = cfg.dictionary
    if getattr(cfg, "check", ""):
        out["check"] = cfg.check
    if getattr(cfg, "per_prompt_weights", False):
        out["per_prompt_weights"] = True
    return out


def build_env(cfg, instance_rng: np.random.Generator) -> TreeEnv:
    """The problem instance of a hypothesis Config (drawn only from ``instance_rng``)."""
    return make_family(
        cfg.family,
        rng=instance_rng,
        vocab=cfg.vocab,
        horizon=cfg.horizon,
        n_prompts=cfg.n_prompts,
        beta=cfg.beta,
        k=cfg.k,
        epsilon=cfg.epsilon,
        ref=cfg.ref,
        ref_concentration=cfg.ref_concentration,
        **family_knobs(cfg),
    )


def gap_metrics(env: TreeEnv) -> dict[str, float]:
    """The instance's numeric generation-verification gap descriptors (bare metrics)."""
    gap = env.info.get("gap", {})
    return {k: float(v) for k, v in gap.items() if isinstance(v, (int, float))}


def lambda_grid(lam: float, grid_name: str = "full") -> tuple[float, ...]:
    """λ < 0 → select from the grid; λ ≥ 0 → fixed."""
    if lam >= 0:
        return (float(lam),)
    return SHORT_GRID if grid_name == "short" else LAMBDA_GRID


def draw_pairs(
    env: TreeEnv, n_pairs: int, rng: np.random.Generator, *, label: str = "bt", flip: float = 0.0
) -> Preferences:
    """D: n pairs from μ = π_ref labelled by r* (BT-sampled by default)."""
    return sample_pairs(env.logp_ref, env.r_star, env.rho, n_pairs, rng, label=label, flip=flip)


def fit_dpo(
    env: TreeEnv, data: Preferences, grid, split_seed: int, loss: str = "dpo", policy=None
) -> Result:
    """Offline DPO (or IPO) over ``policy`` (default: the tabular class) with the shared λ
    protocol."""
    pol = tabular_policy(env) if policy is None else policy
    if loss == "dpo":
        return select_lambda(
            lambda d, lam: dpo(pol, env, d, lam=lam), data, split_seed=split_seed, grid=grid
        )[0]
    return select_lambda(
        lambda d, lam: ipo(pol, env, d, lam=lam, mean=loss == "ipo_mean"),
        data,
        split_seed=split_seed,
        grid=grid,
    )[0]


def fit_rlhf(
    env: TreeEnv, data: Preferences, rm_name, grid, split_seed: int, policy=None
) -> Result:
    """RM of class ``rm_name`` (a name for :func:`reward_class`, or a reward class object;
    shared λ protocol) + exact soft RL over Π (``policy=None``), or the reverse-KL projection
    of π*_{r̂} onto ``policy`` (a ladder rung)."""
    rc = reward_class(rm_name, env) if isinstance(rm_name, str) else rm_name
    return select_lambda(
        lambda d, lam: rlhf(rc, env, d, lam=lam, policy=policy),
        data,
        split_seed=split_seed,
        grid=grid,
    )[0]


def fit_online_dpo(
    env: TreeEnv, r_hat: np.ndarray, *, n_samples: int = 8, iters: int = 10, lam: float = 1e-2
) -> Result:
    """Online DPO over Π labelled by r̂: best-vs-worst of ``n_samples`` on-policy samples
    (exact law), DPO to convergence each iteration (docs/theory.md §5 design, exact expectation)."""
    return online_dpo_exact(
        tabular_policy(env),
        env,
        r_hat,
        lam=lam,
        iters=iters,
        pairs="best_worst",
        n_samples=n_samples,
        tol=1e-7,
    )


#: Rewards within this of a prompt's maximum count as argmax ties in the β' → 0 limit.
TIE_TOL = 1e-9


def tilted_logp(logp_ref: np.ndarray, r: np.ndarray, s: float) -> np.ndarray:
    """Leaf form of soft RL on ``r`` at β' = 1/s: log P ∝ log P_ref + s r (docs/theory.md §2)."""
    return theory.log_normalize_leaf(logp_ref + s * r)


def kl_limit(logp_ref: np.ndarray, r: np.ndarray, rho: np.ndarray) -> float:
    """lim_{β'→0} KL(π_{β'}‖π_ref): P_ref restricted to each prompt's argmax set of ``r``."""
    top = r >= r.max(axis=1, keepdims=True) - TIE_TOL
    lp = theory.log_normalize_leaf(np.where(top, logp_ref, -np.inf))
    return theory.kl(lp, logp_ref, rho)


def match_kl(env: TreeEnv, r: np.ndarray, target: float) -> tuple[np.ndarray, float] | None:
    """The soft-RL policy on ``r`` whose KL(π‖π_ref) equals ``target``, and its β'.

    KL(s) with s = 1/β' increases strictly from 0 (s = 0, π_ref) to :func:`kl_limit`; the root
    is bracketed by doubling and found by Brent's method to ~1e-12 relative precision.

    Returns:
        ``(logp, beta_eff)``, or None when ``target`` is beyond the frontier's range.
    """

    def gap(s: float) -> float:
        return theory.kl(tilted_logp(env.logp_ref, r, s), env.logp_ref, env.rho) - target

    if target >= kl_limit(env.logp_ref, r, env.rho) - 1e-9:
        return None
    hi = 1.0
    while gap(hi) < 0:
        hi *= 2.0
        if hi > 1e12:
            return None
    s = brentq(gap, 0.0, hi, xtol=1e-14, rtol=1e-13, maxiter=500)
    return tilted_logp(env.logp_ref, r, s), (1.0 / s if s > 0 else float("inf"))


def metric_row(pipeline: str, env: TreeEnv, res: Result) -> dict[str, float]:
    """``{"<pipeline>/<metric>": value}`` for the shared metrics plus the convergence
    certificate ``grad_norm`` and the selected ``lam``."""
    out = {f"{pipeline}/{k}": float(v) for k, v in env.metrics(res.logp).items()}
    out[f"{pipeline}/grad_norm"] = float(res.grad_norm)
    out[f"{pipeline}/lam"] = float(res.lam)
    return out


def split_seed_from(rng: np.random.Generator) -> int:
    """One integer drawn from ``rng`` that seeds the shared train/validation split."""
    return int(rng.integers(2**31 - 1))
