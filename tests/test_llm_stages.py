"""Every stage on a tiny model: losses at hand-derived points, labels, the tie rule, label
quality, the KL frontier and matched-KL reading, early stopping, mid-stage checkpoints."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from gvgap.llm import evaluate as ev  # noqa: E402
from gvgap.llm import stages as st  # noqa: E402
from gvgap.llm.config import LLMConfig  # noqa: E402
from gvgap.llm.tasks import make_task  # noqa: E402
from gvgap.llm.train import PATIENCE, fit  # noqa: E402
from gvgap.nn import losses  # noqa: E402
from gvgap.nn.device import resolve  # noqa: E402

P = resolve("cpu", "float64")
CFG = LLMConfig(
    task="readout",
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
    bon_n="1,4",
    eval_samples=3,
    eval_every=2,
    demo_skill=0.8,
    demo_style=0.5,
    reward_scale=4.0,
    pairs_per_prompt=2,
    beta=0.1,
    lr=1e-2,
    val_fraction=0.25,
)


@pytest.fixture(scope="module")
def run():
    task = make_task(CFG, 0)
    sft, info = st.stage_sft(CFG, task, 0, P)
    pairs = st.stage_pairs(CFG, task, sft, 0, P)
    return task, sft, info, pairs


def test_sft_fits_demonstrations(run) -> None:
    task, sft, info, _ = run
    # a fresh model is near uniform over the V = 5 content tokens: per-token NLL ≈ log 5 = 1.61;
    # demonstrations are styled (a chain continued w.p. 0.5) with a 0.8-planned last token, so
    # a fitted model gets its per-token NLL well below that
    fresh = st.new_lm(CFG, task, 0, P)
    y = task.demonstrate(task.train_prompts, torch.Generator().manual_seed(9))
    seqs = task.join(task.train_prompts, y)
    nll = lambda m: -float(st.logp_rows(m, seqs, task, P).mean()) / 4  # noqa: E731
    assert abs(nll(fresh) - math.log(5)) < 0.1 and nll(sft) < nll(fresh) - 0.15
    assert math.isfinite(info["grad_norm"]) and info["steps"] == 30


def test_pairs_are_split_by_prompt_and_labelled_by_gold_bt(run) -> None:
    task, _, _, pairs = run
    # 25 % of the 24 training prompts (6) give the validation pairs, the rest the fitting ones
    assert len(pairs["train"]["chosen"]) == 18 * CFG.pairs_per_prompt
    assert len(pairs["val"]["chosen"]) == 6 * CFG.pairs_per_prompt
    assert len(pairs["test"]["chosen"]) == 6 * CFG.pairs_per_prompt
    seen = lambda s: {tuple(r) for r in task.split(pairs[s]["chosen"])[0].tolist()}  # noqa: E731
    assert not seen("train") & seen("val") and not seen("train") & seen("test")
    # with a huge reward scale, BT(gold) is a hard max: chosen never has lower gold reward
    big = make_task(dataclasses.replace(CFG, reward_scale=1e3), 0)
    gen = torch.Generator().manual_seed(0)
    x = big.train_prompts
    lab = st.label_pairs(big, x, big.demonstrate(x, gen), big.demonstrate(x, gen), gen)
    r_c, r_r = big.gold_rows(lab["chosen"]), big.gold_rows(lab["rejected"])
    assert bool((r_c >= r_r).all()) and bool((r_c > r_r).any())


def test_dpo_loss_at_the_reference_is_log_two(run) -> None:
    task, sft, _, pairs = run
    # π = π_ref ⇒ margin 0 ⇒ −log σ(0) = log 2 for every pair (Rafailov et al. 2023, eq. 7)
    tr = pairs["train"]
    ref = st.ref_logps(sft, tr, task, P)
    lp = {k: st.logp_rows(sft, tr[k], task, P) for k in ("chosen", "rejected")}
    rows = losses.dpo_rows(lp["chosen"], lp["rejected"], ref["chosen"], ref["rejected"], 0.1)
    assert torch.allclose(rows, torch.full_like(rows, math.log(2)), atol=1e-12)
    # a hand point: margins β·((1 − 0) − (−2 − 0)) = 0.5·3 → −log σ(1.5) = log(1 + e^{−1.5})
    one = losses.dpo_rows(*(torch.tensor([v], dtype=torch.float64) for v in (1, -2, 0, 0)), 0.5)
    assert float(one) == pytest.approx(math.log1p(math.exp(-1.5)), abs=1e-15)
    # reference-free (local RM): −log σ(β (lp_c − lp_r)) at β = 2, lp 0 vs −1 → log(1+e^{−2})
    loc = losses.local_rm_rows(torch.tensor([0.0]), torch.tensor([-1.0]), 2.0)
    assert float(loc) == pytest.approx(math.log1p(math.exp(-2.0)), abs=1e-6)


def test_preference_stages_move_toward_the_labels(run) -> None:
    task, sft, _, pairs = run
    cfg = dataclasses.replace(CFG, rm_steps=40, dpo_steps=20, pref_lr=1e-2)
    rm, info = st.stage_global_rm(cfg, task, sft, pairs, 0, P)
    tr = pairs["train"]
    d = st.rm_rows(rm, tr["chosen"], P) - st.rm_rows(rm, tr["rejected"], P)
    assert float(torch.sigmoid(d).mean()) > 0.55  # fits its training pairs
    assert info["val_loss"] <= math.log(2) + 1e-9 and info["best_step"] % cfg.eval_every == 0
    ref = st.ref_logps(sft, tr, task, P)
    dpo, _ = st.run_dpo(cfg, task, sft, tr, ref, 20, torch.Generator().manual_seed(0), P)
    lp = {k: st.logp_rows(dpo, tr[k], task, P) - ref[k] for k in ("chosen", "rejected")}
    assert float((lp["chosen"] - lp["rejected"]).mean()) > 0


def test_tie_rule_and_on_policy_label_quality() -> None:
    # 3 prompts, N = 3. Prompt 0: scores (1, 3, 2) → best 1, worst 0; gold (0, 1, 5) → the
    # chosen (gold 1) beats the rejected (gold 0): correct. Prompt 1: all scores equal → no
    # pair. Prompt 2: scores (0, 0, 1) → best 2, worst 0 (first index); gold (2, 2, 2) → tie.
    scores = torch.tensor([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0], [0.0, 0.0, 1.0]])
    gold = torch.tensor([[0.0, 1.0, 5.0], [1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    ys = torch.tensor([[[0], [1], [2]], [[0], [0], [0]], [[1], [1], [2]]]).view(9, 1)
    best, worst, ok, info = st.on_policy_pairs(scores, gold, ys)
    assert best.tolist() == [1, 0, 2] and worst.tolist() == [0, 0, 0]
    assert ok.tolist() == [True, False, True]
    assert info["pairs_kept"] == pytest.approx(2 / 3)
    assert info["distinct"] == pytest.approx((3 + 1 + 2) / 3)
    assert info["label_accuracy"] == 0.5 and info["label_ties"] == 0.5
    assert info["label_accuracy_se"] == pytest.approx(math.sqrt(0.25 / 2))


def test_frontier_steps_and_matched_kl_hand_values() -> None:
    assert st.frontier_steps(dataclasses.replace(CFG, frontier=4), 10) == [0, 2, 5, 8, 10]
    # online: KL 0 → 0.5 (win 0.5 → 0.7); offline: KL 0 → 0.2 → 1.0 (win 0.5 → 0.6 → 0.8).
    # κ = min(0.5, 1.0) = 0.5; online at 0.5: 0.7; offline at 0.5: 0.6 + (0.3/0.8)·0.2 = 0.675
    online = {"0": {"kl_k1": 0.0, "win_rate": 0.5}, "5": {"kl_k1": 0.5, "win_rate": 0.7}}
    offline = {
        "0": {"kl_k1": 0.0, "win_rate": 0.5},
        "3": {"kl_k1": 0.2, "win_rate": 0.6},
        "6": {"kl_k1": 1.0, "win_rate": 0.8},
    }
    kappa, a, b = ev.matched_kl(online, offline)
    assert (kappa, a) == (0.5, 0.7) and b == pytest.approx(0.675)


def test_summaries_against_hand_values() -> None:
    # two prompts, two samples: rewards (1, 3) and (0, 0); reference rewards (1,) and (0,)
    r = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    refs = {"sft": torch.tensor([[1.0], [0.0]]), "demo": torch.tensor([[3.0], [0.0]])}
    out = ev.summarize(r, refs, torch.tensor([[0.0, 0.0], [math.log(2), math.log(2)]]))
    assert out["reward"] == pytest.approx(1.0)  # mean of per-prompt means (2, 0)
    w0 = (0.5 + 1 / (1 + math.exp(-2))) / 2  # σ(0), σ(2)
    assert out["win_rate"] == pytest.approx((w0 + 0.5) / 2)
    assert out["kl_k1"] == pytest.approx(math.log(2) / 2)
    # k3 = e^{−l} − 1 + l at l = log 2: 1/2 − 1 + log 2
    assert out["kl_k3"] == pytest.approx((0.5 - 1 + math.log(2)) / 2)
    # validation likelihood: σ(Δ) of the labeller's score on (chosen, rejected)
    test = {"chosen": torch.zeros((2, 1)), "rejected": torch.ones((2, 1))}
    scorer = {"x": lambda s: torch.tensor([2.0, 0.0, 1.0, 1.0])}  # Δ = (1, −1)
    val = ev.rm_validation(test, scorer)
    assert val["rm_x/val_likelihood"] == pytest.approx(0.5)
    assert val["rm_x/val_accuracy"] == pytest.approx(0.5)


def _quadratic(target: float, val_best_at: int):
    """A one-parameter module trained toward ``target``, whose validation loss is smallest
    after ``val_best_at`` steps (|step − val_best_at|)."""
    w = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        w.weight.zero_()
    state = {"k": 0}

    def row_loss(model, idx):
        return (model(torch.ones(len(idx), 1, dtype=torch.float64)).squeeze(1) - target) ** 2

    def on_step(k):
        state["k"] = k
        return {"w": float(w.weight.detach())}

    return w, row_loss, (lambda: abs(state["k"] - val_best_at)), on_step


def test_early_stopping_restores_the_best_check_and_stops() -> None:
    cfg = dataclasses.replace(CFG, eval_every=2, batch_size=4)
    w, row_loss, val, on_step = _quadratic(1.0, val_best_at=6)
    info = fit(w, row_loss, 4, 100, cfg, torch.Generator().manual_seed(0), lr=0.05,
               val_loss=val, on_step=on_step)  # fmt: skip
    # checks at 2, 4, 6 (best), then PATIENCE checks without improvement: stops at 6 + 2·P
    assert info["best_step"] == 6 and info["steps"] == 6 + 2 * PATIENCE
    assert float(w.weight.detach()) == pytest.approx(info["records"]["6"]["w"])


def test_mid_stage_checkpoint_resumes_to_the_same_parameters(tmp_path, capsys) -> None:
    cfg = dataclasses.replace(CFG, eval_every=3, batch_size=2, checkpoint_every=4)
    ckpt = tmp_path / "partial"

    seen: list[int] = []

    def train(steps: int, directory, boom: int | None = None):
        gen = torch.Generator().manual_seed(5)
        w, row_loss, _, _ = _quadratic(2.0, 0)
        seen.clear()

        def on_step(k):
            seen.append(k)
            if k == boom:
                raise KeyboardInterrupt  # a kill after the checkpoint at step 8
            return None

        info = fit(w, row_loss, 4, steps, cfg, gen, lr=0.1, ckpt_dir=directory, on_step=on_step)
        return float(w.weight.detach()), info

    whole, _ = train(11, None)
    with pytest.raises(KeyboardInterrupt):
        train(11, ckpt, boom=9)
    assert (ckpt / "hashes.json").is_file()
    resumed, info = train(11, ckpt)
    assert seen == [9, 10, 11]  # it resumed at step 8 (model, Adam state, generator)
    assert resumed == whole and info["steps"] == 11
    # a corrupt checkpoint is reported on one line and the stage starts over
    with pytest.raises(KeyboardInterrupt):
        train(11, ckpt, boom=9)
    (ckpt / "model.safetensors").write_bytes(b"truncated")
    again, _ = train(11, ckpt)
    assert again == whole and seen[0] == 0  # started over
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt" in err


def test_bon_and_label_quality_shapes(run) -> None:
    task, sft, _, pairs = run
    models = {"sft": sft, "global_rm": None, "local_rm": sft, "dpo": sft}
    scorers = ev.labellers(CFG, task, models, P)
    scorers.pop("global")
    refs = ev.eval_refs(CFG, task, sft, 0, P)
    bon = ev.best_of_n(CFG, task, sft, scorers, refs, 0, P)
    assert {"bon_gold_n1/win_rate", "bon_gold_n4/win_rate", "bon_local_n4/win_demo"} <= set(bon)
    # reranking by r* itself can only help: BoN-4 by gold ≥ BoN-1 (same samples, first one)
    assert bon["bon_gold_n4/reward"] >= bon["bon_gold_n1/reward"]
    # DPO = SFT here: its implicit reward is identically 0, every pair a tie → chance (½)
    val = ev.rm_validation(pairs["test"], scorers)
    assert val["rm_dpo/val_likelihood"] == pytest.approx(0.5)
    q = ev.label_quality(CFG, task, sft, scorers, 0, P)
    assert q["rm_gold/label_accuracy"] == 1.0 and q["rm_dpo/pairs_kept"] == 0.0
    assert np.isnan(q["rm_dpo/label_accuracy"])
    # the local RM here is SFT itself: its labeller is the reference term β log π_ref exactly
    seqs = torch.cat([pairs["test"]["chosen"], pairs["test"]["rejected"]])
    assert torch.equal(scorers["local"](seqs), scorers["sft"](seqs))
    # demo = β log p_demo of the closed form; only the reference labellers skip best-of-N
    assert torch.equal(scorers["demo"](seqs), CFG.beta * task.demo_logp(*task.split(seqs)))
    assert "rm_demo/val_likelihood" in val and "rm_demo/label_accuracy" in q
    assert not any(k.startswith(("bon_demo", "bon_sft")) for k in bon)
    rouge = dataclasses.replace(CFG, task="rouge")
    assert "demo" not in ev.labellers(rouge, make_task(rouge, 0), models, P)


def test_gradient_checkpointing_takes_the_same_steps() -> None:
    """Recomputing activations in the backward pass changes memory, not the steps."""
    task = make_task(CFG, 0)
    short = dataclasses.replace(CFG, sft_steps=3)
    plain, _ = st.stage_sft(short, task, 1, P)
    ckpt, _ = st.stage_sft(dataclasses.replace(short, grad_checkpointing=True), task, 1, P)
    a, b = plain.state_dict(), ckpt.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-12) for k in a)
    on = getattr(ckpt, "is_activation_checkpointing", None)
    assert on is False or (on is None and not ckpt.is_gradient_checkpointing)  # off again


def test_an_rm_of_another_size_gets_its_own_sft_backbone() -> None:
    """``rm_model`` (the RM-size axis): the RM backbone is a ``small`` model SFT-trained on the
    same demonstrations, not the policy's; the run reports both SFT stages."""
    from gvgap.experiments.llm import SMOKE
    from gvgap.llm.pipeline import run_stages, stage_names

    cfg = dataclasses.replace(SMOKE, rm_model="small")
    assert "rm_sft" in stage_names(cfg) and "rm_sft" not in stage_names(SMOKE)
    out = run_stages(cfg, 0, 0)
    assert out["rm_sft/steps"] == cfg.sft_steps and out["sft/steps"] == cfg.sft_steps
    assert 0.0 <= out["rm_global/val_likelihood"] <= 1.0
