"""Shared fixtures: deterministic torch, a warmed-up training step, the profiler's truth."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _seed() -> None:
    try:
        import torch
    except ImportError:  # the pure-data tests run without torch
        return
    torch.manual_seed(0)


def profiler_peak(fn) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    """Run ``fn`` under torch.profiler(profile_memory=True); return the highest rise of the
    running sum of its c10 allocator ``[memory]`` events (the independent truth) and fn's value.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        value = fn()
    alloc = torch._C._profiler._EventType.Allocation

    def walk(events):  # type: ignore[no-untyped-def]
        for e in events:
            yield e
            yield from walk(e.children)

    tree = prof.profiler.kineto_results.experimental_event_tree()  # type: ignore[union-attr]
    events = sorted((e for e in walk(tree) if e.tag == alloc), key=lambda e: e.start_time_ns)
    running = peak = 0
    for e in events:
        if e.typed[1].device.type == "cpu":
            running += e.typed[1].alloc_size
            peak = max(peak, running)
    return peak, value


@pytest.fixture(autouse=True, scope="session")
def _run_store(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Runs saved by the tests go to a store of this session, never to the user's
    ~/.memlab/runs.sqlite; subprocesses (the CLI, notebooks' kernels) inherit the variable."""
    import os

    path = tmp_path_factory.mktemp("memlab-store") / "runs.sqlite"
    old = os.environ.get("MEMLAB_STORE")
    os.environ["MEMLAB_STORE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MEMLAB_STORE", None)
    else:
        os.environ["MEMLAB_STORE"] = old
