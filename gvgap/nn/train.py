"""Training of torch classes on the tree: exact-expectation and sampled-minibatch losses,
optimised by :func:`gvgap.nn.optim.minimise` (Adam, then an L-BFGS polish), for one model or
a stack of B models fitted at once (each with its own data, λ, π_ref and reward).

Objectives are those of the numpy learners (``gvgap.learners``), term by term:

- preferences (DPO / IPO): weighted-mean loss on D + (λ/Σw) Ω(β(log P_θ − log P_ref));
- SFT: −mean log P_θ(ξ_i) + the same regulariser;
- reward model: BT NLL of r_w + (λ/Σw) Ω(r_w);
- exact RL: −J_r̂(θ) = β E_x KL(P_θ ‖ P*_r̂) − β E_x log Z_r̂, the reverse-KL projection of
  P*_r̂ on the class, computed on the whole tree;
- sampled RL: REINFORCE on J_r̂ with the RLOO (leave-one-out) or batch-mean baseline.

``batch_size=0`` uses every row with its weight (exact expectation); ``batch_size=b`` draws b
rows per Adam step with probability ∝ weight from a ``torch.Generator(seed)`` (one model
only). The batched fits (``fit_*``) return a :class:`Fit`; the one-model wrappers
(``preference_fit``, ``fit_reward``, ``rl_exact``, ``sft``) return a
:class:`gvgap.learners.result.Result` whose ``loss`` and ``grad_norm`` are of the full
objective at the returned parameters, with the steps taken in ``extra`` and the trained
module in ``extra["module"]`` (a copy: an input module is never changed). λ selection:
:func:`gvgap.learners.select_lambda` (one model) or ``select_lambda_many`` (a stack).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gvgap.data import Demos, Preferences
from gvgap.learners.result import Result
from gvgap.nn import losses as losses
from gvgap.nn.device import import_torch
from gvgap.nn.layout import LeafSpace, pad
from gvgap.nn.optim import OptInfo, minimise

torch = import_torch()

#: Gradient-norm tolerance reported as ``converged`` (neural fits are not polished to 1e-9).
GTOL = 1e-5
#: Optimiser options every fit accepts.
OPT_KEYS = ("steps", "lr", "polish", "gtol", "batch_size", "seed", "max_bytes")


@dataclass(frozen=True)
class Fit:
    """B fitted models: ``out`` ``(B, m, N)`` (leaf log-probs or rewards), the optimiser's
    per-model outcome, the λ of each model and the trained (stacked) module."""

    out: np.ndarray
    info: OptInfo
    lam: np.ndarray
    module: object

    def result(self, b: int, pipeline: str, *, logp=None, r_hat=None, extra=None) -> Result:
        """Model b as a :class:`Result`."""
        x = _flat_params(self.module)
        ex = {
            "steps": int(self.info.adam_steps + self.info.lbfgs_iters[b]),
            "adam_steps": self.info.adam_steps,
            "lbfgs_iters": int(self.info.lbfgs_iters[b]),
            "stalled": bool(self.info.stalled[b]),
            **(extra or {}),
        }
        return Result(
            pipeline,
            logp,
            r_hat,
            x[b] if x.ndim == 2 else x,
            float(self.info.loss[b]),
            float(self.info.grad_norm[b]),
            bool(self.info.converged[b]),
            float(self.lam[b]),
            ex,
        )


def _flat_params(module) -> np.ndarray:
    ps = [p for p in module.parameters() if p.requires_grad]
    if getattr(module, "stacked", False):
        b = ps[0].shape[0]
        return torch.cat([p.detach().reshape(b, -1) for p in ps], 1).cpu().numpy()
    return torch.nn.utils.parameters_to_vector(ps).detach().cpu().numpy()


def _space(module, shape) -> LeafSpace:
    if hasattr(module, "leaf_space"):
        return module.leaf_space
    return LeafSpace.of(shape[-2], shape[-1], padded=False)


def _rows(module, space: LeafSpace, arrays, n_models: int) -> torch.Tensor:
    """``(B or 1, L)`` tensor on the module's device from one ``(m, N)`` array (shared) or B."""
    p = next(module.parameters())
    arr = np.asarray(arrays, dtype=np.float64)
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.shape[0] not in (1, n_models):
        raise ValueError(f"need 1 or {n_models} arrays, got {arr.shape[0]}")
    return torch.as_tensor(space.pack(list(arr)), dtype=p.dtype, device=p.device)


def _n_models(module) -> int:
    return module.n_models if getattr(module, "stacked", False) else 1


def _per_model(x, n_models: int, name: str) -> list:
    items = list(x) if isinstance(x, (list, tuple)) else [x] * n_models
    if len(items) != n_models:
        raise ValueError(f"need {n_models} values of {name}, got {len(items)}")
    return items


@dataclass(frozen=True)
class PairBatch:
    """B preference datasets on the flat leaf space, padded to :data:`layout.PAD` pairs:
    ``chosen``/``rejected`` ``(B, n)`` flat positions, ``weight`` ``(B, n)`` (0 on
    padding), ``total`` ``(B,)`` = Σ w, and the unpadded arrays for minibatches."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    weight: torch.Tensor
    total: torch.Tensor

    @classmethod
    def of(cls, datas: Sequence[Preferences], space: LeafSpace, like: torch.Tensor) -> PairBatch:
        """Pack B datasets (padded pairs point at leaf 0 with weight 0)."""
        n = pad(max(len(d) for d in datas))
        c = np.zeros((len(datas), n), np.int64)
        r, w = np.zeros_like(c), np.zeros((len(datas), n))
        for b, d in enumerate(datas):
            k = len(d)
            c[b, :k] = space.flat_index(d.prompt, d.chosen)
            r[b, :k] = space.flat_index(d.prompt, d.rejected)
            w[b, :k] = d.weight
        dev = like.device
        wt = torch.as_tensor(w, dtype=like.dtype, device=dev)
        return cls(torch.as_tensor(c, device=dev), torch.as_tensor(r, device=dev), wt, wt.sum(1))

    def margins(self, u: torch.Tensor, rows=None):
        """u(ξ⁺) − u(ξ⁻) per pair ``(B, n)`` and the weights (unit weights on ``rows``)."""
        c, r, w = self.chosen, self.rejected, self.weight
        if rows is not None:
            c, r, w = c[:, rows], r[:, rows], torch.ones_like(w[:, rows])
        return u.gather(1, c) - u.gather(1, r), w


def _opt(module, opt: dict, weight: torch.Tensor | None = None) -> dict:
    """The :func:`minimise` options from a fit's ``**opt`` (minibatch sampler included)."""
    unknown = set(opt) - set(OPT_KEYS)
    if unknown:
        raise TypeError(f"unknown optimiser options {sorted(unknown)}")
    batch = int(opt.get("batch_size", 0))
    out = {k: opt[k] for k in ("steps", "lr", "polish", "gtol") if k in opt}
    out.setdefault("gtol", GTOL)
    if batch:
        if weight is None or (getattr(module, "stacked", False) and module.n_models > 1):
            raise ValueError("batch_size > 0 needs one model and weighted rows")
        gen = torch.Generator(device="cpu").manual_seed(int(opt.get("seed", 0)))
        probs = (weight[0] / weight[0].sum()).detach().cpu()
        dev = weight.device
        out["minibatch"] = lambda t: torch.multinomial(
            probs, batch, replacement=True, generator=gen
        ).to(dev)
        out["polish"] = 0
    if hasattr(module, "chunks"):
        out["chunks"] = module.chunks(opt.get("max_bytes", 1 << 30))
    return out


def optimise(module, loss, opt: dict, weight=None) -> OptInfo:
    """:func:`gvgap.nn.optim.minimise` of ``loss(out, rows) -> (B,)`` with a fit's options."""
    return minimise(
        module, loss, stacked=getattr(module, "stacked", False), **_opt(module, opt, weight)
    )


def outputs(module, space: LeafSpace) -> np.ndarray:
    """The module's leaf outputs ``(B, m, N)`` in float64 (no graph)."""
    from gvgap.nn.optim import module_outputs

    with torch.no_grad():
        flat = module_outputs(module).detach().cpu().numpy().astype(np.float64)
    return space.unpack(flat)


def fit_preferences(
    policy,
    logp_ref,
    datas,
    *,
    lam=0.0,
    beta: float,
    loss: str = "dpo",
    tau: float | None = None,
    horizon: int | None = None,
    **opt,
) -> Fit:
    """Offline DPO / IPO of every model of ``policy`` (copied, never changed).

    Args:
        logp_ref: ``(m, N)`` or ``(B, m, N)`` log P_ref. datas: one Preferences or B.
        lam: λ of (λ/Σw) Ω(β(log P_θ − log P_ref)), one value or B.
        loss: ``dpo``, ``ipo`` or ``ipo_mean`` (τ defaults to β; ``ipo_mean`` divides the
            log-ratio difference by ``horizon``).
        **opt: :data:`OPT_KEYS`.
    """
    if loss not in ("dpo", "ipo", "ipo_mean"):
        raise ValueError(f"loss must be dpo, ipo or ipo_mean, got {loss!r}")
    pol = copy.deepcopy(policy)
    b = _n_models(pol)
    space = _space(pol, np.shape(logp_ref))
    ref = _rows(pol, space, logp_ref, b)
    pairs = PairBatch.of(_per_model(datas, b, "datas"), space, ref)
    lams = torch.as_tensor(_per_model(lam, b, "lam"), dtype=ref.dtype, device=ref.device)
    tau = beta if tau is None else tau
    length = float(horizon) if loss == "ipo_mean" else 1.0
    m, n = space.n_prompts, space.n_leaves

    def objective(lp, rows):
        u = lp - ref
        d, w = pairs.margins(u, rows)
        if loss == "dpo":
            v = losses.bt_nll_rows(beta * d, w)
        else:
            v = (w * (d / length - 1.0 / (2.0 * tau)) ** 2).sum(1) / w.sum(1)
        return v + lams / pairs.total * losses.centred_sq_rows(beta * u, m, n)

    info = optimise(pol, objective, opt, pairs.weight)
    return Fit(outputs(pol, space), info, lams.cpu().numpy(), pol)


def fit_rewards(rm, datas, *, lam=0.0, **opt) -> Fit:
    """Bradley–Terry MLE of every model of ``rm``: BT NLL + (λ/Σw) Ω(r_w)."""
    mod = copy.deepcopy(rm)
    b = _n_models(mod)
    p0 = next(mod.parameters())
    with torch.no_grad():
        probe = mod.leaf_reward()
    space = _space(mod, probe.shape)
    pairs = PairBatch.of(_per_model(datas, b, "datas"), space, p0)
    lams = torch.as_tensor(_per_model(lam, b, "lam"), dtype=p0.dtype, device=p0.device)
    m, n = space.n_prompts, space.n_leaves

    def objective(rew, rows):
        d, w = pairs.margins(rew, rows)
        return losses.bt_nll_rows(d, w) + lams / pairs.total * losses.centred_sq_rows(rew, m, n)

    info = optimise(mod, objective, opt, pairs.weight)
    return Fit(outputs(mod, space), info, lams.cpu().numpy(), mod)


def fit_rl(policy, logp_ref, r_hat, *, beta: float, rho, **opt) -> Fit:
    """Exact RL of every model: minimise −J_r̂(θ) on the whole tree (the reverse-KL
    projection of P*_r̂ on the class). ``r_hat``, ``logp_ref``: ``(m, N)`` or ``(B, m, N)``;
    ``rho``: ``(m,)`` or ``(B, m)``."""
    pol = copy.deepcopy(policy)
    b = _n_models(pol)
    space = _space(pol, np.shape(logp_ref))
    ref = _rows(pol, space, logp_ref, b)
    r = _rows(pol, space, r_hat, b)
    rhos = np.asarray(rho, np.float64)
    rho_leaf = torch.as_tensor(
        space.rho_leaf(rhos[None] if rhos.ndim == 1 else rhos), dtype=ref.dtype, device=ref.device
    )

    def objective(lp, rows):
        return losses.reverse_kl_rows(lp, r, ref, beta, rho_leaf)

    info = optimise(pol, objective, {**opt, "batch_size": 0})
    return Fit(outputs(pol, space), info, np.zeros(b), pol)


def fit_sft(policy, logp_ref, demos, *, lam=0.0, beta: float, **opt) -> Fit:
    """SFT / MLE of every model: −mean log P_θ(ξ_i|x_i) + (λ/Σw) Ω(β(log P_θ − log P_ref))."""
    pol = copy.deepcopy(policy)
    b = _n_models(pol)
    space = _space(pol, np.shape(logp_ref))
    ref = _rows(pol, space, logp_ref, b)
    dl = _per_model(demos, b, "demos")
    k = pad(max(len(d) for d in dl))
    idx, w = np.zeros((b, k), np.int64), np.zeros((b, k))
    for i, d in enumerate(dl):
        idx[i, : len(d)] = space.flat_index(d.prompt, d.leaf)
        w[i, : len(d)] = d.weight
    idx_t = torch.as_tensor(idx, device=ref.device)
    w_t = torch.as_tensor(w, dtype=ref.dtype, device=ref.device)
    lams = torch.as_tensor(_per_model(lam, b, "lam"), dtype=ref.dtype, device=ref.device)
    m, n = space.n_prompts, space.n_leaves

    def objective(lp, rows):
        ii, ww = (idx_t, w_t) if rows is None else (idx_t[:, rows], torch.ones_like(w_t[:, rows]))
        v = -(ww * lp.gather(1, ii)).sum(1) / ww.sum(1)
        return v + lams / w_t.sum(1) * losses.centred_sq_rows(beta * (lp - ref), m, n)

    info = optimise(pol, objective, opt, w_t)
    return Fit(outputs(pol, space), info, lams.cpu().numpy(), pol)


# ---------------------------------------------------------------- one-model wrappers


def _one(fit: Fit, pipeline: str, *, logp=None, r_hat=None, extra=None) -> Result:
    return fit.result(
        0, pipeline, logp=logp, r_hat=r_hat, extra={"module": fit.module, **(extra or {})}
    )


def preference_fit(
    policy,
    env,
    data: Preferences,
    *,
    lam: float = 0.0,
    loss: str = "dpo",
    beta: float | None = None,
    tau: float | None = None,
    **opt,
) -> Result:
    """Offline DPO / IPO of one torch policy (as ``learners.preference_fit``)."""
    beta = env.beta if beta is None else beta
    fit = fit_preferences(
        policy,
        env.logp_ref,
        [data],
        lam=lam,
        beta=beta,
        loss=loss,
        tau=tau,
        horizon=env.horizon,
        **opt,
    )
    lp = fit.out[0]
    return _one(fit, loss, logp=lp, r_hat=beta * (lp - env.logp_ref))


def sft(policy, env, demos: Demos, *, lam: float = 0.0, **opt) -> Result:
    """SFT / MLE of one torch policy."""
    fit = fit_sft(policy, env.logp_ref, [demos], lam=lam, beta=env.beta, **opt)
    lp = fit.out[0]
    return _one(fit, "sft", logp=lp, r_hat=env.beta * (lp - env.logp_ref))


def fit_reward(rm, data: Preferences, *, lam: float = 0.0, **opt) -> Result:
    """Bradley–Terry MLE of one torch reward class: BT NLL + (λ/Σw) Ω(r_w)."""
    fit = fit_rewards(rm, [data], lam=lam, **opt)
    return _one(fit, "rm", r_hat=fit.out[0])


def rl_exact(policy, env, r_hat: np.ndarray, **opt) -> Result:
    """Exact online RL of one torch policy on r̂; ``extra["kl_proj"]`` = E_x KL(P_θ‖P*_r̂)."""
    from gvgap import theory as theory

    fit = fit_rl(policy, env.logp_ref, r_hat, beta=env.beta, rho=env.rho, **opt)
    lp = fit.out[0]
    target = theory.soft_optimal_leaf_logp(env.logp_ref, r_hat, env.beta)
    return _one(fit, "rl", logp=lp, r_hat=r_hat, extra={"kl_proj": theory.kl(lp, target, env.rho)})


def rl_sampled(
    policy,
    env,
    r_hat: np.ndarray,
    *,
    n_samples: int = 4,
    prompts_per_step: int = 16,
    steps: int = 300,
    lr: float = 1e-2,
    baseline: str = "rloo",
    seed: int = 0,
) -> Result:
    """Sampled policy gradient on J_r̂(θ) = E_θ[r̂ − β log P_θ/P_ref] (KL in the reward).

    Per step: x ~ ρ (``prompts_per_step``), ``n_samples`` completions ξ ~ P_θ(·|x) each, the
    per-sample return R = r̂ − β(log P_θ − log P_ref) (detached), advantage R − b with b the
    leave-one-out mean (``rloo``), the group mean (``mean``) or 0 (``none``); loss
    −mean(A · log P_θ(ξ)). Reported ``loss`` and ``grad_norm`` are of the exact −J_r̂.
    """
    if baseline not in ("rloo", "mean", "none"):
        raise ValueError(f"baseline must be rloo, mean or none, got {baseline!r}")
    if n_samples < 2 and baseline != "none":
        raise ValueError("a baseline needs n_samples >= 2")
    pol = copy.deepcopy(policy)
    p0 = next(pol.parameters())
    ref, r, rho = (
        torch.as_tensor(np.asarray(a), dtype=p0.dtype, device=p0.device)
        for a in (env.logp_ref, r_hat, env.rho)
    )
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    params = list(pol.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    k = n_samples
    for _ in range(steps):
        lp = pol.leaf_logp()
        x = torch.multinomial(rho.cpu(), prompts_per_step, replacement=True, generator=gen)
        probs = lp.detach()[x.to(lp.device)].exp().cpu()
        xi = torch.multinomial(probs, k, replacement=True, generator=gen).to(lp.device)
        x = x.to(lp.device)[:, None].expand(-1, k)
        lps = lp[x, xi]
        ret = (r[x, xi] - env.beta * (lps - ref[x, xi])).detach()
        if baseline == "rloo":
            adv = ret - (ret.sum(1, keepdim=True) - ret) / (k - 1)
        elif baseline == "mean":
            adv = ret - ret.mean(1, keepdim=True)
        else:
            adv = ret
        opt.zero_grad()
        (-(adv * lps).mean()).backward()
        opt.step()
    value = losses.reverse_kl_objective(pol.leaf_logp(), r, ref, env.beta, rho)
    grads = torch.autograd.grad(value, params, allow_unused=True)
    gn = math.sqrt(sum(float((g**2).sum()) for g in grads if g is not None))
    lp = pol.leaf_logp().detach().cpu().numpy().astype(np.float64)
    vec = torch.nn.utils.parameters_to_vector(params).detach().cpu().numpy()
    ex = {"module": pol, "steps": steps, "adam_steps": steps, "lbfgs_iters": 0}
    return Result("rl_sampled", lp, r_hat, vec, float(value.detach()), gn, gn <= GTOL, 0.0, ex)


def rlhf(
    rm,
    policy,
    env,
    data: Preferences,
    *,
    lam: float = 0.0,
    rm_opt: dict | None = None,
    rl_opt: dict | None = None,
) -> Result:
    """Two stages: BT-MLE of the torch RM on D, then exact RL of the torch policy on r̂."""
    fit = fit_reward(rm, data, lam=lam, **(rm_opt or {}))
    rl = rl_exact(policy, env, fit.r_hat, **(rl_opt or {}))
    return Result.two_stage(fit, rl, lam, steps=fit.extra["steps"] + rl.extra["steps"])
