"""The report document: one writer that emits Markdown and self-contained HTML side by side
(inline CSS, figures as base64 data URIs), used by :mod:`gvgap.report` and the LLM section.

Text written into the report — module docstrings, claims, captions, verdict details — is
Markdown with reST inline markup (the docstring convention of the package). It is rendered,
never shown raw: paragraphs, bullet lists (``- `` or ``* `` items, continuation lines
indented), literal blocks (indented after a line ending in ``::``), ``code`` and `code`,
``:role:`target``` (as code), ``**strong**`` and ``*emphasis*`` — in HTML as tags, in
Markdown as Markdown. An asterisk glued to a word on its left (r*, π*, Σ_*) is a symbol, not
emphasis.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

#: Cell values coloured by class in HTML tables.
STATUS = ("supported", "against", "inconclusive", "PASS", "FAIL")
CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h2{border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.8em 0;
font-size:13px}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;height:auto}
figcaption{font-size:13px;color:#555}.note{background:#fff6e5;padding:.4em .7em;
border-left:3px solid #e0a030}code{background:#f3f3f3}pre{background:#f6f6f6;padding:.7em;
overflow:auto;max-height:30em;font-size:12px}.v-PASS{color:#176b2c;font-weight:600}
.v-FAIL{color:#a4161a;font-weight:600}.v-supported,.v-against{color:#1f3a68;font-weight:600}
.v-inconclusive{color:#666;font-weight:600}"""
#: Verdicts are on the hypothesis, so none is a failure: supported and against share one
#: neutral colour (a verdict "against" H1 is often the expected result); only the theorem
#: checks (PASS / FAIL) are coloured as success / failure.


class Doc:
    """A report written to Markdown and to self-contained HTML side by side."""

    def __init__(self, root: Path) -> None:
        self.root, self.md, self.html = root, [], []

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {text}")
        self.html.append(f"<h{level}>{_inline(text)}</h{level}>")

    def para(self, text: str, cls: str = "") -> None:
        text = md_inline(text)
        self.md.append(f"> *Note:* {text}" if cls == "note" else text)
        self.html.append(
            f'<p class="{cls}">{_inline(text)}</p>' if cls else f"<p>{_inline(text)}</p>"
        )

    def note(self, text: str) -> None:
        self.para(text, "note")

    def rich(self, text: str, lead: str = "") -> None:
        """A docstring-style text (:func:`blocks`): paragraphs, bullet lists and literal
        blocks; ``lead`` (e.g. ``"**Design.** "``) opens the first paragraph."""
        for kind, body in blocks(text):
            if kind == "p":
                self.para(lead + body)
            elif kind == "ul":
                items = [md_inline(lead + body[0]) if lead else md_inline(body[0])]
                items += [md_inline(b) for b in body[1:]]
                self.md.append("\n".join(f"- {b}" for b in items))
                first = [_inline(lead + body[0])] + [_inline(b) for b in body[1:]]
                self.html.append("<ul>" + "".join(f"<li>{b}</li>" for b in first) + "</ul>")
            else:
                self.md.append("```\n" + body + "\n```")
                self.html.append(f"<pre>{html.escape(body)}</pre>")
            lead = ""

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        lines = [header, ["---"] * len(header), *rows]
        self.md.append("\n".join("| " + " | ".join(map(_md_cell, r)) + " |" for r in lines))
        head = "".join(f"<th>{_inline(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(map(_td, r)) + "</tr>" for r in rows)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, png: Path, caption: str) -> None:
        rel = Path(os.path.relpath(png, self.root)).as_posix()
        self.md.append(f"![{_md_cell(caption)}]({rel})\n\n*{caption}*")
        try:
            data = base64.b64encode(png.read_bytes()).decode("ascii")
        except OSError:
            self.html.append(f'<p class="note">Figure {html.escape(png.name)} is missing.</p>')
            return
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
            f'{data}"><figcaption>{_inline(caption)}</figcaption></figure>'
        )

    def details(self, summary: str, text: str) -> None:
        self.md.append(f"<details><summary>{summary}</summary>\n\n```json\n{text}\n```\n</details>")
        self.html.append(
            f"<details><summary>{_inline(summary)}</summary>"
            f"<pre>{html.escape(text)}</pre></details>"
        )

    def to_markdown(self) -> str:
        return "\n\n".join(self.md) + "\n"

    def to_html(self, title: str) -> str:
        """One page: inline CSS, figures as base64 data URIs, no external references."""
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(self.html)
            + "\n</body></html>\n"
        )


def _md_cell(x: Any) -> str:
    return " ".join(md_inline(x).split()).replace("|", "\\|")


#: A reST role, ``:func:`~gvgap.x.y```: its target becomes a code span.
_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`]+)`")
#: A code span, ````x```` or ```x```.
_CODE = re.compile(r"``(.+?)``|`([^`]+)`")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
#: *emphasis*: the opening asterisk not glued to a word or symbol on its left (r*, π*, Σ_*).
_EM = re.compile(r"(?<![\w*\\])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])")


def _spans(text: str) -> list[tuple[bool, str]]:
    """``text`` cut into (is_code, piece): reST roles and code spans are code."""
    text = _ROLE.sub(lambda m: f"``{m.group(1)}``", str(text))
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append((False, text[pos : m.start()]))
        out.append((True, m.group(1) if m.group(1) is not None else m.group(2)))
        pos = m.end()
    out.append((False, text[pos:]))
    return out


def _inline(text: Any) -> str:
    """Escaped HTML with code spans (and reST roles) as <code>, ``**strong**`` and
    ``*emphasis*`` as tags; nothing of the markup is left."""
    parts = []
    for code, piece in _spans(str(text)):
        if code:
            parts.append(f"<code>{html.escape(piece)}</code>")
            continue
        s = html.escape(piece)
        s = _STRONG.sub(r"<strong>\1</strong>", s)
        parts.append(_EM.sub(r"<em>\1</em>", s))
    return "".join(parts)


def md_inline(text: Any) -> str:
    """The same text as Markdown: roles and double-backtick spans as single-backtick code."""
    return "".join(f"`{p}`" if code else p for code, p in _spans(str(text)))


_BULLET = re.compile(r"^([-*]) +(?=\S)")


def blocks(text: str) -> list[tuple[str, Any]]:
    """A docstring as blocks: ``("p", paragraph)``, ``("ul", [item, …])`` and
    ``("pre", literal)``. Lines are joined within a paragraph or an item; a list item runs
    until the next item, a blank line or a line less indented than its text; a paragraph
    ending in ``::`` makes the indented block after it literal."""
    import inspect

    lines = inspect.cleandoc(str(text)).splitlines()
    out: list[tuple[str, Any]] = []
    para: list[str] = []
    items: list[list[str]] = []
    item_indent = 0
    literal = False
    i = 0

    def flush() -> None:
        nonlocal para, items
        if para:
            out.append(("p", " ".join(para)))
        if items:
            out.append(("ul", [" ".join(it) for it in items]))
        para, items = [], []

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal and stripped:
            base, body = indent, []
            while i < len(lines) and (not lines[i].strip() or lines[i][:base].strip() == ""):
                body.append(lines[i][base:])
                i += 1
            out.append(("pre", "\n".join(body).rstrip()))
            literal = False
            continue
        if not stripped:
            flush()
            i += 1
            continue
        bullet = _BULLET.match(stripped)
        if bullet:
            if para:
                out.append(("p", " ".join(para)))
                para = []
            items.append([stripped[bullet.end() :]])
            item_indent = indent + bullet.end()
        elif items and indent >= item_indent:
            items[-1].append(stripped)
        else:
            if items:
                flush()
            para.append(stripped)
            if stripped.endswith("::"):
                para[-1] = stripped[:-1] if not stripped.endswith(" ::") else stripped[:-3]
                flush()
                literal = True
        i += 1
    flush()
    return out


def _td(x: Any) -> str:
    return f'<td class="v-{x}">{x}</td>' if x in STATUS else f"<td>{_inline(x)}</td>"


def fmt_value(x: Any) -> str:
    """A table cell: yes/no, an integer, 3 significant digits, ``–`` for None or non-finite."""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{x:.3g}" if np.isfinite(x) else "–"
    return "–" if x is None else str(x)


def fmt_ci(mean: Any, lo: Any, hi: Any) -> str:
    """``mean [lo, hi]`` of :func:`fmt_value` cells."""
    return f"{fmt_value(mean)} [{fmt_value(lo)}, {fmt_value(hi)}]"
