"""Every stage on a tiny model: losses at hand-derived points, labels, tie rule, evaluation."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from gvgap.llm import evaluate as ev  # noqa: E402
from gvgap.llm import stages as st  # noqa: E402
from gvgap.llm.config import LLMConfig  # noqa: E402
from gvgap.llm.tasks import make_task  # noqa: E402
from gvgap.nn.device import resolve  # noqa: E402

P = resolve("cpu", "float64")
CFG = LLMConfig(
    task="sum",
    vocab=5,
    prompt_len=3,
    completion_len=4,
    n_train_prompts=24,
    n_eval_prompts=6,
    sft_steps=30,
    rm_steps=10,
    dpo_steps=10,
    online_steps=5,
    batch_size=16,
    online_samples=4,
    bon_n=(1, 4),
    eval_samples=3,
    demo_skill=0.8,
    lr=1e-2,
)


@pytest.fixture(scope="module")
def run():
    task = make_task(CFG, 0)
    sft, info = st.stage_sft(CFG, task, 0, P)
    pairs = st.stage_pairs(CFG, task, sft, 0, P)
    return task, sft, info, pairs


def test_sft_fits_demonstrations(run) -> None:
    task, sft, info, _ = run
    # a fresh model is near uniform over V+2 tokens: per-token NLL ≈ log 7 = 1.95;
    # demonstrations have 3 uniform tokens (log 5 each) + a 0.8-planned last one, so a fit
    # model gets per-token NLL well below log 7
    fresh = st.new_lm(CFG, task, 0, P)
    y = task.demonstrate(task.train_prompts, torch.Generator().manual_seed(9))
    seqs = task.join(task.train_prompts, y)
    nll = lambda m: -float(st.logp_rows(m, seqs, task, P).mean()) / 4  # noqa: E731
    assert nll(fresh) > 1.8 and nll(sft) < nll(fresh) - 0.2
    assert math.isfinite(info["grad_norm"])


def test_pairs_are_labelled_by_gold_bt(run) -> None:
    task, _, _, pairs = run
    tr = pairs["train"]
    assert tr["chosen"].shape == (24 * CFG.pairs_per_prompt, task.seq_len)
    assert len(pairs["val"]["chosen"]) == 6 * CFG.pairs_per_prompt
    # with a huge reward scale, BT(gold) is a hard max: chosen never has lower gold reward
    big = make_task(LLMConfig(**{**CFG.__dict__, "reward_scale": 1e4}), 0)
    gen = torch.Generator().manual_seed(0)
    x = big.train_prompts
    ya = big.demonstrate(x, gen)
    yb = big.demonstrate(x, gen)
    lab = st.label_pairs(big, x, ya, yb, gen)
    p = big.prefix_len
    r_c = big.gold(x, lab["chosen"][:, p:])
    r_r = big.gold(x, lab["rejected"][:, p:])
    assert bool((r_c >= r_r).all()) and bool((r_c > r_r).any())


def test_dpo_loss_at_the_reference_is_log_two(run) -> None:
    task, sft, _, pairs = run
    # π = π_ref ⇒ margin 0 ⇒ −log σ(0) = log 2 for every pair (DPO, Rafailov et al. eq. 7)
    tr = pairs["train"]
    ref = {k: st.logp_rows(sft, tr[k], task, P) for k in ("chosen", "rejected")}
    loss = st.dpo_row_loss(sft, tr, ref, 0.1, task, P)(torch.arange(5))
    assert torch.allclose(loss.detach(), torch.full((5,), math.log(2.0), dtype=torch.float64))


def test_rm_stages_and_dpo_move_toward_the_labels(run) -> None:
    task, sft, _, pairs = run
    tr = pairs["train"]
    rm, info_rm = st.stage_global_rm(CFG, task, sft, tr, 0, P)
    local, _ = st.stage_local_rm(CFG, task, sft, tr, 0, P)
    dpo, _ = st.stage_dpo(CFG, task, sft, sft, tr, 0, P)
    k = len(tr["chosen"])
    seqs = torch.cat([tr["chosen"], tr["rejected"]])
    scores = ev.implicit_rewards(CFG, task, seqs, rm, local, dpo, sft, P)
    # each is trained to put chosen above rejected on its own training pairs
    for name, s in scores.items():
        assert float((s[:k] - s[k:]).mean()) > 0, name
    assert math.isfinite(info_rm["grad_norm"])
    on, info = st.stage_online(CFG, task, sft, sft, rm, 2, 0, P, "online_dpo_iter")
    assert info["n_pairs"] >= 1
    diff = [not torch.equal(a, b) for a, b in zip(on.parameters(), sft.parameters(), strict=True)]
    assert any(diff)


def test_oracle_online_pairs_are_ordered_by_gold(run) -> None:
    task, sft, _, _ = run
    pairs = st.online_pairs(CFG, task, sft, None, torch.Generator().manual_seed(0), P)
    p = task.prefix_len
    x = pairs["chosen"][:, 1 : p - 1]
    # best vs worst of N by r*: strictly ordered (tied groups give no pair)
    assert bool(
        (task.gold(x, pairs["chosen"][:, p:]) > task.gold(x, pairs["rejected"][:, p:])).all()
    )
    assert torch.equal(x, pairs["rejected"][:, 1 : p - 1])


def test_best_worst_tie_rule() -> None:
    s = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    best, worst, ok = st.best_worst(s)
    assert best.tolist() == [1, 0, 2] and worst.tolist() == [3, 0, 0]
    assert ok.tolist() == [True, False, True]


def test_summarize_hand_values() -> None:
    # r = r_ref ⇒ win 0.5 exactly; r − r_ref = log 3 ⇒ σ = 3/4
    r = torch.zeros((4, 2), dtype=torch.float64)
    assert ev.summarize(r, r, None)["win_rate"] == 0.5
    out = ev.summarize(r + math.log(3.0), r, torch.zeros((4, 2), dtype=torch.float64))
    assert out["win_rate"] == pytest.approx(0.75) and out["kl_k1"] == 0.0 and out["kl_k3"] == 0.0
    # k3 at l = log 2: e^{−l} − 1 + l = 1/2 − 1 + log 2
    lr = torch.full((3, 1), math.log(2.0), dtype=torch.float64)
    out = ev.summarize(r[:3, :1], r[:3, :1], lr)
    assert out["kl_k3"] == pytest.approx(math.log(2.0) - 0.5)
    assert ev.mean_se(torch.tensor([1.0, 3.0])) == pytest.approx((2.0, 1.0))  # s = √2, /√2


def test_evaluation_of_sft_against_itself(run) -> None:
    task, sft, _, pairs = run
    r_ref = ev.ref_rewards(CFG, task, sft, 0, P)
    m = ev.policy_metrics(CFG, task, sft, sft, r_ref, 0, "sft", P)
    assert m["kl_k1"] == 0.0 and m["kl_k3"] == 0.0  # log π − log π_ref ≡ 0
    assert 0.0 < m["win_rate"] < 1.0 and m["win_rate_se"] > 0
    rm, _ = st.stage_global_rm(CFG, task, sft, pairs["train"], 0, P)
    bon = ev.best_of_n(CFG, task, sft, rm, sft, sft, r_ref, 0, P)
    # N = 1 reranks nothing: every RM gives the same picks
    assert bon["bon_global_n1/reward"] == bon["bon_local_n1/reward"] == bon["bon_dpo_n1/reward"]
    val = ev.rm_validation(CFG, task, pairs["val"], rm, sft, sft, sft, P)
    # DPO's implicit reward of π_ref itself is 0 ⇒ likelihood σ(0) = 1/2 on every pair
    assert val["rm_dpo/val_likelihood"] == pytest.approx(0.5)
    assert 0.5 < val["rm_gold/val_likelihood"] <= 1.0
