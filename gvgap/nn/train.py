"""Training of torch classes on the tree: exact-expectation and sampled-minibatch losses with
Adam (then optional full-batch L-BFGS polish), the shared λ protocol, and online RL.

Objectives are those of the numpy learners (``gvgap.learners``), term by term:

- preferences (DPO / IPO): weighted-mean loss on D + (λ/Σw) Ω(β(log P_θ − log P_ref));
- SFT: −mean log P_θ(ξ_i) + the same regulariser;
- reward model: BT NLL of r_w + (λ/Σw) Ω(r_w);
- exact RL: −J_r̂(θ) = β E_x KL(P_θ ‖ P*_r̂) − β E_x log Z_r̂, the reverse-KL projection of
  P*_r̂ on the class, computed on the whole tree;
- sampled RL: REINFORCE on J_r̂ with the RLOO (leave-one-out) or batch-mean baseline.

``batch_size=0`` uses every row with its weight (exact expectation); ``batch_size=b`` draws b
rows per step with probability ∝ weight (an unbiased estimate of the weighted mean) from a
``torch.Generator(seed)``. Every fit returns a :class:`gvgap.learners.result.Result` whose
``loss`` and ``grad_norm`` are of the full objective at the returned parameters, with the
steps taken in ``extra``; the trained module is ``extra["module"]`` (a copy: the input module
is never changed). λ selection: :func:`gvgap.learners.select_lambda` with these fits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np

from gvgap.data import Demos, Preferences
from gvgap.learners.result import Result
from gvgap.nn import losses as L
from gvgap.nn.device import import_torch

torch = import_torch()

#: Gradient-norm tolerance reported as ``converged`` (neural fits are not polished to 1e-9).
GTOL = 1e-5


def _tensors(module, *arrays, long=False):
    p = next(module.parameters())
    kind = torch.long if long else p.dtype
    return [torch.as_tensor(np.asarray(a), dtype=kind, device=p.device) for a in arrays]


def optimise(
    module,
    objective: Callable[[torch.Tensor | None], torch.Tensor],
    *,
    n_rows: int,
    weight: torch.Tensor | None = None,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 0,
    polish: int = 100,
    seed: int = 0,
    gtol: float = GTOL,
) -> dict:
    """Minimise ``objective(rows)`` over ``module``'s parameters.

    Adam for ``steps`` (cosine decay to lr/100), on all rows (``rows=None``) or on minibatches
    of row indices drawn ∝ ``weight``; then, in exact mode, up to ``polish`` full-batch
    L-BFGS iterations (strong Wolfe). Returns final full loss, gradient norm and step counts.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    opt = torch.optim.Adam(params, lr=lr)
    probs = None
    if batch_size and weight is not None:
        probs = (weight / weight.sum()).detach().cpu()
    for t in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / max(steps, 1))))
        rows = None
        if batch_size:
            rows = (
                torch.multinomial(probs, batch_size, replacement=True, generator=gen)
                if probs is not None
                else torch.randint(n_rows, (batch_size,), generator=gen)
            ).to(params[0].device)
        opt.zero_grad()
        objective(rows).backward()
        opt.step()
    n_polish = 0
    if polish and not batch_size:
        lbfgs = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=polish,
            line_search_fn="strong_wolfe",
            tolerance_grad=gtol * 1e-2,
            tolerance_change=0.0,
            history_size=30,
        )

        def closure():
            lbfgs.zero_grad()
            v = objective(None)
            v.backward()
            return v

        lbfgs.step(closure)
        n_polish = int(lbfgs.state[lbfgs._params[0]].get("n_iter", 0))
    module.zero_grad()
    value = objective(None)
    grads = torch.autograd.grad(value, params, allow_unused=True)
    gn = math.sqrt(sum(float((g**2).sum()) for g in grads if g is not None))
    return {
        "loss": float(value.detach()),
        "grad_norm": gn,
        "converged": gn <= gtol,
        "adam_steps": steps,
        "lbfgs_iters": n_polish,
    }


def _result(pipeline, module, logp, r_hat, info, lam, extra=None) -> Result:
    vec = torch.nn.utils.parameters_to_vector(module.parameters()).detach().cpu().numpy()
    ex = {
        "module": module,
        "steps": info["adam_steps"] + info["lbfgs_iters"],
        **info,
        **(extra or {}),
    }
    return Result(
        pipeline, logp, r_hat, vec, info["loss"], info["grad_norm"], info["converged"], lam, ex
    )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


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
    """Offline DPO / IPO over a torch policy class (as ``learners.preference_fit``).

    Args:
        policy: a torch policy (``gvgap.nn.policies``); copied, never changed.
        env: supplies π_ref (``logp_ref``), β and H. data: the pairs D.
        lam: λ of (λ/Σw) Ω(β(log P_θ − log P_ref)). loss: dpo, ipo or ipo_mean.
        **opt: :func:`optimise` options (steps, lr, batch_size, polish, seed, gtol).
    """
    if loss not in ("dpo", "ipo", "ipo_mean"):
        raise ValueError(f"loss must be dpo, ipo or ipo_mean, got {loss!r}")
    pol = copy.deepcopy(policy)
    beta = env.beta if beta is None else beta
    tau = beta if tau is None else tau
    ref, w = _tensors(pol, env.logp_ref, data.weight)
    p, c, r = _tensors(pol, data.prompt, data.chosen, data.rejected, long=True)
    w_total = float(data.weight.sum())
    length = env.horizon if loss == "ipo_mean" else 1.0

    def objective(rows):
        lp = pol.leaf_logp()
        pp, cc, rr, ww = (
            (p, c, r, w) if rows is None else (p[rows], c[rows], r[rows], torch.ones_like(w[rows]))
        )
        if loss == "dpo":
            v = L.dpo_loss(lp[pp, cc], lp[pp, rr], ref[pp, cc], ref[pp, rr], beta, ww)
        else:
            v = L.ipo_loss(lp[pp, cc], lp[pp, rr], ref[pp, cc], ref[pp, rr], tau, ww, length)
        if lam:
            v = v + lam / w_total * L.centred_sq(beta * (lp - ref))
        return v

    info = optimise(pol, objective, n_rows=len(data), weight=w, **opt)
    lp = _np(pol.leaf_logp())
    return _result(loss, pol, lp, beta * (lp - env.logp_ref), info, lam)


def sft(policy, env, demos: Demos, *, lam: float = 0.0, **opt) -> Result:
    """SFT / MLE: −mean log P_θ(ξ_i|x_i) + (λ/Σw) Ω(β(log P_θ − log P_ref))."""
    pol = copy.deepcopy(policy)
    ref, w = _tensors(pol, env.logp_ref, demos.weight)
    p, leaf = _tensors(pol, demos.prompt, demos.leaf, long=True)
    w_total = float(demos.weight.sum())

    def objective(rows):
        lp = pol.leaf_logp()
        pp, ll, ww = (
            (p, leaf, w) if rows is None else (p[rows], leaf[rows], torch.ones_like(w[rows]))
        )
        v = L.sft_nll(lp[pp, ll], ww)
        return v + lam / w_total * L.centred_sq(env.beta * (lp - ref)) if lam else v

    info = optimise(pol, objective, n_rows=len(demos), weight=w, **opt)
    lp = _np(pol.leaf_logp())
    return _result("sft", pol, lp, env.beta * (lp - env.logp_ref), info, lam)


def fit_reward(rm, data: Preferences, *, lam: float = 0.0, **opt) -> Result:
    """Bradley–Terry MLE over a torch reward class: BT NLL + (λ/Σw) Ω(r_w)."""
    mod = copy.deepcopy(rm)
    (w,) = _tensors(mod, data.weight)
    p, c, r = _tensors(mod, data.prompt, data.chosen, data.rejected, long=True)
    w_total = float(data.weight.sum())

    def objective(rows):
        rew = mod.leaf_reward()
        pp, cc, rr, ww = (
            (p, c, r, w) if rows is None else (p[rows], c[rows], r[rows], torch.ones_like(w[rows]))
        )
        v = L.bt_nll(rew[pp, cc] - rew[pp, rr], ww)
        return v + lam / w_total * L.centred_sq(rew) if lam else v

    info = optimise(mod, objective, n_rows=len(data), weight=w, **opt)
    return _result("rm", mod, None, _np(mod.leaf_reward()), info, lam)


def rl_exact(policy, env, r_hat: np.ndarray, **opt) -> Result:
    """Exact online RL: minimise −J_r̂(θ) = β E KL(P_θ‖P*_r̂) − β E log Z on the whole tree
    (the reverse-KL projection of P*_r̂ on the class). ``extra["kl_proj"]`` = E_x KL(P_θ‖P*_r̂)."""
    from gvgap import theory as T

    pol = copy.deepcopy(policy)
    ref, r, rho = _tensors(pol, env.logp_ref, r_hat, env.rho)

    def objective(rows):
        return L.reverse_kl_objective(pol.leaf_logp(), r, ref, env.beta, rho)

    info = optimise(pol, objective, n_rows=1, **{**opt, "batch_size": 0})
    lp = _np(pol.leaf_logp())
    target = T.soft_optimal_leaf_logp(env.logp_ref, r_hat, env.beta)
    return _result("rl", pol, lp, r_hat, info, 0.0, {"kl_proj": T.kl(lp, target, env.rho)})


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
    ref, r, rho = _tensors(pol, env.logp_ref, r_hat, env.rho)
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
    value = L.reverse_kl_objective(pol.leaf_logp(), r, ref, env.beta, rho)
    grads = torch.autograd.grad(value, params, allow_unused=True)
    gn = math.sqrt(sum(float((g**2).sum()) for g in grads if g is not None))
    info = {
        "loss": float(value.detach()),
        "grad_norm": gn,
        "converged": gn <= GTOL,
        "adam_steps": steps,
        "lbfgs_iters": 0,
    }
    return _result("rl_sampled", pol, _np(pol.leaf_logp()), r_hat, info, 0.0)


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
