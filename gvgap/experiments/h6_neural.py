"""H6 with neural classes — does the online advantage follow the capacity asymmetry?

Design: one instance of a problem family, one preference dataset D of n pairs from π_ref
with BT labels. Every arm uses the SAME architecture (a small causal transformer, or an
MLP) from the same initial weights, the same pairs and the same λ protocol (held-out BT
likelihood of the arm's reward coordinates, shared split), exactly on the whole tree (one
batched pass over all nodes; J, KLs and win rates through ``gvgap.theory``):

- ``dpo``: offline DPO of the policy network;
- ``rlhf``: a global scalar-head RM of matched capacity (the policy's backbone with a scalar
  head), fitted by BT, then exact RL of the policy network on r̂;
- ``rl_local``: exact RL on DPO's implicit reward (isomorphic control: P*_{r_π} = π is in
  the class, so RL must return the DPO policy — equivalence within δ);
- ``oracle``: exact RL on r* (positive control: what a perfect verifier buys through the
  same policy network).

Capacity (per instance and network, :mod:`gvgap.nn.capacity`): ``offline/capacity_residual``
= min_θ E KL(P_θ ‖ P*) and ``online/capacity_residual`` = the fraction of the π*-weighted,
per-prompt-centred variance of r* the RM network cannot represent, each the best of
``restarts`` full fits with its gradient norm, and ``capacity_asymmetry`` = β·offline
residual − (J* − J(π*_{r_w})) in J units (> 0: the policy network is the bottleneck).

The design (fixed fields of the sweeps): the ``planning`` family with check
``ends_with_first`` (r* = 1 when the last token equals the first: a verifier every network
here represents) and a random Dirichlet π_ref per state, so π* = π_ref e^{Q − V} tilts every
state by soft values of the future, which a small policy network cannot represent. The dial is
the networks' width: at width 4 (MLP, 4,096 leaves) the policy network misses π* by ~0.1 nats
while the RM network represents r*; at width 64 both fit. (The first confirmatory design
dialled π_ref's concentration instead, 0.3 against 10, with width-16 transformers: both cells
measured asymmetries of 0.01–0.02 nats.)

Instance blocks (``block``): ``dev`` (development), ``pilot`` (sizes the confirmatory sweep:
:func:`gvgap.inference.seeds_for_power`), ``confirm`` (the first confirmatory design, the
π_ref-concentration dial: :data:`CONC_HEADLINE`) and ``confirm2`` (the second, the width
dial: :data:`HEADLINE`, fixed after the first came out inconclusive with its premise
measurably false — both asymmetries ≈ 0.01–0.02 nats — and before any ``confirm2`` run),
disjoint instance
streams. Metrics are exact on the tree; regret = J(π*) − J(π). RM accuracy: the probability
that r̂ orders a pair like r* (exact, trees ≤ ``MAX_ACC_LEAVES`` leaves).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from gvgap.experiments import common, hypothesis
from gvgap.theory.metrics import pairwise_accuracy

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

ID = "h6_neural"
CLAIM = (
    "With neural classes of one architecture (policy network vs scalar-head RM network, same "
    "pairs, same λ protocol, exact on trees of 10^2–10^5 leaves), RM + exact RL beats offline "
    "DPO in J at small n where the measured capacity asymmetry favours the verifier."
)
NOTES = "H6"
PAPER_POSITION = (
    "most support for H6 (the gap); neural classes are where the paper's models live, and an "
    "implicit reward that verifies but cannot generate is the asymmetry it points to"
)
PAPER_EXPECTS = "supported"
DESIGN_NOTE = __doc__
HYPOTHESIS = (
    "online − offline in J > 0 where the policy network cannot represent π* but the RM "
    "network represents r* (capacity asymmetry > 0)"
)
PREDICTION = "rlhf − dpo in J is greater than 0 at the headline cell."

ARCHS = ("transformer", "mlp")
RM_INITS = ("fresh", "policy")
BLOCKS = ("dev", "pilot", "confirm", "confirm2")
#: Second entropy word of each block's instance stream (``dev`` uses the sweep's own).
BLOCK_WORDS = {"pilot": 0x9107_B10C, "confirm": 0xC0F1_B10C, "confirm2": 0xC0F2_B10C}
#: Most leaves m·V^H of one run (memory is chunked; time grows linearly).
MAX_NEURAL_LEAVES = 1 << 20
#: Largest tree on which the exact pairwise RM accuracy is computed (N² pairs per prompt).
MAX_ACC_LEAVES = 4096
PIPELINES = ("dpo", "rlhf", "rl_local", "oracle")
#: ``run`` needs the ``gvgap[torch]`` extra (the module itself imports without torch).
REQUIRES_TORCH = True
#: Runs per ``run_batch`` chunk (stacked in one model call; memory is chunked).
BATCH_SIZE = 32

TEST = hypothesis.Contrast("rlhf − dpo", "rlhf", "dpo")
CONTROL = hypothesis.Contrast("oracle − dpo (RL on r* through the same networks)", "oracle", "dpo")
ISOMORPHIC = hypothesis.Contrast("rl_local − dpo (isomorphic)", "rl_local", "dpo")
MORE_CONTROLS = ((ISOMORPHIC, "equivalent"),)
REPORTED = (hypothesis.Contrast("rlhf − dpo win rate", "rlhf", "dpo", "win_rate"),)
#: Equivalence margin δ (J units; J* − J_ref of these families is ≈ 1–2).
MARGIN = 0.02
#: Columns that define a cell of the verdict and the surface.
CELL_KEYS = [
    "family",
    "check",
    "ref",
    "ref_concentration",
    "vocab",
    "horizon",
    "arch",
    "width",
    "depth",
    "n_pairs",
]
#: The headline cell of the first confirmatory sweep (block ``confirm``, fixed before it ran;
#: ``sims/h6_neural_conc.toml``): transformers of width 16, π_ref concentration 0.3 against 10.
CONC_HEADLINE = {
    "family": "planning",
    "check": "ends_with_first",
    "ref": "random",
    "ref_concentration": 0.3,
    "vocab": 4,
    "horizon": 6,
    "arch": "transformer",
    "width": 16,
    "depth": 1,
    "n_pairs": 64,
}
#: The headline cell of the confirmatory sweep (block ``confirm2``, fixed before it ran): MLP
#: networks of width 4 on the 4×6 tree, where the development block measured the policy
#: network's residual at 0.07–0.10 nats and the RM network's at ≤ 2.5e-3 (width 64: 0.003–0.006
#: nats, the other cell of the sweep).
HEADLINE = {**CONC_HEADLINE, "arch": "mlp", "width": 4}
#: The headline cell of the quick sweep (a small tree and network of the same design).
QUICK_HEADLINE = {**HEADLINE, "horizon": 4, "width": 2, "n_pairs": 32}


@dataclass(frozen=True)
class Config(common.ProblemConfig):
    """One h6_neural setting.

    Shared problem fields: :class:`common.ProblemConfig` (here family ``planning`` with check
    ``ends_with_first``, a random π_ref of concentration 0.3, V = 4, H = 6, n = 64, λ
    selected on the short grid).

    Attributes:
        arch: ``transformer`` (causal, over tokens) or ``mlp`` (over a one-hot encoding), for
            the policy and the RM backbone alike.
        width: hidden width.
        depth: layers.
        heads: attention heads (transformer).
        rm_init: ``fresh`` (own random weights) or ``policy`` (the policy's initial backbone).
        steps: Adam steps per fit.
        lr: Adam learning rate.
        polish: L-BFGS iterations at most after Adam (full batch).
        restarts: initialisations of each capacity fit (the best is kept).
        block: instance block, ``dev``, ``pilot``, ``confirm`` or ``confirm2`` (disjoint).
        device: ``cpu``, ``cuda`` or ``auto``.
        dtype: ``auto`` (float64 on CPU, float32 on CUDA), ``float64`` or ``float32``.
    """

    family: str = "planning"
    vocab: int = 4
    horizon: int = 6
    n_pairs: int = 64
    k: int = 4
    ref: str = "random"
    ref_concentration: float = 0.3
    check: str = "ends_with_first"
    lam_grid: str = "short"
    arch: str = "transformer"
    width: int = 16
    depth: int = 1
    heads: int = 2
    rm_init: str = "fresh"
    steps: int = 150
    lr: float = 0.02
    polish: int = 200
    restarts: int = 2
    block: str = "dev"
    device: str = "cpu"
    dtype: str = "auto"

    def validate(self) -> None:
        """Raise UserError naming the first bad field."""
        from gvgap.errors import UserError

        super().validate()
        common.check_choice("arch", self.arch, ARCHS)
        common.check_choice("rm_init", self.rm_init, RM_INITS)
        common.check_choice("block", self.block, BLOCKS)
        common.check_choice("device", self.device, ("cpu", "cuda", "auto"))
        common.check_choice("dtype", self.dtype, ("auto", "float64", "float32"))
        for name in ("width", "depth", "heads", "restarts"):
            common.check_range(name, getattr(self, name), 1, 4096)
        common.check_range("steps", self.steps, 0, 100_000)
        common.check_range("polish", self.polish, 0, 100_000)
        common.check_range("lr", self.lr, 0.0, 10.0, lo_open=True)
        leaves = self.n_prompts * float(self.vocab) ** self.horizon
        if leaves > MAX_NEURAL_LEAVES:
            raise UserError(
                f"horizon: n_prompts·vocab**horizon = {leaves:.0f} leaves > "
                f"{MAX_NEURAL_LEAVES} (the neural classes' limit); lower vocab or horizon"
            )
        if self.arch == "mlp" and self.rm_init == "policy":
            raise UserError(
                "rm_init must be 'fresh' with arch 'mlp' (the policy's MLP reads "
                "prefixes, the RM's reads completions); got 'policy'"
            )
        if self.width % self.heads:
            raise UserError(f"width must be a multiple of heads; got {self.width}, {self.heads}")


SMOKE = Config(
    vocab=2, horizon=3, n_pairs=12, k=3, lam=0.01, width=8, steps=20, polish=5, restarts=2
)
#: The power pilot of the confirmatory sweep (``sims/h6_neural_pilot.toml``): the headline
#: cell on block ``pilot``, 6 seeds (:func:`plan_seeds` reads only the headline cell). The first
#: design's pilot (transformers, width 16; capacity fits with 3 restarts) measured rlhf − dpo
#: +0.178, oracle − dpo +0.961, rl_local − dpo +0.0004 → 9 seeds. This design's pilot
#: (2026-12-06, 6 instances): rlhf − dpo +0.139 (SD 0.24), oracle − dpo +0.752, rl_local − dpo
#: −0.0005, capacity asymmetry 0.089 nats → 36 seeds (power 0.82 for the test; 6 suffice for
#: both controls).
PILOT = {"seeds": 6, "fixed": {"block": "pilot", "arch": "mlp", "width": 4}, "grid": {}}
#: The confirmatory sweep (block ``confirm2``, never used before this design was fixed): one
#: verifier (ends_with_first), a random π_ref of concentration 0.3, MLP networks of width 4
#: (the headline: policy network the bottleneck) and 64 (the asymmetry closed), n = 64.
#: ``gvgap reproduce`` replaces ``seeds`` by :func:`plan_seeds` on :data:`PILOT`. The n axis:
#: ``sims/h6_neural_n.toml``, the width × depth surface ``sims/h6_neural_width.toml``
#: (descriptive, block ``dev``).
SETTINGS = {
    "seeds": 36,
    "fixed": {"block": "confirm2", "arch": "mlp"},
    "grid": {"width": [4, 64]},
}
#: Quick: the confirmatory design at a small size — MLP networks of width 2 (the headline:
#: on the development block the policy network missed π* by 0.14 nats, the RM network r* by
#: 0.06 of its variance, asymmetry 0.10) and 32 (asymmetry 0.003) on the 4×4 tree (256
#: leaves), n = 32, λ = 1 fixed, every seed of a cell in one stacked call, block ``confirm2``;
#: ``gvgap reproduce --quick`` replaces ``seeds`` by the plan from :data:`QUICK_PILOT`. (The
#: first quick design — width-4 transformers on 64 leaves, the concentration dial — had the
#: same asymmetry, 0.012, in both cells.)
QUICK = {
    "seeds": 20,
    "fixed": {
        "arch": "mlp",
        "vocab": 4,
        "horizon": 4,
        "n_pairs": 32,
        "lam": 1.0,
        "heads": 1,
        "steps": 100,
        "polish": 30,
        "restarts": 2,
        "block": "confirm2",
    },
    "grid": {"width": [2, 32]},
}
#: The power pilot of the QUICK design (``gvgap reproduce --quick``): its headline cell on
#: the ``pilot`` block.
QUICK_PILOT = {"seeds": 6, "fixed": {**QUICK["fixed"], "block": "pilot", "width": 2}, "grid": {}}
#: Bounds of the planned seed count (the H1–H5 bounds: bootstrap intervals and Holm-adjusted
#: signed-rank tests need ≥ 20 paired runs; at most 40).
SEED_BOUNDS = hypothesis.SEED_BOUNDS


def plan_seeds(pilot: pd.DataFrame, **kw) -> dict:
    """Seeds for the confirmatory sweep from a pilot table (block ``pilot``, the headline cell
    of the design it ran: :data:`HEADLINE` or :data:`QUICK_HEADLINE`): the most of
    :func:`gvgap.inference.seeds_for_power` (80 % power, smoothed bootstrap of the pilot's
    paired differences, Bonferroni over the 2 Holm cells of the sweep) for the test
    (rlhf − dpo, ``greater`` at the pilot's effect), the positive control (oracle − dpo,
    ``greater``) and the isomorphic control (rl_local − dpo, ``equivalent`` within
    :data:`MARGIN`), clipped to :data:`SEED_BOUNDS`.

    Returns:
        ``{"seeds", "power", "parts": {contrast: SeedPlan as JSON}}``; ``power`` is the least of
        the three powers at the chosen seeds.
    """
    from gvgap.inference import power, seeds_for_power
    from gvgap.stats import at_cell

    n_cells = int(np.prod([len(v) for v in SETTINGS["grid"].values()]))
    head = at_cell(block_rows(pilot), _headline(pilot))
    tests = {
        "test": (hypothesis.paired(head, TEST), {"test": "greater"}),
        "positive control": (hypothesis.paired(head, CONTROL), {"test": "greater"}),
        "isomorphic control": (
            hypothesis.paired(head, ISOMORPHIC),
            {"test": "equivalent", "margin": MARGIN},
        ),
    }
    plans = {k: seeds_for_power(d, n_tests=n_cells, **t, **kw) for k, (d, t) in tests.items()}
    seeds = int(np.clip(max(p.seeds for p in plans.values()), *SEED_BOUNDS))
    powers = {
        k: power(d, seeds, **t, n_tests=n_cells, rng=np.random.default_rng(0))
        for k, (d, t) in tests.items()
    }
    parts = {k: plans[k].to_json() | {"power_at_seeds": powers[k]} for k in plans}
    return {"seeds": seeds, "power": min(powers.values()), "parts": parts}


def pair_accuracy(r_hat: np.ndarray, r_star: np.ndarray, logp_mu: np.ndarray, rho) -> float:
    """P_{x~ρ, a,b ~ μ(·|x)}[sign(r̂(a) − r̂(b)) = sign(r*(a) − r*(b)) | r*(a) ≠ r*(b)], exact.

    Ties in r̂ count ½. Returns NaN above ``MAX_ACC_LEAVES`` leaves or if r* is constant.
    """
    if r_hat.shape[1] > MAX_ACC_LEAVES:
        return float("nan")
    return pairwise_accuracy(r_hat, r_star, logp_mu, rho)


def _instance_rng(block: str, instance_rng: np.random.Generator) -> np.random.Generator:
    """The block's instance stream: ``dev`` the sweep's own, else a child keyed by the block."""
    if block == "dev":
        return instance_rng
    word = int(instance_rng.integers(2**63))
    return np.random.default_rng(np.random.SeedSequence([word, BLOCK_WORDS[block]]))


#: Config fields that do not change the instance, the networks or the optimiser.
_RUN_ONLY = ("n_pairs", "lam", "lam_grid")


def _prepare(cfg: Config, rng, instance_rng):
    from gvgap.nn.pipelines import RunInput

    inst = _instance_rng(cfg.block, instance_rng)
    state = json.dumps(inst.bit_generator.state, sort_keys=True, default=int)
    env, data, grid, split_seed = common.prepare(cfg, rng, inst)
    seed = int(rng.integers(2**31 - 2))
    cap_seed = int(inst.integers(2**31 - 2 - 1000))  # after the instance draws: instance only
    fields = {k: v for k, v in asdict(cfg).items() if k not in _RUN_ONLY}
    key = json.dumps([fields, state], sort_keys=True)
    return RunInput(env, data, grid, split_seed, seed, key, cap_seed)


def _arch(cfg: Config):
    from gvgap.nn.device import resolve
    from gvgap.nn.pipelines import Arch

    return Arch(
        cfg.arch, cfg.width, cfg.depth, cfg.heads, cfg.rm_init, resolve(cfg.device, cfg.dtype)
    )


def _row(name: str, env, res, r_hat=None) -> dict[str, float]:
    out = hypothesis.metric_rows(name, env, res)
    out[f"{name}/steps"] = float(res.extra.get("steps", 0))
    if r_hat is not None:
        out[f"{name}/acc_in"] = pair_accuracy(r_hat, env.r_star, env.logp_ref, env.rho)
        out[f"{name}/acc_out"] = pair_accuracy(r_hat, env.r_star, env.logp_star, env.rho)
    return out


def run(cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator) -> dict:
    """DPO vs scalar-head RM + RL vs RL on the local RM vs RL on r*, with the capacity
    residuals of the instance (one run of :func:`run_batch`)."""
    return run_batch([cfg], rngs=[rng], instance_rngs=[instance_rng])[0]


def run_batch(cfgs: list[Config], *, rngs: list, instance_rngs: list) -> list[dict]:
    """:func:`run` of each config; runs that differ only in seeds share stacked calls
    (bit-identical to one by one: :mod:`gvgap.nn.pipelines`)."""
    inputs = [_prepare(c, r, i) for c, r, i in zip(cfgs, rngs, instance_rngs)]
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(json.dumps(asdict(c), sort_keys=True), []).append(i)
    out: list[dict] = [{} for _ in cfgs]
    for idx in groups.values():
        for i, row in zip(idx, _run_group(cfgs[idx[0]], [inputs[i] for i in idx])):
            out[i] = row
    return out


def _run_group(cfg: Config, runs: list) -> list[dict]:
    from gvgap.learners.result import Result
    from gvgap.nn import pipelines as pipelines

    arch = _arch(cfg)
    opt = {"steps": cfg.steps, "lr": cfg.lr, "polish": cfg.polish}
    dpo = pipelines.dpo_many(arch, runs, opt)
    rms = pipelines.rm_many(arch, runs, opt)
    targets = [(rm.r_hat, d.r_hat, u.env.r_star) for rm, d, u in zip(rms, dpo, runs)]
    rls = pipelines.rl_many(arch, runs, targets, opt)
    cap_key = json.dumps(
        [
            asdict(arch)["arch"],
            cfg.width,
            cfg.depth,
            cfg.heads,
            cfg.rm_init,
            cfg.device,
            cfg.dtype,
            opt,
            cfg.restarts,
        ],
        sort_keys=True,
    )
    caps = pipelines.capacity_many(arch, runs, cfg.restarts, opt, cap_key)
    n_pol = sum(p.numel() for p in arch.policy([runs[0].env], [0]).parameters())
    n_rm = sum(p.numel() for p in arch.reward([runs[0].env], [1], [0]).parameters())
    rows = []
    for u, d, rm, (rl, local, oracle), cap in zip(runs, dpo, rms, rls, caps):
        env = u.env
        rlhf = Result.two_stage(rm, rl, rm.lam, steps=rm.extra["steps"] + rl.extra["steps"])
        row = {
            **_row("dpo", env, d, d.r_hat),
            **_row("rlhf", env, rlhf, rm.r_hat),
            **_row("rl_local", env, local),
            **_row("oracle", env, oracle),
            "rlhf/rm_grad_norm": float(rm.grad_norm),
            "rlhf/rl_grad_norm": float(rl.grad_norm),
            "rl_local/kl_proj": float(local.extra["kl_proj"]),
            "n_params_policy": float(n_pol),
            "n_params_rm": float(n_rm),
            **cap,
        }
        row.update(common.gap_metrics(env))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- verdict and figure


def block_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of one instance block: the latest confirmatory block present, else the first
    present of ``pilot``, ``dev``."""
    if "block" not in df.columns:
        return df
    blocks = [b for b in ("confirm2", "confirm", "pilot", "dev") if (df["block"] == b).any()]
    return df[df["block"] == blocks[0]] if blocks else df


def _headline(df: pd.DataFrame) -> dict:
    from gvgap.stats import at_cell

    for h in (HEADLINE, CONC_HEADLINE, QUICK_HEADLINE):
        if len(at_cell(df, h)):
            return h
    return HEADLINE


def verdict(df: pd.DataFrame):
    """The shared hypothesis rule (:func:`gvgap.experiments.hypothesis.hypothesis_record`)
    on one block: test rlhf − dpo in J at the headline cell (Holm across the cells of the
    table), predicted ``greater``; positive control oracle − dpo must be ``greater`` and the
    isomorphic control rl_local − dpo ``equivalent`` (δ = MARGIN), else inconclusive. The
    detail adds the surface: per cell the measured capacities and online − offline."""
    from gvgap.plots_neural import surface_text

    df = block_rows(df)
    return hypothesis.module_verdict(
        sys.modules[__name__],
        df,
        predicted="greater",
        control_expected="greater",
        by=CELL_KEYS,
        headline=_headline(df),
        extra=lambda head: surface_text(df, CELL_KEYS),
    )


def plot_uses(df: pd.DataFrame) -> tuple[str, ...]:
    """The plot distinguishes every cell column (no facets)."""
    return tuple(c for c in (*CELL_KEYS, "block") if c in df.columns)


def plot(df: pd.DataFrame, ax=None):
    """The neural surface: online − offline (rlhf − dpo, J; 95% CI over seeds) against the
    measured capacity asymmetry (median per cell, J units) — one point per cell, marker by
    family / π_ref, colour by n; the positive control (oracle − dpo) in grey."""
    from gvgap.plots_neural import neural_surface

    return neural_surface(block_rows(df), CELL_KEYS, ax=ax)
