"""Activation offload (memlab/knobs/offload.py): what the hooks write and keep, that the step
computes the same loss and gradients, what the tracker measures in runs, that the run's folder
goes whatever the run's end, and the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from memlab.config import ConfigError, Experiment  # noqa: E402
from memlab.knobs import KnobUnsupported, apply_offload, build_experiment  # noqa: E402
from memlab.knobs.offload import OffloadStore  # noqa: E402
from memlab.workloads import Workload  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# A small transformer step, the same for every run here (so the runs compare).
BASE = Experiment(workload="transformer", batch_size=16, steps=2, warmup=1, device="cpu")


def _files(folder: str | Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


# -- the hooks, on a graph counted by hand -----------------------------------------------------
def test_pack_writes_the_saved_activations_and_keeps_the_leaves(tmp_path: Path) -> None:
    """``h = relu(a @ w)``, ``loss = (h * h).sum()``: mm saves ``a`` (a leaf, the batch) for
    ``w``'s gradient (``w`` itself only if ``a`` needed a gradient: tools/autograd's mm
    formula), relu saves its output ``h``, mul saves ``h`` twice. So three files of ``h``'s
    bytes, and the leaf stays in memory; backward reads the three back, and the files go when
    autograd drops the graph."""
    store = OffloadStore(root=str(tmp_path), threshold_bytes=0)
    a = torch.randn(64, 128)
    w = nn.Parameter(torch.randn(128, 256))
    with store():
        h = torch.relu(a @ w)
        loss = (h * h).sum()
    assert store.files == 3
    assert store.kept == 1
    assert store.bytes_written == store.raw_bytes == 3 * h.numel() * 4
    assert len(_files(tmp_path)) == 3
    loss.backward()
    assert store.bytes_read == store.bytes_written
    # d(sum h^2)/dw = a^T (2h), relu's mask already in h (zero where the product was not > 0)
    assert w.grad is not None
    assert torch.allclose(w.grad, a.t() @ (2 * h.detach()), rtol=1e-5, atol=1e-3)
    del loss, h
    assert _files(tmp_path) == []  # each file went with its handle
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_small_tensors_stay_in_memory(tmp_path: Path) -> None:
    store = OffloadStore(root=str(tmp_path))  # 64 KiB threshold
    a = torch.randn(8, 16)
    w = nn.Parameter(torch.randn(16, 16))
    with store():
        loss = torch.relu(a @ w).sum()  # mm saves a, relu its output: 512 bytes each
    loss.backward()
    assert store.files == 0 and store.kept == 2 and store.folder is None


@pytest.mark.parametrize(
    ("mode", "knobs"),
    [
        ("cpu", {}),
        ("disk", {}),
        ("disk-compressed", {}),
        ("disk", {"checkpointing": "every-block"}),
        ("disk-compressed", {"precision": "amp-bf16"}),
        ("disk", {"precision": "bf16"}),
    ],
    ids=["cpu", "disk", "disk-compressed", "disk-checkpointed", "compressed-amp-bf16", "disk-bf16"],
)
def test_the_step_computes_the_same_loss_and_gradients(mode: str, knobs: dict[str, Any]) -> None:
    """The bytes written are read back unchanged (zstd is lossless), so the loss and every
    gradient equal those of the same step without offload, bit for bit (same kernels, same
    inputs). Composes with checkpointing (its own inner hooks) and autocast."""
    exp = BASE.replace(batch_size=4, **knobs)
    plain = build_experiment(exp)
    off = build_experiment(exp.replace(offload_activations=mode))
    x, y = next(plain.make_batches(1))

    def grads(w: Workload) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        with w.saved_tensors(), w.autocast():
            loss = w.loss_fn(w.forward(x).float(), y)
        loss.backward()
        return loss.detach(), [p.grad for p in w.model.parameters()]

    l0, g0 = grads(plain)
    l1, g1 = grads(off)
    assert torch.equal(l0, l1)
    assert all(a is not None and b is not None for a, b in zip(g0, g1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))  # type: ignore[arg-type]
    store = off.saved_tensors
    if mode == "cpu":
        assert not isinstance(store, OffloadStore)
        return
    assert isinstance(store, OffloadStore)
    assert store.files > 0 and store.bytes_read == store.bytes_written
    assert store.folder is not None and _files(store.folder) == []
    if mode == "disk-compressed":
        assert store.bytes_written < store.raw_bytes
    store.close()


def test_save_on_cpu_with_pinned_memory_would_copy_on_a_cpu_run() -> None:
    """Why ``cpu`` passes ``pin_memory`` on CUDA only: torch's ``save_on_cpu(pin_memory=True)``
    packs every saved tensor into a fresh ``torch.empty`` even on the CPU (a parameter
    included), while ``pin_memory=False`` keeps the tensor itself (torch/autograd/graph.py,
    ``save_on_cpu.__init__.pack_to_cpu``). Read from the hooks' own pack function."""
    w = nn.Parameter(torch.randn(256, 1024))
    _, kept = torch.autograd.graph.save_on_cpu(pin_memory=False).pack_hook(w)
    _, copied = torch.autograd.graph.save_on_cpu(pin_memory=True).pack_hook(w)
    assert kept is w
    assert copied.data_ptr() != w.data_ptr() and torch.equal(copied, w)
    w_model = build_experiment(BASE.replace(offload_activations="cpu"))
    ctx = w_model.saved_tensors()
    assert isinstance(ctx, torch.autograd.graph.save_on_cpu)
    assert ctx.pack_hook(w)[1] is w  # memlab's cpu setting on a CPU run: no copy


# -- runs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One transformer run per setting, with the parent's temporary folder pointed at an empty
    one, so that what a run leaves behind can be seen. The four run at once: tensor bytes do
    not depend on what else runs (no timing is asserted here)."""
    from memlab.runner import start

    tmp = tmp_path_factory.mktemp("offload-runs")
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    try:
        modes = ("off", "cpu", "disk", "disk-compressed")
        handles = {m: start(BASE.replace(offload_activations=m), timeout_s=300) for m in modes}
        out: dict[str, Any] = {m: h.wait() for m, h in handles.items()}
        out["left"] = sorted(p.name for p in tmp.iterdir())
    finally:
        tempfile.tempdir = saved
    return out


def test_disk_offload_runs_ok_with_a_quarter_of_the_activations(runs: dict[str, Any]) -> None:
    """The issue's acceptance: activations at most 25% of the off run's, status ok, nothing
    left in the temporary folder; what was written is read back."""
    off, disk = runs["off"], runs["disk"]
    assert off.status == "ok" and disk.status == "ok", (off.error, disk.error)
    assert off.peak_by_category["activations"] > 10 * 2**20  # there is something to offload
    assert disk.peak_by_category["activations"] <= 0.25 * off.peak_by_category["activations"]
    assert disk.peak_bytes < off.peak_bytes
    m = disk.metrics
    assert m["offload_files"] > 0 and m["offload_bytes_written"] > 0
    assert m["offload_bytes_read"] == m["offload_bytes_written"]
    assert m["offload_compression_ratio"] == 1.0
    assert runs["left"] == []


def test_cpu_offload_on_a_cpu_run_changes_nothing(runs: dict[str, Any]) -> None:
    """save_on_cpu keeps a CPU tensor where it is, so the same ops allocate the same tensors:
    tolerance zero bytes, for the activations and the peak."""
    off, cpu = runs["off"], runs["cpu"]
    assert cpu.status == "ok", cpu.error
    assert cpu.peak_by_category["activations"] == off.peak_by_category["activations"]
    assert cpu.peak_bytes == off.peak_bytes
    assert any("changes nothing" in n for n in cpu.notes)


def test_compressed_offload_writes_fewer_bytes(runs: dict[str, Any]) -> None:
    disk, comp = runs["disk"], runs["disk-compressed"]
    assert comp.status == "ok", comp.error
    m, d = comp.metrics, disk.metrics
    assert m["offload_raw_bytes"] == d["offload_raw_bytes"]  # the same tensors, written smaller
    assert m["offload_bytes_written"] < d["offload_bytes_written"]
    assert m["offload_compression_ratio"] == pytest.approx(
        m["offload_raw_bytes"] / m["offload_bytes_written"]
    )
    assert m["offload_compression_ratio"] > 1
    assert comp.peak_by_category["activations"] == disk.peak_by_category["activations"]


@pytest.mark.parametrize("mode", ["disk", "disk-compressed"])
def test_the_estimate_follows_the_offload(runs: dict[str, Any], mode: str) -> None:
    """The estimator runs the same hooks on fake tensors (same allocations, nothing written):
    within 3% of the run's peak, and the activations category with it."""
    from memlab.estimator import estimate_experiment

    r = runs[mode]
    est = estimate_experiment(BASE.replace(offload_activations=mode))
    assert abs(est.peak_bytes - r.peak_bytes) <= 0.03 * r.peak_bytes, (est, r.peak_bytes)
    acts = r.peak_by_category["activations"]
    assert abs(est.peak_by_category["activations"] - acts) <= 0.03 * runs["off"].peak_bytes


def test_cli_acceptance(runs: dict[str, Any], tmp_path: Path) -> None:
    """``memlab run --workload transformer --offload-activations disk --json`` in a shell:
    exit 0, status ok, activations at most a quarter of the off run's, no file left in its
    temporary folder (TMPDIR)."""
    args = ["--workload", "transformer", "--batch-size", "16", "--steps", "2", "--warmup", "1"]
    p = subprocess.run(
        [sys.executable, "-m", "memlab", "run", *args, "--offload-activations", "disk", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["status"] == "ok"
    assert (
        d["peak_by_category"]["activations"] <= 0.25 * (runs["off"].peak_by_category["activations"])
    )
    assert d["metrics"]["offload_files"] > 0
    assert list(tmp_path.iterdir()) == []


# -- the run's folder goes whatever the end ----------------------------------------------------
class _Pause(nn.Module):
    """Sleeps in forward, after the ReLU before it has saved (and so written) its output."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def _user(exp: Any, device: str, model: nn.Module, loss_fn: Any) -> Workload:
    def batches(num_batches: int | None = None) -> Iterator[tuple[Any, Any]]:
        for _ in range(num_batches or 1_000_000):
            yield torch.randn(exp.batch_size, 64), torch.randint(0, 10, (exp.batch_size,))

    return Workload(
        name="offload test",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        loss_fn=loss_fn,
        make_batches=batches,
        samples_per_step=exp.batch_size,
        device=device,
    )


def paused(exp: Any, device: str) -> Workload:
    """Each forward writes a 512 KiB ReLU output, then sleeps 5 s: long enough to act on."""
    model = nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), _Pause(5.0), nn.Linear(4096, 10))
    return _user(exp, device, model, nn.functional.cross_entropy)


_calls = {"n": 0}


def _failing_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    _calls["n"] += 1
    if _calls["n"] >= 2:  # the warm-up step passes; the measured one fails after its forward
        raise RuntimeError("boom: the loss failed")
    return nn.functional.cross_entropy(out, y)


def failing(exp: Any, device: str) -> Workload:
    model = nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 10))
    return _user(exp, device, model, _failing_loss)


def _start(factory: Any, **kw: Any) -> Any:
    from memlab.runner import start

    exp = Experiment(workload=factory, batch_size=32, offload_activations="disk", **kw)
    return start(exp)


def _wait_for_files(folder: str, timeout: float = 120) -> list[Path]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = _files(folder)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no offload file appeared in {folder} within {timeout} s")


def test_folder_removed_when_a_run_is_cancelled_mid_step() -> None:
    """The worker sleeps in forward with a file written; cancelled, it is killed after its
    grace, runs no cleanup of its own, and the parent removes the folder."""
    h = _start(paused, steps=1, warmup=0)
    assert os.path.isdir(h.scratch_dir)
    written = _wait_for_files(h.scratch_dir)
    h.cancel()
    r = h.wait(60)
    assert r.status == "cancelled"
    assert not any(p.exists() for p in written)
    assert not os.path.exists(h.scratch_dir)


def test_folder_removed_when_the_worker_is_killed_past_its_rss_cap() -> None:
    from memlab.runner import RunHandle

    exp = Experiment(workload=paused, batch_size=32, steps=1, warmup=0, offload_activations="disk")
    h = RunHandle(exp, use_warm=False)
    _wait_for_files(h.scratch_dir)
    h.rss_cap_bytes = 1  # the parent's next check kills the worker, as past the RSS cap
    r = h.wait(60)
    assert r.status == "oom" and "hard cap" in (r.error or "")
    assert not os.path.exists(h.scratch_dir)


def test_folder_removed_when_the_step_fails() -> None:
    h = _start(failing, steps=1, warmup=1)
    r = h.wait(120)
    assert r.status == "error" and "boom" in (r.error or "")
    assert r.metrics["offload_files"] > 0  # the warm-up step wrote its activations
    assert not os.path.exists(h.scratch_dir)


def test_folder_removed_on_a_budget_oom(runs: dict[str, Any]) -> None:
    """A budget under the disk run's peak: the tracker stops the step (status oom) once files
    of this run exist; the folder goes."""
    from memlab.runner import start

    disk = runs["disk"]
    exp = BASE.replace(offload_activations="disk", budget_bytes=int(disk.peak_bytes * 0.9))
    h = start(exp)
    r = h.wait(300)
    assert r.status == "oom", r.error
    assert r.metrics["offload_files"] > 0
    assert not os.path.exists(h.scratch_dir)


# -- bad input ----------------------------------------------------------------------------------
def test_bad_settings_are_refused_clearly() -> None:
    w = build_experiment(BASE)
    with pytest.raises(ValueError, match=r"offload_activations must be one of \['off', 'cpu'"):
        apply_offload(w, "gpu")
    inf = build_experiment(BASE.replace(mode="inference"))
    with pytest.raises(KnobUnsupported, match="training only"):
        apply_offload(inf, "disk")
    with pytest.raises(ConfigError, match=r"offload_activations 'disk'.*train"):
        Experiment(offload_activations="disk", mode="inference")


def test_missing_zstandard_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now fails
    with pytest.raises(ImportError, match=r"pip install 'memlab\[offload\]'"):
        OffloadStore(compress=True)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--offload-activations", "gpu"], "'off', 'cpu', 'disk', 'disk-compressed'"),
        (["--offload-activations", "disk", "--mode", "inference"], "mode 'train' only"),
    ],
)
def test_cli_refuses_bad_offload_in_one_line(args: list[str], says: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "memlab", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and says in p.stderr, p.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_offload_on_cuda_moves_saved_activations_off_the_device() -> None:
    """Issue 13, item 7: on a CUDA run ``save_on_cpu`` (pinned) moves the saved activations to
    host memory, so the device's activations at the peak drop; the copies cost step time (the
    host-to-device traffic), reported beside it."""
    from memlab.runner import run

    base = Experiment(workload="transformer", batch_size=16, steps=3, device="cuda")
    off = run(base, timeout_s=600)
    cpu = run(base.replace(offload_activations="cpu"), timeout_s=600)
    assert off.status == "ok" and cpu.status == "ok", (off.error, cpu.error)
    acts_off = off.peak_by_category["activations"]
    assert acts_off > 0
    assert cpu.peak_by_category["activations"] <= 0.25 * acts_off
    assert cpu.peak_bytes < off.peak_bytes
    assert cpu.step_times_s and off.step_times_s  # both timed: the PCIe cost is their difference
