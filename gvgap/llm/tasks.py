"""Synthetic languages with exact gold verifiers and a dialled gap (THEORY §5, §6 items 9-10).

Sequences are integer tokens: content tokens ``0..V-1``, ``SEP = V``, ``BOS = V+1``; a row is
``[BOS, x_1..x_P, SEP, y_1..y_H]`` with fixed P and H, so no padding is ever needed.

- ``sum`` (gap present): target t(x) = Σ_i x_i mod V;
  r*(x, y) = s · (1 − d(Σ_j y_j mod V, t) / ⌊V/2⌋), d the circular distance on Z_V. Verifying
  is one sum; generating well needs the last tokens to plan for all earlier ones.
- ``count`` (gap present, learnable by tiny models): keyword k(x) = x_1, target count
  c(x) = min(x_2, H); r*(x, y) = s · (1 − |#{j : y_j = k(x)} − c(x)| / H). Verifying is a
  count; generating well needs the tokens to coordinate (exactly c keywords in all).
- ``short`` (the paper's two-word-summary control): the ``count`` reward with H = 1 or 2, so
  the policy class and the reward class nearly coincide.
- ``rouge`` (the paper's ROUGE-L control): a hidden reference ρ(x)_i = σ_i[x_{(i mod P)+1}]
  (σ_i random permutations drawn by ``instance_seed``); r*(x, y) = s · LCS(y, ρ(x)) / H.
  Verifying is as hard as generating: both need ρ.

The demonstrator (the known generator π_ref is fitted to) draws tokens uniformly and, with
probability ``demo_skill`` per decision, plans: sum — the last token hits the target;
count/short — exactly c(x) keywords at uniformly chosen positions (per row); rouge — token i
copies ρ(x)_i.
Its samples are diverse and non-degenerate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gvgap.llm.config import LLMConfig


@dataclass(frozen=True)
class Task:
    """A drawn task instance. Tensors are int64 on CPU.

    Attributes:
        cfg: the run config (task, V, P, H, reward scale, demonstrator skill).
        train_prompts: ``(n_train, P)``.
        eval_prompts: ``(n_eval, P)``.
        perms: ``(H, V)`` hidden permutations of ``rouge`` (identity rows otherwise).
    """

    cfg: LLMConfig
    train_prompts: torch.Tensor
    eval_prompts: torch.Tensor
    perms: torch.Tensor

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
        return self.prefix_len + self.cfg.horizon

    def prefix(self, prompts: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` prompts → ``(B, P+2)`` rows ``[BOS, x, SEP]``."""
        b = prompts.shape[0]
        bos = torch.full((b, 1), self.cfg.vocab + 1, dtype=torch.long)
        sep = torch.full((b, 1), self.cfg.vocab, dtype=torch.long)
        return torch.cat([bos, prompts.cpu(), sep], dim=1)

    def join(self, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """``(B, P)``, ``(B, H)`` → full rows ``(B, P+H+2)``."""
        return torch.cat([self.prefix(prompts), completions.cpu()], dim=1)

    def target(self, prompts: torch.Tensor) -> torch.Tensor:
        """t(x) = Σ x mod V, ``(B,)``."""
        return prompts.sum(dim=1) % self.cfg.vocab

    def count(self, prompts: torch.Tensor) -> torch.Tensor:
        """c(x) = min(x_2, H), the keyword count of ``count``/``short``, ``(B,)``."""
        return prompts[:, 1].clamp(max=self.cfg.horizon)

    def reference(self, prompts: torch.Tensor) -> torch.Tensor:
        """ρ(x)_i = σ_i[x_{i mod P}], ``(B, H)`` (the hidden ``rouge`` reference)."""
        h, p = self.cfg.horizon, self.cfg.prompt_len
        cols = prompts[:, torch.arange(h) % p]  # (B, H)
        return self.perms[torch.arange(h)[None, :], cols]

    def gold(self, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """Gold reward r*(x, y) of the module docstring, ``(B,)`` float64 in [0, s]."""
        prompts, completions = prompts.cpu(), completions.cpu()
        s, v = self.cfg.reward_scale, self.cfg.vocab
        if self.cfg.task == "rouge":
            lcs = lcs_length(completions, self.reference(prompts))
            return s * lcs.double() / self.cfg.horizon
        if self.cfg.task in ("count", "short"):
            hits = (completions == prompts[:, :1]).sum(dim=1)
            return s * (1.0 - (hits - self.count(prompts)).abs().double() / self.cfg.horizon)
        diff = (completions.sum(dim=1) - self.target(prompts)) % v
        dist = torch.minimum(diff, v - diff).double()
        return s * (1.0 - dist / (v // 2))

    def demonstrate(self, prompts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Demonstrations ``(B, H)`` from the known generator (module docstring)."""
        b, h, v = prompts.shape[0], self.cfg.horizon, self.cfg.vocab
        y = torch.randint(0, v, (b, h), generator=gen)
        plan = torch.rand((b, h), generator=gen) < self.cfg.demo_skill
        if self.cfg.task == "rouge":
            return torch.where(plan, self.reference(prompts), y)
        if self.cfg.task in ("count", "short"):
            return self._count_demo(prompts, plan[:, 0], gen)
        last = (self.target(prompts) - y[:, :-1].sum(dim=1)) % v
        y[:, -1] = torch.where(plan[:, -1], last, y[:, -1])
        return y

    def _count_demo(
        self, prompts: torch.Tensor, plan: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Planned rows: exactly c keywords at random positions; other rows: uniform tokens."""
        b, h, v = prompts.shape[0], self.cfg.horizon, self.cfg.vocab
        k, c = prompts[:, :1], self.count(prompts)[:, None]
        # a non-keyword token: uniform on the V − 1 others (shift past k)
        other = torch.randint(0, v - 1, (b, h), generator=gen)
        other = other + (other >= k).long()
        rank = torch.rand((b, h), generator=gen).argsort(dim=1).argsort(dim=1)
        exact = rank < c  # c positions chosen uniformly
        planned = torch.where(exact, k, other)
        return torch.where(plan[:, None], planned, torch.randint(0, v, (b, h), generator=gen))


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


def make_task(cfg: LLMConfig, instance_seed: int) -> Task:
    """Draw the prompt sets and hidden references from ``instance_seed`` (never from ``seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence([instance_seed, 0x11A]))
    p, v, h = cfg.prompt_len, cfg.vocab, cfg.horizon
    prompts = rng.integers(0, v, size=(cfg.n_train_prompts + cfg.n_eval_prompts, p))
    perms = np.stack([rng.permutation(v) for _ in range(h)])
    if cfg.task != "rouge":
        perms = np.tile(np.arange(v), (h, 1))
    t = torch.as_tensor(prompts, dtype=torch.long)
    return Task(
        cfg=cfg,
        train_prompts=t[: cfg.n_train_prompts],
        eval_prompts=t[cfg.n_train_prompts :],
        perms=torch.as_tensor(perms, dtype=torch.long),
    )


def bt_prob(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """Gold Bradley–Terry P(a ≻ b) = σ(r*(a) − r*(b)), elementwise."""
    return torch.sigmoid(r_a - r_b)
