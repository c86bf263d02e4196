"""The offline and online pipelines of many runs at once, on stacked neural classes.

A *run* is one instance (``TreeEnv``), one dataset D, one split seed and one init seed. For a
list of runs sharing the architecture, tree and optimiser options, every fit of every run
(each λ of the grid, each pipeline) is one model of a stack, so one forward pass serves them
all (:mod:`gvgap.nn.stacked`); each model computes bit for bit what it computes alone
(:mod:`gvgap.nn.layout`), so results do not depend on which runs share a call.

Pipelines (the shared protocol of ``gvgap.experiments.common``: same pairs, λ chosen on the
same held-out split by the validation BT likelihood of each pipeline's reward coordinates,
:func:`gvgap.learners.select.select_lambda_many`):

- ``dpo``: offline DPO of the policy network (exact expectation over D);
- ``rm`` → ``rlhf``: BT fit of the scalar-head RM, then exact RL of the policy network on r̂;
- ``rl_local``: exact RL on DPO's implicit reward β log π/π_ref (isomorphic control);
- ``oracle``: exact RL on r* (positive control), all from the run's initial policy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gvgap.data import Preferences
from gvgap.learners.result import Result
from gvgap.learners.select import select_lambda_many
from gvgap.nn import capacity as capacity
from gvgap.nn import train as TR


@dataclass(frozen=True)
class Arch:
    """The networks of a set of runs: ``arch`` (transformer / mlp), ``width``, ``depth``,
    ``heads``, ``rm_init`` (fresh / policy) and the placement (device, dtype)."""

    arch: str
    width: int
    depth: int
    heads: int
    rm_init: str
    placement: object

    def policy(self, envs: Sequence, seeds: Sequence[int]):
        """A stack of policies, model k at π_ref of ``envs[k]`` from init ``seeds[k]``."""
        from gvgap.nn.policies import MLPPolicy, TransformerPolicy

        e = envs[0]
        kw = {
            "width": self.width,
            "depth": self.depth,
            "logpi_ref": [list(env.logpi_ref) for env in envs],
            "placement": self.placement,
            "seed": list(seeds),
            "n_models": len(envs),
        }
        if self.arch == "transformer":
            return TransformerPolicy(e.n_prompts, e.vocab, e.horizon, heads=self.heads, **kw)
        return MLPPolicy(e.n_prompts, e.vocab, e.horizon, **kw)

    def reward(self, envs: Sequence, seeds: Sequence[int], policy_seeds=None):
        """A stack of scalar-head RMs from inits ``seeds`` (``rm_init="policy"``: the body of
        the policies initialised from ``policy_seeds``)."""
        from gvgap.nn.rewards import ScalarHeadRM

        e = envs[0]
        body = None
        if self.rm_init == "policy":
            body = self.policy(envs, policy_seeds).body
        return ScalarHeadRM(
            e.n_prompts,
            e.vocab,
            e.horizon,
            arch=self.arch,
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            body=body,
            placement=self.placement,
            seed=list(seeds),
            n_models=len(envs),
        )


@dataclass(frozen=True)
class RunInput:
    """One run: its instance, pairs, λ grid, split seed, init seed and instance key."""

    env: object
    data: Preferences
    grid: tuple[float, ...]
    split_seed: int
    seed: int
    instance_key: str
    capacity_seed: int


def _select(fitter: Callable, runs: Sequence[RunInput]) -> list[Result]:
    return [
        r
        for r, _ in select_lambda_many(
            fitter,
            [u.data for u in runs],
            split_seeds=[u.split_seed for u in runs],
            grid=runs[0].grid,
        )
    ]


def dpo_many(arch: Arch, runs: Sequence[RunInput], opt: dict) -> list[Result]:
    """Offline DPO of every run (λ selected)."""
    beta = runs[0].env.beta

    def fitter(owners, datas, lams):
        envs = [runs[o].env for o in owners]
        pol = arch.policy(envs, [runs[o].seed for o in owners])
        fit = TR.fit_preferences(
            pol, np.stack([e.logp_ref for e in envs]), datas, lam=lams, beta=beta, **opt
        )
        return [
            fit.result(k, "dpo", logp=fit.out[k], r_hat=beta * (fit.out[k] - e.logp_ref))
            for k, e in enumerate(envs)
        ]

    return _select(fitter, runs)


def rm_many(arch: Arch, runs: Sequence[RunInput], opt: dict) -> list[Result]:
    """BT fits of the scalar-head RM of every run (λ selected); init seed = run seed + 1."""

    def fitter(owners, datas, lams):
        envs = [runs[o].env for o in owners]
        seeds = [runs[o].seed for o in owners]
        rm = arch.reward(envs, [s + 1 for s in seeds], seeds)
        fit = TR.fit_rewards(rm, datas, lam=lams, **opt)
        return [fit.result(k, "rm", r_hat=fit.out[k]) for k in range(len(envs))]

    return _select(fitter, runs)


def rl_many(
    arch: Arch, runs: Sequence[RunInput], targets: Sequence[Sequence[np.ndarray]], opt: dict
) -> list[list[Result]]:
    """Exact RL of each run's initial policy on each of its rewards ``targets[i]`` (one
    stacked call); ``[i][j]`` is run i on target j, with ``kl_proj`` = E KL(P_θ‖P*_r)."""
    from gvgap import theory as theory

    jobs = [(i, r) for i, ts in enumerate(targets) for r in ts]
    envs = [runs[i].env for i, _ in jobs]
    pol = arch.policy(envs, [runs[i].seed for i, _ in jobs])
    fit = TR.fit_rl(
        pol,
        np.stack([e.logp_ref for e in envs]),
        np.stack([r for _, r in jobs]),
        beta=envs[0].beta,
        rho=np.stack([e.rho for e in envs]),
        **opt,
    )
    out: list[list[Result]] = [[] for _ in runs]
    for k, ((i, r), env) in enumerate(zip(jobs, envs)):
        star = theory.soft_optimal_leaf_logp(env.logp_ref, r, env.beta)
        kl = theory.kl(fit.out[k], star, env.rho)
        out[i].append(fit.result(k, "rl", logp=fit.out[k], r_hat=r, extra={"kl_proj": kl}))
    return out


#: Capacity results of recent (instance, network, optimiser) triples, shared by the runs of
#: one process that meet the same instance (e.g. one instance at several n): a measurement
#: made once per instance and architecture. Deterministic, so sharing changes no value.
_CAPACITY: OrderedDict[str, dict[str, float]] = OrderedDict()
CACHE_SIZE = 256


def capacity_many(
    arch: Arch, runs: Sequence[RunInput], restarts: int, opt: dict, key: str
) -> list[dict[str, float]]:
    """Both capacity residuals (:mod:`gvgap.nn.capacity`) of each run's instance: computed
    once per distinct instance (``run.instance_key`` + ``key``), restarts seeded from the
    instance (``capacity_seed + r``), all in two stacked calls."""
    todo: dict[str, RunInput] = {}
    for u in runs:
        k = f"{u.instance_key}|{key}"
        if k not in _CAPACITY and k not in todo:
            todo[k] = u
    if todo:
        us = list(todo.values())
        envs = [u.env for u in us]
        seeds = [u.capacity_seed + r for u in us for r in range(restarts)]
        rep = [e for e in envs for _ in range(restarts)]
        pol = capacity.policy_capacity(arch.policy(rep, seeds), envs, restarts, **opt)
        rew = capacity.reward_capacity(arch.reward(rep, seeds, seeds), envs, restarts, **opt)
        for k, a, b in zip(todo, pol, rew):
            _CAPACITY[k] = {**a, **b, "capacity_asymmetry": capacity.asymmetry(a, b)}
            _CAPACITY.move_to_end(k)
        while len(_CAPACITY) > CACHE_SIZE:
            _CAPACITY.popitem(last=False)
    return [dict(_CAPACITY[f"{u.instance_key}|{key}"]) for u in runs]
