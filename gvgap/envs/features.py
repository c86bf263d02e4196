"""Feature dictionaries φ(ξ) of simple reward classes R_sim (docs/theory.md §3 "proper learning").

Every builder takes the token array ``tokens`` of shape ``(N, H)`` — row i is the completion
whose leaf index is i, as returned by :func:`gvgap.theory.leaf_tokens` — and returns an
``(N, D)`` float64 matrix Φ with one row per completion. A linear verifier is
r_w(ξ) = w · φ(ξ) = (Φ w)_ξ with ``k`` = len(w) parameters. All builders are vectorised over the
leaves (Python loops run only over positions ``h < H`` or window offsets).

Dictionaries (``dictionary(name, ...)``):

* ``dense``: Φ_{ξ j} ~ N(0, 1) i.i.d. — a generic function of the whole sequence.
* ``counts``: Φ_{ξ v} = #{h : a_h = v} (D = V) — bag of tokens.
* ``position_token``: Φ_{ξ, hV+v} = 1[a_h = v] (D = H V) — additive per-position scores.
* ``ngram``: Φ_{ξ g} = #{h : (a_h..a_{h+n-1}) = g}, g read in base V with its first token
  most significant (D = V^n) — local-window scores; ``ngram<n>`` (e.g. ``ngram2``) fixes n.
* ``window<J>`` (J ≥ 0): Φ_{ξ,(h,c,v)} = 1[a_h = v, (a_{h−min(h,J)}..a_{h−1}) = c] — position-
  dependent scores of (previous J tokens, token) (D = Σ_h V^{min(h,J)+1}). window0 is
  position_token; window(H−1) spans every reward (the tabular rung). These are the reward
  rungs paired with the policy rungs markovJ (:mod:`gvgap.policies.ladder`).
"""

from __future__ import annotations

import re

import numpy as np

from gvgap.errors import UserError, check_choice

#: Names accepted by :func:`dictionary` (plus the patterns ``ngram<n>`` and ``window<J>``).
DICTIONARIES = ("dense", "counts", "position_token", "ngram", "ngram2", "window1", "window2")
_PATTERN = re.compile(r"^(ngram|window)([0-9]+)$")
#: Global checks accepted by :func:`check_indicator`.
CHECKS = ("sum_mod", "ends_with_first", "motif")


def token_counts(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """Bag-of-tokens counts c_v(ξ) = Σ_h 1[a_h = v].

    Args:
        tokens: ``(N, H)`` integer tokens in ``range(vocab)``.
        vocab: V.

    Returns:
        ``(N, V)`` float64 counts; each row sums to H.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    out = np.zeros((tokens.shape[0], vocab))
    rows = np.arange(tokens.shape[0])
    for h in range(tokens.shape[1]):
        out[rows, tokens[:, h]] += 1.0
    return out


def position_token(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """Position × token indicators φ_{hV+v}(ξ) = 1[a_h = v].

    Args:
        tokens: ``(N, H)``; vocab: V.

    Returns:
        ``(N, H V)`` float64 one-hot blocks, one block of V columns per position.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n, horizon = tokens.shape
    out = np.zeros((n, horizon * vocab))
    cols = np.arange(horizon)[None, :] * vocab + tokens  # (N, H)
    out[np.arange(n)[:, None], cols] = 1.0
    return out


def ngram_indicators(tokens: np.ndarray, vocab: int, n: int) -> np.ndarray:
    """Counts of each contiguous n-gram: φ_g(ξ) = Σ_{h=0}^{H-n} 1[(a_h..a_{h+n-1}) = g].

    The n-gram g = (g_1..g_n) has column index Σ_i g_i V^(n-i) (first token most significant,
    like leaf indices).

    Args:
        tokens: ``(N, H)``; vocab: V; n: window length, 1 ≤ n ≤ H.

    Returns:
        ``(N, V^n)`` float64 counts; each row sums to H − n + 1.

    Raises:
        UserError: if n is outside [1, H].
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    rows, horizon = tokens.shape
    if not 1 <= n <= horizon:
        raise UserError(f"ngram_n must be in [1, horizon={horizon}]; got {n}")
    powers = vocab ** np.arange(n - 1, -1, -1, dtype=np.int64)
    out = np.zeros((rows, vocab**n))
    idx = np.arange(rows)
    for start in range(horizon - n + 1):
        out[idx, tokens[:, start : start + n] @ powers] += 1.0
    return out


def position_window(tokens: np.ndarray, vocab: int, order: int) -> np.ndarray:
    """Window indicators 1[a_h = v, last min(h, J) tokens before h = c] (``window<J>``).

    Columns are laid out per position h in blocks of V^{min(h,J)} V, index c V + v with the
    context c read in base V (first token most significant), like
    :class:`gvgap.policies.ladder.MarkovPolicy`.

    Args:
        tokens: ``(N, H)``; vocab: V; order: J ≥ 0.

    Returns:
        ``(N, Σ_h V^{min(h,J)+1})`` float64 one-hot blocks.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n, horizon = tokens.shape
    widths = [vocab ** (min(h, order) + 1) for h in range(horizon)]
    out = np.zeros((n, sum(widths)))
    start = 0
    for h in range(horizon):  # positions, not leaves
        lo = h - min(h, order)
        powers = vocab ** np.arange(h - lo, -1, -1, dtype=np.int64)
        out[np.arange(n), start + tokens[:, lo : h + 1] @ powers] = 1.0
        start += widths[h]
    return out


def parse_dictionary(name: str, n: int = 2) -> tuple[str, int]:
    """``(base name, integer)``: ``ngram<n>`` → (ngram, n); ``window<J>`` → (window, J);
    ``ngram`` → (ngram, the given n); other names → (name, n)."""
    match = _PATTERN.match(str(name))
    if match is None:
        return str(name), n
    return match.group(1), int(match.group(2))


def dense_random(n_leaves: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Dense random features Φ_{ξ j} ~ N(0, 1) i.i.d., shape ``(N, k)``."""
    return rng.standard_normal((n_leaves, k))


def dictionary_size(name: str, vocab: int, horizon: int, *, n: int = 2) -> int | None:
    """Number of columns D of a dictionary (None for ``dense``, which has any number)."""
    sizes = {"dense": None, "counts": vocab, "position_token": horizon * vocab}
    name, n = parse_dictionary(name, n)
    if name == "ngram":
        return vocab**n
    if name == "window":
        return sum(vocab ** (min(h, n) + 1) for h in range(horizon))
    if name not in sizes:
        raise UserError(
            f"dictionary must be one of {', '.join(DICTIONARIES)} (or ngram<n>, window<J>); "
            f"got {name!r}"
        )
    return sizes[name]


def dictionary(
    name: str,
    tokens: np.ndarray,
    vocab: int,
    rng: np.random.Generator,
    *,
    k: int | None = None,
    n: int = 2,
) -> np.ndarray:
    """Features of a named dictionary, optionally k columns of it chosen at random.

    Args:
        name: one of :data:`DICTIONARIES`.
        tokens: ``(N, H)`` leaf tokens.
        vocab: V.
        rng: draws the dense features and the column subset (nothing else).
        k: number of columns; None keeps the whole dictionary (required for ``dense``).
            Otherwise k distinct columns are drawn uniformly without replacement and kept in
            increasing column order.
        n: window length of ``ngram``.

    Returns:
        ``(N, k)`` (or ``(N, D)``) float64 raw (unstandardised) features.

    Raises:
        UserError: unknown name, or k outside [1, D].
    """
    size = dictionary_size(name, vocab, tokens.shape[1], n=n)
    name, n = parse_dictionary(name, n)
    if name == "dense":
        if k is None or k < 1:
            raise UserError(f"k must be an integer >= 1 for dictionary 'dense', got {k}")
        return dense_random(tokens.shape[0], k, rng)
    if k is not None and not 1 <= k <= size:
        raise UserError(
            f"k must be in [1, {size}] for dictionary {name!r} (V={vocab}, H={tokens.shape[1]}"
            f"{f', n={n}' if name == 'ngram' else ''}); got {k}; lower k or use 'dense'"
        )
    build = {
        "counts": lambda: token_counts(tokens, vocab),
        "position_token": lambda: position_token(tokens, vocab),
        "ngram": lambda: ngram_indicators(tokens, vocab, n),
        "window": lambda: position_window(tokens, vocab, n),
    }[name]
    phi = build()
    if k is None:
        return phi
    cols = np.sort(rng.choice(size, size=k, replace=False))
    return phi[:, cols]


def standardize(phi: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit standard deviation over the leaves (uniform weights).

    φ̃_j = (φ_j − mean φ_j) / std φ_j; constant columns become zero. Since the BT likelihood
    is invariant to per-prompt constants, span{1, φ̃} = span{1, φ}: the reward class is
    unchanged, only better conditioned.

    Args:
        phi: ``(N, D)``.

    Returns:
        ``(N, D)`` float64.
    """
    phi = np.asarray(phi, dtype=np.float64)
    centred = phi - phi.mean(axis=0, keepdims=True)
    std = centred.std(axis=0, keepdims=True)
    return np.where(std > 1e-12, centred / np.where(std > 1e-12, std, 1.0), 0.0)


def block_features(phi: np.ndarray, n_prompts: int) -> np.ndarray:
    """Prompt-specific copies φ(x, ξ) = e_x ⊗ φ(ξ), so one shared w holds a w_x per prompt.

    Args:
        phi: ``(N, k)``; n_prompts: m.

    Returns:
        ``(m, N, m k)``; prompt x uses columns ``x k .. (x+1) k − 1``, the rest are zero.
    """
    m, (n, k) = n_prompts, phi.shape
    out = np.zeros((m, n, m * k))
    for x in range(m):  # a loop over prompts, not leaves
        out[x, :, x * k : (x + 1) * k] = phi
    return out


def check_indicator(
    tokens: np.ndarray, vocab: int, check: str, *, target: int = 0, motif: tuple[int, ...] = ()
) -> np.ndarray:
    """Indicator 1[check(ξ)] of a global check whose optimal policy needs lookahead.

    * ``sum_mod``: Σ_h a_h ≡ target (mod V).
    * ``ends_with_first``: a_H = a_1.
    * ``motif``: (a_s..a_{s+L−1}) = motif for some offset s (contiguous, anywhere).

    Args:
        tokens: ``(N, H)``; vocab: V; check: one of :data:`CHECKS`.

    Returns:
        ``(N,)`` float64 in {0, 1}.
    """
    if check == "sum_mod":
        hit = tokens.sum(axis=1) % vocab == target
    elif check == "ends_with_first":
        hit = tokens[:, 0] == tokens[:, -1]
    elif check == "motif":
        pat = np.asarray(motif, dtype=np.int64)
        hit = np.zeros(tokens.shape[0], dtype=bool)
        for s in range(tokens.shape[1] - pat.size + 1):  # window offsets, not leaves
            hit |= (tokens[:, s : s + pat.size] == pat).all(axis=1)
    else:
        check_choice("check", check, CHECKS)
    return hit.astype(np.float64)


def project_out(u: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Residual of u off span{1, φ_x} for each prompt x, scaled to unit std over leaves.

    Args:
        u: ``(m, N)``; phi: ``(N, k)`` shared or ``(m, N, k)`` per prompt.

    Returns:
        ``(m, N)`` with mean 0, std 1 and φ_xᵀ out_x = 0 for every x.

    Raises:
        UserError: if the features (with a constant) span all of ``u``.
    """
    out = np.empty_like(u)
    for x in range(u.shape[0]):  # a loop over prompts, not leaves
        a = np.column_stack([np.ones(u.shape[1]), phi if phi.ndim == 2 else phi[x]])
        out[x] = u[x] - a @ np.linalg.lstsq(a, u[x], rcond=None)[0]
    std = out.std(axis=1, keepdims=True)
    if (std < 1e-9).any():
        raise UserError("epsilon > 0 needs k well below vocab**horizon: the features span r*")
    return out / std
