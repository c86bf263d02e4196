"""LLM-scale path (docs/theory.md §5, §7; docs/design.md §4 ``gvgap llm run FILE.toml --out DIR``).

GPT-NeoX (Pythia) causal LMs built from a config and trained from scratch on synthetic
languages whose gold reward is known, through the paper's pipeline: SFT → preference pairs →
global RM → local RM → offline DPO → online DPO (labelled by the global RM, the local RM or r*)
→ best-of-N, every number exact given its samples or with a standard error. LLM runs are the
sweep experiment ``llm`` (:mod:`gvgap.experiments.llm`; driver :mod:`gvgap.sweep.llm_run`).

Modules: ``config`` (the frozen, validated config; no torch), ``tasks`` (gold verifiers, the
demonstrator, distinct disjoint prompts), ``model`` (LMs, the global RM, one law for
log-probs and sampling), ``train`` (the accelerate loop: data parallel, accumulation, early
stopping, hashed mid-stage checkpoints), ``stages`` (the pipeline's pure stages), ``evaluate``
(win rates, KL k1/k3, labellers, best-of-N, matched KL), ``pipeline`` (the staged runner
with stage models on disk), ``report`` (tables and figures), ``hf`` (the same pipeline on a
local Hugging Face model and a preference jsonl, through TRL).

Importing this package loads neither torch nor transformers.
"""
