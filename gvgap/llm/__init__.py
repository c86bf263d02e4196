"""LLM-scale path (THEORY §5, §7; DESIGN §4 ``gvgap llm run FILE.toml --out DIR``).

GPT-NeoX (Pythia) causal LMs built from a config and trained from scratch on synthetic
languages whose gold reward is known, through the paper's pipeline: SFT → preference pairs →
global RM → local RM → offline DPO → online DPO → best-of-N, every number exact given its
samples or with a standard error.

Modules: ``config`` (frozen configs, presets, TOML validation; no torch), ``tasks`` (gold
verifiers), ``model`` (LMs, scalar-head RM, log-probs, sampling), ``stages`` (the pipeline's
pure stages), ``evaluate`` (win rate, KL k1/k3, best-of-N, RM validation likelihood),
``pipeline`` (checkpointed resumable runner), ``dist`` (data parallel under torchrun),
``report`` (the paper's table as figure and report section), ``cli``.

Importing this package loads neither torch nor transformers.
"""
