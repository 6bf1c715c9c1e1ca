"""Predict before you run: the panel's estimate of the next run, drawn as soon as a knob moves.

``memlab.estimate`` runs on fake tensors (a fraction of a second; nothing of model size is
allocated) as a job of the runner's service worker, so torch stays out of the kernel
(ARCHITECTURE.md, "Process model") and an estimate never runs beside a measured step (the runner's
scheduler queues it behind a run in progress). The prediction is on screen before the learner
presses Run; when the run ends, its measurement is overlaid on the prediction of the same
settings, with the error in percent.

When an estimate cannot be made, the chart says why in words (never an exception's repr); when
it is known to be off for these settings (:func:`known_off_notes`), the note says by how much
and why beside the prediction, so a large error after the run is explained, not silent. A run
that did not finish is drawn beside the prediction without an error in %.

Requests coalesce: one estimate at a time, and while it runs only the newest settings wait.
Estimates are cached by the fields that decide a step's memory (``config.MEMORY_FIELDS``).
Everything here runs on the panel's owner thread: the job's callback only hands the outcome to
the :class:`~memlab.ui.dispatch.Dispatcher`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from memlab.config import MEMORY_FIELDS, Experiment
from memlab.timeline import RunResult, format_bytes
from memlab.ui.dispatch import Dispatcher

__all__ = ["Predictor", "known_off_notes", "no_prediction_note", "prediction_key"]

# An estimate takes a second or two; one that hangs must not hold the service worker forever.
_ESTIMATE_TIMEOUT_S = 300.0

DrawFn = Callable[[Mapping[str, int] | None, RunResult | None, str], None]


def prediction_key(exp: Experiment | Mapping[str, Any]) -> tuple[Any, ...]:
    """What an estimate depends on: the values of ``config.MEMORY_FIELDS``."""
    d = exp.to_dict() if isinstance(exp, Experiment) else exp
    return tuple(d.get(f) for f in MEMORY_FIELDS)


def no_prediction_note(error: BaseException) -> str:
    """Why there is no prediction, in words. The estimator's own refusals
    (``EstimateError``) are sentences already; anything else is a failure of the estimator,
    said with its first line only (the traceback is in the log)."""
    first = (str(error).strip().splitlines() or [""])[0]
    if type(error).__name__ == "EstimateError":
        return f"no prediction: {first}"
    if isinstance(error, TimeoutError):
        return "no prediction: the estimate took too long (the run will still measure it)"
    why = f" ({first})" if first else ""
    return (
        "no prediction for these settings: the estimator could not run them "
        f"({type(error).__name__}{why}); press Run to measure them"
    )


def known_off_notes(exp: Experiment | Mapping[str, Any], est: Any = None) -> list[str]:
    """Why the prediction of ``exp`` is known to be off, one sentence per cause (empty when
    it is not known to be). The estimator's own ``notes`` that say so come first."""
    d = exp.to_dict() if isinstance(exp, Experiment) else dict(exp)
    notes = [n for n in getattr(est, "notes", ()) if n.startswith("estimate:")]
    inputs = getattr(est, "peak_by_category", {}).get("inputs") if est is not None else None
    said = " ".join(notes)  # the estimator's own notes name their cause (data=..., ...)
    if d.get("data") == "memmap" and "data=memmap" not in said:
        size = f" (predicted: {format_bytes(inputs)})" if inputs else ""
        notes.append(
            "data=memmap: each batch is numpy memory that torch wraps (torch.from_numpy), not "
            "allocated by torch, so the run does not count it as tensor bytes while the "
            f"prediction does: expect the prediction to be higher by about the inputs{size}"
        )
    if d.get("precision") == "amp-fp16" and "amp-fp16" not in said:
        notes.append(
            "precision=amp-fp16: the gradient scaler's steps depend on the data (it skips a "
            "step whose gradients overflow, and on a CPU some ops fall back to fp32), which "
            "fake tensors cannot follow: the optimizer phase and temporaries may be off"
        )
    if d.get("sparse_storage") == "sparse" and (d.get("sparsity") or 0) > 0:
        if not any("sparse" in n for n in notes):
            notes.append(
                "sparse_storage=sparse: the CSR kernels' internal buffers are not modelled: "
                "the prediction is low by what they hold"
            )
    return notes


def _estimate_job(exp: Experiment) -> Any:
    """The service worker's job (module-level, so it pickles by reference)."""
    from memlab.estimator import estimate

    return estimate(exp)


class Predictor:
    """Estimates in the runner's service worker; ``draw(predicted_by_category, result, note)``
    is called on the owner thread with each new prediction of the newest settings, and again
    when a measurement of the same settings comes."""

    def __init__(self, draw: DrawFn, dispatcher: Dispatcher | None = None) -> None:
        self._draw = draw
        self._ui = dispatcher if dispatcher is not None else Dispatcher()
        self._want: tuple[tuple[Any, ...], Experiment] | None = None  # the newest request
        self._job: Any = None  # the memlab.runner.Job in flight, if any
        self._cache: dict[tuple[Any, ...], Any] = {}  # key -> Estimate, or an error string
        self._measured: dict[tuple[Any, ...], RunResult] = {}
        self._shown: tuple[Any, ...] | None = None
        self._closed = False
        #: The latest prediction drawn (a memlab.estimator.Estimate), or None.
        self.latest: Any = None
        #: Why there is no prediction for the current settings, if there is none.
        self.error: str | None = None
        #: Estimates asked of the service worker (cache hits and coalesced requests are not).
        self.jobs_submitted = 0
        #: Why the prediction on screen is known to be off (:func:`known_off_notes`).
        self.notes: list[str] = []

    # -- requests (owner thread) --------------------------------------------------------------
    def request(self, exp: Experiment) -> None:
        """Predict ``exp`` (soon, in the service worker); the newest request wins."""
        if self._closed:
            return
        key = prediction_key(exp)
        self._want = (key, exp)
        if key in self._cache:
            self._present(key)
        elif self._job is None:
            self._submit(key, exp)
        # else: the estimate in flight ends first, then the newest request goes (_landed)

    def measured(self, result: RunResult) -> None:
        """A run ended: overlay it on the prediction of the same settings."""
        if self._closed or result.experiment is None or result.status not in ("ok", "oom"):
            return
        key = prediction_key(result.experiment)
        self._measured[key] = result
        if key in self._cache:
            if self._want is None or self._want[0] == key:
                self._present(key)
        else:
            self.request(Experiment.from_dict(dict(result.experiment)))

    def close(self) -> None:
        """Ignore later requests and the estimate in flight (it ends in the worker)."""
        self._closed = True
        self._want = None

    def idle(self) -> bool:
        """No estimate in flight, and the newest request is drawn."""
        return self._closed or (
            self._job is None and (self._want is None or self._want[0] in self._cache)
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`idle` (drawing on the owner thread meanwhile); False on timeout."""
        return self._ui.pump(self.idle, timeout)

    def error_pct(self) -> float | None:
        """(predicted - measured) / measured of the peak, for the prediction on screen; None
        until a run of the same settings finished (a run that stopped early measured part of
        a step: no error)."""
        if self._shown is None or self.latest is None:
            return None
        r = self._measured.get(self._shown)
        if r is None or not r.peak_bytes or r.status != "ok":
            return None
        return 100.0 * (self.latest.peak_bytes / r.peak_bytes - 1.0)

    def estimate_for(self, exp: Experiment | Mapping[str, Any]) -> Any:
        """The cached prediction of ``exp``'s memory settings (an Estimate), or None."""
        est = self._cache.get(prediction_key(exp))
        return None if est is None or isinstance(est, str) else est

    # -- internals ----------------------------------------------------------------------------
    def _submit(self, key: tuple[Any, ...], exp: Experiment) -> None:
        from memlab.runner import submit

        self.jobs_submitted += 1
        try:
            self._job = submit(
                _estimate_job,
                exp,
                timeout_s=_ESTIMATE_TIMEOUT_S,
                on_done=lambda job: self._ui.post(lambda: self._landed(key, job)),
            )
        except Exception as e:  # noqa: BLE001 - said on the chart, never raised
            self._job = None
            self._cache[key] = no_prediction_note(e)
            self._present(key)

    def _landed(self, key: tuple[Any, ...], job: Any) -> None:
        """The estimate of ``key`` ended (owner thread): cache it, draw it if it is still the
        newest request, and send the newest request if it is not cached."""
        self._job = None
        if self._closed:
            return
        error = job.exception(timeout=0)
        if error is None:
            self._cache[key] = job.result(timeout=0)
        else:
            self._cache[key] = no_prediction_note(error)
        if self._want is None:
            return
        want_key, want_exp = self._want
        if want_key in self._cache:
            self._present(want_key)
        else:
            self._submit(want_key, want_exp)

    def _present(self, key: tuple[Any, ...]) -> None:
        est = self._cache[key]
        self._shown = key
        if isinstance(est, str):
            self.latest, self.error, self.notes = None, est, []
            self._draw(None, None, est)
            return
        self.latest, self.error = est, None
        note = (
            f"predicted in {est.elapsed_s * 1e3:.0f} ms, nothing allocated: first step "
            f"{format_bytes(est.first_step_peak_bytes)}, steady "
            f"{format_bytes(est.steady_peak_bytes)}"
        )
        exp = self._want[1] if self._want is not None and self._want[0] == key else None
        measured = self._measured.get(key)
        if exp is None and measured is not None and measured.experiment is not None:
            exp = Experiment.from_dict(dict(measured.experiment))
        off = known_off_notes(exp, est) if exp is not None else []
        if off:
            note += "<br>known to be off: " + "<br>".join(off)
        self.notes = off
        self._draw(est.peak_by_category, measured, note)
