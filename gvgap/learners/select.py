"""One regularisation-selection protocol shared by every pipeline (docs/design.md §3).

λ is chosen on a held-out split of D (the same split for every pipeline: it is drawn from
``split_seed``) by the validation Bradley–Terry log-likelihood of the pipeline's reward
coordinates ``Result.r_hat`` (the RM, or the implicit reward β log π/π_ref), then the
pipeline is refitted on all of D with the chosen λ.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gvgap.data import Preferences
from gvgap.learners.newton import warm_path
from gvgap.learners.result import Result
from gvgap.losses import bt_rows

#: Default λ grid (reward-coordinate regulariser, see ``losses.centred_sq``).
LAMBDA_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Fraction of D held out for selection.
VAL_FRAC = 0.25
#: Validation scores within this of the best count as ties, resolved toward the larger λ
#: (isomorphic pipelines reach equal scores only up to optimisation error).
SCORE_TIE = 1e-7


def val_bt_loglik(r_hat: np.ndarray, val: Preferences) -> float:
    """Mean held-out BT log-likelihood Σ w log σ(r̂(ξ⁺) − r̂(ξ⁻)) / Σ w."""
    return _mean(pair_bt_loglik(r_hat, val), val)


def pair_bt_loglik(r_hat: np.ndarray, val: Preferences) -> np.ndarray:
    """Per-pair held-out BT log-likelihood log σ(r̂(ξ⁺) − r̂(ξ⁻)) = −``losses.bt_rows``,
    ``(n_val,)``."""
    return -bt_rows(val.margin(r_hat))


def _mean(per_pair: np.ndarray, val: Preferences) -> float:
    """The weighted mean Σ w v / Σ w of per-pair values over ``val``."""
    return float(val.weight @ per_pair / val.weight.sum())


def select_lambda(
    fit: Callable[[Preferences, float], Result],
    data: Preferences,
    *,
    split_seed: int,
    grid: tuple[float, ...] = LAMBDA_GRID,
    val_frac: float = VAL_FRAC,
) -> tuple[Result, dict[float, float]]:
    """Choose λ by held-out BT likelihood, refit on all of D.

    Ties within ``SCORE_TIE`` go to the largest λ (the simplest model). The fits run from the
    largest λ down inside :func:`~gvgap.learners.newton.warm_path`, so the exact Newton
    solvers warm-start along the path and the final refit starts at the chosen λ's solution.

    Args:
        fit: ``fit(data, lam) -> Result`` (any pipeline).
        data: the full preference data D.
        split_seed: seeds the train/validation split (same for every pipeline).

    Returns:
        the refitted Result (``lam`` set) and the validation scores per λ.
    """
    if len(grid) == 1 or len(data) < 4:
        return fit(data, grid[0] if len(grid) == 1 else grid[len(grid) // 2]), {}
    train, val = data.split(val_frac, np.random.default_rng(split_seed))
    with warm_path():
        by_lam = {lam: val_bt_loglik(fit(train, lam).r_hat, val) for lam in sorted(grid)[::-1]}
        scores = {lam: by_lam[lam] for lam in grid}
        return fit(data, best_lambda(scores)), scores


def best_lambda(scores: dict[float, float]) -> float:
    """The λ with the best validation score; ties within ``SCORE_TIE`` go to the largest."""
    top = max(scores.values())
    return max(lam for lam, s in scores.items() if s >= top - SCORE_TIE)


def select_lambda_many(
    fit_many: Callable[[list[int], list[Preferences], list[float]], list[Result]],
    datas: list[Preferences],
    *,
    split_seeds: list[int],
    grid: tuple[float, ...] = LAMBDA_GRID,
    val_frac: float = VAL_FRAC,
) -> list[tuple[Result, dict[float, float]]]:
    """:func:`select_lambda` for many datasets at once, for fitters that solve many problems
    in one call (the stacked torch classes): ``fit_many(owners, datas, lams)`` fits each
    ``datas[k]`` (a part of dataset ``owners[k]``) at ``lams[k]``. The same protocol: each
    dataset's split from its ``split_seeds[i]``, every λ of the grid on the training part
    (one call), the validation scores, the same tie rule, then one call refitting every
    dataset on all its pairs at its chosen λ."""
    if len(grid) == 1 or any(len(d) < 4 for d in datas):
        if len(grid) > 1 and not all(len(d) < 4 for d in datas):
            raise ValueError("select_lambda_many: datasets of < 4 pairs mixed with larger ones")
        lam = grid[0] if len(grid) == 1 else grid[len(grid) // 2]
        fits = fit_many(list(range(len(datas))), list(datas), [lam] * len(datas))
        return [(r, {}) for r in fits]
    parts = [d.split(val_frac, np.random.default_rng(s)) for d, s in zip(datas, split_seeds)]
    lams = sorted(grid)[::-1]
    owners = [i for i in range(len(parts)) for _ in lams]
    fits = fit_many(
        owners, [tr for tr, _ in parts for _ in lams], [lam for _ in parts for lam in lams]
    )
    scores = []
    for i, (_, val) in enumerate(parts):
        by_lam = {
            lam: val_bt_loglik(fits[i * len(lams) + j].r_hat, val) for j, lam in enumerate(lams)
        }
        scores.append({lam: by_lam[lam] for lam in grid})
    final = fit_many(list(range(len(datas))), list(datas), [best_lambda(s) for s in scores])
    return list(zip(final, scores))


#: Class selection keeps the smallest class whose validation score is within this many
#: standard errors of the best (the one-standard-error rule): between classes that all hold
#: the target, held-out scores differ by O(1/n) with noise of the same order, so "best
#: score" picks a larger class with a probability that does not vanish as n grows; the rule
#: prefers the smallest among those the data cannot tell apart.
SELECT_SE = 1.0


def select_model(
    fits: dict[str, Callable[[Preferences, float], Result]],
    data: Preferences,
    *,
    split_seed: int,
    grid: tuple[float, ...] = LAMBDA_GRID,
    val_frac: float = VAL_FRAC,
    n_se: float = SELECT_SE,
) -> tuple[str, Result, dict[tuple[str, float], float]]:
    """Choose a class *and* λ by held-out BT likelihood, refit on all of D.

    Every class in ``fits`` (ordered from the smallest) is fitted on the training split at
    every λ (λ chosen per class as in :func:`select_lambda`); let ℓ_c,i be the validation
    log-likelihood of pair i under class c's best λ and c* the class of the best mean. The
    smallest class c with mean(ℓ_c) ≥ mean(ℓ_c*) − ``n_se`` · SE, SE = sd_i(ℓ_c*,i − ℓ_c,i)/√n_val
    (the paired standard error), wins (the one-standard-error rule, :data:`SELECT_SE`; 0 gives
    the plain best score) and is refitted on all of D at its λ. Offline and online pipelines
    use it with the same split, grid and rule.

    Returns:
        ``(class name, refitted Result, validation scores per (class, λ))``.
    """
    names = list(fits)
    if len(data) < 4:
        name = names[0]
        return name, select_lambda(fits[name], data, split_seed=split_seed, grid=grid)[0], {}
    train, val = data.split(val_frac, np.random.default_rng(split_seed))
    scores: dict[tuple[str, float], float] = {}
    per_pair: dict[str, np.ndarray] = {}
    best_lam: dict[str, float] = {}
    with warm_path():
        for name in names:
            lls = {}
            for lam in sorted(grid)[::-1]:
                lls[lam] = pair_bt_loglik(fits[name](train, lam).r_hat, val)
                scores[name, lam] = _mean(lls[lam], val)
            best_lam[name] = best_lambda({lam: scores[name, lam] for lam in grid})
            per_pair[name] = lls[best_lam[name]]
        best = max(names, key=lambda n: scores[n, best_lam[n]])
        w = val.weight / val.weight.sum()
        chosen = best
        for name in names:  # smallest first
            diff = per_pair[best] - per_pair[name]
            mean = float(w @ diff)
            se = float(np.sqrt(max(w @ (diff - mean) ** 2, 0.0) / max(len(val) - 1, 1)))
            if mean <= n_se * se + SCORE_TIE:
                chosen = name
                break
        return chosen, fits[chosen](data, best_lam[chosen]), scores
