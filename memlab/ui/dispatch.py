"""Widget edits on the thread that owns the widgets: the kernel's event loop.

The runner calls back on its own threads (a run's reader thread, the service thread). Editing
a widget there races with the kernel's main thread, which applies the page's replies to the
same widgets: traitlets' ``hold_trait_notifications`` replaces ``notify_change`` on the
*instance* for every thread while a reply is applied, so an edit made meanwhile by another
thread is merged away and never reaches the page (``traitlets/traitlets.py``; found under
Voila, where a chart kept the previous run). So callbacks only hand their data over here,
and the owner thread makes every edit.

In ipykernel 7 a cell runs on the kernel's main thread, inside the asyncio loop that tornado's
``IOLoop`` wraps (``ipykernel/kernelbase.py``: ``start`` takes ``IOLoop.current()``; sync cells
run inside the ``execute_request`` coroutine, ``ipkernel.py``), and comm messages (the page's
replies, button clicks) are handled on that loop too. A :class:`Dispatcher` built in a cell
captures that loop (``asyncio.get_running_loop``) and the thread; :meth:`Dispatcher.post`
queues a callable from any thread and wakes the loop with ``call_soon_threadsafe``, which drains
the queue on its own thread. A cell that blocks (``panel.run(); panel.wait()``, as the labs do)
blocks that loop too, so :meth:`Dispatcher.pump` drains the queue and runs due timers itself
while it waits. Without a running loop (a script, pytest) the thread that built the dispatcher
owns it, and the queue is drained by ``pump`` (``Panel.wait``) or by a post made on that thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["Dispatcher", "Timer"]

_log = logging.getLogger(__name__)

# The longest a waiting pump sleeps without a post or a due timer (a safety net only: posts
# and timers wake it).
_MAX_NAP_S = 0.25


class Timer:
    """A callable to run on the owner thread at ``due`` (``time.monotonic``), unless cancelled."""

    __slots__ = ("due", "fn", "cancelled")

    def __init__(self, due: float, fn: Callable[[], None]) -> None:
        self.due, self.fn, self.cancelled = due, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Dispatcher:
    """Runs callables on the thread (and event loop, if one runs) that built it.

    ``after_drain`` (if set) runs on the owner thread after each drain that ran anything: the
    place for work one batch of posts shares (a single redraw for many samples).
    """

    def __init__(self) -> None:
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no running loop in this thread: a script, pytest
            self.loop = None
        self.thread = threading.current_thread()
        self.after_drain: Callable[[], None] | None = None
        self._cv = threading.Condition()
        self._pending: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._loop_woken = False  # a drain is queued on the loop (at most one at a time)
        self._draining = False
        self._closed = False

    # -- any thread -------------------------------------------------------------------------
    def on_owner(self) -> bool:
        return threading.current_thread() is self.thread

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the owner thread: now if called there, else soon (FIFO)."""
        with self._cv:
            if self._closed:
                return
            self._pending.append(fn)
            self._cv.notify_all()
            wake = self.loop is not None and not self._loop_woken and not self.on_owner()
            if wake:
                self._loop_woken = True
        if self.on_owner():
            self.drain()
        elif wake:
            self._wake_loop()

    def close(self) -> None:
        """Drop what is queued; later posts and timers are ignored."""
        with self._cv:
            self._closed = True
            self._pending.clear()
            self._timers.clear()
            self._cv.notify_all()

    # -- the owner thread -------------------------------------------------------------------
    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the owner thread in ``delay_s`` seconds (a loop timer, or at the next
        pump past that time); call on the owner thread."""
        timer = Timer(time.monotonic() + max(0.0, delay_s), fn)
        with self._cv:
            if self._closed:
                timer.cancel()
                return timer
            heapq.heappush(self._timers, (timer.due, next(self._seq), timer))
            self._cv.notify_all()
        if self.loop is not None:
            try:
                self.loop.call_later(max(0.0, delay_s), self.drain)
            except RuntimeError:  # the loop is closed: pump runs the timer
                self.loop = None
        return timer

    def drain(self) -> int:
        """Run what is queued and the timers that are due, on the owner thread; how many ran.
        Elsewhere (or re-entered from a callback) it does nothing."""
        if not self.on_owner() or self._draining:
            return 0
        self._draining = True
        ran = 0
        try:
            while True:
                with self._cv:
                    self._loop_woken = False
                    if self._pending:
                        fn: Callable[[], None] | None = self._pending.popleft()
                    else:
                        fn = self._pop_due_timer()
                if fn is None:
                    break
                ran += 1
                self._run(fn)
            if ran and self.after_drain is not None:
                self._run(self.after_drain)
        finally:
            self._draining = False
            with self._cv:
                self._cv.notify_all()  # a pump on another thread re-checks its condition
        return ran

    def pump(self, until: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``until()`` is true; on the owner thread, drain meanwhile (a blocked cell
        blocks the loop that would). False if ``timeout`` passed first."""
        owner = self.on_owner()
        if not owner and self.loop is None:
            raise RuntimeError(
                "this panel has no event loop and was built on another thread: wait on the "
                "thread that built it (the updates are applied there)"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if owner:
                self.drain()
            if until():
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            with self._cv:
                if owner and self._pending:
                    continue
                nap = _MAX_NAP_S
                if owner and self._timers:
                    nap = min(nap, max(0.0, self._timers[0][0] - now))
                if deadline is not None:
                    nap = min(nap, max(0.0, deadline - now))
                self._cv.wait(nap)

    # -- internals --------------------------------------------------------------------------
    def _pop_due_timer(self) -> Callable[[], None] | None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True  # runs once, whether the loop or a pump gets to it
                return timer.fn
        return None

    def _wake_loop(self) -> None:
        loop = self.loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop was closed (built in asyncio.run that ended): pump
            self.loop = None

    @staticmethod
    def _run(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - one failed edit must not stop the others
            _log.exception("memlab.ui: an update failed")
