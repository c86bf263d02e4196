"""Torch reward classes: a global scalar-head RM on an MLP or transformer backbone (fresh, or
initialised from a policy's backbone as at LLM scale), the local RM r_π = β log π/π_ref of
any torch policy, and torch twins of the tabular / linear RMs.

Every class is a ``torch.nn.Module`` with ``leaf_reward() -> (m, V^H)``, from one batched
forward pass over all m·V^H completions.
"""

from __future__ import annotations

import copy

import numpy as np

from gvgap.nn.device import Placement, import_torch, resolve
from gvgap.nn.policies import TransformerBody, init_weights, mlp, sequences
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


def leaf_encoding(n_prompts: int, vocab: int, horizon: int) -> np.ndarray:
    """One-hot (prompt, a_1, …, a_H) of every completion: ``(m V^H, m + H V)``."""
    n = vocab**horizon
    toks = np.arange(n)[:, None] // vocab ** np.arange(horizon - 1, -1, -1) % vocab
    enc = np.zeros((n_prompts, n, n_prompts + horizon * vocab))
    enc[np.arange(n_prompts), :, np.arange(n_prompts)] = 1.0
    for t in range(horizon):
        enc[:, np.arange(n), n_prompts + t * vocab + toks[:, t]] = 1.0
    return enc.reshape(n_prompts * n, -1)


class ScalarHeadRM(nn.Module):
    """Global RM r_w(x, ξ) = head(backbone(x, ξ)), a scalar per completion.

    ``arch="transformer"``: the causal body over [BOS_x, a_1..a_H], read at the last position
    (``body`` = a policy's ``TransformerBody`` to start from its weights, deep-copied);
    ``arch="mlp"``: an MLP over the one-hot (prompt, tokens) encoding. The head starts at
    zero, so r = 0 initially (BT's symmetric start).
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
        seed: int = 0,
    ):
        super().__init__()
        pl = placement or resolve()
        self.n_prompts, self.vocab, self.horizon, self.arch = n_prompts, vocab, horizon, arch
        if arch == "transformer":
            self.body = (
                copy.deepcopy(body)
                if body is not None
                else TransformerBody(
                    n_prompts, vocab, horizon, width=width, depth=depth, heads=heads
                )
            )
            self.head = nn.Linear(self.body.width, 1)
            if body is None:
                init_weights(self, seed, zero=(self.head,))
            else:
                init_weights(self.head, seed, zero=(self.head,))
            self.register_buffer("seq", sequences(n_prompts, vocab, horizon, pl.device))
        elif arch == "mlp":
            enc = leaf_encoding(n_prompts, vocab, horizon)
            self.register_buffer("enc", as_tensor(enc, pl))
            self.net = mlp(enc.shape[1], width, depth, 1)
            init_weights(self.net, seed, zero=(self.net[-1],))
        else:
            raise ValueError(f"arch must be 'transformer' or 'mlp', got {arch!r}")
        self.to(pl.device, pl.dtype)

    def leaf_reward(self) -> torch.Tensor:
        """r_w(x, ξ) for every completion, ``(m, V^H)``."""
        if self.arch == "transformer":
            out = self.head(self.body(self.seq)[:, -1, :])
        else:
            out = self.net(self.enc)
        return out.reshape(self.n_prompts, -1)


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
