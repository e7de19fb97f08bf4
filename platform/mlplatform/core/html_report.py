"""A Markdown report as one self-contained HTML file: its images embedded as data URIs.

MLflow's artifact viewer shows an HTML artifact in a sandboxed frame of its own (a blob URL), where a
relative image link resolves to nothing and a Markdown file shows `![...](x.png)` as text; an HTML file
that carries its images renders with them anywhere, also opened from disk.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5rem; color: #1f2328; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.7rem; }
td { text-align: right; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5rem 0 1.5rem; }
"""


def _data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def _images(tokens: list[Token]) -> list[Token]:
    return [child for token in tokens for child in token.children or [] if child.type == "image"]


def render_html_report(markdown: str, images: Mapping[str, str | Path | bytes], title: str) -> str:
    """`markdown` (CommonMark with tables) as an HTML page; each image whose link is a key of `images`
    (a file name, as core.report links them) gets that PNG (a path or the bytes) embedded.

    Raises ValueError naming a linked image that `images` does not hold: the report would show a hole.
    """
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown)
    for image in _images(tokens):
        source = str(image.attrGet("src") or "")
        if source not in images:
            raise ValueError(f"report {title!r} links image {source!r}, not among {sorted(images)}")
        content = images[source]
        image.attrSet("src", _data_uri(content if isinstance(content, bytes) else Path(content).read_bytes()))
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )
