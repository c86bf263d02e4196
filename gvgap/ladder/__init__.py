"""The class ladder (docs/design.md §5): rungs, their tangent bases, exact containment, certified
residuals and the regret constants measured on an instance.

- :mod:`gvgap.ladder.rungs`: names, orders and dimensions;
- :mod:`gvgap.ladder.bases`: tangent bases at the truth;
- :mod:`gvgap.ladder.contain`: containment of π* (algebraic) and residual bounds;
- :mod:`gvgap.ladder.measure`: :class:`Ladder`, everything measured on one instance;
- :mod:`gvgap.ladder.classes`: the fit-time classes of each rung.
"""

from gvgap.ladder.measure import Ladder, Rung

__all__ = ["Ladder", "Rung"]
