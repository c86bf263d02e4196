"""Names, orders and dimensions of the rungs of the class ladder (docs/design.md §5).

Policy rungs: ``product`` = markov0 ⊂ markov1 ⊂ … ⊂ ``tabular`` = markov(H−1)
(:class:`gvgap.policies.markov.MarkovPolicy`). Reward rungs: ``window0`` ⊂ … ⊂
``window(H−1)`` = ``tabular`` (:mod:`gvgap.theory.spans`), plus ``dictionary`` (K candidate
features: the generating ones among distractors, a learned class) and ``oracle`` (the k
generating features of r*: a gift, only in arms named so).

Dimensions are counted modulo per-prompt constants:

    dim(markovJ) = m Σ_{h<H} V^{min(h, J)} (V − 1)           (= m (V^H − 1) for tabular),
    dim(window<J>) = V^{J+1} − 1 + (H − J − 1)(V^{J+1} − V^J)  (per prompt; × m unless shared).

With uniform π_ref the two ladders coincide rung by rung in reward coordinates: the local
rewards β log π/π_ref of markovJ span exactly window<J> (docs/theory.md), so DPO over markovJ
and an RM over window<J> followed by soft RL are the same estimator.
"""

from __future__ import annotations

import re

from gvgap.errors import UserError

#: Policy rung names accepted besides ``markov<J>``.
POLICY_RUNGS = ("product", "tabular")
#: Reward rung names accepted besides ``window<J>`` (``linear`` = the oracle features, the
#: historical name of the hypothesis experiments; ``local`` = R(Π) of the tabular class).
REWARD_RUNGS = ("oracle", "linear", "dictionary", "tabular", "local")
_MARKOV = re.compile(r"^markov([0-9]+)$")
_WINDOW = re.compile(r"^window([0-9]+)$")


def policy_order(name: str, horizon: int) -> int:
    """The Markov order J of a policy rung name (``tabular`` → H − 1, ``product`` → 0).

    Raises:
        UserError: a name that is none of product, markov<J> (J ≥ 0), tabular.
    """
    if name == "product":
        return 0
    if name == "tabular":
        return max(horizon - 1, 0)
    match = _MARKOV.match(str(name))
    if match is None:
        raise UserError(
            f"policy_class must be one of product, markov1, markov2, ..., tabular; got {name!r}"
        )
    return min(int(match.group(1)), max(horizon - 1, 0))


def rung_name(order: int, horizon: int) -> str:
    """Canonical name of the policy rung of Markov order J (``tabular`` when J ≥ H − 1)."""
    if order >= horizon - 1:
        return "tabular"
    return "product" if order == 0 else f"markov{order}"


def policy_dim(order: int, n_prompts: int, vocab: int, horizon: int) -> int:
    """dim(markovJ) = m Σ_h V^{min(h,J)} (V − 1) (module docstring)."""
    return n_prompts * sum(vocab ** min(h, order) * (vocab - 1) for h in range(horizon))


def window_order(name: str, horizon: int) -> int | None:
    """J of a window rung name (``tabular`` → H − 1), None for the other reward rungs.

    Raises:
        UserError: a name that is no reward rung.
    """
    if name == "tabular":
        return max(horizon - 1, 0)
    match = _WINDOW.match(str(name))
    if match is not None:
        return min(int(match.group(1)), max(horizon - 1, 0))
    if name in REWARD_RUNGS:
        return None
    raise UserError(f"rm_class must be one of {', '.join(REWARD_RUNGS)}, window<J>; got {name!r}")


def window_name(order: int, horizon: int) -> str:
    """Canonical name of the window rung of order J (``tabular`` when J ≥ H − 1)."""
    return "tabular" if order >= horizon - 1 else f"window{order}"
