"""Explicit registry of experiments: id -> module (DESIGN §2)."""

from __future__ import annotations

import importlib
from types import ModuleType

from gvgap.errors import UserError

#: Experiment ids in the order the report shows them; modules live in gvgap/experiments/.
EXPERIMENT_IDS: tuple[str, ...] = (
    "c1_gibbs",
    "h1_on_policy_signal",
    "h2_regularisation",
    "h3_optimisation",
    "h4_data",
    "h5_rm_generalisation",
    "h6_gap",
    "h6_neural",
)


def _load() -> dict[str, ModuleType]:
    return {eid: importlib.import_module(f"gvgap.experiments.{eid}") for eid in EXPERIMENT_IDS}


EXPERIMENTS: dict[str, ModuleType] = _load()


def get_experiment(eid: str) -> ModuleType:
    """The experiment module for ``eid``.

    Raises:
        UserError: unknown id, listing the known ones.
    """
    if eid not in EXPERIMENTS:
        from gvgap.experiments.base import did_you_mean

        raise UserError(
            f"unknown experiment {eid!r}{did_you_mean(eid, EXPERIMENTS)}; "
            f"known: {', '.join(EXPERIMENTS) or '(none)'}"
        )
    return EXPERIMENTS[eid]
