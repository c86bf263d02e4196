"""Torch classes behind the same class protocol as the numpy core (needs ``gvgap[torch]``).

Device and dtype are chosen in one place, :mod:`gvgap.nn.device`; every torch module of gvgap
(``gvgap.nn``, ``gvgap.llm``) asks it and never calls ``torch.device``/``.cuda()`` itself.
"""
