"""Torch classes behind the same class protocol as the numpy core (needs ``gvgap[torch]``).

Device and dtype are chosen in one place, :mod:`gvgap.nn.device`; every torch module of gvgap
(``gvgap.nn``, ``gvgap.llm``) asks it and never calls ``torch.device``/``.cuda()`` itself.

Modules (each imports torch; this package's ``__init__`` does not, so the numpy core never
needs it): ``policies`` (tabular, log-linear, MLP, transformer), ``rewards`` (scalar-head RM,
local RM, tabular, linear), ``stacked`` / ``base`` / ``layout`` (the neural classes: B models
per call, every tree node computed once, chunked under a memory bound, batch-invariant),
``optim`` (batched Adam + L-BFGS), ``train`` (exact / minibatch fits, exact and sampled RL),
``capacity`` (capacity residuals of a network class), ``pipelines`` (the h6_neural pipelines
of many runs in one call), ``adapter`` (numpy protocol for any torch class), ``losses``,
``bigtree`` (soft value iteration and exact metrics on 10^8–10^9-leaf trees), ``tree``.
"""
