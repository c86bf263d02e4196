"""Every registered experiment honours the contract (docs/design.md §2) and its SMOKE runs (h6_gap's
own tests: tests/test_h6.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from gvgap.experiments.base import CONTRACT, CONTRACT_NEEDS, VERDICTS
from gvgap.experiments.registry import EXPERIMENTS


@pytest.mark.parametrize("eid", list(EXPERIMENTS))
def test_contract_and_smoke(eid):
    mod = EXPERIMENTS[eid]
    for name, (required, _) in CONTRACT.items():
        assert hasattr(mod, name) or not required, f"{eid} lacks {name}"
    for name, needs in CONTRACT_NEEDS:
        assert not hasattr(mod, name) or hasattr(mod, needs), f"{eid}: {name} needs {needs}"
    assert getattr(mod, "PAPER_EXPECTS", "supported") in VERDICTS
    assert eid == mod.ID
    assert dataclasses.is_dataclass(mod.SMOKE) and isinstance(mod.SMOKE, mod.Config)
    docs = " ".join(c.__doc__ or "" for c in mod.Config.__mro__)  # own + inherited docs
    for field in dataclasses.fields(mod.Config):  # every field documented
        assert f"{field.name}:" in docs, f"{eid}.Config.{field.name} undocumented"
    out = mod.run(mod.SMOKE, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))
    assert out and all(isinstance(v, float) for v in out.values())
    assert all(math.isfinite(v) or math.isnan(v) for v in out.values())
    again = mod.run(mod.SMOKE, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))
    np.testing.assert_equal(out, again)  # determinism: same seeds, identical metrics (NaN = NaN)


def test_every_hook_read_from_an_experiment_is_in_the_contract():
    """The contract is written once: every name the package reads from an experiment module
    (``getattr(module, "X"`` / ``hasattr(module, "X"`` and ``module.X`` on the registry's
    modules) is a key of base.CONTRACT."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "gvgap"
    module = r"(?:module|mod|m|EXPERIMENTS\[\w+\]|modules\.get\(\w+\)|modules\[\w+\])"
    hooks = re.compile(rf"(?:getattr|hasattr)\({module},\s*\"(\w+)\"")
    named = r"(?:module|mod|EXPERIMENTS\[\w+\]|modules\[\w+\])"  # ``m`` is also a regex match
    attrs = re.compile(rf"\b{named}\.([A-Za-z_]\w*)\b")
    seen = set()
    for path in src.rglob("*.py"):
        if path.parent.name in ("llm", "nn"):  # torch modules named ``module`` live there
            continue
        text = path.read_text()
        seen |= set(hooks.findall(text))
        if path.name != "__init__.py":
            seen |= set(attrs.findall(text))
    seen -= {"get_input_embeddings"}  # a transformers model, not an experiment module
    seen -= {"__name__", "__doc__"}  # every module has them
    assert {"report_section", "run_batch", "plan_seeds"} <= seen  # the scan reads every form
    assert seen <= set(CONTRACT), sorted(seen - set(CONTRACT))
