"""Loss functions, one per equation, each returning ``(value, gradients)`` in numpy.

Conventions (docs/design.md §3): ``*_chosen`` / ``*_rejected`` are per-pair arrays ``(n,)``;
``weight`` ``(n,)`` weights rows (a sampled pair has weight 1, soft labels and exact
expectations use fractional weights) and every loss is the weighted *mean* Σ w ℓ / Σ w.
Gradients are with respect to the per-pair inputs, same order as the arguments.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_expit


def _wmean(loss: np.ndarray, weight: np.ndarray) -> tuple[float, np.ndarray]:
    """Σ w ℓ / Σ w and the normalised weights w / Σ w."""
    wn = weight / weight.sum()
    return float(wn @ loss), wn


def bt_rows(margin: np.ndarray) -> np.ndarray:
    """Per-pair Bradley–Terry NLL ℓ_i = −log σ(Δ_i) = softplus(−Δ_i), Δ = r(ξ⁺) − r(ξ⁻),
    ``(n,)`` (−``bt_rows`` is the per-pair BT log-likelihood log σ(Δ))."""
    return -log_expit(margin)


def bt_nll(margin: np.ndarray, weight: np.ndarray) -> tuple[float, np.ndarray]:
    """Bradley–Terry negative log-likelihood of margins Δ = r(ξ⁺) − r(ξ⁻).

    ℓ = −Σ w log σ(Δ) / Σ w;  ∂ℓ/∂Δ = −w σ(−Δ) / Σ w.
    """
    value, grad, _ = bt_nll_terms(margin, weight / weight.sum())
    return value, grad


def bt_nll_terms(margin: np.ndarray, wn: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The Bradley–Terry NLL with its first two derivatives in Δ, for normalised weights
    ŵ ``(n,)`` (Σ ŵ = 1), as the Newton solvers use them:

    f = Σ ŵ softplus(−Δ),  a = ∂f/∂Δ = −ŵ σ(−Δ),  c = ∂²f/∂Δ² = ŵ σ(Δ) σ(−Δ)  (each ``(n,)``).
    """
    s_neg = expit(-margin)
    return float(wn @ bt_rows(margin)), -wn * s_neg, wn * s_neg * (1.0 - s_neg)


def dpo_loss(
    logp_chosen: np.ndarray,
    logp_rejected: np.ndarray,
    logp_ref_chosen: np.ndarray,
    logp_ref_rejected: np.ndarray,
    beta: float,
    weight: np.ndarray,
) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """DPO (Rafailov et al. 2023, eq. 7; sigmoid loss on *summed* log-ratios):

    ℓ = −log σ(β[(log π(ξ⁺) − log π_ref(ξ⁺)) − (log π(ξ⁻) − log π_ref(ξ⁻))]),
    i.e. :func:`bt_nll` of the implicit rewards r_π = β log π/π_ref.

    Returns:
        value, (∂/∂ logp_chosen, ∂/∂ logp_rejected).
    """
    margin = beta * ((logp_chosen - logp_ref_chosen) - (logp_rejected - logp_ref_rejected))
    value, d = bt_nll(margin, weight)
    return value, (beta * d, -beta * d)


def ipo_loss(
    logp_chosen: np.ndarray,
    logp_rejected: np.ndarray,
    logp_ref_chosen: np.ndarray,
    logp_ref_rejected: np.ndarray,
    tau: float,
    weight: np.ndarray,
    length: float = 1.0,
) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """IPO (Azar et al. 2024, eq. 17): ℓ = (h − 1/(2τ))² with
    h = [(log π(ξ⁺) − log π_ref(ξ⁺)) − (log π(ξ⁻) − log π_ref(ξ⁻))] / length.

    ``length=1`` is ``ipo`` (summed log-ratios, as in the paper); ``length=H`` is ``ipo_mean``
    (token-mean log-ratios, as TRL's ``loss_type="ipo"`` averages log-probs over tokens).
    """
    h = ((logp_chosen - logp_ref_chosen) - (logp_rejected - logp_ref_rejected)) / length
    resid = h - 1.0 / (2.0 * tau)
    value, wn = _wmean(resid**2, weight)
    d = 2.0 * wn * resid / length
    return value, (d, -d)


def sft_nll(logp_demo: np.ndarray, weight: np.ndarray) -> tuple[float, np.ndarray]:
    """Maximum-likelihood (SFT) loss ℓ = −Σ w log π(ξ_i) / Σ w; gradient −w/Σw."""
    value, wn = _wmean(-logp_demo, weight)
    return value, -wn


def centred_sq(r: np.ndarray) -> tuple[float, np.ndarray]:
    """Regulariser in reward coordinates: Ω(r) = (1/2m) Σ_x Σ_ξ (r(x,ξ) − mean_ξ' r(x,ξ'))².

    Summed over completions (so λ is a per-completion prior strength, comparable across tree
    sizes relative to the per-pair data term) and averaged over the m prompts. Invariant to
    per-prompt constants, so Ω(r_π) is the same whether r is a global reward or a policy's
    implicit reward (which differs from it by −β log Z(x)). ∇Ω = (r − r̄)/m.
    """
    c = r - r.mean(axis=1, keepdims=True)
    m = r.shape[0]
    return 0.5 * float((c**2).sum()) / m, c / m


def reverse_kl_objective(
    logp: np.ndarray, r: np.ndarray, logp_ref: np.ndarray, beta: float, rho: np.ndarray
) -> tuple[float, np.ndarray]:
    """−J_r(π) = Σ_x ρ Σ_ξ P (β(log P − log P_ref) − r) = β E KL(P‖P*_r) − β E log Z_r.

    Gradient w.r.t. log P (before the normalisation constraint, which the policy class
    handles): ρ P (β(log P − log P_ref) − r + β).
    """
    p = np.exp(logp)
    a = beta * (logp - logp_ref) - r
    value = float(rho @ (p * a).sum(axis=1))
    return value, rho[:, None] * p * (a + beta)
