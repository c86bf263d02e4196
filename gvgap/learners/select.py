"""One regularisation-selection protocol shared by every pipeline (DESIGN §3).

λ is chosen on a held-out split of D (the same split for every pipeline: it is drawn from
``split_seed``) by the validation Bradley–Terry log-likelihood of the pipeline's reward
coordinates ``Result.r_hat`` (the RM, or the implicit reward β log π/π_ref), then the
pipeline is refitted on all of D with the chosen λ.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import log_expit

from gvgap.data import Preferences
from gvgap.learners.newton import warm_path
from gvgap.learners.result import Result

#: Default λ grid (reward-coordinate regulariser, see ``losses.centred_sq``).
LAMBDA_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Fraction of D held out for selection.
VAL_FRAC = 0.25
#: Validation scores within this of the best count as ties, resolved toward the larger λ
#: (isomorphic pipelines reach equal scores only up to optimisation error).
SCORE_TIE = 1e-7


def val_bt_loglik(r_hat: np.ndarray, val: Preferences) -> float:
    """Mean held-out BT log-likelihood Σ w log σ(r̂(ξ⁺) − r̂(ξ⁻)) / Σ w."""
    margin = r_hat[val.prompt, val.chosen] - r_hat[val.prompt, val.rejected]
    return float(val.weight @ log_expit(margin) / val.weight.sum())


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
