"""The Markov policy classes markovJ (the policy rungs of :mod:`gvgap.ladder`).

Rung ``markovJ`` (J ≥ 0; ``product`` = markov0) is the log-linear class

    π_θ(a | s) ∝ π_ref(a | s) · exp θ[x, h, c_J(s), a],

one free logit per (prompt x, position h, context c_J(s) = the last min(h, J) tokens of the
prefix s, token a). Since c_{H−1}(s) = s, markov(H−1) *is* the tabular class (docs/theory.md §2).
The
tilt log π − log π_ref of a member depends on (x, h, last J tokens, a) only, up to a per-state
constant; with uniform π_ref the class is the plain log-linear class over (position, previous J
tokens, token).
"""

from __future__ import annotations

import numpy as np

from gvgap.policies.classes import LogitPolicy, _logits_vjp
from gvgap.theory.tree import NodeLogp


def context_index(vocab: int, depth: int, order: int) -> np.ndarray:
    """``(V^h,)`` context c_J(s) of every state s at depth h: its last min(h, J) tokens, read in
    base V (the low base-V digits of the state index)."""
    return np.arange(vocab**depth) % vocab ** min(depth, order)


class MarkovPolicy(LogitPolicy):
    """The rung markovJ (module docstring), one parameter block per prompt.

    Args:
        n_prompts, vocab, horizon: m, V, H.
        order: J ≥ 0.
        offset: per-depth base logits ``(m, V^h, V)`` (log π_ref); None = uniform base.

    ``n_params = m Σ_h V^{min(h,J)+1}`` (over-parameterised by one logit per context, like the
    tabular class); θ = 0 is the base policy. ``index[h]`` ``(m, V^h, V)`` maps every (prompt,
    state, token) to its parameter.
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
        self.n_prompts = n_prompts
        self.offset = offset
        per_prompt, index = 0, []
        for h in range(horizon):
            width = vocab ** min(h, self.order)
            ctx = context_index(vocab, h, self.order)
            index.append(per_prompt + ctx[:, None] * vocab + np.arange(vocab)[None, :])
            per_prompt += width * vocab
        base = np.arange(n_prompts)[:, None, None] * per_prompt
        self.index = [base + idx[None] for idx in index]
        self.n_params = n_prompts * per_prompt

    @property
    def uniform_base(self) -> bool:
        """Whether the base policy is uniform (no offset, or every offset logit equal)."""
        if self.offset is None:
            return True
        first = float(self.offset[0].flat[0])
        return all(bool(np.all(a == first)) for a in self.offset)

    def init_params(self) -> np.ndarray:
        """θ = 0: the base policy (π_ref when ``offset`` = log π_ref)."""
        return np.zeros(self.n_params)

    def logits(self, theta: np.ndarray) -> list[np.ndarray]:
        """θ[index]: one logit block per context of the last min(h, J) tokens."""
        return [theta[idx] for idx in self.index]

    def vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Σ g ∂ log P_θ/∂θ: the logit VJP scattered onto the shared parameters (bincount)."""
        dz = _logits_vjp(self.node_logp(theta), g)
        return self.pull(dz)

    def pull(self, dz: list[np.ndarray]) -> np.ndarray:
        """Scatter per-depth logit gradients ``(m, V^h, V)`` onto θ (adjoint of :meth:`logits`)."""
        return sum(
            np.bincount(idx.ravel(), weights=d.ravel(), minlength=self.n_params)
            for idx, d in zip(self.index, dz)
        )
