"""Preference pairs and demonstrations, drawn exactly from tree policies (THEORY §2).

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

from gvgap.errors import UserError

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
    idx = (cdf[prompts] < u[:, None]).sum(axis=1)
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
    if label not in LABELS:
        raise UserError(f"label must be one of {LABELS}, got {label!r}")
    if tie not in TIES:
        raise UserError(f"tie must be one of {TIES}, got {tie!r}")
    if not 0 <= flip <= 0.5:
        raise UserError(f"flip must be in [0, 0.5], got {flip}")
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
    if n < 1:
        raise UserError(f"n_pairs must be >= 1, got {n}")
    x = sample_prompts(rho, n, rng)
    a = sample_leaves(logp_mu, x, rng)
    b = sample_leaves(logp_mu, x, rng)
    return label_pairs(x, a, b, r, rng, **label_kw)


def sample_demos(logp: np.ndarray, rho: np.ndarray, n: int, rng: np.random.Generator) -> Demos:
    """``n`` demonstrations x ~ ρ, ξ ~ π(·|x)."""
    if n < 1:
        raise UserError(f"n_demos must be >= 1, got {n}")
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

    For reward levels i > j with masses p_i, cumulative F, the probability that the maximum
    lies in level i and the minimum in level j is, by inclusion–exclusion,
    (F_i − F_{j−1})^n − (F_i − F_j)^n − (F_{i−1} − F_{j−1})^n + (F_{i−1} − F_j)^n.
    It is shared within levels in proportion to P; samples all in one level give no pair.

    Returns:
        ``(m, N, N)`` weights W[x, best, worst], summing over (best, worst) to
        ρ(x) (1 − Σ_i p_i^n).
    """
    p = np.exp(logp)
    m, N = p.shape
    out = np.zeros((m, N, N))
    for x in range(m):
        levels, inv = np.unique(r_hat[x], return_inverse=True)
        mass = np.bincount(inv, weights=p[x], minlength=levels.size)
        F = np.concatenate([[0.0], np.cumsum(mass)])  # F[k] = mass of levels < k
        hi, lo = F[1:][:, None], F[:-1][None, :]  # F_i, F_{j-1}
        hi_m, lo_p = F[:-1][:, None], F[1:][None, :]  # F_{i-1}, F_j
        with np.errstate(invalid="ignore"):
            lvl = (
                np.clip(hi - lo, 0, None) ** n
                - np.clip(hi - lo_p, 0, None) ** n
                - np.clip(hi_m - lo, 0, None) ** n
                + np.clip(hi_m - lo_p, 0, None) ** n
            )
        lvl = np.tril(lvl, k=-1)  # best level i strictly above worst level j
        # P(ξ | its level) = p_ξ / mass(level); computed as a quotient (not p · (1/mass)) so a
        # denormal level mass cannot overflow to inf and turn 0 · inf into NaN.
        level_mass = mass[inv]
        within = np.divide(p[x], level_mass, out=np.zeros_like(p[x]), where=level_mass > 0)
        out[x] = rho[x] * lvl[inv][:, inv] * within[:, None] * within[None, :]
    return out
