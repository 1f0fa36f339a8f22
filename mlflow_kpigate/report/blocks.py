"""The report's document model: headings, paragraphs, tables and images, rendered as
markdown and as a self-contained HTML page.

One block list is rendered twice, so both files say the same and escape the same data.
Text from models, tags, policies and reasons is data, never markup: :func:`md_escape`
makes it inert markdown (pipes, backticks, emphasis, brackets, HTML), and the HTML page
escapes it with :func:`html.escape`. The HTML page embeds its images (base64 PNG) so it
can be mailed or attached on its own.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: object) -> str:
    """``text`` as inert markdown: one line, HTML entities, markdown specials escaped."""
    flat = " ".join(str(text).split())
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", flat)


@dataclass(frozen=True)
class Heading:
    """A section heading (``level`` 1 to 6)."""

    text: str
    level: int


@dataclass(frozen=True)
class Para:
    """A paragraph, optionally led by a bold ``label``."""

    text: str
    label: str | None = None


@dataclass(frozen=True)
class Table:
    """A table of plain-text cells (escaped when rendered)."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Image:
    """A PNG file: linked by name from markdown, embedded in HTML."""

    path: Path
    alt: str


Block = Heading | Para | Table | Image


def to_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as markdown; images link to files next to it."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {md_escape(block.text)}")
        elif isinstance(block, Para):
            label = f"**{md_escape(block.label)}** " if block.label else ""
            out.append(label + md_escape(block.text))
        elif isinstance(block, Table):
            out.append("| " + " | ".join(md_escape(h) for h in block.headers) + " |")
            out.append("|" + "|".join("---" for _ in block.headers) + "|")
            out.extend("| " + " | ".join(md_escape(c) for c in row) + " |"
                       for row in block.rows)
        else:
            out.append(f"![{md_escape(block.alt)}]({block.path.name})")
        out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #1f2328; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
"""


def to_html(blocks: Sequence[Block], title: str) -> str:
    """The blocks as one HTML page with its images embedded."""
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">",
           f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            label = f"<strong>{esc(block.label)}</strong> " if block.label else ""
            out.append(f"<p>{label}{esc(block.text)}</p>")
        elif isinstance(block, Table):
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.headers)
                       + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                       for row in block.rows)
            out.append("</table>")
        else:
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            out.append(f"<img alt=\"{esc(block.alt)}\" src=\"data:image/png;base64,{data}\">")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)
