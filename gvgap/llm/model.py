"""HF GPT-NeoX (Pythia) causal LMs built from a config, the global reward model, and the two
primitives every stage uses: completion log-probabilities and sampling — one law for both.

**One policy, one law.** A policy π is the LM's softmax *restricted to the content tokens*
0..V−1 (the other ids — SEP, BOS, the rest of a Pythia vocabulary — are masked out of the
logits): π(a | s) = exp(z_a) / Σ_{b<V} exp(z_b). :func:`token_logp` is that law;
:func:`logp_completion` sums it over the completion and :func:`sample` draws from it (at
temperature T: from π_T(a|s) ∝ π(a|s)^{1/T}, the same law at T = 1). Mass can therefore never
leak onto SEP/BOS, and every KL, implicit reward and likelihood is of the distribution that
is sampled. ``n_content = None`` means the whole vocabulary (Hugging Face text models).

Models are random-initialised from :data:`gvgap.llm.config.PRESETS` (nothing is downloaded)
or loaded from a local ``save_pretrained`` directory. Initialisation draws from a forked torch
RNG seeded explicitly, so the global RNG is left untouched and every rank builds the same model.
The global RM is ``GPTNeoXForSequenceClassification`` (one label) on the SFT backbone — the
field's reward-model class, the one TRL's RewardTrainer trains.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from gvgap.llm.config import PRESETS, ModelPreset
from gvgap.nn.device import Placement, autocast


def neox_config(preset: ModelPreset, vocab_size: int, max_len: int) -> object:
    """A ``transformers.GPTNeoXConfig`` of the preset (Pythia: rotary 25 %, parallel residual)."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=preset.vocab or vocab_size,
        hidden_size=preset.hidden,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        intermediate_size=preset.ffn,
        max_position_embeddings=max(max_len, 16),
        rotary_pct=0.25,
        use_parallel_residual=True,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        tie_word_embeddings=False,
    )


def build_lm(
    model: str, vocab_size: int, max_len: int, seed: int, placement: Placement
) -> nn.Module:
    """A GPT-NeoX causal LM: preset name → random init from ``seed``; else a local directory.

    Args:
        model: a PRESETS key or a checkpoint directory.
        vocab_size: the task's vocabulary (ignored by presets with their own vocab).
        max_len: longest row.
        seed: initialisation seed (a forked RNG: global state untouched).
        placement: device and parameter dtype.
    """
    from transformers import GPTNeoXForCausalLM

    if model in PRESETS:
        cfg = neox_config(PRESETS[model], vocab_size, max_len)
        cfg._attn_implementation = "sdpa"
        devices = [placement.device] if placement.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            lm = GPTNeoXForCausalLM(cfg)
    else:
        lm = GPTNeoXForCausalLM.from_pretrained(model, local_files_only=True)
    return lm.to(device=placement.device, dtype=placement.dtype)


def build_rm(lm: nn.Module, seed: int, pad_id: int) -> nn.Module:
    """Global RM: ``GPTNeoXForSequenceClassification`` (num_labels 1) on a copy of ``lm``'s
    backbone; its bias-free score head drawn from ``seed`` (N(0, 1/d)).

    r̂(x, y) = w · h_L(x, y), h_L the final hidden state at the last non-``pad_id`` position
    (the last position: rows are never padded and end on a content token).
    """
    from transformers import GPTNeoXForSequenceClassification

    cfg = lm.config.__class__.from_dict(lm.config.to_dict())
    cfg.num_labels, cfg.pad_token_id = 1, pad_id
    cfg._attn_implementation = lm.config._attn_implementation
    p = next(lm.parameters())
    devices = [p.device] if p.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        rm = GPTNeoXForSequenceClassification(cfg)
    rm = rm.to(device=p.device, dtype=p.dtype)
    rm.gpt_neox.load_state_dict(lm.gpt_neox.state_dict())
    gen = torch.Generator().manual_seed(seed)
    d = cfg.hidden_size
    w = torch.randn(1, d, generator=gen, dtype=torch.float64) / d**0.5
    with torch.no_grad():
        rm.score.weight.copy_(w.to(rm.score.weight))
    return rm


def rm_scores(rm: nn.Module, seqs: torch.Tensor, placement: Placement) -> torch.Tensor:
    """r̂ of rows ``(B, L)`` → ``(B,)`` in float32 or wider (grad kept)."""
    with autocast(placement):
        out = rm(input_ids=seqs.to(placement.device)).logits
    return out[:, 0].float() if out.dtype in (torch.bfloat16, torch.float16) else out[:, 0]


def token_logp(logits: torch.Tensor, n_content: int | None) -> torch.Tensor:
    """log π(· | s) over the content tokens: log-softmax of the first ``n_content`` logits,
    in float32 or wider, ``(..., V_out)`` → ``(..., n_content)`` (module docstring)."""
    z = logits if n_content is None else logits[..., :n_content]
    if z.dtype in (torch.bfloat16, torch.float16):
        z = z.float()
    return torch.log_softmax(z, dim=-1)


def logp_completion(
    lm: nn.Module,
    seqs: torch.Tensor,
    prefix_len: int,
    placement: Placement,
    n_content: int | None,
    per_token: bool = False,
) -> torch.Tensor:
    """log π(y | x) = Σ_t log π(y_t | x, y_<t) under :func:`token_logp`, ``(B,)``; with
    ``per_token`` the terms log π(y_t | x, y_<t) themselves, ``(B, H)``.

    One forward over the full rows ``(B, L)``; the logits at position i predict token i+1, and
    the output layer is applied to the last H+1 positions only (``logits_to_keep``).
    """
    seqs = seqs.to(placement.device)
    keep = seqs.shape[1] - prefix_len + 1  # the output layer runs on completion positions only
    with autocast(placement):
        logits = lm(input_ids=seqs, logits_to_keep=keep).logits[:, :-1]
    logp = token_logp(logits, n_content)
    terms = logp.gather(-1, seqs[:, prefix_len:, None]).squeeze(-1)
    return terms if per_token else terms.sum(dim=1).to(placement.dtype)


@torch.no_grad()
def sample(
    lm: nn.Module,
    prefix: torch.Tensor,
    horizon: int,
    n_content: int | None,
    temperature: float,
    gen: torch.Generator,
    placement: Placement,
) -> torch.Tensor:
    """Completions y ~ π_T(· | x) (module docstring), ``(B, H)``.

    Autoregressive with the model's KV cache; draws with ``torch.multinomial`` from ``gen``
    (a CPU generator: the same draws on every device and every rank).
    """
    was_training = lm.training
    lm.eval()
    kw = _cache_kw(lm)
    out, past = [], None
    step = prefix.to(placement.device)
    for _ in range(horizon):
        with autocast(placement):
            res = lm(input_ids=step, use_cache=True, logits_to_keep=1, **{kw: past})
        past = getattr(res, kw)
        logp = token_logp(res.logits[:, -1], n_content) / temperature
        probs = torch.softmax(logp.double(), dim=-1).cpu()
        tok = torch.multinomial(probs, 1, generator=gen)
        out.append(tok)
        step = tok.to(placement.device)
    lm.train(was_training)
    return torch.cat(out, dim=1)


def _cache_kw(lm: nn.Module) -> str:
    """The KV-cache argument name: ``cache`` (transformers >= 5.x) or ``past_key_values``."""
    params = inspect.signature(type(lm).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def n_params(module: nn.Module, non_embedding: bool = True) -> int:
    """Parameter count (without the input embedding and the output layer when asked)."""
    total = sum(p.numel() for p in module.parameters())
    if non_embedding and hasattr(module, "get_input_embeddings"):
        total -= module.get_input_embeddings().weight.numel()
        out = module.get_output_embeddings()
        total -= out.weight.numel() if out is not None else 0
    return total
