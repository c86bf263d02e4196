"""Reward rungs of the class ladder for the experiments (DESIGN §5 ``rm_class``): the oracle
(generating) features with optional distractors (the non-oracle RM), window<J> rewards, and
the dimension / isomorphism checks h6 records per run."""

from __future__ import annotations

import numpy as np

from gvgap.envs.tree_env import TreeEnv
from gvgap.errors import UserError
from gvgap.experiments.common import RM_CLASSES, reward_class
from gvgap.rewards import LinearReward


def check_reward_rung(name: str) -> None:
    """UserError unless ``name`` is a reward rung: linear, tabular, local or window<J>."""
    from gvgap.envs.features import parse_dictionary

    if name not in RM_CLASSES and parse_dictionary(name)[0] != "window":
        raise UserError(f"rm_class must be one of {', '.join(RM_CLASSES)}, window<J>; got {name!r}")


def distractor_features(env: TreeEnv, n_extra: int, rng: np.random.Generator) -> np.ndarray:
    """``n_extra`` standardised distractor columns ``(N, n_extra)`` for a non-oracle RM.

    Drawn without replacement from the columns of the instance's dictionary
    (``env.info["dictionary"]``) that lie outside span{1, generating features}; ``dense``
    (or an exhausted dictionary) is topped up with fresh N(0, 1) columns.
    """
    from gvgap.envs import features as F

    tokens, name = env.tokens, env.info.get("dictionary", "dense")
    cols = np.zeros((len(tokens), 0))
    if name != "dense":
        n = env.info.get("ngram_n", 2)
        cand = F.standardize(F.dictionary(name, tokens, env.vocab, rng, n=n))
        a = np.column_stack([np.ones(len(tokens)), env.features[0]])  # prompt 0's block
        res = cand - a @ np.linalg.lstsq(a, cand, rcond=None)[0]
        keep = np.flatnonzero(np.linalg.norm(res, axis=0) > 1e-6 * np.sqrt(len(tokens)))
        pick = np.sort(rng.choice(keep, size=min(n_extra, keep.size), replace=False))
        cols = cand[:, pick]
    if cols.shape[1] < n_extra:
        fresh = F.standardize(F.dense_random(len(tokens), n_extra - cols.shape[1], rng))
        cols = np.concatenate([cols, fresh], axis=1)
    return cols


def reward_rung(
    name: str, env: TreeEnv, *, n_distractors: int = 0, rng: np.random.Generator | None = None
):
    """R by ladder rung: ``linear`` (the generating features ``env.features``, plus
    ``n_distractors`` distractor columns from ``rng``: the non-oracle RM), ``window<J>``
    (per-prompt window features, :func:`gvgap.envs.features.position_window`), ``oracle``
    (= linear), ``tabular``, ``local``."""
    from gvgap.envs import features as F

    if name == "oracle":
        name = "linear"
    check_reward_rung(name)
    if name == "linear" and n_distractors > 0:
        extra = distractor_features(env, n_distractors, rng)
        if env.n_prompts > 1 and env.info.get("per_prompt_weights"):
            extra = F.block_features(extra, env.n_prompts)
        else:
            extra = np.broadcast_to(extra, (env.n_prompts, *extra.shape))
        return LinearReward(np.concatenate([env.features, extra], axis=-1))
    if name in RM_CLASSES:
        return reward_class(name, env)
    return _window_rung(env, F.parse_dictionary(name)[1])


def reward_dim(rc, env: TreeEnv) -> int:
    """Dimension of a reward class modulo per-prompt constants: the rank of its centred
    features (linear), m (N − 1) (tabular / local of the tabular class)."""
    if isinstance(rc, LinearReward):
        f = rc.features - rc.features.mean(axis=1, keepdims=True)
        return int(np.linalg.matrix_rank(f.reshape(-1, f.shape[-1]), tol=1e-9))
    return env.n_prompts * (env.n_leaves - 1)


def _window_rung(env: TreeEnv, order: int) -> LinearReward:
    """window<order> rewards with one weight vector per prompt (block features if m > 1)."""
    from gvgap.envs import features as F

    phi = F.position_window(env.tokens, env.vocab, order)
    if env.n_prompts == 1:
        return LinearReward(phi[None])
    return LinearReward(F.block_features(phi, env.n_prompts))


def isomorphic(env: TreeEnv, rc, order: int) -> bool:
    """Whether Π(R) is the policy rung markov<order> (offline = online by theorem): a
    reward class of full dimension with tabular Π, or, with uniform π_ref, span{1, R} =
    span{1, window<order>} per prompt (the local rewards of markov<order>)."""
    full = env.n_prompts * (env.n_leaves - 1)
    d_r = reward_dim(rc, env)
    if order >= env.horizon - 1:
        return d_r == full
    uniform = all(np.allclose(a, -np.log(env.vocab)) for a in env.logpi_ref)
    if not uniform or not isinstance(rc, LinearReward):
        return False
    win = _window_rung(env, order)
    both = LinearReward(np.concatenate([rc.features, win.features], axis=-1))
    return d_r == reward_dim(win, env) == reward_dim(both, env)
