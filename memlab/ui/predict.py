"""Predict before you run: the panel's estimate of the next run, drawn as soon as a knob moves.

``memlab.estimate`` runs on fake tensors in a background thread of the kernel (a fraction of a
second; nothing of model size is allocated), so the prediction is on screen before the learner
presses Run. When the run ends, its measurement is overlaid on the prediction of the same
settings, with the error in percent. Requests coalesce: while one estimate runs, only the
latest settings wait.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from memlab.config import Experiment
from memlab.timeline import RunResult, format_bytes

__all__ = ["Predictor", "prediction_key"]

_log = logging.getLogger(__name__)

# The fields that decide a step's tensor memory (steps, seed, data loading and budget do not).
_KEY_FIELDS = ("workload", "mode", "batch_size", "precision", "checkpointing", "sparsity",
               "sparse_storage", "device")


# Predictors with a thread, stopped and joined at exit: a daemon thread still inside torch while
# the interpreter finalizes can crash it, and the crash turns a passing run's exit code red.
_LIVE: weakref.WeakSet[Predictor] = weakref.WeakSet()
_EXIT_JOIN_S = 30.0  # an estimate takes a second or two; never hang an exit for long
_at_exit = False


def _stop_all() -> None:
    for predictor in list(_LIVE):
        predictor.close(timeout=_EXIT_JOIN_S)


def _stop_at_exit(predictor: Predictor) -> None:
    global _at_exit
    if not _at_exit:  # registered on first use, not at import
        atexit.register(_stop_all)
        _at_exit = True
    _LIVE.add(predictor)


def prediction_key(exp: Experiment | Mapping[str, Any]) -> tuple[Any, ...]:
    d = exp.to_dict() if isinstance(exp, Experiment) else exp
    return tuple(d.get(f) for f in _KEY_FIELDS)


class Predictor:
    """Estimates in a background thread; ``draw(predicted_by_category, result, note)`` is
    called with each new prediction, and again when a measurement of the same settings comes."""

    def __init__(self, draw: Callable[[Mapping[str, int] | None, RunResult | None, str], None]):
        self._draw = draw
        self._cv = threading.Condition()
        self._want: Experiment | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self._cache: dict[tuple[Any, ...], Any] = {}  # key -> Estimate, or an error string
        self._measured: dict[tuple[Any, ...], RunResult] = {}
        self._shown: tuple[Any, ...] | None = None
        self._closed = False
        #: The latest prediction drawn (a memlab.estimator.Estimate), or None.
        self.latest: Any = None
        #: Why there is no prediction for the current settings, if there is none.
        self.error: str | None = None

    # -- requests ---------------------------------------------------------------------------
    def request(self, exp: Experiment) -> None:
        """Predict ``exp`` (soon, in the background); the newest request wins."""
        with self._cv:
            if self._closed:
                return
            self._want = exp
            if self._thread is None or not self._thread.is_alive():
                _stop_at_exit(self)
                self._thread = threading.Thread(target=self._loop, name="memlab-predict",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Drop waiting requests, let the estimate in progress finish (its drawing included),
        and stop the thread. Later requests are ignored. True if the thread has stopped."""
        with self._cv:
            self._closed = True
            self._want = None
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def measured(self, result: RunResult) -> None:
        """A run ended: overlay it on the prediction of the same settings."""
        if result.experiment is None or result.status not in ("ok", "oom"):
            return
        key = prediction_key(result.experiment)
        with self._cv:
            self._measured[key] = result
            est = self._cache.get(key)
        if est is None:
            self.request(Experiment.from_dict(dict(result.experiment)))
        elif not isinstance(est, str):
            self._show(key, est)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no estimate is running or waiting; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._want is None and not self._busy, timeout)

    def error_pct(self) -> float | None:
        """(predicted - measured) / measured of the peak, for the prediction on screen."""
        if self._shown is None or self.latest is None:
            return None
        r = self._measured.get(self._shown)
        if r is None or not r.peak_bytes:
            return None
        return 100.0 * (self.latest.peak_bytes / r.peak_bytes - 1.0)

    # -- the worker -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._want is None:
                    self._cv.notify_all()
                    return
                exp, self._want = self._want, None
                self._busy = True
            try:
                key = prediction_key(exp)
                est = self._cache.get(key)
                if est is None:
                    est = self._estimate(exp)
                    self._cache[key] = est
                if isinstance(est, str):
                    self.latest, self.error, self._shown = None, est, key
                    self._draw(None, None, est)
                else:
                    self._show(key, est)
            except Exception:  # noqa: BLE001 - a background thread must never die noisily
                _log.exception("memlab.ui: prediction failed")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    @staticmethod
    def _estimate(exp: Experiment) -> Any:
        from memlab.estimator import estimate

        try:
            return estimate(exp)
        except Exception as e:  # noqa: BLE001 - said on the chart, never raised
            return f"no prediction for these settings: {type(e).__name__}: {e}"

    def _show(self, key: tuple[Any, ...], est: Any) -> None:
        self.latest, self.error, self._shown = est, None, key
        note = (f"predicted in {est.elapsed_s * 1e3:.0f} ms, nothing allocated: first step "
                f"{format_bytes(est.first_step_peak_bytes)}, steady "
                f"{format_bytes(est.steady_peak_bytes)}")
        self._draw(est.peak_by_category, self._measured.get(key), note)
