"""Big-tree soft VI and metrics (torch, blocked, level by level) against the numpy theory
core on trees small enough to enumerate, with rows and blocks forced small so that every
code path (several rows per block, several blocks, top recursion) runs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import random_env  # noqa: E402
from nn_helpers import placement  # noqa: E402

from gvgap import theory as theory  # noqa: E402
from gvgap.nn.bigtree import policy_metrics, soft_vi_big  # noqa: E402


def _t(a):
    pl = placement()
    return torch.as_tensor(np.array(a), dtype=pl.dtype, device=pl.device)


@pytest.mark.parametrize("ref", ["uniform", "random"])
@pytest.mark.parametrize(("row", "block"), [(9, 27), (3, 3), (10**6, 10**6)])
def test_soft_vi_big_matches_enumeration(ref, row, block):
    env = random_env(0, vocab=3, horizon=5, n_prompts=2, beta=0.4, ref=ref, reward_scale=3.0)
    tabs = None if ref == "uniform" else [_t(a) for a in env.logpi_ref]
    out = soft_vi_big(
        _t(env.r_star),
        env.beta,
        3,
        5,
        logpi_ref=tabs,
        rho=_t(env.rho),
        row_leaves=row,
        block_leaves=block,
    )
    sv = env.soft_star
    assert np.max(np.abs(out.log_z.cpu().numpy() - sv.log_z)) < 1e-12
    assert abs(out.j_star - env.j_star) < 1e-12
    p = np.exp(env.logp_star)
    assert np.max(np.abs(out.reward_star.cpu().numpy() - (p * env.r_star).sum(1))) < 1e-12
    kl = theory.kl_per_prompt(env.logp_star, env.logp_ref)
    assert np.max(np.abs(out.kl_star_ref.cpu().numpy() - kl)) < 1e-12
    for h, v in enumerate(out.top_values):  # the top levels are the soft values themselves
        assert np.max(np.abs(v.cpu().numpy() - sv.values[h])) < 1e-12


def test_extreme_rewards_stay_exact():
    # r/β spans 2000 nats: a global shift would underflow every row but the best one
    env = random_env(1, vocab=2, horizon=6, beta=0.01, reward_scale=10.0, ref="uniform")
    out = soft_vi_big(_t(env.r_star), env.beta, 2, 6, row_leaves=4, block_leaves=8)
    assert abs(float(out.log_z[0]) - env.soft_star.log_z[0]) < 1e-9 * abs(env.soft_star.log_z[0])


@pytest.mark.parametrize("ref", ["uniform", "random"])
def test_policy_metrics_match_env_metrics(ref):
    env = random_env(2, vocab=2, horizon=4, n_prompts=3, beta=0.7, ref=ref)
    tabs = None if ref == "uniform" else [_t(a) for a in env.logpi_ref]
    out = soft_vi_big(_t(env.r_star), env.beta, 2, 4, logpi_ref=tabs, rho=_t(env.rho))
    rng = np.random.default_rng(2)
    pol = theory.leaf_to_node_logp(theory.log_normalize_leaf(rng.normal(size=(3, 16))), 2, 4)
    got = policy_metrics(
        [_t(a) for a in pol], _t(env.r_star), env.beta, out.log_z, logpi_ref=tabs, rho=_t(env.rho)
    )
    want = env.metrics(theory.node_to_leaf_logp(pol))
    for key in ("J", "reward", "kl_ref", "kl_opt"):
        assert abs(got[key] - want[key]) < 1e-12, key


def test_float32_is_close():
    env = random_env(3, vocab=4, horizon=5, beta=0.5, ref="uniform")
    r32 = torch.as_tensor(env.r_star, dtype=torch.float32, device=placement().device)
    out = soft_vi_big(r32, env.beta, 4, 5, row_leaves=64, block_leaves=256)
    assert abs(float(out.log_z[0]) - env.soft_star.log_z[0]) < 1e-5


def test_benchmark_script_runs_and_agrees_with_the_naive_baseline():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_softvi_torch.py"
    spec = importlib.util.spec_from_file_location("bench_softvi_torch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dev = placement().device.type
    rows = mod.main(["--log2-leaves", "10", "--repeat", "1", "--device", dev])
    assert [r["V"] for r in rows] == [2, 4, 32] and all(r["agree"] for r in rows)
    assert all(r["ratio"] > 0 for r in rows)
