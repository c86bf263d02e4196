"""The policy class ladder (DESIGN §5 ``policy_class``): product ⊂ markov1 ⊂ … ⊂ tabular.

Rung ``markovJ`` (J ≥ 0; ``product`` = markov0) is the log-linear class

    π_θ(a | s) ∝ π_ref(a | s) · exp θ[x, h, c_J(s), a],

one free logit per (prompt x, position h, context c_J(s) = the last min(h, J) tokens of the
prefix s, token a). ``tabular`` is every autoregressive policy. Since c_{H−1}(s) = s, the rung
markov(H−1) *is* tabular (same set of policies, THEORY §2). The tilt log π − log π_ref of a
policy in rung J depends on (x, h, last J tokens, a) only; with uniform π_ref the rung is the
plain log-linear class over (position, previous J tokens, token).

Dimension (free parameters modulo the per-state softmax shift):

    dim(markovJ) = m Σ_{h<H} V^{min(h, J)} (V − 1),   dim(tabular) = m (V^H − 1).
"""

from __future__ import annotations

import re

import numpy as np

from gvgap.errors import UserError
from gvgap.policies.classes import LogitPolicy, _logits_vjp
from gvgap.theory.tree import NodeLogp

#: Policy rung names accepted besides ``markov<J>``.
POLICY_RUNGS = ("product", "tabular")
_MARKOV = re.compile(r"^markov([0-9]+)$")


def policy_order(name: str, horizon: int) -> int:
    """The Markov order J of a policy rung name (``tabular`` → H − 1, ``product`` → 0).

    Raises:
        UserError: a name that is none of product, markov<J> (J ≥ 0), tabular.
    """
    if name == "product":
        return 0
    if name == "tabular":
        return max(horizon - 1, 0)
    match = _MARKOV.match(str(name))
    if match is None:
        raise UserError(
            f"policy_class must be one of product, markov1, markov2, ..., tabular; got {name!r}"
        )
    return min(int(match.group(1)), max(horizon - 1, 0))


def policy_dim(order: int, n_prompts: int, vocab: int, horizon: int) -> int:
    """dim(markovJ) = m Σ_{h<H} V^{min(h, J)} (V − 1) (module docstring)."""
    return n_prompts * sum(vocab ** min(h, order) * (vocab - 1) for h in range(horizon))


def rung_name(order: int, horizon: int) -> str:
    """Canonical name of the rung of Markov order J (``tabular`` when J ≥ H − 1)."""
    if order >= horizon - 1:
        return "tabular"
    return "product" if order == 0 else f"markov{order}"


class MarkovPolicy(LogitPolicy):
    """The rung markovJ (module docstring), one parameter block per prompt.

    Args:
        n_prompts, vocab, horizon: m, V, H.
        order: J ≥ 0.
        offset: per-depth base logits ``(m, V^h, V)`` (log π_ref); None = uniform base.

    ``n_params = m Σ_h V^{min(h,J)+1}`` (over-parameterised by one logit per context, like the
    tabular class); θ = 0 is the base policy.
    """

    def __init__(
        self,
        n_prompts: int,
        vocab: int,
        horizon: int,
        order: int,
        offset: NodeLogp | None = None,
    ):
        self.vocab, self.horizon, self.order = vocab, horizon, int(order)
        self.offset = offset
        per_prompt, self._index = 0, []
        for h in range(horizon):
            width = vocab ** min(h, self.order)
            ctx = np.arange(vocab**h) % width  # the last min(h, J) tokens: low base-V digits
            self._index.append(per_prompt + ctx[:, None] * vocab + np.arange(vocab)[None, :])
            per_prompt += width * vocab
        base = np.arange(n_prompts)[:, None, None] * per_prompt
        self._index = [base + idx[None] for idx in self._index]  # (m, V^h, V) param indices
        self.n_params = n_prompts * per_prompt
        self.dim = policy_dim(self.order, n_prompts, vocab, horizon)

    def init_params(self) -> np.ndarray:
        """θ = 0: the base policy (π_ref when ``offset`` = log π_ref)."""
        return np.zeros(self.n_params)

    def logits(self, theta: np.ndarray) -> list[np.ndarray]:
        """θ[index]: one logit block per context of the last min(h, J) tokens."""
        return [theta[idx] for idx in self._index]

    def vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Σ g ∂ log P_θ/∂θ: the logit VJP scattered onto the shared parameters (bincount)."""
        dz = _logits_vjp(self.node_logp(theta), g)
        return sum(
            np.bincount(idx.ravel(), weights=d.ravel(), minlength=self.n_params)
            for idx, d in zip(self._index, dz)
        )


def policy_rung(name: str, n_prompts: int, vocab: int, horizon: int, offset: NodeLogp | None):
    """The rung ``name`` as a :class:`MarkovPolicy` (``tabular`` = order H − 1)."""
    return MarkovPolicy(n_prompts, vocab, horizon, policy_order(name, horizon), offset)
