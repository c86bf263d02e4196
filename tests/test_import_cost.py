"""Import cost of the CLI's light paths (issue 8: ~1 s of imports per ``gvgap run``).

Behavioural checks, no wall-clock threshold: each case runs in a fresh interpreter and asserts
which heavy modules are *not* loaded afterwards. The registry is lazy, so ``run``/``show`` of
one experiment import that module alone; pandas, pyarrow, matplotlib and scipy.stats are
needed only to write/read result tables, draw plots and decide verdicts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gvgap.errors import UserError
from gvgap.experiments.registry import EXPERIMENT_IDS, EXPERIMENTS, get_experiment

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "pyarrow", "matplotlib", "seaborn", "scipy.stats", "torch", "ray")
OTHER_EXPERIMENTS = [f"gvgap.experiments.{e}" for e in EXPERIMENT_IDS if e != "c1_gibbs"]


def loaded_after(code: str) -> set[str]:
    """Modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint('MODULES=' + json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


def test_run_c1_imports_one_experiment_and_nothing_heavy() -> None:
    mods = loaded_after("import gvgap.cli; assert gvgap.cli.main(['run', 'c1_gibbs']) == 0")
    assert "gvgap.experiments.c1_gibbs" in mods  # the probe did run the experiment
    assert not set(HEAVY) & mods, sorted(set(HEAVY) & mods)
    assert not set(OTHER_EXPERIMENTS) & mods, sorted(set(OTHER_EXPERIMENTS) & mods)
    # the learners (scipy.optimize) are not needed for c1_gibbs either
    assert "gvgap.learners" not in mods and "scipy.optimize" not in mods


def test_version_and_registry_lookups_import_no_experiment() -> None:
    code = (
        "import contextlib, io, gvgap.cli\n"
        "from gvgap.experiments.registry import EXPERIMENTS\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    gvgap.cli.main(['--version'])\n"
        "assert 'h4_data' in EXPERIMENTS and len(EXPERIMENTS) == 9 and list(EXPERIMENTS)\n"
    )
    mods = loaded_after(code)
    assert not {m for m in mods if m.startswith("gvgap.experiments.") and m[18:] in EXPERIMENTS}
    assert not set(HEAVY) & mods, sorted(set(HEAVY) & mods)


def test_hypothesis_module_import_leaves_verdict_libraries_out() -> None:
    # h1's run path needs the learners, not pandas (annotations only) or scipy.stats (verdicts)
    mods = loaded_after("import gvgap.experiments.h1_on_policy_signal")
    assert "gvgap.experiments.hypothesis" in mods and "gvgap.inference" in mods
    assert not set(HEAVY) & mods, sorted(set(HEAVY) & mods)
    assert not (set(OTHER_EXPERIMENTS) - {"gvgap.experiments.h1_on_policy_signal"}) & mods


def test_lazy_registry_is_a_read_only_mapping_in_report_order() -> None:
    assert list(EXPERIMENTS) == list(EXPERIMENT_IDS)
    assert [k for k, _ in EXPERIMENTS.items()] == list(EXPERIMENT_IDS)
    assert EXPERIMENTS["c1_gibbs"] is sys.modules["gvgap.experiments.c1_gibbs"]
    assert EXPERIMENTS.get("nope") is None and "nope" not in EXPERIMENTS
    with pytest.raises(KeyError):
        EXPERIMENTS["nope"]
    with pytest.raises(TypeError):
        EXPERIMENTS["c1_gibbs"] = None  # type: ignore[index]
    assert get_experiment("c1_gibbs").ID == "c1_gibbs"
    with pytest.raises(UserError, match="did you mean 'c1_gibbs'"):
        get_experiment("c1_gibs")


def test_import_gvgap_loads_no_scipy() -> None:
    """``import gvgap`` (TreeEnv, families, soft VI, exact metrics) is numpy-only: scipy is
    loaded by the learners that need it (issue 8: scipy.special cost ~0.17 s per import)."""
    mods = loaded_after(
        "import numpy as np, gvgap.envs as E\n"
        "env = E.make_family('linear', rng=np.random.default_rng(0), vocab=2, horizon=3)\n"
        "env.metrics(env.logp_star)"
    )
    assert "gvgap.envs.families" in mods
    assert not {m for m in mods if m == "scipy" or m.startswith("scipy.")}
