"""c1_gibbs: docs/theory.md §6 claim 1 on random instances.

Three exact identities on a random tree problem (π_ref, r, ρ) and random policies π:

- Gibbs / reverse-KL identity (docs/theory.md §3), per prompt x:
  E_π[r] − β KL(P_π‖P_ref) = β log Z_r − β KL(P_π‖P*_r);
- soft value iteration (node form) equals brute-force enumeration
  P*_r = P_ref e^{r/β} / Z_r and log Z_r = log Σ_ξ P_ref e^{r/β};
- per-token KL summed along the trajectory equals the trajectory KL (against π_ref and π*).

Errors are relative with a floor of 1: |a − b| / max(1, |a|). The instance (π_ref, r*, ρ) is
drawn from ``instance_rng``; the policies π from ``rng``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gvgap import theory
from gvgap.envs.tree_env import TreeEnv, make_env, random_ref_policy
from gvgap.errors import check_choice, check_range
from gvgap.experiments.base import Verdict
from gvgap.inference import IDENTITY_TOL, within_tolerance

ID = "c1_gibbs"
CLAIM = (
    "Gibbs identity, soft value iteration = enumeration, and per-token KL sum = trajectory KL "
    "hold to 1e-9 on random trees (docs/theory.md §6.1)"
)
NOTES = "Formal results: Gibbs / reverse-KL identity"

#: What the paper concludes (a formal result), and the verdict that agrees with it. The check
#: is an identity on exact quantities, so it needs no power plan: one failing instance of
#: the tolerance decides.
PAPER_POSITION = "a theorem of the paper (the Gibbs / reverse-KL identity)"
PAPER_EXPECTS = "supported"

#: A run passes when every error is within this (float64 round-off on trees of ≤ 1e6 leaves:
#: the identity tolerance of ``gvgap verify``).
TOLERANCE = IDENTITY_TOL
#: The metrics ``run`` reports; each is a max over prompts and policies.
ERROR_METRICS = ("gibbs_error", "softvi_error", "kl_error")
#: Runs per ``run_batch`` chunk the sweep runner may form.
BATCH_SIZE = 32
REF_FAMILIES = ("uniform", "random")


@dataclass(frozen=True)
class Config:
    """One c1_gibbs setting.

    Attributes:
        vocab: V, tokens per step (>= 2).
        horizon: H, completion length (>= 1).
        n_prompts: m, number of prompts (>= 1).
        beta: KL strength β (> 0).
        ref: π_ref family, 'uniform' or 'random' (Dirichlet per state).
        ref_concentration: Dirichlet concentration of a random π_ref (> 0).
        reward_scale: r*(x, ξ) ~ N(0, reward_scale²) independently per leaf (> 0).
        n_policies: random policies π checked per run (>= 1).
        pi_concentration: Dirichlet concentration of the random policies π (> 0).
    """

    vocab: int = 3
    horizon: int = 3
    n_prompts: int = 2
    beta: float = 0.5
    ref: str = "random"
    ref_concentration: float = 1.0
    reward_scale: float = 1.0
    n_policies: int = 4
    pi_concentration: float = 1.0

    def validate(self) -> None:
        """Raise UserError naming the first out-of-range field."""
        for name, lo in (("vocab", 2), ("horizon", 1), ("n_prompts", 1), ("n_policies", 1)):
            check_range(name, getattr(self, name), lo)
        for name in ("beta", "ref_concentration", "reward_scale", "pi_concentration"):
            check_range(name, getattr(self, name), 0.0, lo_open=True)
        check_choice("ref", self.ref, REF_FAMILIES)
        theory.check_tree_size(self.n_prompts, self.vocab, self.horizon)


SETTINGS: dict[str, Any] = {
    "seeds": 5,
    "fixed": {"n_prompts": 2},
    "grid": {
        "vocab": [2, 3, 4],
        "horizon": [1, 2, 4, 6],
        "ref": ["uniform", "random"],
        "beta": [0.1, 1.0],
    },
}
QUICK: dict[str, Any] = {
    "seeds": 2,
    "fixed": {"n_prompts": 2},
    "grid": {"vocab": [2, 3], "horizon": [1, 3], "ref": ["uniform", "random"]},
}
SMOKE = Config()


@dataclass(frozen=True)
class _Instance:
    """The exact quantities of one problem that every policy π is checked against."""

    env: TreeEnv
    logp_star_bf: np.ndarray
    log_z_bf: np.ndarray
    softvi_error: float


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max(1, |a|) over finite entries (both −inf counts as equal)."""
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    same_inf = np.isinf(a) & (a == b)
    err = np.where(same_inf, 0.0, np.abs(a - b) / np.maximum(1.0, np.abs(a)))
    return float(np.max(err, initial=0.0))


def _instance(cfg: Config, instance_rng: np.random.Generator) -> _Instance:
    m, n = cfg.n_prompts, theory.n_leaves(cfg.vocab, cfg.horizon)
    r_star = cfg.reward_scale * instance_rng.standard_normal((m, n))
    rho = instance_rng.dirichlet(np.ones(m))
    env = make_env(
        vocab=cfg.vocab,
        horizon=cfg.horizon,
        n_prompts=m,
        beta=cfg.beta,
        r_star=r_star,
        ref=cfg.ref,
        ref_concentration=cfg.ref_concentration,
        rho=rho,
        rng=instance_rng,
    )
    logp_star_bf = theory.soft_optimal_leaf_logp(env.logp_ref, env.r_star, env.beta)
    log_z_bf = theory.log_partition_leaf(env.logp_ref, env.r_star, env.beta)
    softvi_error = max(
        _rel_err(logp_star_bf, env.logp_star), _rel_err(log_z_bf, env.soft_star.log_z)
    )
    return _Instance(env, logp_star_bf, log_z_bf, softvi_error)


def _policy_errors(inst: _Instance, logpi: theory.NodeLogp) -> tuple[float, float]:
    """(Gibbs error, per-token-vs-trajectory KL error) of one node policy π."""
    env = inst.env
    logp = theory.node_to_leaf_logp(logpi)
    reward = (np.exp(logp) * env.r_star).sum(axis=1)
    lhs = reward - env.beta * theory.kl_per_prompt(logp, env.logp_ref)
    rhs = env.beta * (inst.log_z_bf - theory.kl_per_prompt(logp, inst.logp_star_bf))
    kl_err = max(
        _rel_err(
            theory.kl(logp, env.logp_ref, env.rho),
            theory.per_token_kl(logpi, env.logpi_ref, env.rho),
        ),
        _rel_err(
            theory.kl(logp, env.logp_star, env.rho),
            theory.per_token_kl(logpi, env.soft_star.logpi, env.rho),
        ),
    )
    return _rel_err(lhs, rhs), kl_err


def _check(cfg: Config, inst: _Instance, rng: np.random.Generator) -> dict[str, float]:
    gibbs, kl_err = 0.0, 0.0
    for _ in range(cfg.n_policies):
        logpi = random_ref_policy(cfg.n_prompts, cfg.vocab, cfg.horizon, cfg.pi_concentration, rng)
        g, k = _policy_errors(inst, logpi)
        gibbs, kl_err = max(gibbs, g), max(kl_err, k)
    return {"gibbs_error": gibbs, "softvi_error": inst.softvi_error, "kl_error": kl_err}


def run(cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator) -> dict:
    """Check the three identities on one random instance.

    Returns:
        ``gibbs_error``, ``softvi_error``, ``kl_error`` (pipeline ""), each a relative error.
    """
    return _check(cfg, _instance(cfg, instance_rng), rng)


def _instance_key(cfg: Config, instance_rng: np.random.Generator) -> str:
    """Equal keys ⇔ equal instances: the instance fields plus the generator's exact state."""
    fields = {k: v for k, v in asdict(cfg).items() if k not in ("n_policies", "pi_concentration")}
    return json.dumps([fields, instance_rng.bit_generator.state], sort_keys=True)


def run_batch(
    cfgs: list[Config],
    *,
    rngs: list[np.random.Generator],
    instance_rngs: list[np.random.Generator],
) -> list[dict]:
    """``[run(c, rng=r, instance_rng=i) ...]``, building each distinct instance once.

    Runs whose instance generators are in the same state (a fixed ``instance_seed``) share
    the instance and its exact solutions; results are bit-identical to :func:`run`.
    """
    cache: dict[str, _Instance] = {}
    out = []
    for cfg, rng, inst_rng in zip(cfgs, rngs, instance_rngs):
        key = _instance_key(cfg, inst_rng)
        if key not in cache:
            cache[key] = _instance(cfg, inst_rng)
        out.append(_check(cfg, cache[key], rng))
    return out


def verdict(df: Any) -> Verdict:
    """Supported iff the largest error over all runs is within :data:`TOLERANCE`
    (:func:`gvgap.inference.within_tolerance`, the rule of every exact identity).

    The check is exact (no sampling error), so the interval is the range of per-run errors.
    """
    rows = df[df["metric"].isin(ERROR_METRICS)] if len(df) else df
    if not len(rows):
        return Verdict(CLAIM, "inconclusive", float("nan"), float("nan"), float("nan"), 0)
    per_run = rows.groupby("run_id")["value"].max()
    holds, worst = within_tolerance(per_run.to_numpy(float), TOLERANCE)
    label = "supported" if holds else "against"
    detail = f"max error {worst:.3g} over {len(per_run)} runs; tolerance {TOLERANCE:g}"
    return Verdict(CLAIM, label, worst, float(per_run.min()), worst, len(per_run), detail)


def plot(df: Any, ax: Any = None) -> Any:
    """Error (log scale, floored at 1e-18) against tree size m·V^H, one line per metric."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ax = ax if ax is not None else plt.gca()
    data = df[df["metric"].isin(ERROR_METRICS)].copy()
    data["leaves"] = data["n_prompts"] * data["vocab"].astype(float) ** data["horizon"]
    data["error"] = data["value"].clip(lower=1e-18)
    sns.lineplot(data=data, x="leaves", y="error", hue="metric", marker="o", ax=ax)
    ax.axhline(TOLERANCE, color="grey", linestyle="--", label="tolerance")
    ax.set(xscale="log", yscale="log", xlabel="leaves m·V^H", ylabel="relative error")
    ax.set_title("c1: Gibbs identity, soft VI, KL decomposition")
    return ax
