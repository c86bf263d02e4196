"""HF GPT-NeoX (Pythia) causal LMs built from a config, a scalar-head reward model, and the
two primitives every stage uses: completion log-probabilities and sampling.

Models are random-initialised from :data:`gvgap.llm.config.PRESETS` (nothing is downloaded)
or loaded from a local ``save_pretrained`` directory. Initialisation draws from a forked torch
RNG seeded explicitly, so the global RNG is left untouched and every rank builds the same model.
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


class RewardModel(nn.Module):
    """Global RM: an LM backbone + a scalar head on the last token's hidden state (BT-trained).

    r̂(x, y) = w · h_L(x, y) + b, h_L the final hidden state at the last position, ``(B,)``.
    """

    def __init__(self, lm: nn.Module, seed: int) -> None:
        super().__init__()
        self.backbone = lm.gpt_neox
        hidden = lm.config.hidden_size
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(hidden, generator=gen, dtype=torch.float64) / hidden**0.5
        p = next(lm.parameters())
        self.head = nn.Linear(hidden, 1).to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            self.head.weight.copy_(w[None, :].to(self.head.weight))
            self.head.bias.zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` rows → ``(B,)`` rewards."""
        h = self.backbone(input_ids=seqs).last_hidden_state[:, -1]
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1)


def logp_completion(
    lm: nn.Module, seqs: torch.Tensor, prefix_len: int, placement: Placement
) -> torch.Tensor:
    """log π(y | x) = Σ_t log π(y_t | x, y_<t), summed over completion tokens, ``(B,)``.

    One forward over the full rows ``(B, L)``; the logits at position i predict token i+1, and
    the output layer is applied to the last H+1 positions only (``logits_to_keep``).
    Log-softmax is taken in float32 even under bf16 autocast.
    """
    seqs = seqs.to(placement.device)
    keep = seqs.shape[1] - prefix_len + 1  # the output layer runs on completion positions only
    with autocast(placement):
        logits = lm(input_ids=seqs, logits_to_keep=keep).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    tok = seqs[:, prefix_len:, None]
    return logp.gather(-1, tok).squeeze(-1).sum(dim=1).to(placement.dtype)


@torch.no_grad()
def sample(
    lm: nn.Module,
    prefix: torch.Tensor,
    horizon: int,
    n_content: int,
    temperature: float,
    gen: torch.Generator,
    placement: Placement,
) -> torch.Tensor:
    """Completions y ~ π(· | x) at ``temperature``, restricted to content tokens, ``(B, H)``.

    Autoregressive with the model's KV cache; draws with ``torch.multinomial`` from ``gen``
    (a CPU generator: the same draws on every device and every rank).
    """
    lm.eval()
    kw = _cache_kw(lm)
    out, past = [], None
    step = prefix.to(placement.device)
    for _ in range(horizon):
        with autocast(placement):
            res = lm(input_ids=step, use_cache=True, logits_to_keep=1, **{kw: past})
        past = getattr(res, kw)
        logits = res.logits[:, -1, :n_content].float() / temperature
        probs = torch.softmax(logits, dim=-1).cpu().double()
        tok = torch.multinomial(probs, 1, generator=gen)
        out.append(tok)
        step = tok.to(placement.device)
    lm.train()
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
        total -= module.get_output_embeddings().weight.numel()
    return total
