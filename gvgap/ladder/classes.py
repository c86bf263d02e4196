"""The fit-time classes of every rung (what the learners optimise over).

Policy rungs → :class:`~gvgap.policies.markov.MarkovPolicy` (``tabular`` → the tabular class
with exact soft RL), tilted from π_ref. Reward rungs → :class:`~gvgap.rewards.LinearReward`
over the rung's features (``oracle``: the generating features; ``dictionary``: K candidates;
``window<J>``: window indicators), :class:`~gvgap.rewards.TabularReward`, or the local RM of
the tabular class (``local``). ``linear`` is the historical name of ``oracle`` in the
hypothesis experiments (h1–h5), whose ``rm_class`` takes :data:`RM_CLASSES`.

Sharing: a reward rung *shared* across prompts has one parameter vector for every prompt
(per-prompt constants stay free: BT and Ω ignore them); otherwise each prompt has its own
(block features e_x ⊗ φ). The tabular rung shared across prompts is r(x, ξ) = g(ξ) + c_x.
"""

from __future__ import annotations

import numpy as np

from gvgap.envs import features
from gvgap.envs.tree_env import TreeEnv
from gvgap.errors import UserError
from gvgap.ladder.rungs import policy_order, window_order
from gvgap.policies import TabularPolicy
from gvgap.policies.markov import MarkovPolicy
from gvgap.rewards import LinearReward, LocalReward, TabularReward

#: ``rm_class`` values of the hypothesis experiments (h1–h5).
RM_CLASSES = ("linear", "tabular", "local")


def tabular_policy(env: TreeEnv) -> TabularPolicy:
    """The full policy class Π, initialised at π_ref."""
    return TabularPolicy(env.n_prompts, env.vocab, env.horizon, init=env.logpi_ref)


def policy_class(name: str, env: TreeEnv):
    """Π by rung (``product``, ``markov<J>``, ``tabular``), initialised at π_ref; markov<J>
    with J ≥ H − 1 is the tabular class (the same set of policies, exact soft RL)."""
    order = policy_order(name, env.horizon)
    if order >= env.horizon - 1:
        return tabular_policy(env)
    return MarkovPolicy(env.n_prompts, env.vocab, env.horizon, order, env.logpi_ref)


def spread_features(phi: np.ndarray, n_prompts: int, shared: bool) -> np.ndarray:
    """``(N, d)`` features for every prompt: ``(m, N, d)`` shared, ``(m, N, m d)`` blocks."""
    if shared or n_prompts == 1:
        return np.broadcast_to(phi, (n_prompts, *phi.shape))
    return features.block_features(phi, n_prompts)


def reward_class(name: str, env: TreeEnv, *, shared: bool = True, dictionary=None):
    """R by rung: ``oracle`` / ``linear`` (``env.features``), ``dictionary`` (``dictionary``
    ``(m, N, K)``), ``window<J>`` (shared or per prompt), ``tabular`` (per prompt, or the
    pooled g(ξ) + c_x when ``shared`` and m > 1), ``local`` (R(Π) of the tabular class).

    Raises:
        UserError: an unknown name, or an oracle rung on a family without features.
    """
    order = window_order(name, env.horizon)  # UserError for unknown names
    m = env.n_prompts
    if name in ("oracle", "linear"):
        if env.features is None:
            raise UserError(f"rm_class={name!r} needs a family with features")
        return LinearReward(env.features)
    if name == "dictionary":
        if dictionary is None:
            raise UserError("rm_class='dictionary' needs candidate features (rm_features)")
        return LinearReward(dictionary)
    if name == "local":
        return LocalReward(tabular_policy(env), env.logp_ref, env.beta)
    if order >= env.horizon - 1:
        if shared and m > 1:
            return LinearReward(spread_features(np.eye(env.n_leaves), m, True))
        return TabularReward(m, env.n_leaves)
    return LinearReward(
        spread_features(features.position_window(env.tokens, env.vocab, order), m, shared)
    )


def distractor_features(env: TreeEnv, n_extra: int, rng: np.random.Generator) -> np.ndarray:
    """``n_extra`` standardised distractor columns ``(N, n_extra)`` for a dictionary RM.

    Drawn without replacement from the columns of the instance's dictionary
    (``env.info["dictionary"]``) that lie outside span{1, generating features}; ``dense``
    (or an exhausted dictionary) is topped up with fresh N(0, 1) columns.
    """
    tokens, name = env.tokens, env.info.get("dictionary", "dense")
    cols = np.zeros((len(tokens), 0))
    if name != "dense" and n_extra > 0:
        n = env.info.get("ngram_n", 2)
        cand = features.standardize(features.dictionary(name, tokens, env.vocab, rng, n=n))
        a = np.column_stack([np.ones(len(tokens)), env.features[0]])  # prompt 0's block
        res = cand - a @ np.linalg.lstsq(a, cand, rcond=None)[0]
        keep = np.flatnonzero(np.linalg.norm(res, axis=0) > 1e-6 * np.sqrt(len(tokens)))
        pick = np.sort(rng.choice(keep, size=min(n_extra, keep.size), replace=False))
        cols = cand[:, pick]
    if cols.shape[1] < n_extra:
        fresh = features.standardize(
            features.dense_random(len(tokens), n_extra - cols.shape[1], rng)
        )
        cols = np.concatenate([cols, fresh], axis=1)
    return cols


def dictionary_features(
    env: TreeEnv, n_extra: int, rng: np.random.Generator, *, shared: bool
) -> np.ndarray:
    """The K = k + ``n_extra`` candidate features ``(m, N, ·)`` of the dictionary rung: the
    generating features among ``n_extra`` distractors (:func:`distractor_features`), their
    order shuffled by ``rng`` (a class given as a list, with no marker of which column
    generated r*)."""
    extra = distractor_features(env, n_extra, rng)
    extra = spread_features(extra, env.n_prompts, shared)
    feats = np.concatenate([env.features, extra], axis=-1)
    return feats[..., rng.permutation(feats.shape[-1])]
