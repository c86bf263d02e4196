"""Policy classes Π: parameter vector θ ↦ leaf log-probabilities, with exact vector–Jacobian
products so every learner has analytic gradients (no autograd on the exact path).

Every class implements :class:`PolicyClass`:
``n_params``, ``init_params()``, ``leaf_logp(θ) -> (m, N)``,
``vjp(θ, g) -> (n_params,)`` = Σ_{x,ξ} g[x,ξ] ∂ log P_θ(ξ|x)/∂θ, and ``node_logp(θ)``.
"""

from gvgap.policies.classes import (
    LogLinearPolicy,
    PolicyClass,
    SoftOptimalPolicy,
    TabularPolicy,
    markov_features,
)

__all__ = [
    "LogLinearPolicy",
    "PolicyClass",
    "SoftOptimalPolicy",
    "TabularPolicy",
    "markov_features",
]
