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
    ("field", "value"),
    [
        ("arch", "rnn"),
        ("rm_init", "x"),
        ("heads", 3),
        ("lr", 0.0),
        ("block", "final"),
        ("dtype", "float16"),
        ("restarts", 0),
        ("horizon", 21),
    ],
)
def test_bad_fields_refused(field, value):
    with pytest.raises(UserError, match=field):
        make_config(E.Config, {field: value})


def test_mlp_cannot_take_policy_backbone():
    with pytest.raises(UserError, match="rm_init"):
        make_config(E.Config, {"arch": "mlp", "rm_init": "policy"})


def test_blocks_draw_disjoint_instances():
    """dev keeps the sweep's instance stream; pilot, confirm and confirm2 get their own."""
    draws = {
        b: E._instance_rng(b, np.random.default_rng([7, 1])).integers(1 << 62) for b in E.BLOCKS
    }
    assert draws["dev"] == np.random.default_rng([7, 1]).integers(1 << 62)
    assert len(set(draws.values())) == 4


def _frame(adv: float, oracle: float, iso: float = 0.0, n_seeds: int = 12) -> pd.DataFrame:
    """A tidy table at the headline cell and a control cell (ref uniform)."""
    rows, rng = [], np.random.default_rng(0)
    for ref in ("random", "uniform"):
        cell = {**E.HEADLINE, "ref": ref, "block": "confirm"}
        for seed in range(n_seeds):
            base = rng.normal()
            vals = {
                "dpo": base,
                "rlhf": base + adv + 0.01 * rng.normal(),
                "rl_local": base + iso + 1e-4 * rng.normal(),
                "oracle": base + oracle + 0.01 * rng.normal(),
            }
            run = f"{ref}{seed}"
            for pipe, v in vals.items():
                rows.append(
                    {
                        "run_id": run,
                        "seed": seed,
                        "instance_seed": seed,
                        **cell,
                        "pipeline": pipe,
                        "metric": "J",
                        "value": v,
                    }
                )
            for pipe, metric, v in (
                ("offline", "capacity_residual", 0.3),
                ("online", "capacity_residual", 0.01),
                ("", "capacity_asymmetry", 0.25),
            ):
                rows.append(
                    {
                        "run_id": run,
                        "seed": seed,
                        "instance_seed": seed,
                        **cell,
                        "pipeline": pipe,
                        "metric": metric,
                        "value": v,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("adv", "oracle", "iso", "expected"),
    [
        (0.3, 0.5, 0.0, "supported"),
        (-0.3, 0.5, 0.0, "against"),
        (0.0, 0.5, 0.0, "against"),  # equivalent (TOST δ = 0.02), predicted greater
        (0.3, 0.0, 0.0, "inconclusive"),  # positive control does not detect
        (0.3, 0.5, 0.3, "inconclusive"),  # isomorphic control not equivalent
    ],
)
def test_verdict_goes_each_way(adv, oracle, iso, expected):
    v = E.verdict(_frame(adv, oracle, iso))
    assert v.verdict == expected, v.detail
    assert v.positive_control is not None and v.n_runs == 12
    assert "Surface" in v.detail and "asymmetry +0.25" in v.detail
    if expected == "supported":
        assert v.ci_low > 0 and v.prediction_held


def test_verdict_reads_the_confirm_block_only():
    good = _frame(0.3, 0.5)
    bad = _frame(-0.3, 0.5).assign(block="pilot")
    assert E.verdict(pd.concat([good, bad])).verdict == "supported"
    assert E.verdict(bad).verdict == "against"


def test_run_batch_is_bit_identical_to_run():
    """Seeds stacked in one call give the rows of one-by-one runs, bit for bit (the
    capacity cache cleared in between, so both compute it)."""
    pytest.importorskip("torch")
    from gvgap.nn import pipelines as P

    cfg = make_config(E.Config, {**E.SMOKE.__dict__, "vocab": 3, "horizon": 2, "k": 3})
    mk = [(np.random.default_rng([s, 1]), np.random.default_rng([s, 2])) for s in range(3)]
    P._CAPACITY.clear()
    batch = E.run_batch([cfg] * 3, rngs=[a for a, _ in mk], instance_rngs=[b for _, b in mk])
    P._CAPACITY.clear()
    mk = [(np.random.default_rng([s, 1]), np.random.default_rng([s, 2])) for s in range(3)]
    for (a, b), row in zip(mk, batch):
        one = E.run(cfg, rng=a, instance_rng=b)
        assert one.keys() == row.keys()
        assert all(np.array_equal(one[k], row[k], equal_nan=True) for k in one), [
            k for k in one if not np.array_equal(one[k], row[k], equal_nan=True)
        ]
    cap = batch[0]
    assert cap["capacity_asymmetry"] == pytest.approx(
        cap["offline/capacity_regret"] - cap["online/capacity_cost"]
    )
    assert 0.0 <= cap["online/capacity_residual"] <= 1.0 and cap["offline/capacity_residual"] >= 0
