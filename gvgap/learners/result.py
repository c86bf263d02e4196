"""The frozen output of every learner."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Result:
    """A fitted pipeline.

    Attributes:
        pipeline: name (``sft``, ``dpo``, ``ipo``, ``rm``, ``rlhf``, ``online_dpo``, ``bon``…).
        logp: ``(m, N)`` leaf log-probabilities of the output policy (None for a bare RM).
        r_hat: ``(m, N)`` the pipeline's reward coordinates: the fitted RM, or a policy's
            implicit reward β(log P − log P_ref); used by the shared λ-selection protocol.
        params: the final parameter vector.
        loss: final training objective (regulariser included).
        grad_norm: ‖∇‖ at the returned parameters (the convergence certificate); for the
            exact Newton solvers (``extra["solver"] == "newton_reward_coordinates"``) the
            gradient in reward coordinates (``learners/newton.py``).
        converged: whether ``grad_norm`` ≤ the requested tolerance (all stages).
        lam: the regularisation strength used.
        extra: stage details (e.g. the RM's and the soft-RL stage's results, iterations).
    """

    pipeline: str
    logp: np.ndarray | None
    r_hat: np.ndarray | None
    params: np.ndarray
    loss: float
    grad_norm: float
    converged: bool
    lam: float = 0.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_opt(cls, pipeline: str, logp, r_hat, opt, lam: float = 0.0) -> Result:
        """A one-stage fit from its optimiser output (:class:`~gvgap.learners.optim.OptResult`)."""
        return cls(
            pipeline,
            logp,
            r_hat,
            opt.x,
            opt.fun,
            opt.grad_norm,
            opt.converged,
            lam,
            {"n_iter": opt.n_iter},
        )

    @classmethod
    def two_stage(
        cls, rm: Result, rl: Result, lam: float, pipeline: str = "rlhf", **extra: object
    ) -> Result:
        """RM fit, then RL on its reward: ``rl``'s policy; ``rm``'s reward, parameters and
        loss; the worse of the two certificates; both stages (and ``extra``) in ``extra``."""
        return cls(
            pipeline,
            rl.logp,
            rm.r_hat,
            rm.params,
            rm.loss,
            max(rm.grad_norm, rl.grad_norm),
            rm.converged and rl.converged,
            lam,
            {"rm": rm, "rl": rl, **extra},
        )

    @classmethod
    def from_loop(
        cls, pipeline: str, last: Result, *, converged: bool, lam: float, extra: dict
    ) -> Result:
        """An iterated fit (online DPO, SPIN) from its ``last`` stage: that stage's policy,
        reward coordinates, parameters, loss and gradient norm."""
        return cls(
            pipeline,
            last.logp,
            last.r_hat,
            last.params,
            last.loss,
            last.grad_norm,
            converged,
            lam,
            extra,
        )
