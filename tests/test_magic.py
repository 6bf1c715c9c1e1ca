"""The ``%%memlab`` cell magic in a real IPython shell: the stored peak of a cell that allocates
one tensor is that tensor's ``nbytes`` exactly (the tracker's truth, tolerance 0), in the kernel
and ``--isolated``; a budget below it ends as status ``oom`` with the kernel alive; the
user's own errors propagate after the result is shown; bad options are one-line UsageErrors
and the cell does not run; runs land in the store with source ``magic``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("IPython")

N = 1_000_000  # float32 elements: 4,000,000 bytes
ALLOC = f"import torch\nx = torch.empty({N})\n"


@pytest.fixture(scope="module")
def ip() -> Iterator[Any]:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "memlab.magic")
    yield shell
    from memlab.runner.service import shutdown_service

    shutdown_service()


def _run(ip: Any, line: str, body: str) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``%%memlab line`` over ``body``; (IPython's ExecutionResult, the displayed bundles)."""
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        res = ip.run_cell(f"%%memlab {line}\n{body}", store_history=False)
    return res, [o.data for o in cap.outputs]


def _run_id(outputs: list[dict[str, Any]]) -> str:
    m = re.search(r"memlab run ([0-9a-f]{8,})", outputs[0]["text/plain"])
    assert m, outputs[0]
    return m.group(1)


def _stored(run_id: str) -> tuple[Any, Any]:
    import memlab.store as st

    return st.load(run_id), st.default_store().info(run_id)


def _count() -> int:
    import memlab.store as st

    return len(st.default_store())


@pytest.fixture(scope="module")
def kernel_run(ip: Any) -> tuple[Any, list[dict[str, Any]]]:
    return _run(ip, "--label magic-test", ALLOC + "x.numel()")


def test_kernel_cell_peak_is_the_tensor(ip: Any, kernel_run: tuple[Any, Any]) -> None:
    res, outputs = kernel_run
    assert res.success, res.error_in_exec
    assert res.result == N  # the cell's last expression is its value, as without the magic
    truth = int(ip.user_ns["x"].nbytes)  # the cell ran in the user's namespace
    assert truth == 4_000_000
    rid = _run_id(outputs)
    result, info = _stored(rid)
    assert result.status == "ok"
    assert result.peak_bytes == truth  # exact: tolerance 0
    assert info.source == "magic" and info.label == "magic-test"
    # Shown: the id, the status and the peak; the summary table; the timeline figure.
    assert "4,000,000 bytes" in outputs[0]["text/html"] and rid in outputs[0]["text/html"]
    assert "memlab RunResult" in outputs[1]["text/html"]
    fig = outputs[2]["application/vnd.plotly.v1+json"]
    assert fig["layout"]["title"]["text"].startswith("Tensor memory by category: peak")


def test_budget_below_the_cell_is_oom_and_the_kernel_lives(ip: Any) -> None:
    ip.user_ns.pop("y", None)
    res, outputs = _run(ip, "--budget 2MB --no-plot", f"import torch\ny = torch.empty({N})\n")
    assert res.success  # the status says it, no traceback
    assert "OOM" in outputs[0]["text/html"] and "budget" in outputs[0]["text/html"]
    result, _ = _stored(_run_id(outputs))
    assert result.status == "oom" and result.peak_bytes <= 2_000_000
    assert "y" not in ip.user_ns  # the allocation past the budget did not happen
    assert ip.run_cell("1 + 1", store_history=False).result == 2


def test_isolated_same_peak_and_no_kernel_variables(ip: Any, kernel_run: Any) -> None:
    ip.user_ns["marker"] = "kernel"
    res, outputs = _run(ip, "--isolated --no-plot", ALLOC + "marker = 'worker'\n")
    assert res.success, res.error_in_exec
    assert ip.user_ns["marker"] == "kernel"  # the worker's namespace is its own
    result, info = _stored(_run_id(outputs))
    assert result.peak_bytes == 4_000_000 and info.source == "magic"
    assert "isolated" in outputs[0]["text/plain"]
    # The kernel's variables are not there; the error comes back with its traceback text.
    from memlab.magic import IsolatedCellError

    res, outputs = _run(ip, "--isolated --no-plot", "x.numel()\n")
    assert isinstance(res.error_in_exec, IsolatedCellError)
    assert "NameError" in str(res.error_in_exec) and "<memlab cell>" in str(res.error_in_exec)
    assert _stored(_run_id(outputs))[0].status == "error"


def test_user_error_propagates_after_the_result(ip: Any) -> None:
    cell = "import torch\nz = torch.empty(10)\nraise KeyError('mine')"
    res, outputs = _run(ip, "--no-plot", cell)
    assert isinstance(res.error_in_exec, KeyError)
    assert outputs and "error" in outputs[0]["text/plain"]
    result, _ = _stored(_run_id(outputs))
    assert result.status == "error" and result.peak_bytes == 40  # 10 float32, exact


def test_compare_with_a_stored_run(ip: Any, kernel_run: Any) -> None:
    base = _run_id(kernel_run[1])
    res, outputs = _run(ip, f"--compare {base[:8]}", f"import torch\nw = torch.empty({2 * N})\n")
    assert res.success, res.error_in_exec
    rid = _run_id(outputs)
    table = next(o["text/html"] for o in outputs if "memlab comparison" in o.get("text/html", ""))
    assert base in table and rid in table
    # The peaks in the table are the two runs' stored peaks (4 MB and 8 MB).
    from memlab.comparing import compare

    c = compare(base, rid)
    p = c.get("total", "peak tensors")
    assert (p.a, p.b) == (4_000_000, 8_000_000)
    figs = [o for o in outputs if "application/vnd.plotly.v1+json" in o]
    assert len(figs) == 2  # the run's timeline and the two overlaid


def test_no_store(ip: Any) -> None:
    before = _count()
    res, outputs = _run(ip, "--no-store --no-plot", "import torch\nv = torch.empty(4)\n")
    assert res.success and _count() == before
    assert "not stored" in outputs[0]["text/plain"]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("--budget 2XB", "--budget"),
        ("--budget", "--budget"),
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--compare ffffffffffff", "--compare"),
        ("--compare zz", "hexadecimal"),
    ],
)
def test_bad_options_are_usage_errors(ip: Any, line: str, says: str) -> None:
    from IPython.core.error import UsageError

    ip.user_ns.pop("ran", None)
    before = _count()
    res, _ = _run(ip, line, "ran = True\n")
    assert isinstance(res.error_in_exec, UsageError)
    assert says in str(res.error_in_exec) and "\n" not in str(res.error_in_exec)
    assert "ran" not in ip.user_ns and _count() == before  # the cell did not run


def test_load_ext_memlab(ip: Any) -> None:
    ip.run_line_magic("load_ext", "memlab")
    assert "memlab" in ip.magics_manager.magics["cell"]
