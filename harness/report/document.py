"""The report as a document: blocks rendered once as Markdown and once as self-contained HTML
(figures embedded, no network, verdict cells coloured)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Document:
    """Blocks rendered once as Markdown and once as self-contained HTML."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", items))

    def table(self, header: list[str], rows: list[list[str]], classes: list[list[str]] | None = None) -> None:
        """`classes`, one per cell, colour the HTML (CELL_STYLES); Markdown has no colour."""
        self.blocks.append(("table", (header, rows, classes)))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", (path, caption)))

    def markdown(self, base: Path) -> str:
        out = []
        for kind, content in self.blocks:
            if kind == "heading":
                out.append(f"{'#' * content[0]} {content[1]}")
            elif kind == "paragraph":
                out.append(content)
            elif kind == "bullets":
                out.append("\n".join(f"- {item}" for item in content))
            elif kind == "table":
                header, rows, _ = content
                cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
                out.append("\n".join(lines))
            elif kind == "figure":
                path, caption = content
                out.append(f"![{caption}]({path.relative_to(base).as_posix()})\n\n*{caption}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        parts = []
        for kind, content in self.blocks:
            if kind == "heading":
                parts.append(f"<h{content[0]}>{_inline(content[1])}</h{content[0]}>")
            elif kind == "paragraph":
                parts.append(f"<p>{_inline(content)}</p>")
            elif kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in content) + "</ul>")
            elif kind == "table":
                header, rows, classes = content
                classes = classes or [[""] * len(row) for row in rows]
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in header)
                body = "".join(
                    "<tr>" + "".join(_cell(str(v), c) for v, c in zip(row, row_classes)) + "</tr>"
                    for row, row_classes in zip(rows, classes)
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "figure":
                path, caption = content
                # embedded, so the file opens anywhere with no network and no side files
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(caption)}</figcaption></figure>"
                )
        style = (
            "body{font-family:sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#111;line-height:1.45}"
            "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
            "th,td{border:1px solid #999;padding:.25rem .5rem;text-align:left;vertical-align:top}"
            "th{background:#eee}code{background:#f3f3f3;padding:0 .2rem}"
            "img{max-width:100%}figcaption{font-style:italic;font-size:.9rem}"
            + "".join(f"td.{name}{{{css}}}" for name, css in CELL_STYLES.items())
        )
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
        )


# verdict colours of the HTML matrix; every cell also says its verdict in words (print, colour blindness)
CELL_STYLES = {
    "better": "background:#cfe8cf",  # a side detected better, agreeing with the paper or with no paper to ask
    "disagree": "background:#f6d2b8",  # a side detected better, against the paper's direction
    "none": "background:#ececec",  # no difference detected
    "floor": "background:#fbefb5",  # both arms at their floor: no evidence
    "untested": "background:#ffffff;font-style:italic",  # not testable, not comparable
}


def _cell(text: str, css_class: str) -> str:
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<td{attribute}>{_inline(text)}</td>"


def _inline(text: str) -> str:
    """Escape, then the two Markdown marks the report uses: `code` and **bold**."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
