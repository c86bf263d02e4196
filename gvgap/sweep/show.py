"""``gvgap show ID``: every Config field of an experiment with its type, default, allowed
values and meaning.

Meanings come from the ``Attributes:`` sections of the Config's docstrings (its own and its
bases', the subclass winning); allowed values from the validation tables
(:data:`gvgap.experiments.common.PROBLEM_LIMITS`, :data:`gvgap.experiments.base.BETA_RANGE`)
or, for an experiment's own fields, the bounds its docstring states.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from types import ModuleType
from typing import Any

#: An ``Attributes:`` entry: ``name: meaning`` at the section's indentation.
_ENTRY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*)$")


def parse_attributes(doc: str | None) -> dict[str, str]:
    """``{field: meaning}`` from the ``Attributes:`` section of a Google-style docstring
    (continuation lines joined by spaces)."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    indent, name = None, None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent or width == 0:
            break
        match = _ENTRY.match(line)
        if width == indent and match:
            name = match.group(2)
            out[name] = match.group(3).strip()
        elif name is not None:
            out[name] += " " + line.strip()
    return out


def field_meanings(config_cls: type) -> dict[str, str]:
    """Meanings of every documented field, bases first so a subclass's text wins."""
    out: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        if klass is object:
            continue
        out.update(parse_attributes(klass.__doc__))
    return out


def allowed_values(config_cls: type, name: str, default: Any) -> str:
    """The allowed values of one field as text, from the validation tables."""
    from gvgap.experiments.base import BETA_RANGE
    from gvgap.experiments.common import PROBLEM_LIMITS, ProblemConfig

    if isinstance(default, bool):
        return "true, false"
    if issubclass(config_cls, ProblemConfig) and name in PROBLEM_LIMITS:
        rule = PROBLEM_LIMITS[name]
        if isinstance(rule[0], str):
            return ", ".join(rule)
        lo, hi, lo_open = rule
        lo_s = "-inf" if lo is None else f"{lo:g}"
        return f"{'(' if lo_open else '['}{lo_s}, {hi:g}]"
    if name == "beta":
        return f"[{BETA_RANGE[0]:g}, {BETA_RANGE[1]:g}]"
    if isinstance(default, float):
        return "finite number (see meaning)"
    if isinstance(default, int):
        return "integer (see meaning)"
    return "see meaning"


def describe_fields(module: ModuleType) -> list[dict[str, str]]:
    """One row per Config field: name, type, default, allowed, meaning. A module's optional
    ``ALLOWED`` dict (field -> text) states the allowed values of its own fields."""
    cls = module.Config
    own = getattr(module, "ALLOWED", {})
    meanings = field_meanings(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default
        rows.append(
            {
                "name": f.name,
                "type": type(default).__name__,
                "default": repr(default)
                if isinstance(default, str)
                else str(default).lower()
                if isinstance(default, bool)
                else str(default),
                "allowed": own.get(f.name) or allowed_values(cls, f.name, default),
                "meaning": meanings.get(f.name, "(undocumented)"),
            }
        )
    return rows


def format_show(eid: str, module: ModuleType) -> str:
    """The text ``gvgap show ID`` prints."""
    from gvgap.experiments.base import MAX_LEAVES, memory_limit

    rows = describe_fields(module)
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in ("name", "type", "default")}
    aw = min(28, max(len("allowed"), *(len(r["allowed"]) for r in rows)))
    head = (
        f"{'name':<{widths['name']}}  {'type':<{widths['type']}}  "
        f"{'default':<{widths['default']}}  {'allowed':<{aw}}  meaning"
    )
    lines = [f"{eid}: {module.CLAIM}", "", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<{widths['name']}}  {r['type']:<{widths['type']}}  "
            f"{r['default']:<{widths['default']}}  {r['allowed']:<{aw}}  {r['meaning']}"
        )
    lines += [
        "",
        f"Every setting must also fit: n_prompts*vocab**horizon <= {MAX_LEAVES} leaves and an "
        f"estimated <= {memory_limit() / 2**30:.0f} GiB per run (GVGAP_MAX_MEMORY_GB).",
        f"Set a field: gvgap run {eid} --set name=value; in a sweep file: [fixed] / [grid].",
    ]
    return "\n".join(lines)
