"""Synthetic languages with exact gold verifiers and a dialled gap (docs/theory.md §5, §6 items
9-10).

Sequences are integer tokens: content tokens ``0..V-1``, ``SEP = V``, ``BOS = V+1``; a row is
``[BOS, x_1..x_P, SEP, y_1..y_H]`` with fixed P and H, so no padding is ever needed.

- ``readout`` (the gap task): target t(x) = ⌊V/2⌋ · 1{x_1 ≥ ⌊V/2⌋} (which half of the
  vocabulary the first prompt token lies in); r*(x, y) = s · (1 − d(y_H, t(x)) / ⌊V/2⌋), d the
  circular distance on Z_V. Verifying is a simple read-out of one token at the end of a long
  completion; a likelihood-based verifier (the local RM, DPO's implicit reward) must find that
  token's signal among H tokens of style — the long horizon dilutes its credit assignment.
- ``short`` (the paper's two-word-summary control): the ``readout`` reward on a ``short_len``
  completion: no long horizon, so the policy class and the reward class nearly coincide.
- ``rouge`` (the paper's ROUGE-L control): a hidden reference ρ(x)_i = σ_i[x_{(i mod P)+1}]
  (σ_i random permutations drawn by ``instance_seed``); r*(x, y) = s · LCS(y, ρ(x)) / H.
  Verifying is as hard as generating: both need ρ.
- ``count``: keyword k(x) = x_1, target count c(x) = min(x_2, H);
  r*(x, y) = s · (1 − |#{j : y_j = k(x)} − c(x)| / H) (the tokens must coordinate; a tiny
  scalar-head RM learns it slowly — kept for larger presets).
- ``sum``: target Σ_i x_i mod V; r*(x, y) = s · (1 − d(Σ_j y_j mod V, Σ_i x_i mod V) / ⌊V/2⌋)
  (GPU presets).

The demonstrator has a *style*: each token continues a hidden chain y_j = τ(y_{j−1}) (τ a
permutation drawn by ``instance_seed``) with probability ``demo_style``, else is uniform. Its
*skill* follows the reward with probability ``demo_skill``: readout/short/sum — the last token
hits the target; count — the row has exactly c(x) keywords at uniform positions (its other
tokens styled but never the keyword); rouge — each token copies ρ(x)_j. The style makes
log π_ref(y) vary with reward-irrelevant structure, as a real SFT model's likelihood does.

Prompts are distinct, and training and evaluation prompts disjoint by construction. With
``holdout_cells`` the (x₁, x₂) cells that decide the ``count`` reward are split too
(:data:`EVAL_CELL_SHARE` of them only ever appear in evaluation). The other tasks do not
allow it: their reward is decided by x₁ alone (readout, short: its half of the vocabulary)
or by every prompt token (rouge, sum), and a token never seen in a role cannot be learnt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gvgap.errors import UserError
from gvgap.llm.config import EVAL_CELL_SHARE, LLMConfig

#: Tasks whose demonstrator likelihood has a closed form (:meth:`Task.demo_logp`).
DEMO_CLOSED_FORM = ("readout", "short", "sum")


@dataclass(frozen=True)
class Task:
    """A drawn task instance. Tensors are int64 on CPU.

    Attributes:
        cfg: the run config (task, V, P, H, reward scale, demonstrator).
        train_prompts: ``(n_train, P)`` distinct prompts.
        eval_prompts: ``(n_eval, P)`` distinct prompts, none of them a training prompt.
        perms: ``(H, V)`` hidden permutations of ``rouge`` (identity rows otherwise).
        style: ``(V,)`` the demonstrator's style chain τ.
    """

    cfg: LLMConfig
    train_prompts: torch.Tensor
    eval_prompts: torch.Tensor
    perms: torch.Tensor
    style: torch.Tensor

    @property
    def n_content(self) -> int:
        """Content tokens V: the support of every policy (:mod:`gvgap.llm.model`)."""
        return self.cfg.vocab

    @property
    def vocab_size(self) -> int:
        """Model vocabulary: V content tokens + SEP + BOS."""
        return self.cfg.vocab + 2

    @property
    def prefix_len(self) -> int:
        """BOS + P prompt tokens + SEP."""
        return self.cfg.prompt_len + 2

    @property
    def seq_len(self) -> int:
        """Full row length P + H + 2."""
        return self.prefix_len + self.cfg.H

    def prefix(self, prompts: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` prompts → ``(B, P+2)`` rows ``[BOS, x, SEP]``."""
        b = prompts.shape[0]
        bos = torch.full((b, 1), self.cfg.vocab + 1, dtype=torch.long)
        sep = torch.full((b, 1), self.cfg.vocab, dtype=torch.long)
        return torch.cat([bos, prompts.cpu(), sep], dim=1)

    def join(self, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """``(B, P)``, ``(B, H)`` → full rows ``(B, P+H+2)``."""
        return torch.cat([self.prefix(prompts), completions.cpu()], dim=1)

    def split(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full rows → ``(prompts, completions)`` (the inverse of :meth:`join`)."""
        return seqs[:, 1 : self.prefix_len - 1], seqs[:, self.prefix_len :]

    def target(self, prompts: torch.Tensor) -> torch.Tensor:
        """The target token of the last position, ``(B,)``: readout/short ⌊V/2⌋·1{x_1 ≥ ⌊V/2⌋};
        sum Σ x mod V."""
        half = self.cfg.vocab // 2
        if self.cfg.task in ("readout", "short"):
            return (prompts[:, 0] >= half).long() * half
        return prompts.sum(dim=1) % self.cfg.vocab

    def count(self, prompts: torch.Tensor) -> torch.Tensor:
        """c(x) = min(x_2, H), the keyword count of ``count``/``short``, ``(B,)``."""
        return prompts[:, 1].clamp(max=self.cfg.H)

    def reference(self, prompts: torch.Tensor) -> torch.Tensor:
        """ρ(x)_i = σ_i[x_{i mod P}], ``(B, H)`` (the hidden ``rouge`` reference)."""
        h, p = self.cfg.H, self.cfg.prompt_len
        cols = prompts[:, torch.arange(h) % p]  # (B, H)
        return self.perms[torch.arange(h)[None, :], cols]

    def gold(self, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """Gold reward r*(x, y) of the module docstring, ``(B,)`` float64 in [0, s]."""
        prompts, completions = prompts.cpu(), completions.cpu()
        s, v, h = self.cfg.reward_scale, self.cfg.vocab, self.cfg.H
        if self.cfg.task == "rouge":
            lcs = lcs_length(completions, self.reference(prompts))
            return s * lcs.double() / h
        if self.cfg.task == "count":
            hits = (completions == prompts[:, :1]).sum(dim=1)
            return s * (1.0 - (hits - self.count(prompts)).abs().double() / h)
        got = completions.sum(dim=1) if self.cfg.task == "sum" else completions[:, -1]
        diff = (got - self.target(prompts)) % v
        dist = torch.minimum(diff, v - diff).double()
        return s * (1.0 - dist / (v // 2))

    def gold_rows(self, seqs: torch.Tensor) -> torch.Tensor:
        """:meth:`gold` of full rows, ``(B,)``."""
        return self.gold(*self.split(seqs))

    def gold_wins(
        self, prompts: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Gold Bradley–Terry labels of pairs (y_a, y_b): ``(B,)`` bools, True with probability
        P(a ≻ b) = σ(r*(x, a) − r*(x, b)) (one float64 uniform per pair from ``gen``)."""
        u = torch.rand(len(prompts), generator=gen, dtype=torch.float64)
        return u < torch.sigmoid(self.gold(prompts, y_a) - self.gold(prompts, y_b))

    def styled(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """``(b, H)`` rows of the style chain: y_1 uniform, then y_j = τ(y_{j−1}) with
        probability ``demo_style``, else uniform."""
        h, v = self.cfg.H, self.cfg.vocab
        uniform = torch.randint(0, v, (b, h), generator=gen)
        keep = torch.rand((b, h), generator=gen) < self.cfg.demo_style
        cols = [uniform[:, 0]]
        for j in range(1, h):
            cols.append(torch.where(keep[:, j], self.style[cols[-1]], uniform[:, j]))
        return torch.stack(cols, dim=1)

    def demonstrate(self, prompts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Demonstrations ``(B, H)`` from the known generator (module docstring)."""
        b, v = prompts.shape[0], self.cfg.vocab
        y = self.styled(b, gen)
        plan = torch.rand((b, self.cfg.H), generator=gen) < self.cfg.demo_skill
        if self.cfg.task == "rouge":
            return torch.where(plan, self.reference(prompts), y)
        if self.cfg.task == "count":
            return self._count_demo(prompts, y, plan[:, 0], gen)
        if self.cfg.task in ("readout", "short"):
            y[:, -1] = torch.where(plan[:, -1], self.target(prompts), y[:, -1])
            return y
        last = (self.target(prompts) - y[:, :-1].sum(dim=1)) % v
        y[:, -1] = torch.where(plan[:, -1], last, y[:, -1])
        return y

    def demo_logp(self, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """Exact log p_demo(y | x) of :meth:`demonstrate`, ``(B,)`` float64 — readout, short, sum.

        With s = ``demo_style``, k = ``demo_skill``, τ the style chain and g(x, y_<H) the planned
        last token (readout/short: the target; sum: target − Σ_{j<H} y_j mod V)::

            q_j = s·1{y_j = τ(y_{j−1})} + (1 − s)/V              (j ≥ 2;  q_1 = 1/V)
            p(y | x) = Π_{j<H} q_j · (k·1{y_H = g} + (1 − k)·q_H)

        Rouge and count plan every token over a latent style chain: no closed form here.
        """
        if self.cfg.task not in DEMO_CLOSED_FORM:
            raise ValueError(f"demo_logp: no closed form for task {self.cfg.task!r}")
        prompts, y = prompts.cpu(), completions.cpu()
        v, st, k = self.cfg.vocab, self.cfg.demo_style, self.cfg.demo_skill
        on = (y[:, 1:] == self.style[y[:, :-1]]).double()
        q = torch.cat(
            [torch.full_like(y[:, :1], 1, dtype=torch.float64) / v, st * on + (1 - st) / v], 1
        )
        planned = self.target(prompts)
        if self.cfg.task == "sum":
            planned = (planned - y[:, :-1].sum(dim=1)) % v
        last = k * (y[:, -1] == planned).double() + (1 - k) * q[:, -1]
        return torch.log(q[:, :-1]).sum(dim=1) + torch.log(last)

    def _count_demo(
        self, prompts: torch.Tensor, y: torch.Tensor, plan: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Planned rows: exactly c keywords at uniformly chosen positions, the other tokens
        styled but shifted off the keyword; unplanned rows: styled as drawn."""
        b, h, v = prompts.shape[0], self.cfg.H, self.cfg.vocab
        k, c = prompts[:, :1], self.count(prompts)[:, None]
        off = torch.where(y == k, (k + 1) % v, y)
        rank = torch.rand((b, h), generator=gen).argsort(dim=1).argsort(dim=1)
        planned = torch.where(rank < c, k, off)
        return torch.where(plan[:, None], planned, y)


def lcs_length(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Longest-common-subsequence length of each row pair, ``(B, n)``, ``(B, m)`` → ``(B,)``.

    The textbook DP L[i, j] = L[i-1, j-1] + 1 if a_i = b_j else max(L[i-1, j], L[i, j-1]),
    vectorised over the batch (loops over n·m positions only).
    """
    n, m = a.shape[1], b.shape[1]
    prev = torch.zeros((a.shape[0], m + 1), dtype=torch.long)
    for i in range(n):
        cur = torch.zeros_like(prev)
        eq = a[:, i : i + 1] == b  # (B, m)
        for j in range(m):
            cur[:, j + 1] = torch.where(
                eq[:, j], prev[:, j] + 1, torch.maximum(prev[:, j + 1], cur[:, j])
            )
        prev = cur
    return prev[:, m]


def holds_cells(cfg: LLMConfig) -> bool:
    """Whether this config holds reward cells out (``holdout_cells`` on a count task)."""
    return cfg.holdout_cells and cfg.task == "count"


def cell_split(cfg: LLMConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The (x₁, x₂) cells ``(m, 2)`` of training and of evaluation prompts."""
    v = cfg.vocab
    cells = np.stack(np.meshgrid(np.arange(v), np.arange(v), indexing="ij"), -1).reshape(-1, 2)
    order = rng.permutation(len(cells))
    n_eval = max(1, round(EVAL_CELL_SHARE * len(cells)))
    return cells[np.sort(order[n_eval:])], cells[np.sort(order[:n_eval])]


def distinct_prompts(
    rng: np.random.Generator, n: int, cfg: LLMConfig, cells: np.ndarray | None
) -> np.ndarray:
    """``n`` distinct prompts ``(n, P)`` in draw order; with ``cells``, (x₁, x₂) from them.

    Rejection of duplicates: each round draws 2n candidates (validation guarantees at least
    4n distinct prompts exist, so a round keeps most of them).

    Raises:
        UserError: the space of prompts is too small (names n_train_prompts / n_eval_prompts).
    """
    p, v = cfg.prompt_len, cfg.vocab
    space = float(v) ** p if cells is None else len(cells) * float(v) ** (p - 2)
    if n > space / 2:
        raise UserError(
            f"n_train_prompts / n_eval_prompts: {n} distinct prompts asked for, but only "
            f"{space:.0f} exist (vocab, prompt_len, holdout_cells); lower them"
        )
    seen: dict[bytes, np.ndarray] = {}
    while len(seen) < n:
        x = rng.integers(0, v, size=(2 * n, p))
        if cells is not None:
            x[:, :2] = cells[rng.integers(0, len(cells), size=2 * n)]
        for row in x:
            seen.setdefault(row.tobytes(), row)
            if len(seen) == n:
                break
    return np.stack(list(seen.values()))


def make_task(cfg: LLMConfig, instance_seed: int) -> Task:
    """Draw the prompt sets, hidden references and style from ``instance_seed`` (never from
    the run seed): prompts distinct, training and evaluation disjoint (module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([instance_seed, 0x11A]))
    v, h = cfg.vocab, cfg.H
    if holds_cells(cfg):
        train_cells, eval_cells = cell_split(cfg, rng)
        train = distinct_prompts(rng, cfg.n_train_prompts, cfg, train_cells)
        evals = distinct_prompts(rng, cfg.n_eval_prompts, cfg, eval_cells)
    else:
        both = distinct_prompts(rng, cfg.n_train_prompts + cfg.n_eval_prompts, cfg, None)
        train, evals = both[: cfg.n_train_prompts], both[cfg.n_train_prompts :]
    perms = np.stack([rng.permutation(v) for _ in range(h)])
    if cfg.task != "rouge":
        perms = np.tile(np.arange(v), (h, 1))
    style = rng.permutation(v)
    t = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    return Task(cfg, t(train), t(evals), t(perms), t(style))
