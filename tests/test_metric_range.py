"""The β range where the exact metrics are exact (issue 8: β ≥ 1e9 wrote NaN J_norm).

J_norm = (J − J_ref)/(J* − J_ref) cancels catastrophically at large β: J* − J_ref ≈
Var(r*)/(2β) while J is O(|r*|). Measured error of J_norm against a long-double evaluation
(unit-std rewards): 3e-16 at β = 1, 3e-10 at 1e3, 2e-8 at 1e4, 3e-6 at 1e5, 3e-4 at 1e6,
2e-2 at 1e7, NaN from 1e8 — it grows like ~3e-16 β². Sweeps should refuse β above
MAX_EXACT_BETA (error ≤ ~1e-5 there); the learners themselves are exact for any β > 0 (they
fit in reward coordinates, independent of β).
"""

from __future__ import annotations

import numpy as np
import pytest

from gvgap import theory
from gvgap.envs import make_family

MAX_EXACT_BETA = 1e5


def _j_norm_longdouble(env, scale: float) -> float:
    """J_norm of π ∝ π_ref e^{scale·r*/β} in long double, in tilt form (no cancellation in
    log P − log P_ref)."""
    ld = np.longdouble
    lref = env.logp_ref.astype(ld)

    def j(c: float):
        s = env.r_star.astype(ld) * ld(c) / ld(env.beta)
        d = s - np.log((np.exp(lref) * np.exp(s)).sum(axis=1))[:, None]
        p = np.exp(lref + d)
        return (
            env.rho.astype(ld) * ((p * env.r_star).sum(1) - ld(env.beta) * (p * d).sum(1))
        ).sum()

    return float((j(scale) - j(0.0)) / (j(1.0) - j(0.0)))


@pytest.mark.parametrize(("beta", "tol"), [(1.0, 1e-13), (1e3, 1e-8), (MAX_EXACT_BETA, 1e-4)])
def test_j_norm_is_exact_up_to_the_documented_beta(beta, tol):
    """Half-tilted policy: J_norm from env.metrics matches the long-double value."""
    env = make_family("linear", rng=np.random.default_rng(0), vocab=3, horizon=4, beta=beta, k=3)
    lp = theory.soft_optimal_leaf_logp(env.logp_ref, env.r_star / 2, beta)
    assert abs(env.metrics(lp)["J_norm"] - _j_norm_longdouble(env, 0.5)) <= tol
