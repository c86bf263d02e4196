"""Torch twins of :mod:`gvgap.losses` (same equations, same weighted-mean convention), and the
losses of the LLM path (:mod:`gvgap.llm.stages`): one loss module for every torch learner.

Each weighted loss returns a scalar tensor; gradients come from autograd. ``weight`` ``(n,)``
weights rows and every loss is Σ w ℓ / Σ w (docs/design.md §3). The ``*_rows`` functions return the
per-row losses ``(n,)`` the weighted ones average (the LLM loop sums rows across ranks).
"""

from __future__ import annotations

from gvgap.nn.device import import_torch

torch = import_torch()
F = torch.nn.functional


def _wmean(loss: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight * loss).sum() / weight.sum()


def bt_rows(margin: torch.Tensor) -> torch.Tensor:
    """Per-row Bradley–Terry NLL ℓ_i = −log σ(Δ_i), Δ = r(ξ⁺) − r(ξ⁻), ``(n,)``."""
    return -F.logsigmoid(margin)


def bt_nll(margin: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ℓ = −Σ w log σ(Δ) / Σ w for margins Δ = r(ξ⁺) − r(ξ⁻)."""
    return _wmean(bt_rows(margin), weight)


def dpo_rows(lp_c, lp_r, ref_c, ref_r, beta: float) -> torch.Tensor:
    """Per-row DPO loss −log σ(β[(log π(ξ⁺) − log π_ref(ξ⁺)) − (log π(ξ⁻) − log π_ref(ξ⁻))])
    (Rafailov et al. 2023, eq. 7; summed log-ratios), ``(n,)``."""
    return bt_rows(beta * ((lp_c - ref_c) - (lp_r - ref_r)))


def dpo_loss(lp_c, lp_r, ref_c, ref_r, beta: float, weight) -> torch.Tensor:
    """DPO: −log σ(β[(log π(ξ⁺) − log π_ref(ξ⁺)) − (log π(ξ⁻) − log π_ref(ξ⁻))])."""
    return _wmean(dpo_rows(lp_c, lp_r, ref_c, ref_r, beta), weight)


def local_rm_rows(lp_c, lp_r, beta: float) -> torch.Tensor:
    """Per-row reference-free DPO (the local RM r_π = β log π, docs/theory.md §2):
    −log σ(β (log π(ξ⁺) − log π(ξ⁻))), ``(n,)``."""
    return bt_rows(beta * (lp_c - lp_r))


def sft_rows(lp_demo: torch.Tensor, length: float = 1.0) -> torch.Tensor:
    """Per-row SFT loss −log π(ξ_i) / length (``length`` H: the per-token NLL), ``(n,)``."""
    return -lp_demo / length


def ipo_loss(lp_c, lp_r, ref_c, ref_r, tau: float, weight, length: float = 1.0) -> torch.Tensor:
    """IPO: (h − 1/(2τ))², h the (length-normalised) difference of log-ratios."""
    h = ((lp_c - ref_c) - (lp_r - ref_r)) / length
    return _wmean((h - 1.0 / (2.0 * tau)) ** 2, weight)


def sft_nll(lp_demo: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SFT: −Σ w log π(ξ_i) / Σ w."""
    return _wmean(sft_rows(lp_demo), weight)


def centred_sq(r: torch.Tensor) -> torch.Tensor:
    """Ω(r) = (1/2m) Σ_x Σ_ξ (r(x,ξ) − mean_ξ' r(x,ξ'))²."""
    c = r - r.mean(dim=1, keepdim=True)
    return 0.5 * (c**2).sum() / r.shape[0]


def reverse_kl_objective(logp, r, logp_ref, beta: float, rho) -> torch.Tensor:
    """−J_r(π) = Σ_x ρ Σ_ξ P (β(log P − log P_ref) − r) = β E KL(P‖P*_r) − β E log Z_r."""
    return (rho * (logp.exp() * (beta * (logp - logp_ref) - r)).sum(dim=1)).sum()


# ---------------------------------------------------------------- per model of a stack
# The stacked neural classes (gvgap.nn.base) fit B models at once: the same equations with
# one value per model, on the padded flat leaf space ``(B, L)`` (gvgap.nn.layout). Padding
# entries carry weight 0 and never reach a transcendental function's result.


def bt_nll_rows(margin: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(B,)``: −Σ_i w_i log σ(Δ_i) / Σ_i w_i per row of margins ``(B, n)``."""
    return (weight * -F.logsigmoid(margin)).sum(dim=1) / weight.sum(dim=1)


def centred_sq_rows(r: torch.Tensor, n_prompts: int, n_leaves: int) -> torch.Tensor:
    """``(B,)``: Ω(r) = (1/2m) Σ_x Σ_ξ (r(x,ξ) − mean_ξ' r(x,ξ'))² of flat rows ``(B, L)``."""
    v = r[:, : n_prompts * n_leaves].reshape(r.shape[0], n_prompts, n_leaves)
    c = v - v.mean(dim=2, keepdim=True)
    return 0.5 * (c * c).sum(dim=(1, 2)) / n_prompts


def reverse_kl_rows(logp, r, logp_ref, beta: float, rho_leaf) -> torch.Tensor:
    """``(B,)``: −J_r(π) = Σ_x ρ Σ_ξ P (β(log P − log P_ref) − r) per flat row ``(B, L)``
    (``rho_leaf``: ρ_x at each leaf of prompt x, 0 on padding)."""
    return (rho_leaf * logp.exp() * (beta * (logp - logp_ref) - r)).sum(dim=1)


def weighted_centred_sq_rows(d, q, n_prompts: int, n_leaves: int) -> torch.Tensor:
    """``(B,)``: Σ_x ρ_x Var_{P(·|x)}(d) = Σ_x Σ_ξ q (d − μ_x)², μ_x = Σ_ξ q d / Σ_ξ q, for
    q = ρ_x P(ξ|x) (flat rows ``(B, L)``): the q-weighted squared error of d up to one
    constant per prompt (the constant that minimises it)."""
    shape = (d.shape[0], n_prompts, n_leaves)
    dv = d[:, : n_prompts * n_leaves].reshape(shape)
    qv = q[:, : n_prompts * n_leaves].reshape(shape)
    mu = (qv * dv).sum(dim=2, keepdim=True) / qv.sum(dim=2, keepdim=True)
    c = dv - mu
    return (qv * c * c).sum(dim=(1, 2))
