"""soft_value_iteration's ``out=`` buffer API and its shifted kernel (issue 8, deliverable 1)."""

from __future__ import annotations

import numpy as np
import pytest

from gvgap import theory
from gvgap.envs.tree_env import random_ref_policy
from gvgap.theory.soft import SoftVIBuffers


@pytest.mark.parametrize(("vocab", "horizon", "scale"), [(2, 5, 1.0), (3, 3, 1e4), (9, 2, 50.0)])
def test_out_buffers_match_enumeration(vocab, horizon, scale):
    """Into reused buffers or fresh arrays, π*_r equals the trajectory form
    log P_ref + r/β − log Z by enumeration, for rewards from O(1) to 1e4/β (past exp's range:
    the per-state fallback)."""
    rng = np.random.default_rng(vocab + horizon)
    logpi_ref = random_ref_policy(2, vocab, horizon, 0.5, rng)
    buf = SoftVIBuffers.empty(2, vocab, horizon)
    for _ in range(2):  # the second call reuses (overwrites) the same buffers
        r = scale * rng.standard_normal((2, vocab**horizon))
        fresh = theory.soft_value_iteration(logpi_ref, r, 0.7)
        into = theory.soft_value_iteration(logpi_ref, r, 0.7, out=buf)
        assert into.logpi[0] is buf.logpi[0]
        lp_ref = theory.node_to_leaf_logp(logpi_ref)
        brute = theory.soft_optimal_leaf_logp(lp_ref, r, 0.7)
        tol = 1e-12 * max(1.0, scale)
        np.testing.assert_allclose(theory.node_to_leaf_logp(into.logpi), brute, atol=tol)
        np.testing.assert_allclose(into.log_z, theory.log_partition_leaf(lp_ref, r, 0.7), atol=tol)
        for a, b in zip(fresh.logpi, into.logpi):
            np.testing.assert_array_equal(a, b)


def test_out_of_another_shape_is_refused():
    """Buffers of another tree raise instead of writing out of shape."""
    logpi_ref = theory.uniform_node_logp(1, 2, 3)
    with pytest.raises(ValueError, match="out"):
        theory.soft_value_iteration(
            logpi_ref, np.zeros((1, 8)), 1.0, out=SoftVIBuffers.empty(1, 2, 2)
        )


def _small_tree(seed: int = 0):
    rng = np.random.default_rng(seed)
    logpi_ref = random_ref_policy(2, 3, 4, 1.0, rng)
    return logpi_ref, rng.normal(size=(2, 3**4))


def test_backend_switch_without_numba(monkeypatch):
    """Runs without numba too: the env switch is validated, auto and numpy use numpy, and an
    explicit numba where it cannot run is one clear error."""
    from gvgap.errors import UserError
    from gvgap.theory import soft, soft_fused

    monkeypatch.setattr(soft_fused, "available", lambda: False)
    monkeypatch.setenv(soft.SOFTVI_ENV, "fortran")
    with pytest.raises(UserError, match="GVGAP_SOFTVI"):
        soft.softvi_backend(4)
    monkeypatch.delenv(soft.SOFTVI_ENV)
    assert soft.softvi_backend(1 << 30) == "numpy"
    with pytest.raises(UserError, match="numba is not installed"):
        soft.softvi_backend(4, "numba")


def test_auto_falls_back_to_numpy_once_when_the_fused_kernel_fails(monkeypatch):
    """A numba that cannot compile the kernel: auto warns once and answers with numpy (same
    numbers), later calls skip the kernel; an explicit numba request names the reason."""
    from gvgap.errors import UserError
    from gvgap.theory import soft, soft_fused

    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("cannot compile")

    monkeypatch.setattr(soft_fused, "DISABLED", [])
    monkeypatch.setattr(soft_fused, "_numba_imports", lambda: True)
    monkeypatch.setattr(soft_fused, "fused_into", broken)
    monkeypatch.setattr(soft, "FUSED_MIN_LEAVES", 1)
    logpi_ref, r = _small_tree()
    want = theory.soft_value_iteration(logpi_ref, r, 0.5, backend="numpy")
    with pytest.warns(UserWarning, match="cannot compile"):
        got = theory.soft_value_iteration(logpi_ref, r, 0.5, backend="auto")
    np.testing.assert_array_equal(got.log_z, want.log_z)
    theory.soft_value_iteration(logpi_ref, r, 0.5, backend="auto")
    assert len(calls) == 1
    with pytest.raises(UserError, match="cannot compile"):
        theory.soft_value_iteration(logpi_ref, r, 0.5, backend="numba")
