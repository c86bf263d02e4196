"""Preference pairs and demonstrations, drawn exactly from tree policies (docs/theory.md §2).

Datasets are frozen arrays of leaf indices per prompt. A pair (chosen, rejected) carries a
``weight`` (1 for a sampled label); soft labels are two rows with weights y and 1 − y, and
exact expectations over a sampling distribution are rows weighted by their probabilities.

Labelling oracles (``label=``):
  - ``"bt"``: chosen = ξ1 with probability σ(r(ξ1) − r(ξ2)) (Bradley–Terry sampling);
  - ``"argmax"``: chosen = the higher reward; ties by ``tie=``: ``"random"`` (fair coin),
    ``"drop"`` (pair removed), ``"half"`` (two rows of weight 1/2);
  - ``flip``: after labelling, each label is flipped with probability ε.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from gvgap.errors import UserError, check_choice, check_int, check_range

LABELS = ("bt", "argmax")
TIES = ("random", "drop", "half")


@dataclass(frozen=True)
class Preferences:
    """Preference pairs ``(prompt, chosen, rejected, weight)``, each ``(n,)``."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    def subset(self, idx: np.ndarray) -> Preferences:
        """Rows ``idx``."""
        return Preferences(self.prompt[idx], self.chosen[idx], self.rejected[idx], self.weight[idx])

    def margin(self, r: np.ndarray) -> np.ndarray:
        """Δ_i = r(x_i, ξ⁺_i) − r(x_i, ξ⁻_i) of a leaf reward ``r`` ``(m, N)``, ``(n,)``."""
        return r[self.prompt, self.chosen] - r[self.prompt, self.rejected]

    def split(self, val_frac: float, rng: np.random.Generator) -> tuple[Preferences, Preferences]:
        """Deterministic (given ``rng``) train / held-out split; at least one row each side."""
        return _split(self, len(self), val_frac, rng)

    @staticmethod
    def concat(parts: list[Preferences]) -> Preferences:
        """Row-wise concatenation."""
        return Preferences(*(np.concatenate([getattr(p, f) for p in parts]) for f in _PREF_FIELDS))


_PREF_FIELDS = ("prompt", "chosen", "rejected", "weight")


@dataclass(frozen=True)
class Demos:
    """Demonstrations ``(prompt, leaf, weight)``, each ``(n,)``."""

    prompt: np.ndarray
    leaf: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    def subset(self, idx: np.ndarray) -> Demos:
        """Rows ``idx``."""
        return Demos(self.prompt[idx], self.leaf[idx], self.weight[idx])

    def split(self, val_frac: float, rng: np.random.Generator) -> tuple[Demos, Demos]:
        """Deterministic (given ``rng``) train / held-out split."""
        return _split(self, len(self), val_frac, rng)


def _split(data, n: int, val_frac: float, rng: np.random.Generator):
    if not 0 < val_frac < 1:
        raise UserError(f"val_frac must be in (0, 1), got {val_frac}")
    if n < 2:
        raise UserError(f"need at least 2 rows to split, got {n}")
    perm = rng.permutation(n)
    n_val = min(max(1, round(val_frac * n)), n - 1)
    return data.subset(np.sort(perm[n_val:])), data.subset(np.sort(perm[:n_val]))


def sample_prompts(rho: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` prompt indices x ~ ρ."""
    return rng.choice(rho.shape[0], size=n, p=rho)


def sample_leaves(logp: np.ndarray, prompts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One completion ξ ~ P(·|x) per entry of ``prompts`` by inverse CDF (vectorised).

    Args:
        logp: ``(m, N)`` leaf log-probabilities; prompts: ``(n,)``.

    Returns:
        ``(n,)`` leaf indices.
    """
    cdf = np.cumsum(np.exp(logp), axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(prompts.shape[0])
    idx = np.empty(prompts.shape[0], dtype=np.int64)
    for x in np.unique(prompts):  # a loop over prompts, not samples: #{cdf < u} by bisection
        sel = prompts == x
        idx[sel] = np.searchsorted(cdf[x], u[sel], side="left")
    return np.minimum(idx, logp.shape[1] - 1)


def label_pairs(
    prompt: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    r: np.ndarray,
    rng: np.random.Generator,
    *,
    label: str = "bt",
    tie: str = "random",
    flip: float = 0.0,
) -> Preferences:
    """Label pairs (a, b) of completions of ``prompt`` with the oracle reward ``r`` ``(m, N)``."""
    check_choice("label", label, LABELS)
    check_choice("tie", tie, TIES)
    check_range("flip", flip, 0.0, 0.5)
    diff = r[prompt, a] - r[prompt, b]
    if label == "bt":
        return _orient(prompt, a, b, rng.random(diff.shape[0]) < expit(diff), rng, flip)
    tied = diff == 0
    if tie == "drop":
        keep = ~tied
        prompt, a, b, diff, tied = prompt[keep], a[keep], b[keep], diff[keep], tied[keep]
    coin = rng.random(diff.shape[0]) < 0.5
    a_wins = np.where(tied, coin, diff > 0) if tie == "random" else (diff >= 0)
    out = _orient(prompt, a, b, a_wins, rng, flip)
    if tie != "half" or not tied.any():
        return out
    half = np.where(tied, 0.5, 1.0)
    mirror = _orient(prompt[tied], b[tied], a[tied], np.ones(tied.sum(), bool), rng, flip)
    return Preferences.concat(
        [
            Preferences(out.prompt, out.chosen, out.rejected, half),
            Preferences(mirror.prompt, mirror.chosen, mirror.rejected, np.full(tied.sum(), 0.5)),
        ]
    )


def soft_labels(prompt: np.ndarray, a: np.ndarray, b: np.ndarray, r: np.ndarray) -> Preferences:
    """The exact BT labels of ``r`` ``(m, N)`` on pairs (a, b) of completions of ``prompt``
    (each ``(n,)``): every pair twice, a ≻ b weighted y = σ(r(a) − r(b)) and b ≻ a weighted
    1 − y, ``2n`` rows."""
    y = expit(r[prompt, a] - r[prompt, b])
    return Preferences(
        np.concatenate([prompt, prompt]), np.concatenate([a, b]), np.concatenate([b, a]),
        np.concatenate([y, 1.0 - y]),
    )  # fmt: skip


def _orient(prompt, a, b, a_wins, rng, flip) -> Preferences:
    """Chosen/rejected from 'a wins' booleans, after flip noise ε."""
    if flip > 0:
        a_wins = a_wins ^ (rng.random(prompt.shape[0]) < flip)
    return Preferences(
        prompt.copy(), np.where(a_wins, a, b), np.where(a_wins, b, a), np.ones(prompt.shape[0])
    )


def sample_pairs(
    logp_mu: np.ndarray,
    r: np.ndarray,
    rho: np.ndarray,
    n: int,
    rng: np.random.Generator,
    **label_kw,
) -> Preferences:
    """``n`` pairs: x ~ ρ, ξ1, ξ2 ~ μ(·|x) i.i.d., labelled by the oracle on ``r`` ``(m, N)``."""
    check_int("n_pairs", n, 1)
    x = sample_prompts(rho, n, rng)
    a = sample_leaves(logp_mu, x, rng)
    b = sample_leaves(logp_mu, x, rng)
    return label_pairs(x, a, b, r, rng, **label_kw)


def sample_demos(logp: np.ndarray, rho: np.ndarray, n: int, rng: np.random.Generator) -> Demos:
    """``n`` demonstrations x ~ ρ, ξ ~ π(·|x)."""
    check_int("n_demos", n, 1)
    x = sample_prompts(rho, n, rng)
    return Demos(x, sample_leaves(logp, x, rng), np.ones(n))


def expected_pairs(pair_weight: np.ndarray, r: np.ndarray | None = None) -> Preferences:
    """All ordered pairs of each prompt with weight W[x, a, b] (exact expectation).

    Args:
        pair_weight: ``(m, N, N)`` nonnegative weights of ordered pairs (a chosen, b rejected).
            If ``r`` is given, W[x,a,b] is the probability of *drawing* the ordered pair (a, b)
            before labelling, and the row (chosen a, rejected b) gets the law of the labelled
            pair, (W[x,a,b] + W[x,b,a]) σ(r(a) − r(b)) — total mass is preserved.

    Returns:
        :class:`Preferences` with one row per ordered pair of positive weight.
    """
    w = pair_weight
    if r is not None:
        w = (w + np.swapaxes(w, 1, 2)) * expit(r[:, :, None] - r[:, None, :])
    x, a, b = np.nonzero(w > 0)
    return Preferences(x, a, b, w[x, a, b])


def on_policy_pair_weights(logp: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """W[x, a, b] = ρ(x) P(a|x) P(b|x), a ≠ b: two i.i.d. on-policy samples, ``(m, N, N)``."""
    p = np.exp(logp)
    w = rho[:, None, None] * p[:, :, None] * p[:, None, :]
    idx = np.arange(p.shape[1])
    w[:, idx, idx] = 0.0
    return w


def best_worst_pair_weights(
    logp: np.ndarray, r_hat: np.ndarray, n: int, rho: np.ndarray
) -> np.ndarray:
    """Exact law of (best, worst) among n i.i.d. samples ranked by r̂ — online DPO's pairs.

    For reward levels i > j with masses p_i, p_j and mass a strictly between them (S = a +
    p_i + p_j), the probability that the maximum lies in level i and the minimum in level j is
    S^n (1 − u − v + w), u = (1 − q_i)^n, v = (1 − q_j)^n, w = (1 − q_i − q_j)^n, q = p/S
    (inclusion–exclusion). Evaluated as written it cancels (issue 19: relative error 1e-5 at
    P ≥ 1e-12, negative weights); here, in log space and without cancellation,
    1 − u − v + w = X − Y with X = (1 − u)(1 − v) and Y = uv − w = uv (1 − (1 + z)^{−n}),
    z = p_i p_j / (a S) (:func:`_best_worst_level_logp`). Both are products of complementary
    forms (−expm1, log1p) and 0 ≤ Y/X ≤ 1/2 for n ≥ 2, so the result is ≥ 0 with a relative
    error of a few hundred ε wherever it is ≥ 1e-300. The level probability is shared
    within levels in proportion to P; samples all in one level give no pair.

    Returns:
        ``(m, N, N)`` weights W[x, best, worst], summing over (best, worst) to
        ρ(x) (1 − Σ_i p_i^n).
    """
    m, N = logp.shape
    out = np.zeros((m, N, N))
    if n < 2:  # one sample: best = worst, no pair
        return out
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for x in range(m):
            levels, inv = np.unique(r_hat[x], return_inverse=True)
            p = np.exp(logp[x])
            mass = np.bincount(inv, weights=p, minlength=levels.size)
            lvl = rho[x] * np.exp(_best_worst_level_logp(mass, n))
            # P(ξ | its level) = p_ξ / mass(level); computed as a quotient (not p · (1/mass)) so
            # a denormal level mass cannot overflow to inf and turn 0 · inf into NaN. A result
            # below 1e-300 comes from lvl ≤ it, so underflow here loses nothing above 1e-300.
            level_mass = mass[inv]
            within = np.divide(p, level_mass, out=np.zeros_like(p), where=level_mass > 0)
            out[x] = lvl[inv][:, inv] * within[:, None] * within[None, :]
    return out


def _best_worst_level_logp(mass: np.ndarray, n: int) -> np.ndarray:
    """log P(max in level i, min in level j) ``(K, K)`` for i > j (−inf elsewhere), n ≥ 2.

    With a_ij = Σ_{j<k<i} p_k summed directly (not as a difference of cumulative sums, which
    loses a ≪ F), S = a + p_i + p_j and ℓ_i = log(1 − q_i) = log((a + p_j)/S):
    log P = n log S + log X + log1p(−Y/X),
    log X = log(1 − e^{nℓ_i}) + log(1 − e^{nℓ_j}),
    log Y = n(ℓ_i + ℓ_j) + log(1 − e^{−t}),  t = n log1p(z),
    log z = log p_i + log p_j − log a − log S (a = 0: z = ∞, t = ∞, Y = uv).
    Every step is a complementary or log-space form.
    """
    k = mass.size
    i, j = np.tril_indices(k, -1)
    between = np.cumsum(np.tril(np.broadcast_to(mass[:, None], (k, k)), -1), axis=0)
    a = np.concatenate([np.zeros((1, k)), between[:-1]])[i, j]  # Σ_{j<k'<i} p_k'
    p_i, p_j = mass[i], mass[j]
    s = a + p_i + p_j
    log_s = np.log(s)
    ell_i = _log_one_minus_q(p_i, a + p_j, s, log_s)
    ell_j = _log_one_minus_q(p_j, a + p_i, s, log_s)
    log_x = _log1mexp(-n * ell_i) + _log1mexp(-n * ell_j)
    log_z = np.log(p_i) + np.log(p_j) - np.log(a) - log_s
    # log t = log n + log log1p(z); log1p(z) = z to rounding below z = e^{-700}
    log_t = np.log(n) + np.where(log_z < -700.0, log_z, np.log(np.log1p(np.exp(log_z))))
    log_1m_e_t = np.where(log_t < -700.0, log_t, _log1mexp(np.exp(log_t)))
    log_y = n * (ell_i + ell_j) + log_1m_e_t
    ratio = np.minimum(np.exp(log_y - log_x), 1.0)
    out = np.full((k, k), -np.inf)
    log_p = n * log_s + log_x + np.log1p(-ratio)
    out[i, j] = np.where(np.isnan(log_p), -np.inf, log_p)  # a level of zero mass: P = 0
    return out


def _log_one_minus_q(p: np.ndarray, rest: np.ndarray, s: np.ndarray, log_s) -> np.ndarray:
    """log(1 − p/S) with S = p + rest: log1p(−p/S) while p/S ≤ 1/2, else log(rest) − log S
    (both without cancellation in their range)."""
    q = p / s
    out = np.empty_like(q)
    small = q <= 0.5
    out[small] = np.log1p(-q[small])
    out[~small] = np.log(rest[~small]) - log_s[~small]
    return out


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − e^{−x}) for x ≥ 0, accurate at both ends (Mächler 2012): log(−expm1(−x)) for
    x ≤ log 2, else log1p(−e^{−x})."""
    out = np.empty_like(x)
    small = x <= _LN2
    out[small] = np.log(-np.expm1(-x[small]))
    out[~small] = np.log1p(-np.exp(-x[~small]))
    return out


_LN2 = float(np.log(2.0))
