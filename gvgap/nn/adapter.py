"""The numpy class protocol (``gvgap.policies`` / ``gvgap.rewards``) for any torch class.

:class:`NumpyPolicy` and :class:`NumpyReward` expose ``n_params``, ``init_params``,
``leaf_logp`` / ``leaf_reward``, ``vjp`` (by autograd) and ``node_logp``, so every numpy
learner (converged L-BFGS + Newton, ``select_lambda``) runs unchanged on a torch class, and
parity with the numpy classes is testable in float64.
"""

from __future__ import annotations

import numpy as np

from gvgap.nn.device import import_torch

torch = import_torch()
_vec = torch.nn.utils.parameters_to_vector
_unvec = torch.nn.utils.vector_to_parameters


class _Flat:
    def __init__(self, module):
        self.module = module
        self._params = list(module.parameters())
        self._theta0 = _vec(self._params).detach().cpu().numpy().astype(np.float64)
        self.n_params = int(self._theta0.size)

    def init_params(self) -> np.ndarray:
        """The module's parameters at construction, flattened ``(n_params,)``."""
        return self._theta0.copy()

    def _load(self, theta: np.ndarray) -> None:
        p0 = self._params[0]
        with torch.no_grad():
            _unvec(
                torch.as_tensor(np.asarray(theta), dtype=p0.dtype, device=p0.device), self._params
            )

    def _vjp(self, theta, g, fn) -> np.ndarray:
        self._load(theta)
        out = fn()
        gt = torch.as_tensor(np.asarray(g), dtype=out.dtype, device=out.device)
        grads = torch.autograd.grad((out * gt).sum(), self._params, allow_unused=True)
        flat = [torch.zeros_like(p) if d is None else d for p, d in zip(self._params, grads)]
        return _vec(flat).detach().cpu().numpy().astype(np.float64)


class NumpyPolicy(_Flat):
    """A torch policy behind the numpy ``PolicyClass`` protocol."""

    def __init__(self, module):
        super().__init__(module)
        self.vocab, self.horizon = module.vocab, module.horizon

    def leaf_logp(self, theta: np.ndarray) -> np.ndarray:
        """log P_θ(ξ|x), ``(m, V^H)``."""
        self._load(theta)
        with torch.no_grad():
            return self.module.leaf_logp().cpu().numpy().astype(np.float64)

    def node_logp(self, theta: np.ndarray):
        """log π_θ(a|s) per depth."""
        self._load(theta)
        with torch.no_grad():
            return tuple(a.cpu().numpy().astype(np.float64) for a in self.module.node_logp())

    def vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Σ g · ∂ log P_θ / ∂θ by autograd."""
        return self._vjp(theta, g, self.module.leaf_logp)


class NumpyReward(_Flat):
    """A torch reward class behind the numpy ``RewardClass`` protocol."""

    def leaf_reward(self, w: np.ndarray) -> np.ndarray:
        """r_w(x, ξ), ``(m, V^H)``."""
        self._load(w)
        with torch.no_grad():
            return self.module.leaf_reward().cpu().numpy().astype(np.float64)

    def vjp(self, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Σ g · ∂ r_w / ∂w by autograd."""
        return self._vjp(w, g, self.module.leaf_reward)
