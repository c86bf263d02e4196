"""Synthetic tasks: gold rewards against hand-derived values and brute force; the demonstrator;
distinct, disjoint prompts and held-out reward cells."""

from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")

from gvgap.errors import UserError  # noqa: E402
from gvgap.llm.config import LLMConfig  # noqa: E402
from gvgap.llm.tasks import lcs_length, make_task  # noqa: E402


def brute_lcs(a: list[int], b: list[int]) -> int:
    """Longest common subsequence by enumerating every subsequence of a."""
    best = 0
    for k in range(len(a) + 1):
        for idx in itertools.combinations(range(len(a)), k):
            sub = [a[i] for i in idx]
            it = iter(b)
            if all(any(x == y for y in it) for x in sub):
                best = max(best, k)
    return best


def test_lcs_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 3, (60, 5), generator=gen)
    b = torch.randint(0, 3, (60, 5), generator=gen)
    got = lcs_length(a, b).tolist()
    assert got == [brute_lcs(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)]


def test_readout_reward_hand_values() -> None:
    # V = 8, s = 4, ⌊V/2⌋ = 4: x_1 = 5 ≥ 4 → target 4; x_1 = 2 → target 0.
    # last token 4 vs target 4: d = 0 → r = 4; last 0 vs 4: d = 4 → r = 0;
    # last 7 vs target 0: d = min(7, 1) = 1 → r = 4 (1 − 1/4) = 3; last 2 vs 0: d = 2 → r = 2.
    # Only the last token counts: the other tokens are arbitrary.
    task = make_task(LLMConfig(task="readout", vocab=8, completion_len=3, reward_scale=4.0), 0)
    x = torch.tensor([[5, 0, 0, 0], [5, 1, 1, 1], [2, 3, 3, 3], [2, 0, 0, 0]])
    y = torch.tensor([[1, 2, 4], [6, 6, 0], [4, 4, 7], [0, 0, 2]])
    assert task.gold(x, y).tolist() == [4.0, 0.0, 3.0, 2.0]
    # the short control: the same reward on 2 tokens
    short = make_task(LLMConfig(task="short", vocab=8, short_len=2, reward_scale=4.0), 0)
    assert short.gold(torch.tensor([[7, 0, 0, 0]]), torch.tensor([[0, 5]])).tolist() == [3.0]


def test_sum_reward_hand_values() -> None:
    # V = 8, s = 4: prompt (1,2,3,4) has target t = 10 mod 8 = 2.
    # y summing to 2 → d = 0 → r = 4; sum 6 → d = min(4, 4) = 4 = ⌊8/2⌋ → r = 0;
    # sum 3 → d = 1 → r = 4 (1 − 1/4) = 3; sum 9 ≡ 1 → d = 1 → r = 3.
    task = make_task(LLMConfig(task="sum", vocab=8, completion_len=3, reward_scale=4.0), 0)
    x = torch.tensor([[1, 2, 3, 4]] * 4)
    y = torch.tensor([[2, 0, 0], [6, 0, 0], [1, 1, 1], [3, 3, 3]])
    assert task.gold(x, y).tolist() == [4.0, 0.0, 3.0, 3.0]


def test_count_reward_hand_values() -> None:
    # H = 4, s = 2: prompt (3, 2, ...) has keyword k = 3 and count c = min(2, 4) = 2;
    # y with two 3s → r = 2; none → |0 − 2| = 2 → r = 2 (1 − 2/4) = 1; four → r = 1; one → 1.5
    cfg = LLMConfig(
        task="count", vocab=5, completion_len=4, reward_scale=2.0, holdout_cells=False,
        n_train_prompts=64, n_eval_prompts=8,
    )  # fmt: skip
    task = make_task(cfg, 0)
    x = torch.tensor([[3, 2, 0, 0]] * 4)
    y = torch.tensor([[3, 0, 3, 1], [0, 1, 2, 4], [3, 3, 3, 3], [4, 4, 3, 4]])
    assert task.gold(x, y).tolist() == [2.0, 1.0, 1.0, 1.5]


def test_rouge_reward_is_lcs_with_hidden_reference() -> None:
    cfg = LLMConfig(task="rouge", vocab=6, prompt_len=4, completion_len=4, reward_scale=2.0)
    task = make_task(cfg, 3)
    x = task.eval_prompts[:5]
    ref = task.reference(x)
    # ρ(x)_i = σ_i[x_{i mod P}], σ_i permutations: check one entry by hand
    assert ref[0, 3] == task.perms[3, x[0, 3]] and ref[1, 1] == task.perms[1, x[1, 1]]
    assert torch.equal(task.gold(x, ref), torch.full((5,), 2.0, dtype=torch.float64))
    y = torch.randint(0, 6, (5, 4), generator=torch.Generator().manual_seed(1))
    want = [2.0 * brute_lcs(a, b) / 4 for a, b in zip(y.tolist(), ref.tolist(), strict=True)]
    assert task.gold(x, y).tolist() == pytest.approx(want)


@pytest.mark.parametrize("name", ["readout", "short", "sum", "count", "rouge"])
def test_skilled_demonstrator_is_optimal(name: str) -> None:
    task = make_task(LLMConfig(task=name, demo_skill=1.0, holdout_cells=False), 0)
    y = task.demonstrate(task.train_prompts, torch.Generator().manual_seed(0))
    assert y.shape == (len(task.train_prompts), task.cfg.H)
    assert bool((task.gold(task.train_prompts, y) == task.cfg.reward_scale).all())


def test_style_chain_and_unskilled_demonstrator() -> None:
    # demo_style = 1: every token continues the chain y_j = τ(y_{j−1}) (no skill)
    cfg = LLMConfig(task="readout", demo_skill=0.0, demo_style=1.0, n_train_prompts=200)
    task = make_task(cfg, 0)
    y = task.demonstrate(task.train_prompts, torch.Generator().manual_seed(0))
    assert torch.equal(y[:, 1:], task.style[y[:, :-1]])
    # demo_style = 0, skill 0: the last token is uniform on Z_8, so d(y_H, t) has mean
    # (0+1+2+3+4+3+2+1)/8 = 2 and E r = s (1 − 2/4) = 2 for s = 4
    task = make_task(LLMConfig(task="readout", demo_skill=0.0, demo_style=0.0, **_BIG), 0)
    y = task.demonstrate(task.train_prompts, torch.Generator().manual_seed(0))
    assert abs(float(task.gold(task.train_prompts, y).mean()) - 2.0) < 0.1
    assert len({tuple(row) for row in y.tolist()}) > 3900


@pytest.mark.parametrize(("name", "h"), [("readout", 3), ("short", 1), ("short", 2), ("sum", 3)])
def test_demo_logp_is_the_law_of_demonstrate(name: str, h: int) -> None:
    """Σ_y p_demo(y|x) = 1 over all V^H completions (enumeration), and 40,000 draws of
    ``demonstrate`` for one prompt match p_demo (each frequency within 5 binomial SEs)."""
    size = {"short_len": h} if name == "short" else {"completion_len": h}
    cfg = LLMConfig(task=name, vocab=3, prompt_len=3, n_train_prompts=6, n_eval_prompts=2,
                    demo_skill=0.4, demo_style=0.3, **size)  # fmt: skip
    task = make_task(cfg, 5)
    ys = torch.tensor(list(itertools.product(range(3), repeat=h)))
    for x in task.train_prompts[:3]:
        p = task.demo_logp(x.expand(len(ys), -1), ys).exp()
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    x = task.train_prompts[:1].expand(40_000, -1)
    draws = task.demonstrate(x, torch.Generator().manual_seed(1))
    code = (draws * torch.tensor([3**i for i in reversed(range(h))])).sum(dim=1)
    freq = torch.bincount(code, minlength=3**h).double() / len(code)
    p = task.demo_logp(x[: len(ys)], ys).exp()
    assert bool(((freq - p).abs() <= 5 * (p * (1 - p) / len(code)).sqrt() + 1e-9).all())


def test_demo_logp_hand_value() -> None:
    # readout, V = 8, H = 3, s = 0.3, k = 0.5: y = (a, τ(a), t) with t the target and
    # t ≠ τ(τ(a)) → p = (1/8)·(0.3 + 0.7/8)·(0.5 + 0.5·0.7/8)
    cfg = LLMConfig(task="readout", completion_len=3, demo_style=0.3, demo_skill=0.5)
    task = make_task(cfg, 0)
    x = task.train_prompts[:1]
    t = int(task.target(x))
    a = next(a for a in range(8) if int(task.style[task.style[a]]) != t)
    y = torch.tensor([[a, int(task.style[a]), t]])
    want = math.log(1 / 8) + math.log(0.3 + 0.7 / 8) + math.log(0.5 + 0.5 * 0.7 / 8)
    assert float(task.demo_logp(x, y)) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="rouge"):
        make_task(LLMConfig(task="rouge"), 0).demo_logp(x, y)


_BIG = {"n_train_prompts": 4000, "prompt_len": 6, "reward_scale": 4.0}


def test_prompts_are_distinct_and_train_eval_disjoint() -> None:
    # V^P = 2^5 = 32 prompts, 12 + 4 asked for: no repeat inside or across the sets
    cfg = LLMConfig(vocab=2, prompt_len=5, n_train_prompts=12, n_eval_prompts=4)
    task = make_task(cfg, 0)
    train = {tuple(r) for r in task.train_prompts.tolist()}
    evals = {tuple(r) for r in task.eval_prompts.tolist()}
    assert len(train) == 12 and len(evals) == 4 and not train & evals
    with pytest.raises(UserError, match="distinct prompts"):
        make_task(LLMConfig(vocab=2, prompt_len=4, n_train_prompts=8, n_eval_prompts=4), 0)


def test_count_holds_reward_cells_out() -> None:
    cfg = LLMConfig(task="count", vocab=4, prompt_len=4, n_train_prompts=40, n_eval_prompts=8)
    task = make_task(cfg, 0)
    cells = lambda p: {tuple(r) for r in p[:, :2].tolist()}  # noqa: E731
    assert not cells(task.train_prompts) & cells(task.eval_prompts)
    assert len(cells(task.eval_prompts)) <= 4  # 25 % of the 16 cells
    open_ = make_task(LLMConfig(**{**cfg.__dict__, "holdout_cells": False}), 0)
    assert cells(open_.train_prompts) & cells(open_.eval_prompts)


def test_instance_seed_draws_the_problem() -> None:
    cfg = LLMConfig(task="rouge")
    a, b, c = make_task(cfg, 0), make_task(cfg, 0), make_task(cfg, 1)
    assert torch.equal(a.perms, b.perms) and torch.equal(a.train_prompts, b.train_prompts)
    assert torch.equal(a.style, b.style)
    assert not torch.equal(a.perms, c.perms)
    assert make_task(LLMConfig(task="short"), 0).seq_len == cfg.prompt_len + 2 + 2
