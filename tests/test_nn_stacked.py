"""The stacked neural classes: the tree transformer equals the same weights run over whole
sequences (causal scaled-dot-product attention), the node MLP equals a Linear layer on the
one-hot encoding, chunked passes equal the whole-tree pass (outputs and gradients), node
tables match brute force, and a model's outputs and gradients are bit-identical whatever
stack it sits in (batch invariance, the basis of ``run_batch``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import random_env  # noqa: E402
from nn_helpers import placement  # noqa: E402

from gvgap.nn.layout import Chunk, TreeIndex, pad, split_tree  # noqa: E402
from gvgap.nn.optim import FlatParams, value_and_grad  # noqa: E402
from gvgap.nn.policies import MLPPolicy, TransformerPolicy  # noqa: E402
from gvgap.nn.rewards import ScalarHeadRM  # noqa: E402

F = torch.nn.functional


@pytest.fixture(autouse=True)
def _one_thread():
    """gvgap computes single-threaded (its __init__); batch invariance is a property there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _perturb(mod, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return mod


def _sequence_body(body, b: int, seq: torch.Tensor) -> torch.Tensor:
    """Model b of a stacked TreeTransformer on whole sequences ``(S, L)`` with
    ``F.scaled_dot_product_attention(is_causal=True)``: ``(S, L, width)``."""
    w = body.width
    x = body.tok.weight[b][seq] + body.pos.weight[b][: seq.shape[1]]

    def ln(mod, u):
        return F.layer_norm(u, (w,)) * mod.weight[b] + mod.bias[b]

    def lin(mod, u):
        return u @ mod.weight[b] + mod.bias[b]

    for blk in body.blocks:
        s, length = seq.shape
        q, k, v = lin(blk.qkv, ln(blk.ln1, x)).view(s, length, 3, blk.heads, -1).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + lin(blk.proj, a.transpose(1, 2).reshape(s, length, w))
        x = x + lin(blk.ff2, F.gelu(lin(blk.ff1, ln(blk.ln2, x))))
    return ln(body.ln, x)


def _sequences(m: int, vocab: int, length: int) -> torch.Tensor:
    toks = np.array(list(itertools.product(range(vocab), repeat=length)), dtype=np.int64)
    toks = toks.reshape(vocab**length, length)
    rows = [np.concatenate([np.full((len(toks), 1), vocab + x), toks], 1) for x in range(m)]
    return torch.as_tensor(np.concatenate(rows))


@pytest.mark.parametrize(("m", "vocab", "horizon"), [(1, 2, 3), (2, 3, 3), (1, 2, 1)])
def test_tree_transformer_equals_sequence_attention(m, vocab, horizon):
    env = random_env(1, vocab=vocab, horizon=horizon, n_prompts=m)
    kw = {"width": 8, "depth": 2, "heads": 2, "placement": placement(), "n_models": 2}
    pol = _perturb(TransformerPolicy(m, vocab, horizon, logpi_ref=env.logpi_ref, **kw))
    rm = _perturb(ScalarHeadRM(m, vocab, horizon, **kw), seed=1)
    n = vocab**horizon
    for b in range(2):
        seq = _sequences(m, vocab, horizon - 1)
        hid = _sequence_body(pol.body, b, seq)  # (m V^(H-1), H, w)
        logits = hid @ pol.head.weight[b] + pol.head.bias[b]
        lp = np.zeros((m, n))
        toks = np.array(list(itertools.product(range(vocab), repeat=horizon)))
        for x in range(m):
            for leaf, xi in enumerate(toks):
                row = x * vocab ** (horizon - 1) + leaf // vocab
                for t in range(horizon):
                    s = leaf // vocab ** (horizon - t)
                    z = torch.as_tensor(env.logpi_ref[t][x, s]) + logits[row, t]
                    lp[x, leaf] += float(F.log_softmax(z, -1)[xi[t]])
        got = pol.leaf_logp()[b].detach().cpu().numpy()
        assert np.max(np.abs(got - lp)) < 1e-12
        last = _sequence_body(rm.body, b, _sequences(m, vocab, horizon))[:, -1]
        r = (last @ rm.head.weight[b] + rm.head.bias[b])[:, 0].reshape(m, n)
        assert torch.max(torch.abs(rm.leaf_reward()[b] - r)) < 1e-12


def test_node_mlp_is_linear_on_the_one_hot_encoding():
    m, vocab, horizon = 2, 3, 3
    rm = _perturb(
        ScalarHeadRM(m, vocab, horizon, arch="mlp", width=8, depth=2, placement=placement())
    )
    toks = np.array(list(itertools.product(range(vocab), repeat=horizon)))
    enc = np.zeros((m, len(toks), m + horizon * vocab))
    for x in range(m):
        enc[x, :, x] = 1
        for t in range(horizon):
            enc[x, np.arange(len(toks)), m + t * vocab + toks[:, t]] = 1
    net = rm.net
    e = torch.as_tensor(enc.reshape(-1, enc.shape[-1]))
    h = F.gelu(e @ net.rows.weight[0] + net.bias0.weight[0])
    for lin in net.hidden:
        h = F.gelu(h @ lin.weight[0] + lin.bias[0])
    r = (h @ net.head.weight[0] + net.head.bias[0])[:, 0].reshape(m, -1)
    assert torch.max(torch.abs(rm.leaf_reward() - r)) < 1e-12


@pytest.mark.parametrize(
    ("m", "vocab", "horizon", "max_leaves"), [(1, 2, 5, 4), (2, 3, 3, 9), (3, 2, 2, 8)]
)
def test_layout_tables_match_brute_force(m, vocab, horizon, max_leaves):
    chunks = split_tree(m, vocab, horizon, max_leaves)
    covered = []
    for ch in chunks:
        tix = TreeIndex(m, vocab, horizon, horizon + 1, ch)
        start, count = tix.leaf_span
        assert count <= max_leaves
        covered.extend(range(start, start + count))
        for h in range(horizon + 1):
            g = tix.global_ids(h)
            real = g[g >= 0]
            assert len(g) % 64 == 0 and len(g) == pad(len(real))
            anc = tix.ancestors(h)
            for i, gi in enumerate(real):  # ancestors by walking parents
                for t in range(h + 1):
                    pos = anc[i, t]
                    lvl = np.searchsorted(tix.offsets, pos, side="right") - 1
                    assert lvl == t and tix.global_ids(t)[pos - tix.offsets[t]] == gi // vocab ** (
                        h - t
                    )
    assert covered == list(range(m * vocab**horizon))


def _flat_grad(mod, chunks):
    """A loss of the real leaves only (padding entries are unspecified)."""
    flat = FlatParams(mod, True)
    n = mod.n_prompts * mod.n_leaves

    def loss(out):
        return (out[:, :n] * out[:, :n]).sum(1) + out[:, 0]

    return value_and_grad(mod, flat, loss, chunks)


@pytest.mark.parametrize("arch", ["transformer", "mlp"])
def test_chunked_pass_equals_whole_tree(arch):
    m, vocab, horizon = 2, 2, 4
    env = random_env(2, vocab=vocab, horizon=horizon, n_prompts=m)
    for kind in ("policy", "rm"):
        whole = _perturb(_make(f"{arch}_{kind}", 2, [3, 4], env))
        parts = _perturb(_make(f"{arch}_{kind}", 2, [3, 4], env))
        chunks = split_tree(m, vocab, horizon, 4)
        assert len(chunks) == 8
        f0, g0 = _flat_grad(whole, None)
        f1, g1 = _flat_grad(parts, chunks)
        assert torch.max(torch.abs(f0 - f1)) < 1e-12 and torch.max(torch.abs(g0 - g1)) < 1e-10


def _make(name: str, n_models: int, seeds, env):
    """A stack of ``name`` = ``<arch>_<policy|rm>`` (width 8, depth 2) on ``env``'s tree."""
    arch, kind = name.split("_")
    kw = {"width": 8, "depth": 2, "n_models": n_models, "seed": seeds, "placement": placement()}
    kw.update({"heads": 2} if arch == "transformer" else {})
    shape = (env.n_prompts, env.vocab, env.horizon)
    if kind == "rm":
        return ScalarHeadRM(*shape, arch=arch, **kw)
    cls = TransformerPolicy if arch == "transformer" else MLPPolicy
    return cls(*shape, logpi_ref=[env.logpi_ref] * n_models, **kw)


MAKERS = ("transformer_policy", "mlp_policy", "transformer_rm", "mlp_rm")


@pytest.mark.skipif(
    placement().is_cuda, reason="batch invariance is a property of CPU single-threaded kernels"
)
@pytest.mark.parametrize("name", MAKERS)
def test_a_model_is_bit_identical_in_any_stack(name):
    """Model b of a stack of 7 (V = 3: no per-model size is a multiple of a SIMD width
    before padding) equals the same model alone: outputs and every gradient, bit for bit."""
    env = random_env(3, vocab=3, horizon=3, n_prompts=1)
    seeds = list(range(10, 17))
    big = _perturb(_make(name, 7, seeds, env))
    out = big.leaf_flat()
    grads = torch.autograd.grad((out * out).sum() + out[:, 1].sum(), list(big.parameters()))
    for b in (0, 4, 6):
        one = _make(name, 1, [seeds[b]], env)
        with torch.no_grad():
            for p, q in zip(one.parameters(), big.parameters()):
                p.copy_(q[b : b + 1])
        o = one.leaf_flat()
        gs = torch.autograd.grad((o * o).sum() + o[:, 1].sum(), list(one.parameters()))
        assert torch.equal(o[0], out[b])
        assert all(torch.equal(a[0], c[b]) for a, c in zip(gs, grads))


def test_init_depends_on_the_model_seed_only():
    env = random_env(4, vocab=2, horizon=3)
    a = _make("transformer_rm", 3, [5, 6, 7], env)
    b = _make("transformer_rm", 1, [6], env)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p[1], q[0])
    assert not torch.equal(a.body.tok.weight[0], a.body.tok.weight[1])


def test_split_tree_whole_tree_when_it_fits():
    assert split_tree(2, 3, 3, 54) == [Chunk(0, 0, 2)]
    assert split_tree(2, 3, 3, 27) == [Chunk(0, 0, 1), Chunk(0, 1, 2)]
