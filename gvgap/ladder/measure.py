"""The ladder measured on one instance: containment, residuals, dimensions, the regret
constants C of the rungs that hold their target and the bias floors of those that do not.

Built once per instance (:class:`Ladder`); every quantity that depends only on the instance
and the pair law μ = π_ref ⊗ π_ref of D — not on n, the seed or the fitted model — is cached
on it, so a sweep pays for it once per instance, not per (n, seed, protocol).

Policy rungs: markovJ, J = 0 … H − 1 (:mod:`gvgap.ladder.contain`: exact containment, certified
residual bounds). Reward rungs: window<J>, J = 0 … H − 1 (:mod:`gvgap.theory.spans`: exact
ANOVA residuals), ``oracle`` (the generating features, when the family has them) and
``dictionary`` (K candidates, when given), shared across prompts when r* is (``shared``).

Constants (:mod:`gvgap.theory.asymptotics`): C(rung) = tr(Σ_* I⁻¹)/(2β) in the rung's tangent
basis at the truth (:mod:`gvgap.ladder.bases`); the tabular rungs by the Laplacian closed
form. They are computed where their cost is bounded (:data:`DIM_MAX`) and NaN beyond, with the
reason in :attr:`Ladder.skipped`. Bias
(misspecified rung): the regret of the large-n limit of its BT fit, computed where the
O(N²) population pair sums are bounded (:data:`BIAS_MAX_LEAVES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from gvgap.envs.tree_env import TreeEnv
from gvgap.ladder import bases
from gvgap.ladder.contain import centred_tilts, containment_tol, policy_bound, tilt_spread
from gvgap.ladder.rungs import policy_dim, rung_name, window_name
from gvgap.policies.markov import MarkovPolicy
from gvgap.theory import asymptotics, kl, node_to_leaf_logp, soft_value_iteration, spans

#: Largest tangent dimension of a linear rung whose constant is computed (d³ work, d² memory).
DIM_MAX = 2048
#: Largest leaves per prompt for the bias floors (O(N²) pair sums per iteration).
BIAS_MAX_LEAVES = 1024
#: A policy rung is "near" π* (the former, tolerance-based notion, reported beside the exact
#: one) when its residual bound is at most this (nats).
NEAR_TOL = 1e-6
#: Residual bounds of the policy rungs that miss π* are computed up to this many leaves
#: m·V^H (each costs a few passes over the tree per rung), and polished by L-BFGS up to
#: :data:`POLISH_MAX_LEAVES`; above, the bound is the best start's (or NaN), as said in
#: :attr:`Ladder.skipped`. Containment itself is exact at every size.
RESIDUAL_MAX_LEAVES = 1 << 14
POLISH_MAX_LEAVES = 1 << 9


@dataclass
class Rung:
    """One rung as measured on the instance.

    Attributes:
        side: ``policy`` or ``reward``.
        name: product, markov<J>, tabular (policy); window<J>, tabular, oracle, dictionary.
        order: J of markov / window rungs, None for oracle / dictionary.
        dim: dimension modulo per-prompt constants (× m unless shared).
        contains: π* (policy) or r* (reward) lies in the rung, decided exactly.
        residual: policy: certified upper bound on min KL(P_θ ‖ P*) (0 when contained);
            reward: ρ-weighted fraction of Var r* outside the span.
        spread: policy: the tilt spread of :mod:`gvgap.ladder.contain`; reward: the RMS
            residual relative to the RMS of r*.
        grad_norm: ‖∇‖ of the policy bound (0 when contained, NaN for rewards).
    """

    side: str
    name: str
    order: int | None
    dim: int
    contains: bool
    residual: float
    spread: float
    grad_norm: float = float("nan")


@dataclass
class Ladder:
    """The ladder of one instance (module docstring).

    Args:
        env: the instance.
        oracle: the generating features ``(m, N, k)`` (None: no oracle rung).
        dictionary: K candidate features ``(m, N, K)`` (None: no dictionary rung).
        shared: reward rungs share one parameter vector across prompts (r* is shared).
        polish_iters: L-BFGS iterations of each policy residual bound.
    """

    env: TreeEnv
    oracle: np.ndarray | None = None
    dictionary: np.ndarray | None = None
    shared: bool = False
    polish_iters: int = 10
    policy: list[Rung] = field(init=False)
    reward: list[Rung] = field(init=False)
    skipped: dict[str, str] = field(init=False, default_factory=dict)
    _constants: dict = field(init=False, default_factory=dict)
    _biases: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.shared = bool(self.shared and self.env.n_prompts > 1)
        self.policy = self._policy_rungs()
        self.reward = self._reward_rungs()

    # ------------------------------------------------------------ rungs

    def _policy_rungs(self) -> list[Rung]:
        env = self.env
        m, vocab, horizon = env.n_prompts, env.vocab, env.horizon
        tilts = centred_tilts(env)
        tol = containment_tol(env)
        out, prev = [], None
        leaves = env.n_prompts * env.n_leaves
        polish = self.polish_iters if leaves <= POLISH_MAX_LEAVES else 0
        if polish < self.polish_iters:
            self.skipped["residual polish"] = f"{leaves} leaves > {POLISH_MAX_LEAVES}"
        for order in range(horizon):
            spread = tilt_spread(tilts, vocab, order)
            inside = spread <= tol
            dim = policy_dim(order, m, vocab, horizon)
            name = rung_name(order, horizon)
            if inside:
                out.append(Rung("policy", name, order, dim, True, 0.0, spread, 0.0))
                continue
            if leaves > RESIDUAL_MAX_LEAVES:
                self.skipped["residual bounds"] = f"{leaves} leaves > {RESIDUAL_MAX_LEAVES}"
                out.append(Rung("policy", name, order, dim, False, np.nan, spread))
                continue
            pol, bound = policy_bound(env, order, tilts, prev, polish)
            prev = (pol, bound.theta)
            out.append(
                Rung("policy", name, order, dim, False, bound.value, spread, bound.grad_norm)
            )
        return out

    def _reward_rungs(self) -> list[Rung]:
        env = self.env
        m, vocab, horizon = env.n_prompts, env.vocab, env.horizon
        r = env.r_star
        var = spans.centred_var(r)
        pieces = spans.window_pieces(r, vocab, horizon)
        out = []
        for order in range(horizon):
            if self.shared:
                outside = spans.shared_outside(r, env.rho, vocab, horizon, order)
            else:
                outside = spans.window_outside(pieces, order)
            dim = (1 if self.shared else m) * spans.window_dim(vocab, horizon, order)
            out.append(self._reward_rung(window_name(order, horizon), order, dim, outside, var))
        for name, feats in (("oracle", self.oracle), ("dictionary", self.dictionary)):
            if feats is None:
                continue
            if self.shared:
                outside, dim = spans.span_residual(r, feats, env.rho, shared=True)
            else:  # per prompt: project on the orthonormal bases the constants reuse
                prompt_bases = self._dense(name)
                rc = r - r.mean(axis=1, keepdims=True)
                res = np.stack(
                    [
                        np.zeros_like(rc[x])
                        if b.shape[1] == env.n_leaves - 1  # every reward
                        else rc[x] - b @ (b.T @ rc[x])  # orthonormal basis
                        for x, b in enumerate(prompt_bases)
                    ]
                )
                outside, dim = (res * res).mean(axis=1), sum(b.shape[1] for b in prompt_bases)
            out.append(self._reward_rung(name, None, dim, outside, var))
        return out

    def _dense(self, name: str, shared: bool = False) -> list[np.ndarray]:
        """The dense rung's tangent bases per prompt (one SVD per rung and sharing, cached)."""
        key = ("bases", name, shared)
        if key not in self._constants:
            feats = self.oracle if name == "oracle" else self.dictionary
            self._constants[key] = bases.dense_basis(feats, shared=shared)
        return self._constants[key]

    def _reward_rung(self, name, order, dim, outside, var) -> Rung:
        inside = spans.contains(outside, var, self.env.horizon)
        rel = float(np.sqrt(np.max(outside / np.maximum(var, np.finfo(float).tiny))))
        frac = spans.fraction(outside, var, self.env.rho)
        return Rung("reward", name, order, int(dim), inside, 0.0 if inside else frac, rel)

    def rung(self, side: str, name: str) -> Rung:
        """The rung ``name`` of ``side`` (KeyError if the instance has none)."""
        for r in self.policy if side == "policy" else self.reward:
            if r.name == name:
                return r
        raise KeyError(f"no {side} rung {name!r} on this instance")

    def smallest(self, side: str, names: tuple[str, ...] | None = None) -> Rung:
        """The containing rung of least dimension (among ``names`` if given)."""
        rungs = self.policy if side == "policy" else self.reward
        cands = [r for r in rungs if r.contains and (names is None or r.name in names)]
        return min(cands, key=lambda r: (r.dim, r.order if r.order is not None else -1))

    # ------------------------------------------------------------ constants

    @property
    def _laws(self) -> tuple[np.ndarray, np.ndarray]:
        return np.exp(self.env.logp_star), np.exp(self.env.logp_ref)

    @property
    def kernels(self) -> list:
        """Each prompt's factorised pair kernel (:class:`~gvgap.theory.asymptotics.PairKernel`),
        computed once."""
        if "kernels" not in self._constants:
            self._constants["kernels"] = [asymptotics.PairKernel.of(r) for r in self.env.r_star]
        return self._constants["kernels"]

    def constant(self, side: str, name: str, shared: bool | None = None) -> float:
        """C of a containing rung (NaN for a rung that does not contain its target, or where
        the computation is over budget: :attr:`skipped` says why). ``shared`` (reward rungs):
        pooled parameters (default: the ladder's) or one vector per prompt."""
        shared = self.shared if shared is None else bool(shared and self.env.n_prompts > 1)
        key = (side, name, shared if side == "reward" else False)
        if key not in self._constants:
            rung = self.rung(side, name)
            self._constants[key] = self._constant(rung, key[2]) if rung.contains else np.nan
        return self._constants[key]

    def _constant(self, rung: Rung, shared: bool) -> float:
        env = self.env
        p, mu = self._laws
        tag = f"C {rung.side}/{rung.name}"
        if rung.name == "tabular" and not shared:
            return asymptotics.tabular_constant(p, mu, env.r_star, env.beta, self.kernels).value
        psi = self._basis(rung, shared)
        if psi is not None and not shared and all(b.shape[1] == env.n_leaves - 1 for b in psi):
            # a rung that spans every reward of each prompt is the tabular class
            return asymptotics.tabular_constant(p, mu, env.r_star, env.beta, self.kernels).value
        if psi is None or psi[0].shape[1] > DIM_MAX:
            self.skipped[tag] = f"tangent dimension > {DIM_MAX}"
            return np.nan
        return asymptotics.linear_constant(
            psi, p, mu, env.r_star, env.rho, env.beta, shared=shared, kernels=self.kernels
        ).value

    def _basis(self, rung: Rung, shared: bool) -> list | None:
        """Tangent bases per prompt (:mod:`gvgap.ladder.bases`), None if too large."""
        env = self.env
        m, vocab, horizon = env.n_prompts, env.vocab, env.horizon
        if rung.side == "policy":
            if policy_dim(rung.order, 1, vocab, horizon) > DIM_MAX:
                return None
            logpi = env.soft_star.logpi
            return [bases.policy_tangent(logpi, x, rung.order) for x in range(m)]
        if rung.order is not None:
            order = min(rung.order, horizon - 1)
            if spans.window_dim(vocab, horizon, order) > DIM_MAX:
                return None
            if order >= horizon - 1:  # shared tabular: leaf indicators minus one
                import scipy.sparse as sp

                eye = sp.eye(env.n_leaves, env.n_leaves - 1, format="csr")
                return [eye] * m
            base = bases.window_basis(vocab, horizon, order)
            return [base] * m
        return self._dense(rung.name, shared)

    # ------------------------------------------------------------ bias floors

    def bias(self, side: str, name: str) -> float:
        """Regret (nats) of the large-n limit of the BT fit over a rung that does not contain
        its target (0 for a containing rung; NaN over budget). Reward rungs are followed by
        exact soft RL over tabular Π; policy rungs are DPO's limit in the rung itself."""
        key = (side, name)
        if key not in self._biases:
            rung = self.rung(side, name)
            self._biases[key] = 0.0 if rung.contains else self._bias(rung)
        return self._biases[key]

    def _bias(self, rung: Rung) -> float:
        env = self.env
        tag = f"bias {rung.side}/{rung.name}"
        if env.n_leaves > BIAS_MAX_LEAVES:
            self.skipped[tag] = f"N = {env.n_leaves} > {BIAS_MAX_LEAVES} leaves"
            return np.nan
        _, mu = self._laws
        if rung.side == "policy" and not self._uniform_ref:
            return self._policy_bias(rung.order, mu)
        if rung.side == "policy":  # uniform π_ref: R(markovJ) = window<J>, per prompt
            psi = [bases.window_basis(env.vocab, env.horizon, rung.order).toarray()] * env.n_prompts
            shared = False
        else:
            shared = self.shared
            psi = [
                np.asarray(b.todense()) if hasattr(b, "todense") else b
                for b in self._basis(rung, shared)
            ]
        r_inf, _ = asymptotics.population_bt_fit_linear(psi, env.r_star, mu, env.rho, shared=shared)
        lp = node_to_leaf_logp(soft_value_iteration(env.logpi_ref, r_inf, env.beta).logpi)
        return env.beta * kl(lp, env.logp_star, env.rho)

    @property
    def _uniform_ref(self) -> bool:
        return all(np.allclose(a, -np.log(self.env.vocab)) for a in self.env.logpi_ref)

    def _policy_bias(self, order: int, mu: np.ndarray) -> float:
        """DPO's population limit over markovJ with a non-uniform π_ref (L-BFGS)."""
        env = self.env
        pol = MarkovPolicy(env.n_prompts, env.vocab, env.horizon, order, env.logpi_ref)

        def fg(theta):
            lp = pol.leaf_logp(theta)
            loss, g, _ = asymptotics.population_bt_loss(
                env.beta * (lp - env.logp_ref), env.r_star, mu, env.rho
            )
            return loss, pol.vjp(theta, env.beta * g)

        opt = minimize(
            fg,
            pol.init_params(),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-15},
        )
        return env.beta * kl(pol.leaf_logp(opt.x), env.logp_star, env.rho)

    # ------------------------------------------------------------ instance metrics

    def metrics(self) -> dict[str, float]:
        """The instance's ladder metrics (bare, docs/design.md §5): per rung ``res_pi/<rung>``,
        ``dim_pi/<rung>``, ``spread_pi/<rung>``, ``grad_pi/<rung>`` and ``res_r/<rung>``,
        ``dim_r/<rung>``; ``pi_order_min`` (exact), ``pi_order_near`` (bound ≤ NEAR_TOL),
        ``r_order_min`` (smallest window), ``dim_pi_min``, ``dim_r_min`` (every reward rung),
        ``gap`` = log(dim_pi_min / dim_r_min), ``concentrability`` = max P*/P_ref."""
        out: dict[str, float] = {}
        for r in self.policy:
            out |= {
                f"res_pi/{r.name}": r.residual,
                f"dim_pi/{r.name}": float(r.dim),
                f"spread_pi/{r.name}": r.spread,
                f"grad_pi/{r.name}": r.grad_norm,
            }
        for r in self.reward:
            out |= {f"res_r/{r.name}": r.residual, f"dim_r/{r.name}": float(r.dim)}
        pi_min = self.smallest("policy")
        near = min(r.order for r in self.policy if r.contains or r.residual <= NEAR_TOL)
        # (a NaN bound, over RESIDUAL_MAX_LEAVES, is never "near")
        windows = tuple(window_name(j, self.env.horizon) for j in range(self.env.horizon))
        r_min = self.smallest("reward")
        lr = self.env.logp_star - self.env.logp_ref
        out |= {
            "pi_order_min": float(pi_min.order),
            "pi_order_near": float(near),
            "r_order_min": float(self.smallest("reward", windows).order),
            "dim_pi_min": float(pi_min.dim),
            "dim_r_min": float(r_min.dim),
            "gap": float(np.log(pi_min.dim / max(r_min.dim, 1))),
            "concentrability": float(np.exp(lr.max())),
            "contain_tol": containment_tol(self.env),
        }
        return out
