"""Lab 09's scheduling panel: a policy and a budget as widgets, the tasks' Gantt chart and the
combined memory drawn live while ``memlab.scheduling`` runs them in its worker processes.

    view = SchedulePanel(tasks, predicted, budget_bytes=64 * MIB)
    view                  # policy, budget, Run; the status line; the live chart
    view.run(); view.wait()

Two parts, so the state can be tested without a browser (the anywidget way):

- :class:`ScheduleState` folds the schedule's events (``arrived``, ``started``, ``ended``,
  ``memory``: see ``memlab.scheduling.schedule``) into a provisional ``ScheduleResult`` that
  ``plots_scheduling.schedule_figure`` draws: a task that started and has not ended is
  ``running`` with its bar up to now; the memory line is the pool's live bytes as sampled every
  0.1 s (the exact combined timeline replaces it when the schedule ends);
- :class:`SchedulePanel` binds it to widgets. The schedule calls back on its own thread; as in
  ``Panel``, callbacks only post to a :class:`~memlab.ui.dispatch.Dispatcher` and the kernel's
  thread makes every widget edit (``memlab/ui/dispatch.py`` says why). Redraws are throttled
  (at most one per ``redraw_s``): on 2 cores the browser's redraws compete with the workers
  being measured (the developers' guide measured a live panel slowing a step 8.6x).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from memlab.config import MIB
from memlab.ui.dispatch import Dispatcher, Timer

if TYPE_CHECKING:
    from memlab.scheduling import ScheduleHandle, ScheduleResult, Task

__all__ = ["ScheduleState", "SchedulePanel", "summary_line"]

_OPEN = ("waiting", "running")


class ScheduleState:
    """The events of one schedule so far, as a provisional ``ScheduleResult`` (no widgets)."""

    def __init__(
        self,
        tasks: Sequence[Task],
        predicted: Sequence[int],
        policy: str,
        budget_bytes: int,
        slots: int = 2,
    ) -> None:
        if len(predicted) != len(tasks):
            raise ValueError(
                f"predicted must have one peak per task: {len(predicted)} for {len(tasks)} tasks"
            )
        self.tasks = list(tasks)
        self.predicted = [int(p) for p in predicted]
        self.policy = policy
        self.budget_bytes = int(budget_bytes)
        self.slots = slots
        self.started: dict[int, tuple[float, int | None, int]] = {}  # index -> (t, slot, order)
        self.ended: dict[int, tuple[float, str]] = {}  # index -> (t, status)
        self.memory: list[tuple[float, int]] = []
        self.t = 0.0

    def add(self, ev: Mapping[str, Any]) -> None:
        kind = ev.get("kind")
        t = float(ev.get("t", self.t))
        self.t = max(self.t, t)
        if kind == "started":
            i = int(ev["index"])
            self.started[i] = (t, ev.get("slot"), len(self.started))
        elif kind == "ended":
            self.ended[int(ev["index"])] = (t, str(ev["status"]))
        elif kind == "memory":
            self.memory.append((t, int(ev["bytes"])))

    @property
    def counts(self) -> dict[str, int]:
        """Tasks waiting (arrived or not), running, and ended by status."""
        out = {"waiting": 0, "running": 0}
        for i in range(len(self.tasks)):
            if i in self.ended:
                st = self.ended[i][1]
                out[st] = out.get(st, 0) + 1
            elif i in self.started:
                out["running"] += 1
            else:
                out["waiting"] += 1
        return out

    def result(self, now_s: float | None = None) -> ScheduleResult:
        """The schedule so far, drawable by ``schedule_figure``; ``now_s`` (seconds from the
        start) is where a running task's bar ends."""
        from memlab.scheduling import ScheduleResult, TaskOutcome

        now = self.t if now_s is None else max(self.t, now_s)
        outcomes = []
        for i, task in enumerate(self.tasks):
            start = self.started.get(i)
            end = self.ended.get(i)
            status = end[1] if end else ("running" if start else "waiting")
            outcomes.append(
                TaskOutcome(
                    index=i,
                    name=task.name,
                    workload=task.workload,
                    batch_size=task.batch_size,
                    requests=task.requests,
                    priority=task.priority,
                    arrival_s=task.arrival_s,
                    deadline_s=task.deadline_s,
                    predicted_peak_bytes=self.predicted[i],
                    status=status,
                    order=start[2] if start else None,
                    slot=start[1] if start else None,
                    start_s=start[0] if start else None,
                    end_s=end[0] if end else (now if start else None),
                )
            )
        peak = max((b for _, b in self.memory), default=0)
        return ScheduleResult(
            policy=self.policy,
            budget_bytes=self.budget_bytes,
            slots=self.slots,
            enforcement="live",
            source="live",
            tasks=tuple(outcomes),
            status="running",
            peak_bytes=peak,
            timeline_s=tuple(t for t, _ in self.memory),
            timeline_bytes=tuple(b for _, b in self.memory),
            makespan_s=None,
        )


class SchedulePanel:
    """A policy dropdown, a budget slider (MiB), Run/Stop, a status line and the live chart.

    ``tasks`` and their ``predicted`` peaks (``memlab.scheduling.predict_peaks``, made once)
    are fixed; each Run schedules them under the chosen policy and budget in fresh workers.
    ``results`` keeps the last result per policy. ``budget_range_mib`` bounds the slider.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        predicted: Sequence[int],
        *,
        policy: str = "fifo",
        budget_bytes: int = 64 * MIB,
        budget_range_mib: tuple[int, int] | None = None,
        slots: int = 2,
        redraw_s: float = 0.5,
    ) -> None:
        from memlab.plots_scheduling import schedule_figure
        from memlab.scheduling import POLICIES
        from memlab.ui.charts import _widget

        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if len(predicted) != len(tasks):
            raise ValueError(
                f"predicted must have one peak per task: {len(predicted)} for {len(tasks)} tasks"
            )
        self.tasks = list(tasks)
        self.predicted = [int(p) for p in predicted]
        self.slots = slots
        self.redraw_s = redraw_s
        self.results: dict[str, ScheduleResult] = {}
        self.result: ScheduleResult | None = None
        self.error: BaseException | None = None
        lo, hi = budget_range_mib or (
            max(1, int(max(self.predicted) / MIB)),
            max(int(budget_bytes / MIB) * 2, int(sum(self.predicted) / MIB) + 1),
        )
        self.policy = widgets.Dropdown(options=list(POLICIES), value=policy, description="policy")
        self.budget = widgets.IntSlider(
            value=min(max(int(budget_bytes / MIB), lo), hi),
            min=lo,
            max=hi,
            description="budget MiB",
            continuous_update=False,
        )
        self.run_button = widgets.Button(description="Run", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", disabled=True)
        self.status = widgets.HTML(value="ready: pick a policy and a budget, then Run")
        self._ui = Dispatcher()
        self._state = ScheduleState(self.tasks, self.predicted, policy, budget_bytes, slots)
        self.figure = _widget(schedule_figure(self._state.result(), title="not run yet"))
        self.figure.update_layout(height=520)
        self.run_button.on_click(lambda _b: self.run())
        self.stop_button.on_click(lambda _b: self.stop())
        self._handle: ScheduleHandle | None = None
        self._gen = 0
        self._t0 = 0.0
        self._timer: Timer | None = None
        self.box = widgets.VBox(
            [
                widgets.HBox([self.policy, self.budget, self.run_button, self.stop_button]),
                self.status,
                self.figure,
            ]
        )

    # -- public ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._handle is not None

    def run(self) -> None:
        """Schedule the tasks under the widgets' policy and budget (stops a schedule running)."""
        from memlab.scheduling import start_schedule

        self.stop()
        self._gen += 1
        gen = self._gen
        policy, budget = str(self.policy.value), int(self.budget.value) * MIB
        self._state = ScheduleState(self.tasks, self.predicted, policy, budget, self.slots)
        self.error = None
        self._t0 = time.monotonic()
        self._set_status(f"running {policy} with {budget / MIB:.0f} MiB…")
        self.run_button.disabled, self.stop_button.disabled = True, False
        try:
            self._handle = start_schedule(
                self.tasks,
                policy,
                budget_bytes=budget,
                slots=self.slots,
                predicted=self.predicted,
                on_event=lambda ev: self._ui.post(lambda: self._on_event(gen, ev)),
            )
        except (ValueError, TypeError) as e:  # e.g. a task memory-aware can never admit
            self._handle = None
            self.error = e
            self.run_button.disabled, self.stop_button.disabled = False, True
            self._set_status(f"<b>not run</b>: {e}")
            return
        handle = self._handle
        self._draw(self._state.result(0.0))  # the previous run's chart goes at once
        self._schedule_redraw()

        import threading

        def waiter() -> None:
            try:
                res: Any = handle.wait()
            except BaseException as e:  # noqa: BLE001 - shown in the status, never raised
                res = e
            self._ui.post(lambda: self._on_done(gen, res))

        threading.Thread(target=waiter, name="memlab-schedule-wait", daemon=True).start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def wait(self, timeout: float | None = None) -> ScheduleResult | None:
        """Block until the schedule ends (drawing as it goes); its result."""
        if not self._ui.pump(lambda: self._handle is None, timeout):
            raise TimeoutError(f"the schedule did not end within {timeout} s")
        return self.result

    def close(self) -> None:
        self.stop()
        self._ui.close()
        self.box.close()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)

    # -- owner thread -----------------------------------------------------------------------
    def _on_event(self, gen: int, ev: Mapping[str, Any]) -> None:
        if gen != self._gen:
            return
        self._state.add(ev)

    def _schedule_redraw(self) -> None:
        self._timer = self._ui.call_later(self.redraw_s, self._redraw_tick)

    def _redraw_tick(self) -> None:
        if self._handle is None:
            return
        self._draw(self._state.result(time.monotonic() - self._t0))
        c = self._state.counts
        done = sum(v for k, v in c.items() if k not in _OPEN)
        ended = ", ".join(f"{v} {k}" for k, v in c.items() if v and k not in _OPEN)
        self._set_status(
            f"running {self._state.policy}: {c['running']} running, {c['waiting']} waiting, "
            f"{done} ended ({ended or 'none yet'})"
        )
        self._schedule_redraw()

    def _draw(self, result: ScheduleResult, title: str | None = None) -> None:
        from memlab.plots_scheduling import schedule_figure
        from memlab.ui.charts import sync_figure

        live = result.status == "running"
        fig = schedule_figure(result, title=f"{result.policy} (running)" if live else title)
        fig.update_layout(height=520)
        sync_figure(self.figure, fig)

    def _on_done(self, gen: int, res: Any) -> None:
        if gen != self._gen:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._handle = None
        self.run_button.disabled, self.stop_button.disabled = False, True
        if isinstance(res, BaseException):
            self.error = res
            self._set_status(f"<b>error</b>: {type(res).__name__}: {res}")
            return
        self.result = res
        self.results[res.policy] = res
        self._draw(res, title=None)  # schedule_figure's own title: misses, oom, peak
        self._set_status(summary_line(res))

    def _set_status(self, html: str) -> None:
        self.status.value = html


def summary_line(r: ScheduleResult) -> str:
    """One line for a finished schedule: its figures, measured (and its status if not ok)."""
    p99 = r.p99_latency_s
    head = f"<b>{r.policy}</b> ({r.status})" if r.status != "ok" else f"<b>{r.policy}</b>"
    return (
        f"{head}: {r.deadline_misses}/{len(r.tasks)} deadline misses, {r.oom_count} oom, "
        f"p99 latency {'–' if p99 is None else f'{p99:.2f} s'}, "
        f"peak {r.peak_bytes / MIB:.1f} MiB of {r.budget_bytes / MIB:.0f} MiB, "
        f"makespan {'–' if r.makespan_s is None else f'{r.makespan_s:.2f} s'} "
        f"(measured; budget enforced by {r.enforcement})"
    )
