"""Three classic PyTorch memory leaks, each with its fix, measured per step.

``memlab.leak_check(example, steps=..., fixed=...)`` runs one of :data:`EXAMPLES` in memlab's
service worker (the caller never imports torch) under ``memlab.track`` and returns a
:class:`LeakResult`: the tensor bytes still alive at the end of each step by category and by
the place they were allocated (``timeline.AliveReport``), the growth per step, and what
``gc.collect()`` found at the end.

- ``loss_history``: a training loop that logs a validation loss each step with
  ``history.append(val_loss)``. The validation forward ran with autograd on, so the logged
  tensor holds its graph, and the graph holds the tensors it saved for a backward that never
  comes: every step's saved activations stay alive. Fix: ``val_loss.item()`` (a Python float;
  ``detach()`` would do too, and ``torch.no_grad()`` around the validation forward avoids the
  graph altogether). Note: appending the *training* loss, after its ``backward()``, keeps only
  the 4-byte scalar and the graph's node objects (backward already freed the saved tensors):
  that leak is in Python objects, not tensor bytes.
- ``reference_cycle``: each step keeps its batch in a record whose callback is its own bound
  method (``self.on_done = self.report``): a reference cycle, so the record outlives the step
  and only the cyclic garbage collector frees it. Fix: a ``weakref.WeakMethod`` callback (no
  cycle: reference counting frees the record at once). ``gc.collect()`` at the end frees every
  leaked record (the result's ``gc_freed_bytes``).
- ``forward_hook``: a forward hook that appends each layer output to a list ("to look at the
  activations later"): each step's activation stays alive (``output.detach()`` would not help:
  it shares the storage). Fix: store a detached summary (``output.detach().norm().item()``),
  or ``handle.remove()`` the hook once done; the fixed variant does both.

The cyclic collector's automatic runs are **disabled** (``gc.disable()``) while an example runs,
and restored after: an automatic collection would free the cycle at a moment that depends on
the allocation counts (the thresholds, ``gc.get_threshold()``), so with it on the growth is a
saw-tooth rather than a line. A collection first, before tracking begins, starts every run from
the same state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import html
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from memlab.timeline import AliveReport, format_bytes

__all__ = [
    "EXAMPLES",
    "LeakResult",
    "leak_check",
    "run_example",
    "build_setup",
    "Setup",
    "loss_history",
    "reference_cycle",
    "forward_hook",
]

#: The examples ``leak_check`` runs, with what leaks and what fixes it.
EXAMPLES: dict[str, tuple[str, str]] = {
    "loss_history": (
        "history.append(val_loss) keeps each step's validation graph and its saved activations",
        "history.append(val_loss.item()) keeps a float; the graph is freed at once",
    ),
    "reference_cycle": (
        "a per-step record whose callback is its own bound method (a reference cycle) keeps the "
        "step's batch until gc.collect()",
        "a weakref.WeakMethod callback: no cycle, reference counting frees the record at once",
    ),
    "forward_hook": (
        "a forward hook appends each layer output to a list, keeping every step's activation",
        "the hook stores output.detach().norm().item() (a float) and is removed when done",
    ),
}

#: Sizes of the small model the examples train (an MLP on random data).
BATCH = 32
FEATURES = 64
HIDDEN = 256
CLASSES = 10


# -- the model the examples share ------------------------------------------------------------
@dataclass
class Setup:
    """A small MLP, its optimizer and fixed validation data; the training batches are made in
    each step (as a loader would), so a step frees what it made unless something keeps it."""

    model: Any
    optimizer: Any
    x_val: Any
    y_val: Any
    seed: int = 0

    def batch(self, step: int) -> tuple[Any, Any]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + step)
        return (
            torch.randn(BATCH, FEATURES, generator=g),
            torch.randint(0, CLASSES, (BATCH,), generator=g),
        )

    def train_step(self, x: Any, y: Any) -> Any:
        """Forward, backward, update; returns the loss (its saved tensors freed by backward)."""
        import torch.nn.functional as F

        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def build_setup(seed: int = 0) -> Setup:
    """The examples' model: Linear(64, 256) -> ReLU -> Linear(256, 10), plain SGD (no lazy
    optimizer state, so every step's growth is the leak's), a fixed validation batch."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    ).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed + 1)
    x_val = torch.randn(BATCH, FEATURES, generator=g)
    y_val = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return Setup(model, opt, x_val, y_val, seed)


class Steps(Protocol):
    """What an example marks: its step ends and its data phase (a ``memlab.Tracker`` does)."""

    def step(self, label: str = "step") -> None: ...
    def phase(self, name: str) -> contextlib.AbstractContextManager[None]: ...


class _Untracked:
    """Marks nothing: runs an example outside a tracker."""

    def step(self, label: str = "step") -> None:
        pass

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


_UNTRACKED = _Untracked()


# -- the three examples: small and readable, each (setup, steps, fixed, rec) -----------------
def loss_history(s: Setup, steps: int, fixed: bool, rec: Steps = _UNTRACKED) -> list[Any]:
    """Train; log the validation loss each step. Leaky: the tensor (and its graph) is kept."""
    import torch.nn.functional as F

    history: list[Any] = []
    for i in range(steps):
        with rec.phase("data"):
            x, y = s.batch(i)
        s.train_step(x, y)
        val_loss = F.cross_entropy(s.model(s.x_val), s.y_val)  # autograd on: a graph
        history.append(val_loss.item() if fixed else val_loss)  # the leak, or its fix
        del x, y, val_loss
        rec.step(f"step {i + 1}")
    return history  # returned: the history lives on, as a real log would


class _StepRecord:
    """What a step keeps for a report at its end: the batch, and a callback to call then."""

    def __init__(self, batch: Any, *, weak: bool) -> None:
        self.batch = batch
        # A bound method refers to its instance: stored on the instance, it closes a cycle.
        self.on_done: Any = weakref.WeakMethod(self.report) if weak else self.report

    def report(self) -> int:
        return int(self.batch.shape[0])


def reference_cycle(s: Setup, steps: int, fixed: bool, rec: Steps = _UNTRACKED) -> None:
    """Train; each step's record refers to itself. Leaky: only the cyclic gc frees it."""
    for i in range(steps):
        with rec.phase("data"):
            x, y = s.batch(i)
        record = _StepRecord(x, weak=fixed)
        s.train_step(x, y)
        done = record.on_done() if fixed else record.on_done  # WeakMethod: call to get it
        assert done is not None
        done()
        del x, y, record, done  # the leaky record survives this: its cycle keeps it alive
        rec.step(f"step {i + 1}")


def forward_hook(s: Setup, steps: int, fixed: bool, rec: Steps = _UNTRACKED) -> list[Any]:
    """Train with a hook on the hidden layer's output. Leaky: the hook keeps every output."""
    seen: list[Any] = []

    def keep(module: Any, args: Any, output: Any) -> None:
        seen.append(output.detach().norm().item() if fixed else output)

    handle = s.model[1].register_forward_hook(keep)
    for i in range(steps):
        with rec.phase("data"):
            x, y = s.batch(i)
        s.train_step(x, y)
        del x, y
        rec.step(f"step {i + 1}")
    if fixed:
        handle.remove()  # done looking: a hook left in place runs (and keeps) on every forward
    return seen


_FUNCS: dict[str, Callable[[Setup, int, bool, Steps], Any]] = {
    "loss_history": loss_history,
    "reference_cycle": reference_cycle,
    "forward_hook": forward_hook,
}


# -- the result -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeakResult:
    """One leak example measured: the per-step alive report and what gc found at the end.

    ``alive`` is the tracker's report (tensor bytes alive at each step's end, by category and
    allocation site); ``growth_per_step_bytes`` its least-squares slope after the first step.
    ``gc_count`` is ``gc.get_count()`` after the last step (objects allocated per generation
    since the last collection; the automatic collector was off), ``gc_collected`` the objects
    the final ``gc.collect()`` found unreachable, and ``gc_freed_bytes`` the tensor bytes that
    collection freed (the tracker's live bytes before minus after).
    """

    example: str
    fixed: bool
    steps: int
    alive: AliveReport
    peak_bytes: int
    gc_count: tuple[int, int, int]
    gc_collected: int
    gc_freed_bytes: int
    leak: str = ""
    fix: str = ""
    source: str = ""
    duration_s: float = 0.0
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.alive, Mapping):
            object.__setattr__(self, "alive", AliveReport.from_dict(self.alive))
        object.__setattr__(self, "gc_count", tuple(int(v) for v in self.gc_count))
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))

    @property
    def growth_per_step_bytes(self) -> float | None:
        return self.alive.growth_per_step_bytes

    @property
    def label(self) -> str:
        return f"{self.example} ({'fixed' if self.fixed else 'leaky'})"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["alive"] = self.alive.to_dict()
        d["gc_count"] = list(self.gc_count)
        d["notes"] = list(self.notes)
        d["growth_per_step_bytes"] = self.growth_per_step_bytes
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeakResult:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["alive"] = AliveReport.from_dict(d["alive"])
        kw["gc_count"] = tuple(d["gc_count"])
        kw["notes"] = tuple(d.get("notes", ()))
        return cls(**kw)

    def _rows(self) -> list[tuple[str, str]]:
        g = self.growth_per_step_bytes
        last = self.alive.steps[-1] if self.alive.steps else None
        rows = [
            ("example", self.label),
            ("what it does", self.fix if self.fixed else self.leak),
            ("growth per step", "n/a" if g is None else f"{format_bytes(g)}/step"),
            ("alive at the last step", format_bytes(None if last is None else last.total_bytes)),
            ("peak (tensors)", format_bytes(self.peak_bytes)),
            (
                "gc.collect() at the end",
                f"{self.gc_collected} objects, "
                f"{format_bytes(self.gc_freed_bytes)} of tensors freed",
            ),
        ]
        if last is not None:
            for site in last.sites[:3]:
                rows.append(
                    (
                        f"  {site.category}",
                        f"{format_bytes(site.bytes)} x{site.count} from {site.where}",
                    )
                )
        return rows

    def __repr__(self) -> str:
        g = self.growth_per_step_bytes
        return (
            f"LeakResult({self.label}, growth={'n/a' if g is None else format_bytes(g)}/step, "
            f"steps={self.steps}, gc_freed={format_bytes(self.gc_freed_bytes)})"
        )

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(k)}</td>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self._rows()
        )
        return f"<table><caption>memlab LeakResult</caption>{body}</table>"


# -- running --------------------------------------------------------------------------------
def _check(example: str, steps: int) -> None:
    if example not in EXAMPLES:
        raise ValueError(f"example must be one of {tuple(EXAMPLES)}, got {example!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2 (growth needs two step ends), got {steps!r}")


def run_example(
    example: str, *, steps: int = 8, fixed: bool = False, seed: int = 0, source_lines: bool = True
) -> LeakResult:
    """Run ``example`` here (this process imports torch) under ``memlab.track``; see
    :func:`leak_check` for the worker path and the arguments."""
    _check(example, steps)
    if not isinstance(fixed, bool):
        raise ValueError(f"fixed must be True or False, got {fixed!r}")
    from memlab.tracking import track

    s = build_setup(seed)
    was_enabled = gc.isenabled()
    gc.collect()  # every run starts from the same state
    gc.disable()  # no automatic collection mid-run: see the module's docstring
    try:
        with track(
            s.model,
            optimizer=s.optimizer,
            inputs=(s.x_val, s.y_val),
            sample_interval_s=None,
            source_lines=source_lines,
        ) as rec:
            kept = _FUNCS[example](s, steps, fixed, rec)
            # A phase mark ends the last forward, so what it left alive is counted as
            # activations like every earlier step's (a forward lasts until the next mark).
            with rec.phase("other"):
                count = gc.get_count()
                before = rec.live_bytes()
                collected = gc.collect()
                freed = before - rec.live_bytes()
                del kept
    finally:
        if was_enabled:
            gc.enable()
    result = rec.result
    assert result is not None and result.alive is not None
    notes = list(result.notes)
    if result.timeline.source != "cpu-allocator":
        notes.append(
            "gc_freed_bytes is read from the live count, which sees op outputs only with "
            "this event source"
        )
    leak, fix = EXAMPLES[example]
    return LeakResult(
        example=example,
        fixed=fixed,
        steps=steps,
        alive=result.alive,
        peak_bytes=result.peak_bytes,
        gc_count=(int(count[0]), int(count[1]), int(count[2])),
        gc_collected=int(collected),
        gc_freed_bytes=int(freed),
        leak=leak,
        fix=fix,
        source=result.timeline.source,
        duration_s=result.duration_s,
        notes=tuple(notes),
    )


def leak_check(
    example: str,
    *,
    steps: int = 8,
    fixed: bool = False,
    seed: int = 0,
    source_lines: bool = True,
    in_worker: bool = True,
) -> LeakResult:
    """Measure one leak example (one of :data:`EXAMPLES`), leaky or ``fixed``, over ``steps``
    training steps (>= 2) of a small MLP; returns a torch-free :class:`LeakResult`.

    ``source_lines`` names the source line of each allocation site (a frame walk per op; this
    model is small enough not to mind). Runs in memlab's service worker
    (``memlab.runner.call``; the caller never imports torch) unless ``in_worker=False``.
    """
    _check(example, steps)
    if not isinstance(fixed, bool):
        raise ValueError(f"fixed must be True or False, got {fixed!r}")
    if not in_worker:
        return run_example(example, steps=steps, fixed=fixed, seed=seed, source_lines=source_lines)
    from memlab import runner

    return runner.call(  # type: ignore[no-any-return]
        run_example, example, steps=steps, fixed=fixed, seed=seed, source_lines=source_lines
    )
