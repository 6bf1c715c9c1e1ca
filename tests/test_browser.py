"""A real browser: JupyterLab on loopback, headless Chromium, lab 00 run top to bottom, then the
batch-size slider moved with the keyboard; the memory chart must change (ARCHITECTURE.md,
"Tests and benchmarks").
And workshop mode: Voila as ``make app`` serves it, a lab's page shows its charts with data,
hides the code, and its Run button works. Neither page may fetch anything from the internet.

Chromium is Debian's (``/usr/bin/chromium``; ``.ci/run`` installs it), driven by Python
playwright with ``executable_path`` (``playwright install`` is never needed). Without a
Chromium the test skips, except in CI (``CI`` set), where a missing browser is a failure.
The lab runs in smoke mode (``MEMLAB_SMOKE=1``), so Run All takes about a minute on 2 cores.
Screenshots go to ``test-artifacts/`` (``browser-00_tour.png``, ``voila-05_data_loading.png``).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Past pytest's default per-test timeout: a slow machine may need the retry after a long Run All.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
LAB = "00_tour.ipynb"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous: Run All of lab 00 in smoke mode is ~1 minute on an idle 2-core machine.
SERVER_START_S = 90
RUN_ALL_S = 420
RUN_S = 180


def _unavailable(reason: str) -> None:
    """Skip, or fail in CI: there the browser test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test must run; .ci/run installs it)")
    pytest.skip(reason)


def _chromium() -> str:
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
    _unavailable(
        "no Chromium binary (looked for /usr/bin/chromium, chromium on PATH, "
        "$MEMLAB_CHROMIUM); install Debian's chromium to run the browser test"
    )
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(base: str, token: str, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def _write_settings(settings: Path) -> None:
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
def _serve(
    name: str,
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    ready_url: str,
    log_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until ``ready_url`` answers, and always stop it: the server gets
    SIGTERM (it shuts its kernels down), and whatever it started that is still alive after 20 s
    (kernels, memlab workers) is killed by process id."""
    import psutil

    log = log_path.open("w")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """JupyterLab on 127.0.0.1 (random free port, a token) serving a temp copy of lab 00."""
    pytest.importorskip("jupyterlab")
    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "labs"
    root.mkdir()
    shutil.copy(ROOT / "labs" / LAB, root / LAB)
    settings = tmp / "settings"
    _write_settings(settings)
    port = _free_port()
    token = os.urandom(24).hex()
    env = {
        **os.environ,
        "MEMLAB_SMOKE": "1",
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
    ]
    if hasattr(os, "getuid") and os.getuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root; Jupyter refuses without it
    base = f"http://127.0.0.1:{port}"
    with _serve(
        "JupyterLab",
        cmd,
        cwd=root,
        env=env,
        ready_url=f"{base}/api/status?token={token}",
        log_path=tmp / "server.log",
    ):
        try:
            yield base, token
        finally:
            _shutdown_kernels(base, token)


def _shutdown_kernels(base: str, token: str) -> None:
    try:
        for k in _api(base, token, "/api/kernels") or []:
            _api(base, token, f"/api/kernels/{k['id']}", method="DELETE")
    except (urllib.error.URLError, OSError, ValueError):
        pass


# -- the page -------------------------------------------------------------------------------------
# Each FigureWidget renders as a plotly graph div (class js-plotly-plot) that holds its traces.
_CHARTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const t = gd.layout && gd.layout.title;
  return {
    title: (t && (t.text !== undefined ? t.text : t)) || '',
    traces: (gd.data || []).map(d => ({
      name: d.name || '',
      x: d.x && d.x.length !== undefined ? Array.from(d.x, v => (v === null ? null : +v)) : [],
      y: d.y && d.y.length !== undefined ? Array.from(d.y, v => (v === null ? null : +v)) : [],
    })),
  };
})"""


# The panel's charts (in its grid), with their titles.
_PANEL_CHARTS_TITLED_JS = _CHARTS_JS.replace(
    "'.js-plotly-plot'", "'.widget-gridbox .js-plotly-plot'"
)
# The status line of a finished run (memlab/ui/panel.py, Panel._final_message).
_DONE = re.compile(
    r"done: peak (?P<peak>.+?) of tensors in (?P<phase>\w+), (?P<rate>\d+) "
    r"samples/s \((?P<ms>[\d.]+) ms/step\).* run (?P<runs>\d+) in the history"
)


def _panel_charts(page: Any) -> dict[str, Any]:
    """The panel's charts by the start of their title ("Throughput", "Process memory"...)."""
    return {
        str(c["title"]).split(":")[0].split(" (")[0]: c
        for c in page.evaluate(_PANEL_CHARTS_TITLED_JS)
    }


def _charts_disagree(page: Any, status: str, before: dict[str, Any] | None) -> list[str]:
    """How the panel's charts differ from the run the status line reports (empty: they show it).

    Each figure is its own widget model in the page: one that stopped taking updates keeps an
    earlier run while the status line moves on, so each is checked, not just one. Titles and
    the history's run count come from the status line; the process chart has no figure in the
    status line, so it must have changed since ``before`` (the charts of the previous run)."""
    m = _DONE.search(status)
    if m is None:
        return [f"the status line is not a finished run: {status!r}"]
    charts = _panel_charts(page)
    wrong = []
    want = {
        "Tensor memory by category": f"peak {m['peak']} in {m['phase']}",
        "Throughput": f"median {m['rate']} samples/s, {m['ms']} ms/step",
    }
    for name, text in want.items():
        chart = charts.get(name)
        if chart is None or text not in str(chart["title"]):
            wrong.append(f"{name}: {chart and chart['title']!r}, want {text!r}")
    history = charts.get("Peak memory by category")
    runs = max((len(t["y"]) for t in history["traces"]), default=0) if history else 0
    if runs != int(m["runs"]):
        wrong.append(f"history chart: {runs} runs, the status says {m['runs']}")
    name = "Process memory"
    if before is not None and name in before:
        if name not in charts or charts[name]["traces"] == before[name]["traces"]:
            wrong.append("process memory chart: still the previous run's")
    return wrong


def _wait_charts_show(
    page: Any, status: str, before: dict[str, Any] | None = None, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while (wrong := _charts_disagree(page, status, before)) and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    assert not wrong, "charts do not show the run the status reports:\n" + "\n".join(wrong)


def _memory_chart(page: Any) -> dict[str, Any] | None:
    charts = page.evaluate(_CHARTS_JS)
    mem = [c for c in charts if str(c["title"]).startswith("Tensor memory")]
    return mem[0] if mem else None


def _points(chart: dict[str, Any] | None) -> int:
    return 0 if chart is None else sum(len(t["y"]) for t in chart["traces"])


def _status_text(page: Any) -> str:
    texts = page.locator(".widget-html-content").all_inner_texts()
    found = [
        t
        for t in texts
        if t.strip().startswith(
            (
                "done",
                "running",
                "starting",
                "ready",
                "error",
                "out of memory",
                "cancelled",
                "the run",
            )
        )
    ]
    return found[-1] if found else ""


def _wait_kernel_idle(page: Any, timeout_s: float) -> None:
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


def _errors(page: Any) -> list[str]:
    return page.locator('[data-mime-type="application/vnd.jupyter.error"]').all_inner_texts()


def _run_all(page: Any) -> None:
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()


def _open_and_run(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/lab/tree/{LAB}?token={token}", timeout=120_000)
    page.locator(".jp-NotebookPanel").first.wait_for(timeout=120_000)
    # The kernel starts with the notebook; wait until it is ready before running.
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(
        timeout=120_000
    )
    # Run All can go through the cells without running any when the kernel connection is not
    # quite ready though the indicator already says idle (seen in CI: every prompt stayed
    # "[ ]:"); nothing ran, so asking again is safe.
    for _ in range(3):
        _run_all(page)
        if _execution_started(page, timeout_s=30):
            break
    else:
        raise AssertionError("Run All did not start running any cell (asked 3 times)")
    _wait_kernel_idle(page, RUN_ALL_S)
    errors = _errors(page)
    assert not errors, "a cell failed:\n" + "\n".join(e[-2000:] for e in errors)
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert prompts and all(p.strip() not in ("[ ]:", "") for p in prompts), prompts


def _move_batch_slider(page: Any) -> tuple[str, str]:
    slider = page.locator(".widget-slider", has_text="batch size").first
    slider.scroll_into_view_if_needed()
    readout = slider.locator(".widget-readout")
    before = readout.inner_text().strip()
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(8):  # +8; the panel debounces, so this starts one run
        handle.press("ArrowRight")
    page.wait_for_timeout(200)
    return before, readout.inner_text().strip()


def _flow(page: Any, base: str, token: str) -> None:
    _open_and_run(page, base, token)
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
             .some(gd => gd.layout && gd.layout.title && String(gd.layout.title.text || '')
                   .startsWith('Tensor memory'))""",
        timeout=60_000,
    )
    before = _memory_chart(page)
    assert _points(before) > 0, f"the memory chart has no data after Run All: {before}"
    status_before = _status_text(page)
    assert status_before.startswith("done"), status_before
    panel_before = _panel_charts(page)

    old, new = _move_batch_slider(page)
    assert new != old, f"the slider did not move ({old} -> {new})"
    deadline = time.monotonic() + RUN_S
    after, status = before, status_before
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        status = _status_text(page)
        after = _memory_chart(page)
        if status.startswith("done") and status != status_before and after != before:
            break
    assert status.startswith("done") and status != status_before, (
        f"no new run finished in {RUN_S} s: {status!r}"
    )
    assert after != before and _points(after) > 0, "the memory chart did not change"
    _wait_charts_show(page, status, panel_before)
    page.wait_for_timeout(1000)
    final = _memory_chart(page)

    # A page that attaches later (a reload, a second view) must show the chart as it is now,
    # not as it was created: the panel syncs the widget state after each run. Save first (the
    # saved outputs hold the widget views; their state then comes from the running kernel).
    page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    page.wait_for_function(
        "() => !document.querySelector('.jp-NotebookPanel .jp-mod-dirty, "
        ".lm-TabBar-tab.jp-mod-dirty')",
        timeout=30_000,
    )
    page.reload()
    page.locator(".jp-NotebookPanel").first.wait_for(timeout=120_000)
    deadline = time.monotonic() + 90
    reloaded = None
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        reloaded = _memory_chart(page)
        if reloaded == final:
            break
    assert reloaded == final, "after a reload the memory chart is not the latest run's"


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
        raise
    return sync_playwright


def _in_browser(base: str, flow: Any, shot_name: str, *, on_retry: Any = None) -> None:
    """Run ``flow(page)`` in headless Chromium, once more from a fresh page if it fails; write
    the screenshot; fail if the page fetched anything from outside this machine."""
    exe = _chromium()
    sync_playwright = _playwright()
    from playwright.sync_api import Error as PlaywrightError

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / shot_name
    external: list[str] = []
    local = (base, base.replace("http", "ws", 1), "data:", "blob:", "about:")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            for attempt in (1, 2):  # retry once, from a fresh page (and kernel)
                context = browser.new_context(viewport={"width": 1500, "height": 1100})
                page = context.new_page()
                page.on(
                    "request", lambda r: None if r.url.startswith(local) else external.append(r.url)
                )
                try:
                    flow(page)
                    page.wait_for_timeout(1500)  # let the history charts redraw for the shot
                    page.screenshot(path=str(shot))
                    break
                except (AssertionError, TimeoutError, PlaywrightError) as e:
                    failed = shot.with_name(f"{shot.stem}-failed-{attempt}.png")
                    page.screenshot(path=str(failed))
                    # Why, beside the screenshot: a retry that passes hides the first error.
                    failed.with_suffix(".txt").write_text(f"{type(e).__name__}: {e}\n")
                    if attempt == 2:
                        raise
                    if on_retry is not None:
                        on_retry()
                finally:
                    context.close()
        finally:
            browser.close()
    assert shot.exists()
    assert not external, f"the page fetched from outside this machine: {external[:5]}"


def test_lab00_in_jupyterlab(lab_server: tuple[str, str]) -> None:
    base, token = lab_server

    def flow(page: Any) -> None:
        _flow(page, base, token)
        page.locator(".widget-slider", has_text="batch size").first.scroll_into_view_if_needed()

    _in_browser(base, flow, "browser-00_tour.png", on_retry=lambda: _shutdown_kernels(base, token))


# -- workshop mode: Voila --------------------------------------------------------------------
VOILA_LAB = "05_data_loading.ipynb"  # the quickest lab: its page is ready in seconds


@pytest.fixture(scope="module")
def voila_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Voila as ``make app`` runs it (voila.json and the memlab template from the checkout),
    serving a temp copy of one lab in smoke mode."""
    pytest.importorskip("voila")
    tmp = tmp_path_factory.mktemp("voila")
    root = tmp / "labs"
    root.mkdir()
    shutil.copy(ROOT / "labs" / VOILA_LAB, root / VOILA_LAB)
    port = _free_port()
    token = os.urandom(24).hex()
    env = {
        **os.environ,
        "MEMLAB_SMOKE": "1",
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
    with _serve(
        "Voila",
        cmd,
        cwd=ROOT,
        env=env,
        ready_url=f"{base}/voila/tree?token={token}",
        log_path=tmp / "voila.log",
    ):
        yield base, token


def test_lab05_in_voila(voila_server: tuple[str, str]) -> None:
    """The served page shows the panel with its charts in their latest state (the run the lab
    made while the page was built), hides the code, and its Run button starts a run that
    changes the charts; nothing comes from the internet (the check in _in_browser)."""
    base, token = voila_server

    def charts(page: Any) -> list[Any]:
        return list(page.evaluate(_PANEL_CHARTS_TITLED_JS))

    def flow(page: Any) -> None:
        # Voila runs the whole notebook while it sends the page; the load event comes after.
        page.goto(f"{base}/voila/render/{VOILA_LAB}?token={token}", timeout=RUN_ALL_S * 1000)
        page.locator(".widget-gridbox .js-plotly-plot").first.wait_for(timeout=120_000)
        page.wait_for_function(
            "() => document.querySelectorAll('.widget-gridbox .js-plotly-plot').length >= 4",
            timeout=60_000,
        )
        assert page.locator(".jp-InputArea-editor").count() == 0, "code is shown"
        status = _status_text(page)
        assert status.startswith("done"), status
        before = charts(page)
        assert any(len(t["y"]) > 0 for chart in before for t in chart["traces"]), (
            "the charts are empty at page load: the latest state did not reach the page"
        )
        _wait_charts_show(page, status, timeout_s=5)
        panel_before = _panel_charts(page)
        page.get_by_role("button", name="Run").first.click()
        deadline = time.monotonic() + RUN_S
        now = _status_text(page)
        while time.monotonic() < deadline:
            page.wait_for_timeout(500)
            now = _status_text(page)
            if now.startswith("done") and now != status and charts(page) != before:
                break
        assert now.startswith("done") and now != status, f"no new run finished: {now!r}"
        assert charts(page) != before, "the charts did not change after Run"
        _wait_charts_show(page, now, panel_before)
        page.locator(".widget-gridbox").first.scroll_into_view_if_needed()

    _in_browser(base, flow, "voila-05_data_loading.png")
