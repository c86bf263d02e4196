"""Torch reward classes: a global scalar-head RM on an MLP or tree-transformer backbone
(fresh, or initialised from a policy's backbone as at LLM scale), the local RM
r_π = β log π/π_ref of any torch policy, and torch twins of the tabular / linear RMs.

Every class is a ``torch.nn.Module`` with ``leaf_reward() -> (m, V^H)`` (``(B, m, V^H)`` for
a stack of B models), from one batched forward pass over the tree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from gvgap.nn.base import StackedTree, model_seeds
from gvgap.nn.device import Placement, import_torch, resolve
from gvgap.nn.stacked import NodeMLP, SLinear, TreeTransformer, init_stack
from gvgap.nn.tree import as_tensor

torch = import_torch()
nn = torch.nn


class TorchTabularReward(nn.Module):
    """r(x, ξ) = w[x, ξ] (numpy ``TabularReward``)."""

    def __init__(self, n_prompts: int, n_leaves: int, placement: Placement | None = None):
        super().__init__()
        pl = placement or resolve()
        self.w = nn.Parameter(torch.zeros(n_prompts, n_leaves, dtype=pl.dtype, device=pl.device))

    def leaf_reward(self) -> torch.Tensor:
        """w, ``(m, N)``."""
        return self.w


class TorchLinearReward(nn.Module):
    """R_sim: r_w = Φ w with features ``(m, N, k)`` (numpy ``LinearReward``)."""

    def __init__(self, features, placement: Placement | None = None):
        super().__init__()
        pl = placement or resolve()
        self.register_buffer("phi", as_tensor(features, pl))
        self.w = nn.Parameter(torch.zeros(self.phi.shape[-1], dtype=pl.dtype, device=pl.device))

    def leaf_reward(self) -> torch.Tensor:
        """Φ w, ``(m, N)``."""
        return self.phi @ self.w


class ScalarHeadRM(StackedTree):
    """Global RM r_w(x, ξ) = head(backbone(x, ξ)), a scalar per completion (stacked: see
    :mod:`gvgap.nn.base`).

    ``arch="transformer"``: the causal tree transformer over [BOS_x, a_1..a_H], read at the
    leaf node (``body`` = a policy's ``TreeTransformer`` with the same B to start from its
    weights, deep-copied); ``arch="mlp"``: an MLP over the one-hot (prompt, a_1, …, a_H)
    encoding (m + H V features). The head starts at zero, so r = 0 initially (BT's
    symmetric start).
    """

    def __init__(
        self,
        n_prompts,
        vocab,
        horizon,
        *,
        arch="transformer",
        width=32,
        depth=2,
        heads=2,
        body=None,
        placement: Placement | None = None,
        seed: int | Sequence[int] = 0,
        n_models: int | None = None,
    ):
        super().__init__()
        pl = self._tree(n_prompts, vocab, horizon, n_models, placement)
        self.n_levels, self.arch = horizon + 1, arch
        self.width, self.depth = width, depth
        seeds = model_seeds(seed, self.n_models)
        if arch == "transformer":
            self.body = TreeTransformer(
                self.n_models, n_prompts, vocab, horizon, width=width, depth=depth, heads=heads
            )
            self.head = SLinear(self.n_models, width, 1, zero=True)
        elif arch == "mlp":
            self.net = NodeMLP(self.n_models, n_prompts + horizon * vocab, width, depth, 1)
            self._feats: dict = {}
        else:
            raise ValueError(f"arch must be 'transformer' or 'mlp', got {arch!r}")
        self.to(pl.device, pl.dtype)
        init_stack(self, seeds)
        if body is not None:
            self.body.load_state_dict(copy.deepcopy(body.state_dict()))

    def features(self, tix) -> torch.Tensor:
        """Active one-hot features of every leaf of the chunk, ``(pad(n), 1 + H)``."""
        key = tix.tree.chunk
        if key not in self._feats:
            h, m, v = self.horizon, self.n_prompts, self.vocab
            tok = tix.tree.path_tokens(h, h)
            cols = m + np.arange(h) * v + tok
            feats = np.concatenate([tix.tree.prompt_of(h)[:, None], cols], axis=1)
            self._feats[key] = torch.as_tensor(feats, device=tix.tokens.device)
        return self._feats[key]

    def leaf_flat(self, chunk=None) -> torch.Tensor:
        """r_w at the chunk's leaves, ``(B, pad(n))``."""
        tix = self.tree_index(chunk)
        if self.arch == "mlp":
            return self.net(self.features(tix))[..., 0]
        o, n = tix.offsets[self.horizon], tix.padded[self.horizon]
        return self.head(self.body(tix)[:, o : o + n])[..., 0]

    def leaf_reward(self) -> torch.Tensor:
        """r_w(x, ξ) for every completion: ``(m, V^H)`` or ``(B, m, V^H)``."""
        return self.public(self.leaf_flat())

    def bytes_per_leaf(self) -> float:
        """≈ (20 + 4 H) width values per node and layer (transformer; nodes ≈ V/(V − 1) per
        leaf) or (H + 1 + 6·depth) width per leaf (MLP)."""
        if self.arch == "mlp":
            return (self.horizon + 1 + 6 * self.depth) * self.width * self.itemsize()
        per_node = self.depth * (20 + 4 * self.horizon) * self.width
        return per_node * self.itemsize() * self.vocab / max(self.vocab - 1, 1)


class LocalRM(nn.Module):
    """Local RM of a torch policy: r_θ = β (log P_θ − log P_ref) (β log P_θ if no reference)."""

    def __init__(self, policy, logp_ref=None, beta: float = 1.0):
        super().__init__()
        self.policy = policy
        self.beta = float(beta)
        if logp_ref is not None:
            ref = policy.leaf_logp().detach()
            self.register_buffer(
                "logp_ref",
                torch.as_tensor(np.asarray(logp_ref), dtype=ref.dtype, device=ref.device),
            )
        else:
            self.logp_ref = None

    def leaf_reward(self) -> torch.Tensor:
        """r_π(x, ξ), ``(m, V^H)``."""
        lp = self.policy.leaf_logp()
        return self.beta * (lp if self.logp_ref is None else lp - self.logp_ref)
