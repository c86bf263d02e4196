"""The optimiser of every torch fit: Adam, then an L-BFGS polish, for B independent models
at once (one loss per model, ``(B,)``), with exact full-tree gradients under a memory bound.

Parameters are gathered into one flat buffer ``x`` ``(B, P)`` (P padded to
:data:`gvgap.nn.layout.PAD`; the module's parameters become views of it), so each step is a
handful of kernels whatever the number of parameter tensors, and every model's update reads
only its own row:

- Adam (Kingma & Ba 2015; β = (0.9, 0.999), ε = 1e-8) with a cosine decay of the step size
  from ``lr`` to ``lr``/100, written with elementwise +, −, ×, ÷ and √ only (correctly
  rounded, so identical in SIMD and scalar code: a model's trajectory is bit-identical
  whatever B — the batch invariance of :mod:`gvgap.nn.layout`);
- L-BFGS (Nocedal & Wright 2006, Alg. 7.4: two-loop recursion, memory ``history``, scaling
  γ = sᵀy/yᵀy) with a backtracking Armijo line search (c₁ = 1e-4, halving), per model: a
  model stops when its ‖∇‖ ≤ ``gtol`` × :data:`POLISH_FACTOR`, when no step decreases its loss
  (stalled at the float floor) or after ``polish`` iterations; a stopped model's row is not
  touched again. Curvature pairs with sᵀy ≤ 0 are skipped.

Evaluation (:func:`value_and_grad`): ``loss(out)`` maps the model's flat leaf outputs
``(B, L)`` to ``(B,)``; in one pass when the tree fits the memory bound, else in two passes —
outputs chunk by chunk without graph, ∂loss/∂out on the whole tree, then each chunk's
backward with that cotangent (exact: the loss is a function of the leaf outputs only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gvgap.nn.device import import_torch
from gvgap.nn.layout import pad

torch = import_torch()

#: Adam's moment decay rates and ε.
BETAS = (0.9, 0.999)
EPS = 1e-8
#: L-BFGS memory, line-search constant and trials.
HISTORY = 20
C1 = 1e-4
MAX_LS = 30
#: The polish runs until ‖∇‖ ≤ gtol × this (``converged`` still means ‖∇‖ ≤ gtol).
POLISH_FACTOR = 1e-2


class FlatParams:
    """The trainable parameters of ``module`` as views of one ``(B, P)`` buffer.

    ``stacked``: parameters carry the model axis first (``(B, …)``); else one model (B = 1).
    """

    def __init__(self, module, stacked: bool):
        self.params = [p for p in module.parameters() if p.requires_grad]
        p0 = self.params[0]
        self.n_models = int(p0.shape[0]) if stacked else 1
        b = self.n_models
        sizes = [p.numel() // b for p in self.params]
        self.size = pad(sum(sizes))
        self.x = torch.zeros((b, self.size), dtype=p0.dtype, device=p0.device)
        self.slices, off = [], 0
        for p, k in zip(self.params, sizes):
            self.x[:, off : off + k] = p.detach().reshape(b, k)
            shape = p.shape
            p.data = self.x[:, off : off + k].view(shape if stacked else (1, *shape))
            if not stacked:
                p.data = p.data[0]
            self.slices.append((off, k))
            off += k

    def flat_grad(self, grads) -> torch.Tensor:
        """``(B, P)`` from per-parameter gradients (None → 0)."""
        b = self.n_models
        out = torch.zeros_like(self.x)
        for (off, k), g in zip(self.slices, grads):
            if g is not None:
                out[:, off : off + k] = g.reshape(b, k)
        return out


def value_and_grad(module, flat: FlatParams, loss: Callable, chunks=None):
    """``(f (B,), ∇f (B, P))`` of ``loss(module outputs)`` (module docstring)."""
    if chunks is None or len(chunks) == 1:
        f = loss(module_outputs(module))
        grads = torch.autograd.grad(f.sum(), flat.params, allow_unused=True)
        return f.detach(), flat.flat_grad(grads)
    with torch.no_grad():
        out = torch.cat(
            [module.leaf_flat(c)[:, : module.tree_index(c).tree.leaf_span[1]] for c in chunks],
            dim=1,
        )
    full = torch.zeros((out.shape[0], module.leaf_space.size), dtype=out.dtype, device=out.device)
    full[:, : out.shape[1]] = out
    full.requires_grad_(True)
    f = loss(full)
    (cot,) = torch.autograd.grad(f.sum(), full)
    grads = [torch.zeros_like(p) for p in flat.params]
    for c in chunks:
        start, count = module.tree_index(c).tree.leaf_span
        part = module.leaf_flat(c)
        g = torch.zeros_like(part)
        g[:, :count] = cot[:, start : start + count]
        for acc, d in zip(grads, torch.autograd.grad(part, flat.params, g, allow_unused=True)):
            if d is not None:
                acc += d
    return f.detach(), flat.flat_grad(grads)


def module_outputs(module) -> torch.Tensor:
    """``(B, L)`` flat leaf outputs of any torch class: the stacked classes' ``leaf_flat``;
    ``leaf_logp`` / ``leaf_reward`` ``(m, N)`` of the others as one row."""
    if hasattr(module, "leaf_flat"):
        return module.leaf_flat()
    out = module.leaf_logp() if hasattr(module, "leaf_logp") else module.leaf_reward()
    return out.reshape(1, -1)


@dataclass
class OptInfo:
    """Per-model outcome of :func:`minimise` (arrays of length B)."""

    loss: np.ndarray
    grad_norm: np.ndarray
    converged: np.ndarray
    adam_steps: int
    lbfgs_iters: np.ndarray
    stalled: np.ndarray


def _norm(g: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((g * g).sum(dim=1))


def adam(flat: FlatParams, fg: Callable, *, steps: int, lr: float) -> None:
    """``steps`` Adam steps on every row of ``flat.x`` (module docstring)."""
    x = flat.x
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    b1, b2 = BETAS
    for t in range(steps):
        _, g = fg(t)
        step = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / max(steps, 1))))
        m.mul_(b1).add_(g * (1 - b1))
        v.mul_(b2).add_((g * g) * (1 - b2))
        c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
        x.sub_((m * (step / c1)) / (torch.sqrt(v / c2) + EPS))


def _two_loop(g, S, Y, rho, count):
    """−H g by the two-loop recursion over each model's stored pairs (newest first)."""
    q = g.clone()
    alphas = []
    for i in range(S.shape[1]):
        valid = (count > i).to(g.dtype)
        a = rho[:, i] * (S[:, i] * q).sum(1) * valid
        q = q - a[:, None] * Y[:, i]
        alphas.append(a)
    sy, yy = (S[:, 0] * Y[:, 0]).sum(1), (Y[:, 0] * Y[:, 0]).sum(1)
    gamma = torch.where(count > 0, sy / torch.where(yy > 0, yy, 1.0), 1.0)
    r = gamma[:, None] * q
    for i in reversed(range(S.shape[1])):
        valid = (count > i).to(g.dtype)
        beta = rho[:, i] * (Y[:, i] * r).sum(1)
        r = r + S[:, i] * ((alphas[i] - beta) * valid)[:, None]
    return -r


def lbfgs(flat: FlatParams, fg: Callable, *, max_iter: int, gtol: float, history: int = HISTORY):
    """Per-model L-BFGS polish of ``flat.x`` (module docstring).

    Returns:
        ``(f, g, iters, stalled)`` at the final rows: losses, gradients, iterations, and
        whether the line search found no decrease.
    """
    x = flat.x
    f, g = fg(None)
    b, p = x.shape
    S = torch.zeros((b, history, p), dtype=x.dtype, device=x.device)
    Y, rho = torch.zeros_like(S), torch.zeros((b, history), dtype=x.dtype, device=x.device)
    count = torch.zeros(b, dtype=torch.long, device=x.device)
    iters = torch.zeros(b, dtype=torch.long, device=x.device)
    stalled = torch.zeros(b, dtype=torch.bool, device=x.device)
    active = (_norm(g) > gtol) & torch.isfinite(f)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        d = _two_loop(g, S, Y, rho, count)
        gd = (g * d).sum(1)
        bad = gd >= 0  # not a descent direction: restart from steepest descent
        first = (count == 0) | bad
        scale = torch.clamp(1.0 / g.abs().sum(1), max=1.0)
        d = torch.where(first[:, None], -g * scale[:, None], d)
        gd = (g * d).sum(1)
        count = torch.where(bad, 0, count)
        x0, f0, g0 = x.clone(), f, g
        t = torch.ones(b, dtype=x.dtype, device=x.device)
        searching = active.clone()
        f_new, g_new = f0.clone(), g0.clone()
        for _ls in range(MAX_LS):
            x.copy_(torch.where(searching[:, None], x0 + t[:, None] * d, x))
            f_try, g_try = fg(None)
            near = (f_try <= f0 + 1e-12 * f0.abs()) & (_norm(g_try) < _norm(g0))
            ok = searching & torch.isfinite(f_try) & ((f_try <= f0 + C1 * t * gd) | near)
            f_new = torch.where(ok, f_try, f_new)
            g_new = torch.where(ok[:, None], g_try, g_new)
            searching = searching & ~ok
            if not bool(searching.any()):
                break
            t = torch.where(searching, t * 0.5, t)
        failed = searching
        x.copy_(torch.where(failed[:, None], x0, x))
        s, y = x - x0, g_new - g0
        sy = (s * y).sum(1)
        store = active & ~failed & (sy > 1e-16 * _norm(s) * _norm(y))
        S = torch.where(store[:, None, None], torch.cat([s[:, None], S[:, :-1]], 1), S)
        Y = torch.where(store[:, None, None], torch.cat([y[:, None], Y[:, :-1]], 1), Y)
        inv = 1.0 / torch.where(store, sy, 1.0)
        rho = torch.where(store[:, None], torch.cat([inv[:, None], rho[:, :-1]], 1), rho)
        count = torch.where(store, torch.clamp(count + 1, max=history), count)
        f, g = torch.where(active, f_new, f), torch.where(active[:, None], g_new, g)
        iters = iters + (active & ~failed).long()
        stalled = stalled | (active & failed)
        active = active & ~failed & (_norm(g) > gtol)
    return f, g, iters, stalled


def minimise(
    module,
    loss: Callable,
    *,
    stacked: bool,
    steps: int = 300,
    lr: float = 1e-2,
    polish: int = 100,
    gtol: float = 1e-5,
    chunks=None,
    minibatch: Callable | None = None,
) -> OptInfo:
    """Minimise ``loss(outputs) -> (B,)`` over ``module``'s parameters, in place.

    Args:
        loss: ``loss(out, rows)`` with ``rows`` None (the full objective) or a minibatch.
        stacked: parameters carry a leading model axis.
        steps: Adam steps; polish: L-BFGS iterations at most (full objective).
        chunks: the module's chunks (:meth:`StackedTree.chunks`); None: one pass.
        minibatch: ``minibatch(t) -> rows`` for Adam step t (sampled rows), or None.
    """
    flat = FlatParams(module, stacked)

    def fg(t):
        rows = None if (t is None or minibatch is None) else minibatch(t)
        return value_and_grad(module, flat, lambda out: loss(out, rows), chunks)

    adam(flat, fg, steps=steps, lr=lr)
    f, g, iters, stalled = lbfgs(flat, fg, max_iter=polish, gtol=gtol * POLISH_FACTOR)
    gn = _norm(g)
    return OptInfo(
        f.cpu().numpy().astype(np.float64),
        gn.cpu().numpy().astype(np.float64),
        (gn <= gtol).cpu().numpy(),
        steps,
        iters.cpu().numpy(),
        stalled.cpu().numpy(),
    )
