"""The answer-checking framework of the labs' exercises: a verdict (``Check``), checks of a
number or of a choice against the measured truth, and ``Exercise``, which keeps the attempts
at one exercise and grades its hints.

An exercise never puts its answer on screen before the learner has tried:

- a wrong number is told "too high" or "too low", a wrong set how many names are missing,
  never the value itself;
- a mistake of form is named and not counted as an attempt: a percent where a fraction is
  asked ("80 looks like a percent: answer as a fraction, 0.8"), bytes where MiB are asked, a
  string where a number is asked, a label that is not one of the options (the options listed);
- the first wrong attempt gets a pointer to where to look, the next a stronger hint, and after
  that (or after a right answer) the worked solution, computed from the runs, with the
  explanation of the result that the lab kept back until then.

``Check`` renders as Markdown in a notebook (the solutions hold tables), and as one plain line
with ``repr``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from memlab.config import MIB

__all__ = ["Check", "Exercise", "todo", "as_number", "check_number", "check_choice"]

_MARK = {True: "✔ right", False: "✘ not yet", None: "✎ your turn"}


def _md_escape(text: str) -> str:
    # Messages echo the learner's answer: keep it text, not HTML (Markdown passes HTML through).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class Check:
    """The verdict on an exercise answer: ``ok`` is ``True``/``False``, or ``None`` while the
    exercise is not answered yet. ``form_error`` marks an answer of the wrong form (a percent
    for a fraction, bytes for MiB, ...), which an ``Exercise`` does not count as an attempt.
    ``hint`` is the graded hint after a wrong attempt; ``solution`` (Markdown) the worked
    solution and the explanation of the result, once revealed; ``attempt`` the number of
    attempts counted so far (0 outside an ``Exercise``)."""

    ok: bool | None
    message: str
    hint: str = ""
    solution: str = ""
    form_error: bool = False
    attempt: int = 0

    def __bool__(self) -> bool:
        return bool(self.ok)

    @property
    def verdict(self) -> str:
        return {True: "right", False: "not yet right", None: "not answered yet"}[self.ok]

    def __repr__(self) -> str:
        mark = {True: "RIGHT", False: "WRONG", None: "TODO"}[self.ok]
        out = f"[{mark}] {self.message}"
        if self.hint:
            out += f"\nHint: {self.hint}"
        if self.solution:
            out += f"\nSolution:\n{self.solution}"
        return out

    def _repr_markdown_(self) -> str:
        head = f"**{_MARK[self.ok]}**"
        if self.attempt:
            head += f" (attempt {self.attempt})"
        parts = [f"{head}: {_md_escape(self.message)}"]
        if self.hint:
            parts.append(f"**Hint:** {_md_escape(self.hint)}")
        if self.solution:
            parts.append("**Worked solution**\n\n" + self.solution)
        return "\n\n".join(parts)


def todo(what: str) -> Check:
    """The verdict while an exercise is unanswered (its answer is still ``None``)."""
    return Check(None, f"Set the answer to {what} and run this cell again.")


def _form(message: str) -> Check:
    return Check(False, message, form_error=True)


def as_number(answer: Any, what: str = "a number") -> float | Check:
    """``answer`` as a finite float, or the ``Check`` that names the mistake of form (a string,
    a bool, a collection, NaN)."""
    if isinstance(answer, str):
        try:
            value = float(answer.strip().rstrip("%"))
        except ValueError:
            return _form(f"The answer must be {what}, got the text {answer!r}.")
        return _form(
            f"{answer!r} is a string: answer with {what}, without quotes (e.g. {value:g})."
        )
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return _form(f"The answer must be {what}, got {answer!r} ({type(answer).__name__}).")
    if not math.isfinite(answer):
        return _form(f"The answer must be a finite number, got {answer!r}.")
    return float(answer)


# Unit mix-ups a MiB answer is checked for: (factor of the answer over the truth, what it is).
_MIB_MIXUPS = ((MIB, "bytes"), (1024.0, "KiB"), (1 / 1024, "GiB"))


def _fmt(x: float) -> str:
    """A number as the learner would write it: ``0.75``, ``120``, ``31457280`` (not 3.1e+07)."""
    return f"{x:.0f}" if abs(x) >= 1e6 and float(x).is_integer() else f"{x:g}"


def _close(a: float, b: float, factor: float = 4.0) -> bool:
    """``a`` and ``b`` within ``factor`` of each other (both positive)."""
    return a > 0 and b > 0 and 1 / factor <= a / b <= factor


def check_number(
    answer: Any,
    truth: float,
    *,
    rel_tol: float | None = None,
    abs_tol: float | None = None,
    unit: str = "",
    what: str = "a number",
    explain: str = "",
    fraction: bool = False,
) -> Check:
    """Right when ``answer`` is within ``rel_tol`` (fraction of ``truth``) or ``abs_tol`` of it.

    The message says the measured value only once the answer is right, or which way it is off
    (higher/lower), so that a learner can try again. Mistakes of form are named: a string, a
    percent where ``fraction`` (0..1) is asked, bytes (or KiB, GiB) where ``unit="MiB"`` is."""
    if answer is None:
        return todo(what)
    x = as_number(answer, what)
    if isinstance(x, Check):
        return x
    if fraction and not 0.0 <= x <= 1.0:
        if 1.0 < x <= 100.0:
            return _form(
                f"{x:g} looks like a percent: answer as a fraction between 0 and 1 ({x / 100:g})."
            )
        return _form(f"The answer must be a fraction between 0 and 1, got {x:g}.")
    u = f" {unit}" if unit else ""
    if unit == "MiB" and truth > 0:
        for factor, name in _MIB_MIXUPS:
            if _close(x / factor, truth):
                return _form(
                    f"{_fmt(x)} looks like {name}: answer in MiB ({_fmt(x)} {name} = "
                    f"{x / factor:.4g} MiB)."
                )
    rel = 0.0 if rel_tol is None else abs(truth) * rel_tol
    tol = max(rel, abs_tol or 0.0)
    if abs(x - truth) <= tol:
        msg = f"{_fmt(x)}{u} is within {tol:.3g}{u} of the measured {truth:.4g}{u}."
        return Check(True, f"{msg} {explain}".strip())
    direction = "too high" if x > truth else "too low"
    # A relative tolerance in the unit would tell the truth (tol / rel_tol): say it in percent.
    off = f"{rel_tol:.0%}" if rel_tol is not None and rel >= (abs_tol or 0.0) else f"{tol:.3g}{u}"
    return Check(False, f"{_fmt(x)}{u} is {direction} (more than {off} off).")


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
    (or list) of names is compared as a set. An answer (or a name in a set) that is not one of
    ``options`` is a mistake of form: the message lists the options."""
    if answer is None:
        return todo(what)
    opts = None if options is None else {_norm(o): o for o in options}
    listed = "" if options is None else ", ".join(repr(o) for o in options)
    if isinstance(truth, (set, frozenset, list, tuple)):
        if isinstance(answer, str) or not isinstance(answer, Iterable):
            return _form(f"The answer must be a set of names, e.g. {{'a', 'b'}}, got {answer!r}.")
        got = {_norm(a) for a in answer}
        if opts is not None and (unknown := sorted(got - set(opts))):
            return _form(f"{', '.join(unknown)}: not one of the names. They are: {listed}.")
        want = {_norm(t) for t in truth}
        if got == want:
            return Check(True, f"Yes: {sorted(want)}. {explain}".strip())
        missing, extra = sorted(want - got), sorted(got - want)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing")
        if extra:
            parts.append(f"{len(extra)} that should not be there ({', '.join(extra)})")
        return Check(False, "Not quite: " + " and ".join(parts) + ".")
    if opts is not None and _norm(answer) not in opts:
        return _form(f"{answer!r} is not one of the options: {listed}.")
    if _norm(answer) == _norm(truth):
        return Check(True, f"Yes: {truth}. {explain}".strip())
    return Check(False, f"{answer!r} is not it.")


def _attempt_key(answer: Any) -> str:
    """The same answer twice is one attempt (a cell run again), however it is spelled."""
    if isinstance(answer, (set, frozenset, list, tuple)):
        return repr(sorted(_norm(a) for a in answer))
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return repr(float(answer))
    return _norm(answer)


class Exercise:
    """One exercise of a lab: grades answers, counts the attempts, and grades its help.

    ``grade(answer)`` returns the bare ``Check`` (from ``check_number``, ``check_choice`` or
    one backed by runs). ``hints`` are given in order, one per wrong attempt: the first points
    at where to look, the next is stronger (a hint may be a function of the answer). After
    ``len(hints) + 1`` wrong attempts, or with a right answer, ``solution()`` is shown
    (Markdown: the worked solution from the runs, and the part of the explanation that would
    have given the answer away). An unanswered exercise
    (``None``) and a mistake of form are not attempts, and the same wrong answer given again
    counts once. ``reveal()`` shows the solution on request, but only after an attempt.

    A notebook creates it in one cell (``ex1 = lab.exercise_saving(sweep)``) and checks in the
    next (``ex1.check(answer_1)``), so running the check cell again keeps the attempts.
    """

    def __init__(
        self,
        id: str,
        question: str,
        grade: Callable[[Any], Check],
        *,
        hints: Sequence[str | Callable[[Any], str]],
        solution: Callable[[], str],
        key: Callable[[Any], str] = _attempt_key,
    ) -> None:
        if not hints:
            raise ValueError("an exercise needs at least one hint")
        self.id = id
        self.question = question
        self.hints = tuple(hints)
        self._grade = grade
        self._solution = solution
        self._key = key
        self._solution_text: str | None = None
        #: The distinct wrong answers so far, in order.
        self.wrong: list[str] = []
        self.solved = False

    @property
    def attempts(self) -> int:
        """Attempts counted: distinct wrong answers, plus one once it is answered right."""
        return len(self.wrong) + int(self.solved)

    @property
    def revealed(self) -> bool:
        """Whether the solution is shown now (a right answer, or enough wrong ones)."""
        return self.solved or len(self.wrong) > len(self.hints)

    def solution(self) -> str:
        """The worked solution (Markdown), computed once from the runs."""
        if self._solution_text is None:
            self._solution_text = self._solution()
        return self._solution_text

    def check(self, answer: Any) -> Check:
        c = self._grade(answer)
        if c.ok is None or c.form_error:
            return dataclasses.replace(c, attempt=self.attempts)
        if c.ok:
            self.solved = True
            return dataclasses.replace(c, attempt=self.attempts, solution=self.solution())
        key = self._key(answer)
        if key not in self.wrong:
            self.wrong.append(key)
        n = len(self.wrong)
        if n > len(self.hints) or self.solved:
            return dataclasses.replace(c, attempt=self.attempts, solution=self.solution())
        h = self.hints[n - 1]
        hint = h(answer) if callable(h) else h
        return dataclasses.replace(
            c, message=f"{c.message} Try again.", attempt=self.attempts, hint=hint
        )

    def reveal(self) -> Check:
        """The worked solution on request: only after at least one attempt."""
        if not self.attempts:
            return Check(None, "Give an answer first: the solution is shown after an attempt.")
        return Check(
            self.solved or None,
            f"{self.question} (after {self.attempts} attempt(s))",
            solution=self.solution(),
            attempt=self.attempts,
        )

    def __repr__(self) -> str:
        state = "solved" if self.solved else f"{len(self.wrong)} wrong attempt(s)"
        return f"Exercise({self.id!r}: {state})"
