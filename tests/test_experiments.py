"""Every registered experiment honours the contract (DESIGN §2) and its SMOKE runs (h6_gap's
own tests: tests/test_h6.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from gvgap.experiments.registry import EXPERIMENTS

CONTRACT = ("ID", "Config", "SETTINGS", "SMOKE", "CLAIM", "run", "verdict", "plot")


@pytest.mark.parametrize("eid", list(EXPERIMENTS))
def test_contract_and_smoke(eid):
    mod = EXPERIMENTS[eid]
    for name in CONTRACT:
        assert hasattr(mod, name), f"{eid} lacks {name}"
    assert eid == mod.ID
    assert dataclasses.is_dataclass(mod.SMOKE) and isinstance(mod.SMOKE, mod.Config)
    docs = " ".join(c.__doc__ or "" for c in mod.Config.__mro__)  # own + inherited docs
    for field in dataclasses.fields(mod.Config):  # every field documented
        assert f"{field.name}:" in docs, f"{eid}.Config.{field.name} undocumented"
    out = mod.run(mod.SMOKE, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))
    assert out and all(isinstance(v, float) for v in out.values())
    assert all(math.isfinite(v) or math.isnan(v) for v in out.values())
    again = mod.run(mod.SMOKE, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))
    assert out == again  # determinism: same seeds, identical metrics
