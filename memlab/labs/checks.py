"""The answer-checking framework of the labs' exercises: a verdict, and checks of a number or
of a choice against the measured truth.

A check never puts its answer on screen before the learner gets it right: a wrong number is
told "too high" or "too low", a wrong set how many names are missing, never the value itself.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "todo", "check_number", "check_choice"]


@dataclass(frozen=True)
class Check:
    """The verdict on an exercise answer: ``ok`` is ``True``/``False``, or ``None`` while the
    exercise is not answered yet. Renders as a coloured box in a notebook."""

    ok: bool | None
    message: str

    def __bool__(self) -> bool:
        return bool(self.ok)

    @property
    def verdict(self) -> str:
        return {True: "right", False: "not yet right", None: "not answered yet"}[self.ok]

    def __repr__(self) -> str:
        mark = {True: "RIGHT", False: "WRONG", None: "TODO"}[self.ok]
        return f"[{mark}] {self.message}"

    def _repr_html_(self) -> str:
        color, bg, mark = {
            True: ("#1b5e20", "#e8f5e9", "&#10004; right"),
            False: ("#b71c1c", "#ffebee", "&#10008; not yet"),
            None: ("#5d4037", "#fff8e1", "&#9998; your turn"),
        }[self.ok]
        body = html.escape(self.message).replace("\n", "<br>")
        return (
            f'<div style="border-left:4px solid {color};background:{bg};padding:6px 10px;'
            f'color:{color}"><b>{mark}</b>: {body}</div>'
        )


def todo(what: str) -> Check:
    """The verdict while an exercise is unanswered (its answer is still ``None``)."""
    return Check(None, f"Set the answer to {what} and run this cell again.")


def check_number(
    answer: Any,
    truth: float,
    *,
    rel_tol: float | None = None,
    abs_tol: float | None = None,
    unit: str = "",
    what: str = "a number",
    explain: str = "",
) -> Check:
    """Right when ``answer`` is within ``rel_tol`` (fraction of ``truth``) or ``abs_tol`` of it.

    The message says the measured value only once the answer is right, or by how far it is off
    (higher/lower), so that a learner can try again."""
    if answer is None:
        return todo(what)
    if (
        isinstance(answer, bool)
        or not isinstance(answer, (int, float))
        or not math.isfinite(answer)
    ):
        return Check(False, f"The answer must be {what}, got {answer!r}.")
    tol = 0.0
    if rel_tol is not None:
        tol = max(tol, abs(truth) * rel_tol)
    if abs_tol is not None:
        tol = max(tol, abs_tol)
    u = f" {unit}" if unit else ""
    if abs(answer - truth) <= tol:
        msg = f"{answer:g}{u} is within {tol:.3g}{u} of the measured {truth:.4g}{u}."
        return Check(True, f"{msg} {explain}".strip())
    direction = "too high" if answer > truth else "too low"
    return Check(False, f"{answer:g}{u} is {direction} (more than {tol:.3g}{u} off). Try again.")


def _norm(s: Any) -> str:
    return str(s).strip().lower().replace(" ", "_").replace("-", "_")


def check_choice(
    answer: Any,
    truth: Any,
    *,
    options: Sequence[Any] | None = None,
    what: str = "an option",
    explain: str = "",
) -> Check:
    """Right when ``answer`` names ``truth`` (case, spaces, dashes and underscores ignored). A set
    (or list) of names is compared as a set."""
    if answer is None:
        return todo(what)
    if isinstance(truth, (set, frozenset, list, tuple)):
        if isinstance(answer, str) or not isinstance(answer, Iterable):
            return Check(
                False, f"The answer must be a set of names, e.g. {{'a', 'b'}}, got {answer!r}."
            )
        got = {_norm(a) for a in answer}
        want = {_norm(t) for t in truth}
        if got == want:
            return Check(True, f"Yes: {sorted(want)}. {explain}".strip())
        missing, extra = sorted(want - got), sorted(got - want)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing")
        if extra:
            parts.append(f"{len(extra)} that should not be there ({', '.join(extra)})")
        return Check(False, "Not quite: " + " and ".join(parts) + ". Look at the table again.")
    if options is not None and _norm(answer) not in {_norm(o) for o in options}:
        return Check(False, f"The answer must be one of {list(options)}, got {answer!r}.")
    if _norm(answer) == _norm(truth):
        return Check(True, f"Yes: {truth}. {explain}".strip())
    return Check(False, f"{answer!r} is not it. Look at the measured numbers again.")
