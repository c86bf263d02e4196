"""Explicit registry of experiments: id -> module (docs/design.md §2).

The ids are known up front; a module is imported only when it is first looked up, so
``gvgap run c1_gibbs`` imports c1_gibbs alone, not the h1-h6 modules and their
pandas/scipy.stats/learner imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
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
    "llm",
)


class LazyRegistry(Mapping[str, ModuleType]):
    """Read-only mapping id -> experiment module that imports a module on first lookup.

    Membership, ``len`` and iteration (ids in ``ids`` order) import nothing; ``[eid]``,
    ``.get``, ``.items()`` and ``.values()`` import the modules they return, one at a time.
    """

    def __init__(self, ids: tuple[str, ...], package: str = "gvgap.experiments") -> None:
        self._ids = ids
        self._package = package

    def __getitem__(self, eid: str) -> ModuleType:
        if eid not in self._ids:
            raise KeyError(eid)
        return importlib.import_module(f"{self._package}.{eid}")  # cached in sys.modules

    def __contains__(self, eid: object) -> bool:
        return eid in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"LazyRegistry({', '.join(self._ids)})"


EXPERIMENTS: Mapping[str, ModuleType] = LazyRegistry(EXPERIMENT_IDS)


def get_experiment(eid: str) -> ModuleType:
    """The experiment module for ``eid`` (imports that module only).

    Raises:
        UserError: unknown id, listing the known ones.
    """
    if eid not in EXPERIMENTS:
        from gvgap.errors import did_you_mean

        raise UserError(
            f"unknown experiment {eid!r}{did_you_mean(eid, EXPERIMENTS)}; "
            f"known: {', '.join(EXPERIMENTS) or '(none)'}"
        )
    return EXPERIMENTS[eid]
