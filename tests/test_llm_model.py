"""GPT-NeoX models from config: one law for sampling and likelihood, KV-cache sampling, the
global RM, determinism, local checkpoints."""

from __future__ import annotations

import itertools
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from gvgap.errors import UserError  # noqa: E402
from gvgap.llm.config import LLMConfig, ModelPreset, check_model  # noqa: E402
from gvgap.llm.model import (  # noqa: E402
    build_lm,
    build_rm,
    logp_completion,
    n_params,
    neox_config,
    rm_scores,
    sample,
)
from gvgap.llm.tasks import make_task  # noqa: E402
from gvgap.nn.device import resolve  # noqa: E402

P64 = resolve("cpu", "float64")
CFG = LLMConfig(
    task="sum", vocab=3, prompt_len=4, completion_len=3, n_train_prompts=8, n_eval_prompts=4
)


@pytest.fixture(scope="module")
def setup():
    task = make_task(CFG, 0)
    lm = build_lm("tiny", task.vocab_size, task.seq_len, 7, P64)
    return task, lm


def wide_lm(task, vocab: int = 64):
    """A tiny GPT-NeoX whose output vocabulary (64 ids) is far larger than the 3 content
    tokens, like a Pythia vocabulary with the task's tokens at its start."""
    from transformers import GPTNeoXForCausalLM

    cfg = neox_config(ModelPreset(hidden=16, layers=1, heads=2, ffn=32, vocab=vocab), 5, 16)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return GPTNeoXForCausalLM(cfg).double()


def test_build_is_deterministic_and_leaves_global_rng(setup) -> None:
    task, lm = setup
    state = torch.random.get_rng_state()
    again = build_lm("tiny", task.vocab_size, task.seq_len, 7, P64)
    other = build_lm("tiny", task.vocab_size, task.seq_len, 8, P64)
    assert torch.equal(torch.random.get_rng_state(), state)
    sd, sd2, sd3 = lm.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not all(torch.equal(sd[k], sd3[k]) for k in sd)
    assert n_params(lm) > 0 and next(lm.parameters()).dtype == torch.float64


def test_logp_completion_is_the_chain_rule_over_content_tokens(setup) -> None:
    task, lm = setup
    x = task.eval_prompts[:3]
    y = torch.tensor([[0, 2, 1], [1, 1, 1], [2, 0, 0]])
    seqs = task.join(x, y)
    got = logp_completion(lm, seqs, task.prefix_len, P64, task.n_content)
    # chain rule by hand: one forward per prefix, log-softmax over the V = 3 content logits
    want = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for t in range(3):
            logits = lm(input_ids=seqs[:, : task.prefix_len + t]).logits[:, -1, :3]
            want += torch.log_softmax(logits, dim=-1).gather(1, y[:, t : t + 1]).squeeze(1)
    assert torch.allclose(got.detach(), want, atol=1e-10)


@pytest.mark.parametrize("wide", [False, True])
def test_one_law_likelihood_sums_to_one_over_every_completion(setup, wide: bool) -> None:
    """Σ_y π(y|x) over all V^H = 27 completions is 1: the likelihood puts no mass on SEP, BOS
    or (``wide``) the 59 ids beyond the content tokens. With the full-vocabulary softmax the
    sum is Π_t (content mass) < 1 — the leak the one law removes."""
    task, lm = setup
    lm = wide_lm(task) if wide else lm
    ys = torch.tensor(list(itertools.product(range(3), repeat=3)))
    for x in task.eval_prompts[:2]:
        seqs = task.join(x.expand(27, -1), ys)
        with torch.no_grad():
            lp = logp_completion(lm, seqs, task.prefix_len, P64, task.n_content)
            full = logp_completion(lm, seqs, task.prefix_len, P64, None)
        assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-12)
        assert float(full.exp().sum()) < 1.0 - 1e-3


def test_sampled_frequencies_match_exp_logp(setup) -> None:
    """Three blocks of 20 000 draws at T = 1 from one prompt of the wide model: Pearson's χ²
    of the 27 completion counts against n·exp(log π(y|x)), summed over the blocks (78 df), is
    below its 0.9999 quantile (133.2). A sampler over another law fails by far: at T = 0.5
    (π_T ∝ π²) the same statistic is > 300."""
    task, _ = setup
    lm = wide_lm(task)
    n, x = 20_000, task.eval_prompts[:1].expand(20_000, -1)
    every = torch.tensor(list(itertools.product(range(3), repeat=3)))
    with torch.no_grad():
        p = logp_completion(lm, task.join(x[:27], every), task.prefix_len, P64, 3).exp()

    def chi2(temperature: float) -> float:
        total = 0.0
        for seed in range(3):
            gen = torch.Generator().manual_seed(seed)
            ys = sample(lm, task.prefix(x), 3, task.n_content, temperature, gen, P64)
            freq = torch.bincount((ys * torch.tensor([9, 3, 1])).sum(1), minlength=27).double()
            total += float(((freq - n * p) ** 2 / (n * p)).sum())
        return total

    assert chi2(1.0) < 133.2
    assert chi2(0.5) > 300.0


def test_kv_cache_sampling_equals_naive_sampling(setup) -> None:
    task, lm = setup
    prefix = task.prefix(task.eval_prompts[:6])
    got = sample(lm, prefix, 3, 3, 0.7, torch.Generator().manual_seed(3), P64)
    gen = torch.Generator().manual_seed(3)
    seqs = prefix.clone()
    with torch.no_grad():
        for _ in range(3):  # recompute the full forward at every step, no cache
            logits = lm(input_ids=seqs).logits[:, -1, :3] / 0.7
            tok = torch.multinomial(torch.softmax(logits, -1).double(), 1, generator=gen)
            seqs = torch.cat([seqs, tok], dim=1)
    assert torch.equal(got, seqs[:, task.prefix_len :])
    assert int(got.max()) < 3  # content tokens only


def test_reward_model_reads_the_last_hidden_state(setup) -> None:
    task, lm = setup
    rm = build_rm(lm, 0, pad_id=task.vocab_size - 1)
    seqs = task.join(task.eval_prompts[:4], torch.zeros((4, 3), dtype=torch.long))
    r = rm_scores(rm, seqs, P64)
    assert r.shape == (4,)
    # r̂ = w·h_L, h_L the SFT backbone's final hidden state at the last position (copied)
    h = lm.gpt_neox(input_ids=seqs).last_hidden_state[:, -1]
    assert torch.allclose(r, h @ rm.score.weight[0], atol=1e-10)
    assert all(
        torch.equal(a, b)
        for a, b in zip(rm.gpt_neox.parameters(), lm.gpt_neox.parameters(), strict=True)
    )
    with torch.no_grad():
        next(rm.gpt_neox.parameters()).add_(1.0)  # a copy: the SFT model is untouched
    assert not torch.equal(next(rm.gpt_neox.parameters()), next(lm.gpt_neox.parameters()))


def test_local_checkpoint_directory_loads_the_same_model(setup, tmp_path) -> None:
    task, lm = setup
    lm.save_pretrained(tmp_path)
    check_model(str(tmp_path), "model")  # a GPT-NeoX directory with config.json is valid
    loaded = build_lm(str(tmp_path), task.vocab_size, task.seq_len, 0, P64)
    seqs = task.join(task.eval_prompts[:2], torch.zeros((2, 3), dtype=torch.long))
    a = logp_completion(lm, seqs, task.prefix_len, P64, 3)
    assert torch.allclose(a, logp_completion(loaded, seqs, task.prefix_len, P64, 3))


@pytest.mark.parametrize("content", ["{not json", json.dumps({"model_type": "llama"}), "[]"])
def test_bad_checkpoint_directory_is_one_line(tmp_path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(UserError, match="model: one of"):
        check_model(str(tmp_path), "model")
