"""h6_neural: imports without torch at module level, exact RM accuracy on hand-made pairs,
bad fields refused, and the verdict can come out each way on synthetic tidy frames."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from gvgap.errors import UserError
from gvgap.experiments import h6_neural as E
from gvgap.experiments.base import make_config


def test_module_imports_without_torch():
    # A meta-path finder that refuses torch (sys.modules['torch'] = None would confuse
    # scipy's array-API probe, which reads sys.modules['torch'] as a module).
    code = (
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
        "import gvgap.experiments.registry as r; assert 'h6_neural' in r.EXPERIMENTS\n"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pair_accuracy_hand_values():
    # r* = (0, 1, 2), uniform μ: the 6 ordered pairs with r* different all count.
    r_star = np.array([[0.0, 1.0, 2.0]])
    lp = np.log(np.full((1, 3), 1 / 3))
    rho = np.ones(1)
    assert E.pair_accuracy(r_star, r_star, lp, rho) == 1.0
    assert E.pair_accuracy(-r_star, r_star, lp, rho) == 0.0
    # r̂ = (0, 0, 1): pair (0,1) tied in r̂ → ½, others right: (2·½ + 4·1)/6 = 5/6
    assert abs(E.pair_accuracy(np.array([[0.0, 0.0, 1.0]]), r_star, lp, rho) - 5 / 6) < 1e-15
    # μ on leaves 0 and 1 only: the only pair is (0,1), ordered wrongly
    lp2 = np.log(np.array([[0.5, 0.5, 1e-300]]))
    assert E.pair_accuracy(np.array([[1.0, 0.0, 5.0]]), r_star, lp2, rho) < 1e-12


@pytest.mark.parametrize(
    ("field", "value"), [("arch", "rnn"), ("rm_init", "x"), ("heads", 3), ("lr", 0.0)]
)
def test_bad_fields_refused(field, value):
    with pytest.raises(UserError, match=field if field != "heads" else "heads"):
        make_config(E.Config, {field: value})


def test_mlp_cannot_take_policy_backbone():
    with pytest.raises(UserError, match="rm_init"):
        make_config(E.Config, {"arch": "mlp", "rm_init": "policy"})


def _frame(adv: float, oracle: float, n_seeds: int = 12) -> pd.DataFrame:
    rows, rng = [], np.random.default_rng(0)
    for fam in ("linear", "planning", "policy_complex"):
        for seed in range(n_seeds):
            base = rng.normal()
            vals = {
                "dpo": base,
                "rlhf": base + adv + 0.01 * rng.normal(),
                "rl_local": base + 1e-4 * rng.normal(),
                "oracle": base + oracle + 0.01 * rng.normal(),
            }
            for pipe, v in vals.items():
                rows.append(
                    {
                        "run_id": f"{fam}{seed}",
                        "family": fam,
                        "horizon": 3,
                        "n_pairs": 64,
                        "seed": seed,
                        "instance_seed": seed,
                        "pipeline": pipe,
                        "metric": "J",
                        "value": v,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("adv", "oracle", "expected"),
    [
        (0.3, 0.5, "supported"),
        (-0.3, 0.5, "against"),
        (0.0, 0.5, "against"),
        (0.3, 0.0, "inconclusive"),
    ],
)
def test_verdict_goes_each_way(adv, oracle, expected):
    v = E.verdict(_frame(adv, oracle))
    assert v.verdict == expected, v.detail
    # n_runs: the runs behind the effect, the first headline cell's 12 seeds (36 in the table)
    assert v.positive_control is not None and v.n_runs == 12
    if expected == "supported":
        assert v.ci_low > 0 and v.prediction_held


def test_cell_holds_an_unnamed_varying_field_at_its_default():
    """A sweep that also varied ``width``: the headline cell reads the default width only
    (12 seeds), never the pool of both widths (24)."""
    frame = _frame(0.3, 0.5)
    wide = frame.assign(width=E.Config.width * 2, value=frame["value"] + 100.0)
    both = pd.concat([frame.assign(width=E.Config.width), wide])
    both["run_id"] = both["run_id"] + both["width"].astype(str)
    d = E._cell(E._diffs(both, "rlhf"), "linear", 3, 64)
    assert d.size == 12
    np.testing.assert_allclose(d, E._cell(E._diffs(frame, "rlhf"), "linear", 3, 64))
