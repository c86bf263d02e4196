"""`gvgap verify`: the suite passes on its defaults' kind of instances, is deterministic, writes
machine-readable JSON, and exits non-zero when a check fails (it is able to fail)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gvgap import verify
from gvgap.cli import main


def test_all_checks_pass_on_a_few_instances(tmp_path):
    out = tmp_path / "v.json"
    assert verify.run_verify(instances=4, seed=1, json_path=str(out), workers=1) == 0
    records = json.loads(out.read_text())
    assert [r["name"] for r in records] == [c.name for c in verify.CHECKS]
    for r in records:
        assert set(r) >= {"name", "instances", "max_error", "tolerance", "passed"}
        assert r["passed"] and r["instances"] == 4
        assert r["item"] == "control" or r["tolerance"] <= 1e-6


def test_checks_are_deterministic():
    a = verify.run_checks(3, seed=7, workers=1)
    b = verify.run_checks(3, seed=7, workers=1)
    assert a == b


def test_a_failing_check_gives_exit_code_1(monkeypatch, capsys):
    broken = verify.Check("broken", "1", lambda rng: 1.0 + rng.random(), verify.TOL_IDENTITY)
    monkeypatch.setattr(verify, "CHECKS", (*verify.CHECKS[:1], broken))
    assert verify.run_verify(instances=2, seed=0, workers=1) == 1
    assert "FAIL" in capsys.readouterr().out


def test_control_fails_when_pipelines_agree(monkeypatch):
    # A control whose pipelines always agree must FAIL: that is what makes it a control.
    agree = verify.Check("ctrl", "control", lambda rng: 0.0, verify.CONTROL_MAX_AGREE, True)
    monkeypatch.setattr(verify, "CHECKS", (agree,))
    rec = verify.run_checks(5, seed=0, workers=1)[0]
    assert rec["max_error"] == 1.0 and not rec["passed"]


def test_cli_bad_instances_is_exit_2(capsys):
    assert main(["verify", "--instances", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--instances" in err[0]


@pytest.mark.parametrize("check", verify.CHECKS[:2], ids=lambda c: c.name)
def test_identity_checks_are_tight(check):
    errs = [check.fn(np.random.default_rng(i)) for i in range(10)]
    assert max(errs) < 1e-12
