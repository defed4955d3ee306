"""HTML building blocks of the diagnostics page. Every value from input goes through `e`."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence

__all__ = ["e", "lines", "table", "when"]


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def when(unix: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix)) if unix else "—"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "") -> str:
    """A table; cells are HTML already (escape values before passing them)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def lines(items: Iterable[str]) -> str:
    return "<br>".join(items)
