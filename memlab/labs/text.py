"""Markdown pieces for the labs' explanations: relative changes, ratios, tables, notes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["pct", "times", "md_table", "note"]


def pct(new: float, old: float) -> str:
    """``+12%`` / ``-40%`` of ``new`` against ``old`` (``n/a`` without a baseline)."""
    if not old:
        return "n/a"
    return f"{100.0 * (new - old) / old:+.0f}%"


def times(new: float, old: float) -> str:
    """``new`` as a multiple of ``old`` (``2.00x``; ``n/a`` without a baseline)."""
    if not old:
        return "n/a"
    return f"{new / old:.2f}x"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: one header row, then ``rows`` (each cell rendered with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def note(text: str) -> list[str]:
    """``text`` as an italic closing paragraph, or nothing when it is empty (the explanations
    end with their sweep's timing note only when there is something to say)."""
    return [f"\n_{text}_"] if text else []
