"""The browser harness shared by ``tests/test_browser.py`` and ``benchmarks/live.py``: JupyterLab
and Voila on loopback (a random free port, a token), Debian's headless Chromium driven by Python
playwright, and readers of what the panel shows (status line, charts, whether they fit).

No pytest here: a missing browser raises :class:`BrowserUnavailable`, which the test turns into
a skip (or a failure in CI) and the benchmark into a message. Every server is started by
:func:`serve`, which always stops it and whatever it started (kernels, memlab workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ARTIFACTS",
    "CHART_FIT_JS",
    "CHROMIUM_ARGS",
    "DONE",
    "ROOT",
    "RUN_LABEL",
    "BrowserUnavailable",
    "api",
    "chart_fit_problems",
    "chromium",
    "errors",
    "free_port",
    "jupyterlab",
    "load_playwright",
    "open_and_run",
    "run_all",
    "serve",
    "shutdown_kernels",
    "sidebar_open",
    "status_text",
    "voila",
    "wait_kernel_idle",
    "write_settings",
]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_S = 90


class BrowserUnavailable(RuntimeError):
    """No Chromium or no playwright on this machine (the message says what to install)."""


def chromium() -> str:
    """The path of a Chromium binary: ``$MEMLAB_CHROMIUM``, Debian's, or one on ``PATH``."""
    candidates = [
        os.environ.get("MEMLAB_CHROMIUM"),
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise BrowserUnavailable(
        "no Chromium binary (looked for /usr/bin/chromium, chromium on PATH, "
        "$MEMLAB_CHROMIUM); install Debian's chromium to run the browser test"
    )


def load_playwright() -> Any:
    """playwright's ``sync_playwright`` (never ``playwright install``: we bring Chromium)."""
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError:
        raise BrowserUnavailable("playwright is not installed (pip install playwright)") from None
    return sp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(base: str, token: str, path: str, method: str = "GET") -> Any:
    """A call to the Jupyter server's REST API; the decoded JSON (``None`` for no body)."""
    req = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def write_settings(settings: Path) -> None:
    """User settings for this server only: every cell attached to the DOM (no windowing, so
    prompts and outputs can be read), and no news or update checks (nothing from the internet)."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }
    for rel, value in files.items():
        p = settings / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(value))


@contextlib.contextmanager
def serve(
    name: str,
    cmd: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    ready_url: str,
    log_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until ``ready_url`` answers, and always stop it: the server gets
    SIGTERM (it shuts its kernels down), and whatever it started that is still alive after 20 s
    (kernels, memlab workers) is killed by process id."""
    import psutil

    log = log_path.open("w")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    children: dict[int, psutil.Process] = {}

    def remember_children() -> None:
        try:
            for c in psutil.Process(proc.pid).children(recursive=True):
                children.setdefault(c.pid, c)
        except psutil.Error:
            pass

    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                )
            try:
                urllib.request.urlopen(ready_url, timeout=10).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} did not answer in {SERVER_START_S} s:\n"
                        f"{log_path.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.5)
        yield proc
        remember_children()
    finally:
        remember_children()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Kernels run in sessions of their own (jupyter_client), so by pid, not by group.
        _gone, alive = psutil.wait_procs(list(children.values()), timeout=5)
        for c in alive:
            try:
                c.kill()
            except psutil.Error:
                pass
        log.close()


def shutdown_kernels(base: str, token: str) -> None:
    """Ask the server to shut every kernel down (best effort: the server may be going)."""
    try:
        for k in api(base, token, "/api/kernels") or []:
            api(base, token, f"/api/kernels/{k['id']}", method="DELETE")
    except (urllib.error.URLError, OSError, ValueError):
        pass


def _root_flag() -> list[str]:
    # Containers and CI run as root; Jupyter refuses without it.
    return ["--allow-root"] if hasattr(os, "getuid") and os.getuid() == 0 else []


@contextlib.contextmanager
def jupyterlab(
    root: Path, tmp: Path, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """JupyterLab on 127.0.0.1 (a random free port, a fresh token) serving ``root``, with the
    settings of :func:`write_settings`; yields ``(base_url, token)``. ``tmp`` holds its settings,
    workspaces, runtime files and log (``tmp/server.log``)."""
    settings = tmp / "settings"
    write_settings(settings)
    port = free_port()
    token = os.urandom(24).hex()
    full_env = {
        **(os.environ if env is None else env),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--LabApp.news_url=None",
        *_root_flag(),
    ]
    base = f"http://127.0.0.1:{port}"
    with serve(
        "JupyterLab",
        cmd,
        cwd=root,
        env=full_env,
        ready_url=f"{base}/api/status?token={token}",
        log_path=tmp / "server.log",
    ):
        try:
            yield base, token
        finally:
            shutdown_kernels(base, token)


@contextlib.contextmanager
def voila(root: Path, tmp: Path, env: Mapping[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Voila as ``make app`` runs it (voila.json and the memlab template from the checkout:
    the page fetches nothing from the internet) serving ``root``; yields ``(base_url, token)``.
    Log in ``tmp/voila.log``."""
    port = free_port()
    token = os.urandom(24).hex()
    full_env = {
        **(os.environ if env is None else env),
        "JUPYTER_PATH": str(ROOT / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
    }
    cmd = [
        sys.executable,
        "-m",
        "voila",
        str(root),
        "--Voila.ip=127.0.0.1",
        f"--port={port}",
        "--Voila.port_retries=0",
        "--no-browser",
        f"--token={token}",
    ]
    base = f"http://127.0.0.1:{port}"
    # cwd: the checkout, where Voila reads voila.json (template "memlab"), as `make app` does.
    with serve(
        "Voila",
        cmd,
        cwd=ROOT,
        env=full_env,
        ready_url=f"{base}/voila/tree?token={token}",
        log_path=tmp / "voila.log",
    ):
        yield base, token


# -- the page -------------------------------------------------------------------------------------
# The status line of a finished run (memlab/ui/panel.py, Panel._final_message).
DONE = re.compile(
    r"done: peak (?P<peak>.+?) of tensors in (?P<phase>\w+), (?P<rate>\d+) "
    r"samples/s \((?P<ms>[\d.]+) ms/step\).* run (?P<runs>\d+) in the history"
)
#: The panel's Run button's label, exactly ("Run"; not "Run All", not a toolbar's "Run this cell").
RUN_LABEL = re.compile(r"^\s*Run\s*$")
_STATUS_STARTS = (
    "done",
    "running",
    "starting",
    "ready",
    "error",
    "out of memory",
    "cancelled",
    "the run",
    "this run",
    "stopping",
)
# The panel's status line is the HTML widget in the row of its Run button (memlab/ui/panel.py).
_STATUS_JS = """() => Array.from(document.querySelectorAll('.widget-button'))
  .filter(b => b.textContent.trim() === 'Run')
  .map(b => b.parentElement.querySelector(':scope > .widget-html .widget-html-content'))
  .filter(h => h !== null)
  .map(h => h.innerText)"""


def status_text(page: Any) -> str:
    """The panel's status line (the last panel's on the page), or ``""``.

    Found beside the Run button; on a page laid out otherwise, the last HTML text that starts
    like a status (``done``, ``running``...)."""
    beside_run = page.evaluate(_STATUS_JS)
    if beside_run:
        return str(beside_run[-1])
    texts = page.locator(".widget-html-content").all_inner_texts()
    found = [t for t in texts if t.strip().startswith(_STATUS_STARTS)]
    return found[-1] if found else ""


def wait_kernel_idle(page: Any, timeout_s: float) -> None:
    """Until the kernel says idle and no cell is waiting to run ([*])."""
    deadline = time.monotonic() + timeout_s
    idle_since = None
    while time.monotonic() < deadline:
        state = page.evaluate("""() => {
          const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
          const prompts = Array.from(document.querySelectorAll(
              '.jp-CodeCell .jp-InputArea-prompt')).map(p => p.textContent.trim());
          return {status: ind ? ind.getAttribute('data-status') : null, prompts};
        }""")
        busy = any("*" in p for p in state["prompts"]) or state["status"] not in ("idle", None)
        if not busy:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 2.0:  # idle for a moment, not between two cells
                return
        else:
            idle_since = None
        page.wait_for_timeout(500)
    raise TimeoutError(f"the kernel was not idle after {timeout_s} s")


def _execution_started(page: Any, timeout_s: float) -> bool:
    """Whether some code cell shows it is queued, running or has run ([*] or [n])."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        if any("*" in p or any(ch.isdigit() for ch in p) for p in prompts):
            return True
        page.wait_for_timeout(500)
    return False


def errors(page: Any) -> list[str]:
    """The error outputs (tracebacks) shown in the notebook."""
    return page.locator('[data-mime-type="application/vnd.jupyter.error"]').all_inner_texts()


def run_all(page: Any) -> None:
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()


def open_and_run(page: Any, base: str, token: str, notebook: str, timeout_s: float) -> None:
    """Open ``notebook`` in JupyterLab, Run All, and wait until the kernel is idle; fail if a
    cell failed or did not run."""
    page.goto(f"{base}/lab/tree/{notebook}?token={token}", timeout=120_000)
    page.locator(".jp-NotebookPanel").first.wait_for(timeout=120_000)
    # The kernel starts with the notebook; wait until it is ready before running.
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(
        timeout=120_000
    )
    # Run All can go through the cells without running any when the kernel connection is not
    # quite ready though the indicator already says idle (seen in CI: every prompt stayed
    # "[ ]:"); nothing ran, so asking again is safe.
    for _ in range(3):
        run_all(page)
        if _execution_started(page, timeout_s=30):
            break
    else:
        raise AssertionError("Run All did not start running any cell (asked 3 times)")
    wait_kernel_idle(page, timeout_s)
    errs = errors(page)
    assert not errs, "a cell failed:\n" + "\n".join(e[-2000:] for e in errs)
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert prompts and all(p.strip() not in ("[ ]:", "") for p in prompts), prompts


# JupyterLab's left sidebar (file browser, running kernels...) is open when its stack panel is
# shown; lab's default layout opens it with the file browser on first load.
_SIDEBAR_OPEN_JS = """() => {
  const s = document.querySelector('#jp-left-stack');
  return !!s && !s.classList.contains('lm-mod-hidden') && s.getBoundingClientRect().width > 0;
}"""


def sidebar_open(page: Any) -> bool:
    """Open JupyterLab's left sidebar on the file browser if it is closed; whether it is open."""
    if not page.evaluate(_SIDEBAR_OPEN_JS):
        tab = page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="filebrowser"]')
        if tab.count():
            tab.first.click()
        with contextlib.suppress(Exception):
            page.wait_for_function(_SIDEBAR_OPEN_JS, timeout=5_000)
    return bool(page.evaluate(_SIDEBAR_OPEN_JS))


# Every chart of a panel's grid against its grid cell (the grid's child that holds it) and the
# grid itself: its plotly graph div, each of its <svg class="main-svg"> layers, its title,
# legend, axis titles and annotations must lie inside the cell, and the cell inside the grid.
# A figure with a fixed width wider than its cell overflows (its legend, right axis and points
# are cut off or drawn over the neighbour); a title longer than the figure is cut at the edge.
CHART_FIT_JS = """(tol) => {
  const out = [];
  for (const grid of document.querySelectorAll('.widget-gridbox')) {
    const g = grid.getBoundingClientRect();
    for (const gd of grid.querySelectorAll('.js-plotly-plot')) {
      let cell = gd;
      while (cell.parentElement && cell.parentElement !== grid) cell = cell.parentElement;
      const c = cell.getBoundingClientRect();
      const t = gd.layout && gd.layout.title;
      const title = String((t && (t.text !== undefined ? t.text : t)) || '').slice(0, 60);
      const box = r => ({left: Math.round(r.left), right: Math.round(r.right),
                         width: Math.round(r.width)});
      const within = (r, o) => r.left >= o.left - tol && r.right <= o.right + tol;
      const item = {title, cell: box(c), grid: box(g), problems: []};
      if (c.width <= 0) item.problems.push('the cell has no width');
      if (!within(c, g)) item.problems.push('the cell overflows the grid');
      const p = gd.getBoundingClientRect();
      item.plot = box(p);
      if (!within(p, c)) item.problems.push('the chart overflows its cell');
      for (const svg of gd.querySelectorAll('svg.main-svg')) {
        const s = svg.getBoundingClientRect();
        const w = parseFloat(svg.getAttribute('width') || s.width);
        if (!within(s, c) || w > c.width + tol) {
          item.problems.push(`its svg is ${Math.round(w)} px wide in a ${Math.round(c.width)}` +
                             ' px cell');
          break;
        }
      }
      // Text that plotly does not wrap: a title, legend or annotation wider than the figure is
      // cut at the cell's edge even when the figure itself fits.
      const parts = {title: '.g-gtitle', legend: '.legend', 'x-axis title': '.g-xtitle',
                     'y-axis title': '.g-ytitle', 'right axis title': '.g-y2title',
                     annotation: '.annotation'};
      for (const [what, sel] of Object.entries(parts)) {
        for (const el of gd.querySelectorAll(sel)) {
          const r = el.getBoundingClientRect();
          if (r.width > 0 && !within(r, c)) {
            item.problems.push(`its ${what} is cut off (${Math.round(r.left)}-` +
                               `${Math.round(r.right)} px)`);
          }
        }
      }
      out.push(item);
    }
  }
  return out;
}"""


def chart_fit_problems(page: Any, tol_px: float = 2.0) -> tuple[list[str], list[Any]]:
    """Which panel charts do not fit their grid cell (empty: all fit), and the measurements.

    Fails (a problem) when the page has no panel chart at all: a check of nothing passes."""
    items = page.evaluate(CHART_FIT_JS, tol_px)
    width = page.evaluate("() => window.innerWidth")
    if not items:
        return [f"at {width} px: no chart in a .widget-gridbox"], items
    problems = [
        f"at {width} px: {it['title'] or 'a chart'!r}: {', '.join(it['problems'])} "
        f"(chart {it['plot']}, cell {it['cell']}, grid {it['grid']})"
        for it in items
        if it["problems"]
    ]
    return problems, items
