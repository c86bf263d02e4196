"""The report document: one writer that emits Markdown and self-contained HTML side by side
(inline CSS, figures as base64 data URIs), used by :mod:`gvgap.report` and the LLM section."""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Any

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
        self.md.append(f"> *Note:* {text}" if cls == "note" else text)
        self.html.append(
            f'<p class="{cls}">{_inline(text)}</p>' if cls else f"<p>{_inline(text)}</p>"
        )

    def note(self, text: str) -> None:
        self.para(text, "note")

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
    return " ".join(str(x).split()).replace("|", "\\|")


def _inline(text: Any) -> str:
    """Escaped HTML with ``**bold**`` and ```code``` marked up."""
    s = html.escape(str(text))
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"``?([^`]+?)``?", r"<code>\1</code>", s)


def _td(x: Any) -> str:
    return f'<td class="v-{x}">{x}</td>' if x in STATUS else f"<td>{_inline(x)}</td>"
