"""The experiment contract (docs/design.md §2), written once (:data:`CONTRACT`), and the verdict
record (docs/design.md §5).

Each ``gvgap/experiments/<id>.py`` module exports the names of :data:`CONTRACT` marked
required, and may export the optional ones; the CLI, the sweep runner, ``gvgap reproduce``,
the report and the tests read nothing else from it (``tests/test_experiments.py`` checks
both: every required name present, every name read anywhere in ``gvgap/`` listed here).
Keys of ``run``'s dict are ``"<pipeline>/<metric>"`` (e.g. ``"dpo/J"``) or a bare
``"<metric>"`` (pipeline ``""``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from gvgap.errors import UserError, did_you_mean, short_repr

VERDICTS = ("supported", "against", "inconclusive")

#: Every name an experiment module may export: name → (required, meaning).
CONTRACT: dict[str, tuple[bool, str]] = {
    "ID": (True, "the experiment id, e.g. 'h6_gap'"),
    "Config": (True, "frozen dataclass of one setting; every field documented in its docstring"),
    "SETTINGS": (True, "the full sweep as data: {'seeds', 'fixed', 'grid'[, 'seed_start']}"),
    "QUICK": (False, "the same shape, small enough for `gvgap reproduce --quick`"),
    "SMOKE": (True, "a Config that runs in seconds (every SMOKE runs in the test suite)"),
    "CLAIM": (True, "one sentence"),
    "NOTES": (False, "the paper_notes.md section it belongs to"),
    "DESIGN_NOTE": (False, "the report's paragraph (by convention the module docstring)"),
    "run": (True, "run(cfg, *, rng, instance_rng) -> dict[str, float]: one setting"),
    "verdict": (True, "verdict(df) -> Verdict, thresholds as named constants"),
    "plot": (True, "plot(df, ax=None) -> Axes"),
    "plot_uses": (False, "plot_uses(df) -> columns plot() distinguishes (the rest: facets)"),
    "extra_figures": (False, "extra_figures(df) -> [(kind, plot(df, ax), uses)]: more figures"),
    "report_section": (False, "report_section(doc, df, verdicts, figs): replaces its report part"),
    "PLOT_USES": (False, "the same as a constant tuple"),
    "ALLOWED": (False, "allowed values of the Config's own fields, for `gvgap show`"),
    "ROBUSTNESS": (False, "Config overrides under which `gvgap reproduce` re-checks"),
    "ROBUST_SEEDS": (False, "seeds of each re-check in --quick when no power plan gives them"),
    "run_batch": (False, "run_batch(cfgs, *, rngs, instance_rngs): bit-identical to run()"),
    "BATCH_SIZE": (False, "most runs per task of the sweep runner (with run_batch)"),
    "RUN_FIELDS": (False, "Config fields that leave the instance unchanged (runs grouped)"),
    "REQUIRES_TORCH": (False, "True when run() needs the gvgap[torch] extra"),
    "HYPOTHESIS": (False, "the hypothesis tested (H1-H5 rule)"),
    "PREDICTION": (False, "the outcome the hypothesis predicts (H1-H5 rule)"),
    "PREDICTED": (False, "that outcome as a word: greater, less or equivalent (H1-H5 rule)"),
    "TEST": (False, "the tested contrast (hypothesis.Contrast); the report's per-cell table"),
    "CONTROL": (False, "the positive control's contrast (H1-H5 rule)"),
    "CONTROL_EXPECTED": (False, "the outcome the positive control must show (H1-H5 rule)"),
    "REPORTED": (False, "contrasts reported beside the verdict, not evidence (H1-H5 rule)"),
    "MARGIN": (False, "the TOST margin δ of the test, in the test metric's units"),
    "HEAD_CELL": (False, "the headline with swept fields HEADLINE leaves open pinned"),
    "PILOT": (False, "the power pilot sweep (own seed block), run before the main sweep"),
    "QUICK_PILOT": (False, "the pilot of the QUICK design, run by `reproduce --quick`"),
    "MORE_CONTROLS": (False, "further (contrast, expected outcome) controls (H1-H5 rule)"),
    "plan_seeds": (False, "plan_seeds(pilot_df) -> {'seeds', 'power', ...}: the power plan"),
    "STABILITY_BLOCKS": (False, "further seed blocks on which the headline is re-measured"),
    "HEADLINE": (False, "the headline cell (Config values) of the stability blocks"),
    "headline_effect": (False, "headline_effect(df) -> {'effect', 'ci_low', 'ci_high', ...}"),
    "PAPER_POSITION": (False, "what the paper concludes about the hypothesis"),
    "PAPER_EXPECTS": (False, "the verdict on the hypothesis that agrees with the paper"),
}
#: Optional names that need another: (name, needs).
CONTRACT_NEEDS = (
    ("PILOT", "plan_seeds"),
    ("STABILITY_BLOCKS", "HEADLINE"),
    ("STABILITY_BLOCKS", "headline_effect"),
    ("PAPER_EXPECTS", "PAPER_POSITION"),
    ("CONTROL", "TEST"),
    ("PILOT", "QUICK"),
    ("QUICK_PILOT", "PILOT"),
    ("BATCH_SIZE", "run_batch"),
)


@dataclass(frozen=True)
class Verdict:
    """A hypothesis verdict backed by an effect size and its 95% CI (docs/design.md §5).

    ``verdict`` is always *on the hypothesis* (``supported`` / ``against`` /
    ``inconclusive``), never on whether the code "worked": an experiment whose prediction is
    "no effect" and finds none reports ``prediction_held=True``. ``positive_control`` is the
    effect (with its CI) of the arm that shows the test can detect what it looks for.
    ``n_runs`` counts the paired runs behind ``effect`` (the decided cell's seeds), in every
    experiment.
    """

    claim: str
    verdict: str
    effect: float
    ci_low: float
    ci_high: float
    n_runs: int
    detail: str = ""
    hypothesis: str = ""
    prediction_held: bool | None = None
    positive_control: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def to_json(self) -> dict[str, Any]:
        """The ``verdicts.json`` record."""
        return {
            "claim": self.claim,
            "verdict": self.verdict,
            "effect": float(self.effect),
            "ci_low": float(self.ci_low),
            "ci_high": float(self.ci_high),
            "n_runs": int(self.n_runs),
            "detail": self.detail,
            "hypothesis": self.hypothesis,
            "prediction_held": self.prediction_held,
            "positive_control": (
                None
                if self.positive_control is None
                else {k: float(v) for k, v in self.positive_control.items()}
            ),
        }


#: Largest magnitude of an integer Config value (exactly representable as float64 / int64).
MAX_INT = 2**53
#: Allowed range of the KL strength β (closed). Measured on every experiment's SMOKE config,
#: with uniform and with peaked (Dirichlet 1e-3) π_ref: at β = 1e-3 and 1e3 every run
#: finishes with finite J, regret, KLs and win rates. Two ratios can be undefined there and
#: are NaN by definition: J_norm when J(π*) − J(π_ref) < 1e-12 (β = 1e3 with a peaked π_ref),
#: and an accuracy on pairs from π* when π* puts its mass on one completion (β = 1e-3).
#: Beyond 1e5 J_norm loses precision (error ≈ 3e-16·β², tests/test_metric_range.py).
BETA_RANGE = (1e-3, 1e3)
#: Default memory budget of one run (bytes); ``GVGAP_MAX_MEMORY_GB`` overrides it.
MEMORY_LIMIT_BYTES = 8 * 2**30
#: Leaves m·V^H of the largest enumerable tree (kept equal to theory.tree.MAX_LEAVES_DEFAULT).
MAX_LEAVES = 1 << 24
#: Bytes per policy parameter held by the optimisers: scipy L-BFGS (maxcor 30: 2·30 history
#: vectors + ~10 work vectors) plus the learners' node-logit / gradient / VJP buffers (~10).
BYTES_PER_PARAM = 8 * 80
#: Memory a run takes whatever its size (interpreter, numpy/scipy/pandas, learner imports).
FIXED_BYTES = 256 * 2**20


def config_fields(config_cls: type) -> dict[str, dataclasses.Field]:
    """Fields of a Config dataclass by name."""
    return {f.name: f for f in dataclasses.fields(config_cls)}


def coerce_value(config_cls: type, name: str, value: Any) -> Any:
    """Convert ``value`` (from TOML or a ``--set k=v`` string) to the type of field ``name``.

    Floats must be finite (NaN and ±inf are refused: no field gives them a meaning); integers
    must satisfy ``|v| <= MAX_INT``.

    Raises:
        UserError: unknown field or a value of the wrong type, naming the field.
    """
    fields = config_fields(config_cls)
    if name not in fields:
        exp = config_cls.__module__.split(".")[-1]
        raise UserError(
            f"unknown config field {name!r} for {exp}{did_you_mean(name, fields)}; "
            f"allowed: {', '.join(sorted(fields))} (gvgap show {exp})"
        )
    default = fields[name].default
    kind = type(default) if default is not dataclasses.MISSING else str
    try:
        out = _coerce(kind, value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(
            f"config field {name!r} expects {kind.__name__}, got {short_repr(value)}"
        ) from None
    if kind is float and not np.isfinite(out):
        raise UserError(f"config field {name!r} must be a finite number, got {short_repr(value)}")
    if kind is int and abs(out) > MAX_INT:
        raise UserError(
            f"config field {name!r} must be an integer with |value| <= 2**53, "
            f"got {short_repr(value)}"
        )
    return out


def _coerce(kind: type, value: Any) -> Any:
    """``value`` as ``kind`` (bool, int, float, str); ValueError / TypeError when it is not."""
    if isinstance(value, (list, tuple, dict)):
        raise ValueError
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError
            return low in ("true", "1")
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError
        return bool(value)
    if kind is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):
            text = value.strip()
            if len(text) > 40:
                raise ValueError
            try:
                return int(text)
            except ValueError:
                value = float(text)  # "1e3" is an integer written as a float
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str) and len(value) > 40:
            raise ValueError
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    return value


def tree_leaves_log2(cfg: Any) -> float | None:
    """log2 of the m·V^H leaves of ``cfg`` (None without vocab/horizon or with bad values)."""
    vocab, horizon = getattr(cfg, "vocab", None), getattr(cfg, "horizon", None)
    m = getattr(cfg, "n_prompts", 1)
    if not all(isinstance(v, int) for v in (vocab, horizon, m)):
        return None
    if vocab < 2 or horizon < 1 or m < 1:
        return None
    return float(np.log2(m) + horizon * np.log2(vocab))


def memory_limit() -> int:
    """The per-run memory budget in bytes (``GVGAP_MAX_MEMORY_GB`` or MEMORY_LIMIT_BYTES)."""
    import os

    env = os.environ.get("GVGAP_MAX_MEMORY_GB")
    try:
        return int(float(env) * 2**30) if env else MEMORY_LIMIT_BYTES
    except ValueError:
        return MEMORY_LIMIT_BYTES


def estimate_memory(cfg: Any) -> int:
    """Upper estimate (bytes) of what one run of ``cfg`` allocates at its peak.

    With N = m·V^H leaves, P = m·(V^{H+1}−1)/(V−1) node parameters, k features and n pairs:
    BYTES_PER_PARAM·P (optimiser state over the tabular policy, times the random policies of
    ``n_policies``) + 8·N·(2k + 16) (r*, features, feature VJPs, exact tables) + 16·k² (the
    k×k linear-RM Hessian and its factor) + 64·n (pairs and their per-pair buffers) +
    :data:`FIXED_BYTES`, plus ``cfg.memory_bytes()`` where the Config defines it (the
    experiment's own classes and measurements: h6's ladder, kernels and window features;
    ``tests/test_memory.py`` compares the total with the measured peak on a grid of sizes).
    """
    log2_n = tree_leaves_log2(cfg)
    if log2_n is None:
        return 0
    vocab, m = cfg.vocab, getattr(cfg, "n_prompts", 1)
    leaves = 2.0**log2_n
    params = leaves * vocab / (vocab - 1) + m
    k = max(int(getattr(cfg, "k", 0) or 0), 0)
    n_pol = max(int(getattr(cfg, "n_policies", 1) or 1), 1)
    n_pairs = max(int(getattr(cfg, "n_pairs", 0) or 0), 0)
    total = BYTES_PER_PARAM * params * n_pol + 8.0 * leaves * (2 * k + 16)
    total += 16.0 * k * k + 64.0 * n_pairs + FIXED_BYTES
    extra = getattr(cfg, "memory_bytes", None)  # what the experiment's own classes add
    if callable(extra):
        total += float(extra())
    return int(min(total, 2.0**62))


def check_resources(cfg: Any) -> None:
    """Refuse a Config whose β is outside :data:`BETA_RANGE`, whose tree cannot be enumerated
    or whose run would not fit in memory (checks every experiment's Config shares).

    Raises:
        UserError: naming the fields, the estimate and the limit.
    """
    beta = getattr(cfg, "beta", None)
    if isinstance(beta, float) and not BETA_RANGE[0] <= beta <= BETA_RANGE[1]:
        raise UserError(
            f"beta must be in [{BETA_RANGE[0]:g}, {BETA_RANGE[1]:g}] (the range where every "
            f"learner and metric is exact in float64); got {beta}"
        )
    check_tree(cfg)
    need, limit = estimate_memory(cfg), memory_limit()
    if need > limit:
        raise UserError(
            f"this setting needs about {need / 2**30:.1f} GiB per run (vocab={cfg.vocab}, "
            f"horizon={cfg.horizon}, k={getattr(cfg, 'k', '-')}, n_pairs="
            f"{getattr(cfg, 'n_pairs', '-')}) > the {limit / 2**30:.1f} GiB limit "
            "(GVGAP_MAX_MEMORY_GB); lower horizon, vocab, k or n_pairs"
        )


def check_tree(cfg: Any) -> None:
    """Refuse m·V^H > :data:`MAX_LEAVES` leaves, computed from logarithms (so
    ``horizon = 10**6`` is refused at once, without building V^H).

    Raises:
        UserError: naming n_prompts, vocab, horizon and the limit.
    """
    log2_n = tree_leaves_log2(cfg)
    if log2_n is None:
        return
    if log2_n > np.log2(MAX_LEAVES):
        m = getattr(cfg, "n_prompts", 1)
        raise UserError(
            f"tree too large to enumerate: n_prompts*vocab**horizon = {m}"
            f"*{cfg.vocab}**{cfg.horizon} ~ 2^{log2_n:.1f} leaves > max_leaves = 2^24; "
            "lower vocab, horizon or n_prompts"
        )


def make_config(config_cls: type, overrides: dict[str, Any] | None = None) -> Any:
    """Build and validate a Config from overrides (coerced by field type).

    A Config may define ``validate(self) -> None`` raising :class:`UserError`; then the tree
    size and the memory a run needs are checked (:func:`check_resources`).
    """
    kwargs = {k: coerce_value(config_cls, k, v) for k, v in (overrides or {}).items()}
    cfg = config_cls(**kwargs)
    check_tree(cfg)  # first: a Config's own validate() may build V^H as an integer
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    check_resources(cfg)
    return cfg
