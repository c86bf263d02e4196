"""Soft value iteration and exact metrics on trees of 10^8–10^9 leaves, in torch, memory-lean.

The leaf rewards ``r`` ``(m, V^H)`` are read ONCE, in blocks of whole subtrees: the tree is
viewed as rows of V^j leaves (the subtrees of the depth-(H−j) states, ``j`` chosen so a row
holds ≤ ``row_leaves`` leaves) and blocks of rows of ≤ ``block_leaves`` leaves. Per row, in a
reused work buffer (no allocation per block, cache-resident on a GPU):

    s = max_ξ r/β;   e(ξ) = P_ref(ξ | row root) · exp(r(ξ)/β − s);   E = Σ e;   F = Σ e · r

(uniform π_ref: P_ref(ξ|root) = V^(−j), applied as −j log V; otherwise the π_ref node tables
are multiplied in level by level). So V_{H−j}(root) = s + log E (the soft value, docs/theory.md §2),
and F/E = E_{π*}[r | root]. Above the rows, on the m·V^(H−j) roots only, ordinary soft VI
in float64: V_h(s) = log Σ_a π_ref(a|s) e^{V_{h+1}(s·a)},
π*(a|s) = π_ref(a|s) e^{V_{h+1}(s·a) − V_h(s)}, and E_{π*}[r | s] = Σ_a π*(a|s) E_{π*}[r | s·a].
Outputs are exact (Gibbs identity, docs/theory.md §3):

    log Z = V_0,   J(π*) = β log Z,   E_{π*} r,   KL(π*‖π_ref) = E_{π*} r / β − log Z.

Leaves whose e underflows (r/β more than ~87 (float32) or ~745 (float64) nats below the
row maximum) contribute below the working precision of E; the result stays exact to it.
For a given policy π (node tables), :func:`policy_metrics` gives J, KL(π‖π_ref) and
KL(π‖π*) = KL(π‖π_ref) − E_π r/β + log Z level by level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gvgap.nn.device import import_torch

torch = import_torch()


@dataclass(frozen=True)
class BigSoftVI:
    """Exact soft-VI summaries, all float64 ``(m,)`` tensors (``j_star`` a float).

    Attributes:
        log_z: log Z_r(x). reward_star: E_{π*}[r | x]. kl_star_ref: KL(π*‖π_ref | x).
        j_star: β Σ_x ρ_x log Z_r(x). top_values: soft values V_h, h = 0..H−j, ``(m, V^h)``.
    """

    log_z: torch.Tensor
    reward_star: torch.Tensor
    kl_star_ref: torch.Tensor
    j_star: float
    top_values: tuple[torch.Tensor, ...]


def _row_depth(vocab: int, horizon: int, row_leaves: int) -> int:
    j = 0
    while j < horizon and vocab ** (j + 1) <= row_leaves:
        j += 1
    return max(j, 1)


def soft_vi_big(
    r: torch.Tensor,
    beta: float,
    vocab: int,
    horizon: int,
    *,
    logpi_ref=None,
    rho: torch.Tensor | None = None,
    row_leaves: int = 1 << 12,
    block_leaves: int = 1 << 22,
) -> BigSoftVI:
    """Soft VI summaries of π*_r for ``r`` ``(m, V^H)`` (module docstring).

    Args:
        r: leaf rewards on any device, float32 or float64; read once, never written.
        logpi_ref: None (uniform π_ref) or node tables ``[h]: (m, V^h, V)`` (log-probs).
        rho: ``(m,)`` prompt law (uniform if None).
        row_leaves: leaves per row subtree (≥ V). block_leaves: leaves per block.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    m, n = r.shape
    if n != vocab**horizon:
        raise ValueError(f"r has {n} leaves, expected vocab**horizon = {vocab**horizon}")
    j = _row_depth(vocab, horizon, row_leaves)
    width = vocab**j
    rows = r.reshape(m * n // width, width)
    n_rows = rows.shape[0]
    per_block = max(1, block_leaves // width)
    e_buf = torch.empty((per_block, width), dtype=r.dtype, device=r.device)
    log_e = torch.empty(n_rows, dtype=torch.float64, device=r.device)
    ratio = torch.empty(n_rows, dtype=torch.float64, device=r.device)
    inv_beta = 1.0 / beta
    for start in range(0, n_rows, per_block):
        blk = rows[start : start + per_block]
        b = blk.shape[0]
        e = e_buf[:b]
        s = blk.amax(dim=1, keepdim=True)
        torch.sub(blk, s, out=e)
        e.mul_(inv_beta).exp_()
        if logpi_ref is None:  # F = Σ e·r as a fused dot product (no second buffer)
            tot_e, tot_f = e.sum(dim=1), torch.linalg.vecdot(e, blk)
            shift = -j * math.log(vocab)
        else:
            tot_f = _reduce_levels(e * blk, logpi_ref, start, b, vocab, horizon, j)
            tot_e = _reduce_levels(e, logpi_ref, start, b, vocab, horizon, j)
            shift = 0.0
        tot_e64 = tot_e.double()
        log_e[start : start + b] = s[:, 0].double() * inv_beta + torch.log(tot_e64) + shift
        ratio[start : start + b] = tot_f.double() / tot_e64
    return _top(
        log_e.reshape(m, -1), ratio.reshape(m, -1), beta, vocab, horizon - j, logpi_ref, rho
    )


def _reduce_levels(x, logpi_ref, start, b, vocab, horizon, j):
    """Σ over a row's subtree of x(ξ) · P_ref(ξ | row root), level by level (x is consumed)."""
    roots = vocab ** (horizon - j)
    for h in range(horizon - 1, horizon - j - 1, -1):
        tab = logpi_ref[h]
        m = tab.shape[0]
        per_row = vocab ** (h - (horizon - j))
        t = tab.reshape(m * roots, per_row, vocab)[start : start + b]
        x = (x.reshape(b, per_row, vocab) * t.to(x.dtype).exp()).sum(dim=2)
    return x.reshape(b)


def _top(v, ratio, beta, vocab, depth, logpi_ref, rho):
    """Soft VI in float64 on the m·V^depth row roots; E_{π*}[r] carried down the same sums."""
    m = v.shape[0]
    values = [v]
    for h in range(depth - 1, -1, -1):
        q = v.reshape(m, -1, vocab)
        q = q - math.log(vocab) if logpi_ref is None else q + logpi_ref[h].to(torch.float64)
        v = torch.logsumexp(q, dim=2)
        ratio = (torch.softmax(q, dim=2) * ratio.reshape(m, -1, vocab)).sum(dim=2)
        values.append(v)
    log_z = v[:, 0]
    reward = ratio[:, 0]
    rho = torch.full((m,), 1.0 / m, dtype=torch.float64, device=v.device) if rho is None else rho
    j_star = float(beta * (rho.to(torch.float64) * log_z).sum())
    return BigSoftVI(log_z, reward, reward / beta - log_z, j_star, tuple(values[::-1]))


def policy_metrics(logpi, r, beta, log_z, *, logpi_ref=None, rho=None) -> dict[str, float]:
    """Exact J(π), E_π r, KL(π‖π_ref) and KL(π‖π*_r) of a node policy, level by level.

    Backward sums g_h(s) = Σ_a π(a|s) g_{h+1}(s·a) (g_H = r) and
    k_h(s) = Σ_a π(a|s) [log π(a|s) − log π_ref(a|s) + k_{h+1}(s·a)] (k_H = 0), in float64;
    then KL(π‖π*) = KL(π‖π_ref) − E_π r/β + log Z (π* ∝ π_ref e^{r/β}).

    Args:
        logpi: node log-probs ``[h]: (m, V^h, V)``; r: ``(m, V^H)``; log_z: ``(m,)`` from
        :func:`soft_vi_big`; logpi_ref: None (uniform) or node tables.
    """
    m = r.shape[0]
    g = r.to(torch.float64)
    k = torch.zeros_like(g)
    for h in range(len(logpi) - 1, -1, -1):
        lp = logpi[h].to(torch.float64)
        vocab = lp.shape[-1]
        ref = -math.log(vocab) if logpi_ref is None else logpi_ref[h].to(torch.float64)
        p = lp.exp()
        g = (p * g.reshape(m, -1, vocab)).sum(dim=2)
        k = (p * (lp - ref + k.reshape(m, -1, vocab))).sum(dim=2)
    rho = torch.full((m,), 1.0 / m, dtype=torch.float64, device=r.device) if rho is None else rho
    rho = rho.to(torch.float64)
    reward, kl_ref = g[:, 0], k[:, 0]
    kl_opt = kl_ref - reward / beta + log_z.to(torch.float64)
    return {
        "J": float((rho * (reward - beta * kl_ref)).sum()),
        "reward": float((rho * reward).sum()),
        "kl_ref": float((rho * kl_ref).sum()),
        "kl_opt": float((rho * kl_opt).sum()),
    }
