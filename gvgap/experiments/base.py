"""The experiment contract (DESIGN §2) and the verdict record (DESIGN §5).

Each ``gvgap/experiments/<id>.py`` module exports:

- ``ID``: the experiment id (e.g. ``"h6_gap"``);
- ``Config``: a frozen dataclass, every field documented in the class docstring;
- ``SETTINGS``: the full sweep as data, a :class:`SweepSpec`-shaped dict
  ``{"seeds": int, "fixed": {...}, "grid": {field: [values]}}``;
- ``QUICK``: the same shape, small enough for ``gvgap reproduce --quick``;
- ``SMOKE``: a ``Config`` that runs in seconds (every SMOKE runs in the test suite);
- ``CLAIM``: one sentence; ``NOTES``: the ``paper_notes.md`` section it belongs to;
- ``run(cfg, *, rng, instance_rng) -> dict[str, float]``: one setting. ``instance_rng`` draws
  the problem (r*, features, π_ref); ``rng`` draws data and drives learners. Keys are
  ``"<pipeline>/<metric>"`` (e.g. ``"dpo/J"``) or a bare ``"<metric>"`` (pipeline ``""``);
- ``verdict(df) -> Verdict``: from the tidy results table, thresholds as named constants;
- ``plot(df, ax=None) -> Axes``.

Optional: ``ROBUSTNESS`` (a list of Config overrides under which ``gvgap reproduce``
re-checks the verdict), ``DESIGN_NOTE`` (the report's paragraph; by convention the module
docstring), and ``run_batch(cfgs, *, rngs, instance_rngs) -> list[dict]`` with ``BATCH_SIZE``,
which must be bit-identical to calling ``run`` on each config (the sweep runner batches runs
to cut per-task overhead).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from gvgap.errors import UserError

VERDICTS = ("supported", "against", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """A hypothesis verdict backed by an effect size and its 95% CI (DESIGN §5).

    ``verdict`` is always *on the hypothesis* (``supported`` / ``against`` /
    ``inconclusive``), never on whether the code "worked": an experiment whose prediction is
    "no effect" and finds none reports ``prediction_held=True``. ``positive_control`` is the
    effect (with its CI) of the arm that shows the test can detect what it looks for.
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


def config_fields(config_cls: type) -> dict[str, dataclasses.Field]:
    """Fields of a Config dataclass by name."""
    return {f.name: f for f in dataclasses.fields(config_cls)}


def coerce_value(config_cls: type, name: str, value: Any) -> Any:
    """Convert ``value`` (from TOML or a ``--set k=v`` string) to the type of field ``name``.

    Raises:
        UserError: unknown field or a value of the wrong type, naming the field.
    """
    fields = config_fields(config_cls)
    if name not in fields:
        raise UserError(
            f"unknown config field {name!r} for {config_cls.__module__.split('.')[-1]}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    default = fields[name].default
    kind = type(default) if default is not dataclasses.MISSING else str
    try:
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
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        return value
    except (TypeError, ValueError):
        raise UserError(f"config field {name!r} expects {kind.__name__}, got {value!r}") from None


def make_config(config_cls: type, overrides: dict[str, Any] | None = None) -> Any:
    """Build and validate a Config from overrides (coerced by field type).

    A Config may define ``validate(self) -> None`` raising :class:`UserError`.
    """
    kwargs = {k: coerce_value(config_cls, k, v) for k, v in (overrides or {}).items()}
    cfg = config_cls(**kwargs)
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg
