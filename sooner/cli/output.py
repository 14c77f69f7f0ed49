"""Plain-text rendering helpers shared by the CLI commands."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

import click


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; cells are str()-ed, None as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str) -> None:
    click.echo(table(headers, rows) if rows else empty)


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    text = str(value)
    # Job names and other user text may carry control characters; never let
    # them move the cursor or clear the terminal.
    return "".join(c if c.isprintable() else "?" for c in text)


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'5s ago', '3m ago', '2h ago', '4d ago'."""
    if moment is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
