"""The live panel against the CLI: does a run in the browser measure the same step time as
``memlab run`` on the same machine? (issue 10, "Quiet measurement": target ratio <= 1.10)

    python benchmarks/live.py [--workloads mlp,cnn,transformer] [--front-ends lab,voila]
                              [--rounds 3] [--steps 8] [--batch mlp=256,cnn=16]

For each front end (JupyterLab, Voila) and workload, a small generated notebook builds
``memlab.ui.Panel(experiment=Experiment(workload=W, batch_size=B, steps=N, warmup=2))`` and
shows it; headless Chromium (Debian's, via playwright) opens it at 1280x800 (JupyterLab: open,
Run All, the left sidebar open as a student has it; Voila: ``/voila/render/...``) and keeps the
charts in view. Then, for each round: one click on the panel's Run button (until the run is
done), between two ``memlab run ... --json`` of the same experiment with the page open and idle
(CLI, panel, CLI: a slow drift of the machine hits both sides alike, and the two CLI runs are the
anchor: how much one fresh worker differs from the next with nothing changed). One untimed
panel run per page comes first (the first run pays for the first draw of every chart).

Printed per front end and workload: the panel's and the CLI's median step time (median over
rounds of each run's median), the ratio (median of the per-round ratios, with its range), and
each side's timing verdict (``RunResult.timing``: steady, disturbed steps). Figures also go to
``test-artifacts/live.json``. Every server, kernel, worker and CLI process it starts is stopped
on success, error and Ctrl-C. It prints; no test times anything.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser import (  # noqa: E402  (the browser harness of the tests)
    ARTIFACTS,
    CHROMIUM_ARGS,
    DONE,
    ROOT,
    RUN_LABEL,
    BrowserUnavailable,
    chromium,
    jupyterlab,
    load_playwright,
    open_and_run,
    sidebar_open,
    status_text,
    voila,
)

WORKLOADS = ("mlp", "cnn", "transformer")
FRONT_ENDS = ("lab", "voila")
# Batch sizes that make a step roughly 30-300 ms on a 2-core laptop CPU with memlab's models
# (memlab/workloads/models.py): the transformer at 32 took 69 ms/step (issue 10), the CNN at 16
# about 40 ms (so 80 ms at 32); the MLP trains ~8.4 M weights, ~6 x 8.4 M x 128 = 6.4 GFLOP a
# step at 128, ~100-200 ms. A run of 8 steps then takes about a second: long enough that the
# browser's redraws overlap the measured steps, short enough for several rounds.
BATCH = {"mlp": 128, "cnn": 32, "transformer": 32}
WARMUP = 2
VIEWPORT = {"width": 1280, "height": 800}
RESULT_CLASS = "memlab-live-result"
# Generous: on a busy 2-core machine a run of the transformer can take a minute.
RUN_TIMEOUT_S = 300
PAGE_TIMEOUT_S = 300

# The notebook: the panel as a lab shows it, plus a hidden element that carries the panel's last
# result as JSON, so the benchmark reads exact step times, not the status line's rounded ones.
# It is updated when the status line changes to a run's final message (Panel._on_done sets the
# status last), i.e. after the measured block: it adds no work while the steps run.
_SETUP = """\
import html
import json

import ipywidgets as widgets
from IPython.display import display

import memlab
from memlab.ui import Panel

EXPERIMENT = memlab.Experiment(
    workload={workload!r}, batch_size={batch}, steps={steps}, warmup={warmup}
)
panel = Panel(experiment=EXPERIMENT, smoke=False)
display(panel)
"""
_PUBLISH = """\
published = widgets.HTML(layout=widgets.Layout(display="none"))
published.add_class({cls!r})
_seen = {{"result": None, "n": 0}}


def _publish(_change):
    r = panel.result
    if r is None or r is _seen["result"]:
        return
    _seen["result"] = r
    _seen["n"] += 1
    t = r.timing
    published.value = html.escape(json.dumps({{
        "n": _seen["n"],
        "status": r.status,
        "error": r.error,
        "median_s": r.step_time_median_s,
        "step_times_s": list(r.step_times_s),
        "timing": None if t is None else t.to_dict(),
    }}))


panel.status_line.observe(_publish, names="value")
display(published)
"""


def write_notebook(path: Path, workload: str, batch: int, steps: int) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            _SETUP.format(workload=workload, batch=batch, steps=steps, warmup=WARMUP)
        ),
        nbformat.v4.new_code_cell(_PUBLISH.format(cls=RESULT_CLASS)),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


# -- the CLI ---------------------------------------------------------------------------------------
def cli_run(workload: str, batch: int, steps: int, env: Mapping[str, str]) -> dict[str, Any]:
    """One ``memlab run --json`` (the same command as ``.venv/bin/memlab run``): its JSON.

    In a session of its own, so that on an error or Ctrl-C the whole group (the CLI and the
    run worker it spawned) is killed, not left measuring in the background."""
    cmd = [
        *cli_command(),
        "run",
        "--workload",
        workload,
        "--batch-size",
        str(batch),
        "--steps",
        str(steps),
        "--warmup",
        str(WARMUP),
        "--json",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    try:
        d = json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"memlab run exited {proc.returncode} without JSON:\n{err.decode()[-2000:]}"
        ) from None
    if d.get("status") != "ok":
        raise RuntimeError(f"memlab run: {d.get('status')}: {d.get('error')}")
    return {
        "median_s": d["step_time_s"]["median"],
        "step_times_s": d.get("step_times_s"),
        "timing": d.get("timing"),
    }


def cli_command() -> list[str]:
    return [sys.executable, "-m", "memlab"]


# -- the panel in the page ---------------------------------------------------------------------
def _published(page: Any) -> dict[str, Any] | None:
    text = page.evaluate(
        f"() => {{ const e = document.querySelector('.{RESULT_CLASS}'); "
        "return e ? e.textContent : null; }"
    )
    return json.loads(text) if text else None


def panel_run(page: Any) -> dict[str, Any]:
    """Click Run, wait until the run is done; its result as the page shows it."""
    before = _published(page)
    n = (before or {}).get("n", 0)
    page.locator(".widget-button", has_text=RUN_LABEL).first.click()
    # The charts in view while the run goes, as a learner watches them (the worst case for
    # the page's rendering work).
    page.locator(".widget-gridbox").first.scroll_into_view_if_needed()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        now = _published(page)
        if now is not None and now["n"] > n:
            break
    else:
        raise TimeoutError(f"the panel's run did not end in {RUN_TIMEOUT_S} s: {status_text(page)}")
    if now["status"] != "ok":
        raise RuntimeError(f"the panel's run ended {now['status']}: {now['error']}")
    # The status line must say the same (what the learner reads); it rounds to 0.1 ms.
    status = status_text(page)
    m = DONE.search(status)
    now["status_line"] = status
    now["status_ms"] = float(m["ms"]) if m else None
    return now


def open_panel(page: Any, front_end: str, base: str, token: str, notebook: str) -> None:
    if front_end == "lab":
        open_and_run(page, base, token, notebook, PAGE_TIMEOUT_S)
        if not sidebar_open(page):
            print("  (note: JupyterLab's left sidebar did not open)", flush=True)
    else:
        # Voila runs the notebook while it sends the page.
        page.goto(f"{base}/voila/render/{notebook}?token={token}", timeout=PAGE_TIMEOUT_S * 1000)
    page.locator(f".{RESULT_CLASS}").first.wait_for(state="attached", timeout=120_000)
    page.locator(".widget-gridbox .js-plotly-plot").first.wait_for(timeout=120_000)


# -- the benchmark -----------------------------------------------------------------------------
@contextlib.contextmanager
def server(front_end: str, root: Path, tmp: Path, env: Mapping[str, str]) -> Iterator[Any]:
    with (jupyterlab if front_end == "lab" else voila)(root, tmp, env) as s:
        yield s


def _timing_brief(t: Mapping[str, Any] | None) -> str:
    if not t:
        return "n/a"
    share = t.get("cpu_share")
    share_s = f", cpu {share:.2f}" if isinstance(share, (int, float)) else ""
    return f"{'steady' if t.get('steady') else 'DISTURBED'} ({t.get('disturbed_steps')}d{share_s})"


def measure(
    page: Any,
    front_end: str,
    workload: str,
    batch: int,
    steps: int,
    rounds: int,
    env: Mapping[str, str],
) -> dict[str, Any]:
    panel_run(page)  # untimed: the first draw of every chart, the warm worker's first use
    out: list[dict[str, Any]] = []
    for r in range(rounds):
        # A sandwich, CLI - panel - CLI: a slow drift of the machine hits both sides alike, and
        # the two CLI runs of a round are the anchor: how far one fresh worker's step time is
        # from the next one's on this machine with nothing changed (the noise floor any
        # panel/CLI ratio sits on; on a 2-core VM whole runs differ by 20-30%).
        res: dict[str, Any] = {"cli": cli_run(workload, batch, steps, env)}
        res["panel"] = panel_run(page)
        res["cli2"] = cli_run(workload, batch, steps, env)
        cli_s = statistics.geometric_mean([res["cli"]["median_s"], res["cli2"]["median_s"]])
        ratio = res["panel"]["median_s"] / cli_s
        anchor = res["cli2"]["median_s"] / res["cli"]["median_s"]
        out.append({"round": r + 1, "order": "cli,panel,cli", **res})
        out[-1]["ratio"] = ratio
        out[-1]["cli_cli"] = anchor
        print(
            f"  round {r + 1}: panel {res['panel']['median_s'] * 1e3:7.1f} ms "
            f"[{_timing_brief(res['panel']['timing'])}]  CLI {res['cli']['median_s'] * 1e3:7.1f}"
            f" / {res['cli2']['median_s'] * 1e3:.1f} ms "
            f"[{_timing_brief(res['cli']['timing'])}]  ratio {ratio:.2f}  CLI/CLI {anchor:.2f}",
            flush=True,
        )
    ratios = [o["ratio"] for o in out]
    anchors = [o["cli_cli"] for o in out]
    # The rounds whose two runs both say their timing can be trusted: on a shared machine a
    # neighbour's burst lands on one side of a round and makes its ratio meaningless.
    steady = [
        o["ratio"]
        for o in out
        if all((o[side]["timing"] or {}).get("steady") for side in ("panel", "cli"))
    ]
    panel_steady = [o["panel"]["timing"] for o in out if o["panel"]["timing"]]
    cli_steady = [o[k]["timing"] for o in out for k in ("cli", "cli2") if o[k]["timing"]]

    def others(side: list[dict[str, Any]]) -> float | None:
        # What the rest of the machine (the browser, the kernel...) took while the steps ran.
        v = [t["others_share"] for t in side if t.get("others_share") is not None]
        return statistics.median(v) if v else None

    return {
        "front_end": front_end,
        "workload": workload,
        "batch_size": batch,
        "steps": steps,
        "panel_ms": statistics.median(o["panel"]["median_s"] for o in out) * 1e3,
        "cli_ms": statistics.median(o[k]["median_s"] for o in out for k in ("cli", "cli2")) * 1e3,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        # The anchor: CLI against CLI, same round. Its spread is what the machine alone does.
        "cli_cli": statistics.median(anchors),
        "cli_cli_min": min(anchors),
        "cli_cli_max": max(anchors),
        "within_10pct": abs(statistics.median(ratios) - 1) <= 0.10,
        "ratio_steady": statistics.median(steady) if steady else None,
        "steady_rounds": len(steady),
        "panel_steady_runs": sum(bool(t.get("steady")) for t in panel_steady)
        if panel_steady
        else None,
        "panel_disturbed_steps": sum(int(t.get("disturbed_steps") or 0) for t in panel_steady)
        if panel_steady
        else None,
        "cli_steady_runs": sum(bool(t.get("steady")) for t in cli_steady) if cli_steady else None,
        "cli_disturbed_steps": sum(int(t.get("disturbed_steps") or 0) for t in cli_steady)
        if cli_steady
        else None,
        "panel_others_share": others(panel_steady),
        "cli_others_share": others(cli_steady),
        "rounds": out,
    }


def _parse_batch(text: str) -> dict[str, int]:
    out = dict(BATCH)
    for part in filter(None, text.split(",")):
        w, _, b = part.partition("=")
        out[w.strip()] = int(b)
    return out


def _list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: choose among {', '.join(allowed)}, got {text!r}")
    return items


def _steadiness(steady_runs: int | None, disturbed: int | None, rounds: int) -> str:
    if steady_runs is None:
        return "n/a"
    return f"{steady_runs}/{rounds} steady, {disturbed} dist."


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.0f}%"


def _steady_ratio(r: Mapping[str, Any]) -> str:
    return (
        "n/a (0)"
        if r["ratio_steady"] is None
        else f"{r['ratio_steady']:.2f} ({r['steady_rounds']})"
    )


def _table(rows: list[dict[str, Any]], rounds: int) -> str:
    head = (
        f"{'front end':<10}{'workload':<13}{'batch':>6}{'panel ms':>10}{'CLI ms':>9}"
        f"{'ratio':>7}  {'(min-max)':<12}{'CLI/CLI':>8}  {'(min-max)':<12}{'steady':>10}  "
        f"{'panel timing':<24}{'CLI timing':<24}{'others':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        panel = _steadiness(r["panel_steady_runs"], r["panel_disturbed_steps"], rounds)
        cli = _steadiness(r["cli_steady_runs"], r["cli_disturbed_steps"], 2 * rounds)
        lines.append(
            f"{r['front_end']:<10}{r['workload']:<13}{r['batch_size']:>6}{r['panel_ms']:>10.1f}"
            f"{r['cli_ms']:>9.1f}{r['ratio']:>7.2f}  "
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}   {r['cli_cli']:>8.2f}  "
            f"{r['cli_cli_min']:.2f}-{r['cli_cli_max']:.2f}   {_steady_ratio(r):>10}  "
            f"{panel:<24}{cli:<24}"
            f"{_pct(r['panel_others_share']) + ' / ' + _pct(r['cli_others_share']):>11}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--front-ends", default=",".join(FRONT_ENDS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument(
        "--batch",
        default="",
        help="batch size per workload, e.g. mlp=256,cnn=16 (defaults: "
        + ", ".join(f"{k}={v}" for k, v in BATCH.items())
        + ")",
    )
    p.add_argument("--out", type=Path, default=ARTIFACTS / "live.json")
    ns = p.parse_args(argv)
    workloads = _list(ns.workloads, WORKLOADS, "workloads")
    front_ends = _list(ns.front_ends, FRONT_ENDS, "front-ends")
    batch = _parse_batch(ns.batch)
    if ns.rounds < 1 or ns.steps < 1:
        raise SystemExit("--rounds and --steps must be >= 1")

    # SIGTERM (a CI timeout, `kill`) ends the run like Ctrl-C: every `finally` below runs and
    # stops the servers, kernels, workers and a CLI run in progress.
    def _term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        exe, sync_playwright = chromium(), load_playwright()
    except BrowserUnavailable as e:
        print(f"live.py: {e}", file=sys.stderr)
        return 2
    # Full sizes: smoke mode would cut every run to 2 steps.
    env = {k: v for k, v in os.environ.items() if k != "MEMLAB_SMOKE"}
    started = dt.datetime.now().astimezone()
    load_start = os.getloadavg()[0]
    print(
        f"benchmarks/live.py {started:%Y-%m-%d %H:%M:%S %Z} on {platform.node()} "
        f"({os.cpu_count()} CPUs, load {load_start:.2f}); rounds {ns.rounds}, "
        f"steps {ns.steps}, warmup {WARMUP}; Chromium {exe} at "
        f"{VIEWPORT['width']}x{VIEWPORT['height']}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memlab-live-") as tmp_s:
        tmp = Path(tmp_s)
        root = tmp / "notebooks"
        root.mkdir()
        for w in workloads:
            write_notebook(root / f"live_{w}.ipynb", w, batch[w], ns.steps)
        # Untimed: the recorder's first build and the OS's file cache are not what we compare.
        cli_run(workloads[0], batch[workloads[0]], 1, env)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
            try:
                for fe in front_ends:
                    for w in workloads:
                        print(f"{fe} / {w} (batch {batch[w]}):", flush=True)
                        # A server per page: when it stops, so do its kernel and the kernel's
                        # workers, so no idle kernel of an earlier page sits beside this one
                        # (closing a Voila page does not reliably end its kernel).
                        stmp = tmp / f"{fe}-{w}"
                        stmp.mkdir()
                        with server(fe, root, stmp, env) as (base, token):
                            context = browser.new_context(viewport=VIEWPORT)
                            try:
                                page = context.new_page()
                                open_panel(page, fe, base, token, f"live_{w}.ipynb")
                                rows.append(
                                    measure(page, fe, w, batch[w], ns.steps, ns.rounds, env)
                                )
                            finally:
                                context.close()
            finally:
                browser.close()
    print()
    finished = dt.datetime.now().astimezone()
    print(f"finished {finished:%Y-%m-%d %H:%M:%S %Z}, load {os.getloadavg()[0]:.2f}")
    print(_table(rows, ns.rounds))
    print("Each round runs CLI, panel, CLI. ratio: median over rounds of (panel median step")
    print("time / geometric mean of the round's two CLI median step times). CLI/CLI: the")
    print("anchor, the round's second CLI run over its first: what the machine alone does to")
    print("one fresh worker against the next (a ratio inside that spread is noise).")
    print("target (issue 10): within 10% in both front ends. 'dist.': steps that other processes")
    print("disturbed (RunResult.timing); a ratio from disturbed runs measures the machine too.")
    print("steady: the same ratio over the rounds whose panel and CLI runs were both steady")
    print("(how many in brackets).")
    print("others: median share of the machine's CPU that other processes (the browser, the")
    print("kernel, anyone else) used during the measured steps, panel runs / CLI runs.")
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(
        json.dumps(
            {
                "started": started.isoformat(timespec="seconds"),
                "finished": finished.isoformat(timespec="seconds"),
                "load_at_start": load_start,
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "rounds": ns.rounds,
                "steps": ns.steps,
                "warmup": WARMUP,
                "viewport": VIEWPORT,
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"figures: {ns.out}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\nlive.py: interrupted; servers and runs stopped", file=sys.stderr)
        raise SystemExit(130) from None
