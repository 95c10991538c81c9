"""A small markdown-to-HTML renderer for the suite's own reports, with images inlined as base64.

It covers the subset that the suite's report writers emit -- ATX headings, pipe tables, `- ` bullet lists, image
lines `![alt](path)`, paragraphs, and inline `code`, **bold** and [links](url) -- so that `mamba-suite report` can
write one self-contained HTML page without a markdown dependency. Everything else is shown as escaped text.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

__all__ = ["markdown_to_html"]

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)\s*$")
_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\[([^\]]+)\]\(([^)\s]+)\)")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif"}
_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em}
th{background:#f3f3f3}td.num{text-align:right}img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 .2em}.missing{color:#b00}"""


def _inline(text: str) -> str:
    """Escape `text` and render inline code, bold and links."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"<code>{html.escape(m.group(1))}</code>")
        elif m.group(2) is not None:
            out.append(f"<strong>{html.escape(m.group(2))}</strong>")
        else:
            out.append(f'<a href="{html.escape(m.group(4), quote=True)}">{html.escape(m.group(3))}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _image(alt: str, src: str, base_dir: Path) -> str:
    path = (base_dir / src) if not Path(src).is_absolute() else Path(src)
    mime = _MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return f'<p class="missing">[image not found: {html.escape(src)}]</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt, quote=True)}" src="data:{mime};base64,{data}"></p>'


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    head, rows = _cells(lines[0]), [_cells(x) for x in lines[2:]]
    align = ["num" if c.strip().endswith(":") else "" for c in _cells(lines[1])]
    out = ["<table><thead><tr>", *(f"<th>{_inline(c)}</th>" for c in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="{align[i]}">{_inline(c)}</td>' if i < len(align) and align[i] else f"<td>{_inline(c)}</td>"
            for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def markdown_to_html(markdown: str, base_dir: Path, title: str) -> str:
    """A complete HTML page for `markdown`; image paths are resolved against `base_dir` and embedded."""
    lines = markdown.splitlines()
    body, i = [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif (m := re.match(r"^(#{1,6})\s+(.*)$", stripped)):
            level = len(m.group(1))
            body.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif (m := _IMAGE.match(stripped)):
            body.append(_image(m.group(1), m.group(2), base_dir))
            i += 1
        elif stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            body.append(_table(block))
        elif stripped.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |!\[)", lines[i].strip()):
                para.append(lines[i].strip())
                i += 1
            if not para:  # a lone line that looks like a block start but is not one (e.g. "|x" without a table)
                para, i = [stripped], i + 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
