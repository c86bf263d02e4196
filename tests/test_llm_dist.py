"""Data parallel with no code change: two gloo processes take the same steps as one process
on the same global batch (gradients all-reduced, loss divided by the global batch)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import torch.distributed as tdist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from gvgap.llm import dist  # noqa: E402
from gvgap.llm import stages as st  # noqa: E402
from gvgap.llm.config import LLMConfig  # noqa: E402
from gvgap.llm.tasks import make_task  # noqa: E402
from gvgap.nn.device import resolve  # noqa: E402

CFG = LLMConfig(
    task="sum",
    vocab=5,
    prompt_len=3,
    completion_len=3,
    n_train_prompts=8,
    sft_steps=4,
    dpo_steps=3,
    batch_size=8,
    lr=1e-2,
)


def train(seed: int) -> dict[str, torch.Tensor]:
    """SFT then DPO on its pairs (the same code path as `gvgap llm run`); final parameters."""
    p = resolve("cpu", "float64")
    task = make_task(CFG, 0)
    sft, _ = st.stage_sft(CFG, task, seed, p)
    pairs = st.stage_pairs(CFG, task, sft, seed, p)["train"]
    dpo, _ = st.stage_dpo(CFG, task, sft, sft, pairs, seed, p)
    return {k: v.detach().clone() for k, v in dpo.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    dist.setup(is_cuda=False)
    assert dist.world() == (rank, world)
    torch.save(train(0), Path(out) / f"rank{rank}.pt")
    tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_strides_like_distributed_sampler(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert dist.shard(torch.arange(8)).tolist() == [1, 4, 7]


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    assert dist.world() == (0, 1)
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
