"""GPT-NeoX models from config: log-probs, KV-cache sampling, reward head, determinism."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from gvgap.llm.config import LLMConfig  # noqa: E402
from gvgap.llm.model import RewardModel, build_lm, logp_completion, n_params, sample  # noqa: E402
from gvgap.llm.tasks import make_task  # noqa: E402
from gvgap.nn.device import resolve  # noqa: E402

P64 = resolve("cpu", "float64")


@pytest.fixture(scope="module")
def setup():
    task = make_task(LLMConfig(task="sum", vocab=5, prompt_len=3, completion_len=4), 0)
    lm = build_lm("tiny", task.vocab_size, task.seq_len, 7, P64)
    return task, lm


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


def test_logp_completion_is_sum_of_per_token_conditionals(setup) -> None:
    task, lm = setup
    gen = torch.Generator().manual_seed(0)
    x = task.eval_prompts[:3]
    y = torch.randint(0, 5, (3, 4), generator=gen)
    seqs = task.join(x, y)
    got = logp_completion(lm, seqs, task.prefix_len, P64)
    # chain rule by hand: one forward per prefix, last-position log-softmax
    want = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for t in range(4):
            ctx = seqs[:, : task.prefix_len + t]
            logp = torch.log_softmax(lm(input_ids=ctx).logits[:, -1], dim=-1)
            want += logp.gather(1, y[:, t : t + 1]).squeeze(1)
    assert torch.allclose(got.detach(), want, atol=1e-10)


def test_kv_cache_sampling_equals_naive_sampling(setup) -> None:
    task, lm = setup
    prefix = task.prefix(task.eval_prompts[:6])
    got = sample(lm, prefix, 4, 5, 0.7, torch.Generator().manual_seed(3), P64)
    gen = torch.Generator().manual_seed(3)
    seqs = prefix.clone()
    with torch.no_grad():
        for _ in range(4):  # recompute the full forward at every step, no cache
            logits = lm(input_ids=seqs).logits[:, -1, :5].float() / 0.7
            tok = torch.multinomial(torch.softmax(logits, -1).double(), 1, generator=gen)
            seqs = torch.cat([seqs, tok], dim=1)
    assert torch.equal(got, seqs[:, task.prefix_len :])
    assert int(got.max()) < 5  # content tokens only


def test_reward_model_shape_and_head(setup) -> None:
    task, lm = setup
    rm = RewardModel(lm, 0)
    seqs = task.join(task.eval_prompts[:4], torch.zeros((4, 4), dtype=torch.long))
    r = rm(seqs)
    assert r.shape == (4,)
    # r̂ = w·h_L + b with b = 0 at init
    h = lm.gpt_neox(input_ids=seqs).last_hidden_state[:, -1]
    assert torch.allclose(r, h @ rm.head.weight[0], atol=1e-10)


def test_local_checkpoint_directory_loads_the_same_model(setup, tmp_path) -> None:
    from gvgap.llm.config import make_config

    task, lm = setup
    lm.save_pretrained(tmp_path)
    cfg = make_config({"model": str(tmp_path)}, "sum")  # a directory with config.json is valid
    loaded = build_lm(cfg.model, task.vocab_size, task.seq_len, 0, P64)
    seqs = task.join(task.eval_prompts[:2], torch.zeros((2, 4), dtype=torch.long))
    a = logp_completion(lm, seqs, task.prefix_len, P64)
    assert torch.allclose(a, logp_completion(loaded, seqs, task.prefix_len, P64))
