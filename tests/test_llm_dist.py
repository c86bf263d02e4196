"""Data parallel with no code change (accelerate): two gloo processes, each with gradient
accumulation over two micro-batches, take the same steps as one process on the same global
batch (DDP averages, the loss carries W·A/B)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
import torch.multiprocessing as mp  # noqa: E402

from gvgap.llm import stages as st  # noqa: E402
from gvgap.llm.config import LLMConfig  # noqa: E402
from gvgap.llm.tasks import make_task  # noqa: E402
from gvgap.llm.train import shard  # noqa: E402
from gvgap.nn.device import resolve  # noqa: E402

CFG = LLMConfig(
    task="readout",
    vocab=5,
    prompt_len=3,
    completion_len=3,
    n_train_prompts=16,
    n_eval_prompts=4,
    sft_steps=4,
    dpo_steps=3,
    batch_size=8,
    grad_accum=2,
    lr=1e-2,
)


def train(seed: int) -> dict[str, torch.Tensor]:
    """SFT then DPO on its pairs (the code path of `gvgap llm run`); final parameters."""
    p = resolve("cpu", "float64")
    task = make_task(CFG, 0)
    sft, _ = st.stage_sft(CFG, task, seed, p)
    pairs = st.stage_pairs(CFG, task, sft, seed, p)["train"]
    ref = st.ref_logps(sft, pairs, task, p)
    dpo, _ = st.run_dpo(CFG, task, sft, pairs, ref, 3, st.stage_gen(seed, "dpo"), p)
    return {k: v.detach().clone() for k, v in dpo.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from accelerate.state import AcceleratorState

    # a forked child inherits the parent's (single-process) accelerate state: start afresh
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.save(train(0), Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_strides_like_distributed_sampler() -> None:
    assert shard(torch.arange(8), 1, 3).tolist() == [1, 4, 7]


@pytest.mark.slow  # two processes with a gloo group (~10 s on 2 cores)
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    # fork: the children inherit the imported modules (spawn would re-import transformers)
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    single = train(0)
    init = st.new_lm(CFG, make_task(CFG, 0), 0, resolve("cpu", "float64")).state_dict()
    assert any(not torch.equal(single[k], init[k]) for k in single)  # training moved them
    for k in single:
        assert torch.equal(r0[k], r1[k]), k  # ranks identical
        # same global batch ⇒ same step up to float64 summation order
        assert torch.allclose(r0[k], single[k], atol=1e-9, rtol=1e-9), k
