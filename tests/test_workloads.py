"""Workloads: build, step, data in RAM and through memmap files, real-data accuracy."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from memlab.config import ConfigError, Experiment
from memlab.knobs import accuracy, build_experiment
from memlab.workloads import Workload, build_workload
from memlab.workloads import data as D
from memlab.workloads.builtin import SPECS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "generated"


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_builtin_workload_trains(name: str, data_dir: Path) -> None:
    exp = Experiment(workload=name, batch_size=8, data_size=32, device="cpu")
    w = build_workload(exp, data_dir=data_dir)
    assert w.name == name and w.device == "cpu" and w.samples_per_step == 8
    assert isinstance(w.optimizer, torch.optim.Optimizer)
    assert len(w.blocks) == 4 and all(isinstance(b, nn.Module) for b in w.blocks)
    assert all(any(b is m for m in w.model.modules()) for b in w.blocks)
    batches = list(w.make_batches())
    assert len(batches) == 32 // 8  # one pass, full batches only
    x, y = batches[0]
    assert tuple(x.shape) == (8, *SPECS[name].input_shape) and x.dtype == torch.float32
    assert tuple(y.shape) == (8,) and y.dtype == torch.long
    assert w.dataset_bytes == 32 * int(np.prod(SPECS[name].input_shape)) * 4
    before = [p.detach().clone() for p in w.model.parameters()]
    loss = w.step(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert not loss.requires_grad
    assert any(not torch.equal(a, p) for a, p in zip(before, w.model.parameters(), strict=True))
    assert all(p.grad is None for p in w.model.parameters())  # freed after the step


def test_inference_mode_has_no_optimizer_and_changes_nothing(data_dir: Path) -> None:
    w = build_workload(
        Experiment(workload="cnn", mode="inference", batch_size=4, data_size=8, device="cpu"),
        data_dir=data_dir,
    )
    assert w.optimizer is None and not w.model.training
    before = copy.deepcopy(w.model.state_dict())
    x, y = next(w.make_batches(1))
    assert torch.isfinite(w.step(x, y))
    after = w.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batchnorm stats too


def test_same_seed_same_weights_and_batches(data_dir: Path) -> None:
    exp = Experiment(workload="mlp", batch_size=4, data_size=16, device="cpu", seed=7)
    a, b = build_workload(exp, data_dir=data_dir), build_workload(exp, data_dir=data_dir)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    pairs = zip(a.make_batches(), b.make_batches(), strict=True)
    assert all(torch.equal(u[0], v[0]) for u, v in pairs)
    c = build_workload(exp.replace(seed=8), data_dir=data_dir)
    assert not torch.equal(next(a.model.parameters()), next(c.model.parameters()))


def test_make_batches_counts_across_epochs(data_dir: Path) -> None:
    w = build_workload(Experiment(batch_size=4, data_size=10, device="cpu"), data_dir=data_dir)
    assert len(list(w.make_batches())) == 2  # 10 samples -> 2 full batches of 4
    assert len(list(w.make_batches(7))) == 7  # epochs repeat as needed


def test_prepare_memmap_writes_reuses_and_is_seeded(tmp_path: Path) -> None:
    path = tmp_path / "a" / "x.npy"
    f = D.prepare_memmap(path, 1000, (3, 4), seed=1)
    assert f.x_path == path and f.y_path == tmp_path / "a" / "x.labels.npy"
    x = np.load(path, mmap_mode="r")
    y = np.load(f.y_path, mmap_mode="r")
    assert isinstance(x, np.memmap) and x.shape == (1000, 3, 4) and x.dtype == np.float32
    assert y.shape == (1000,) and y.dtype == np.int64 and 0 <= y.min() and y.max() < 10
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    assert f.x_bytes == 1000 * 12 * 4
    mtime = path.stat().st_mtime_ns
    D.prepare_memmap(path, 1000, (3, 4), seed=1)
    assert path.stat().st_mtime_ns == mtime  # same shape and dtype: reused
    again = D.prepare_memmap(tmp_path / "b.npy", 1000, (3, 4), seed=1)
    assert np.array_equal(np.load(again.x_path), np.asarray(x))
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="n must be a positive int"):
        D.prepare_memmap(tmp_path / "c.npy", 0, (3,))


def test_memmap_workload_reads_the_prepared_file(data_dir: Path) -> None:
    exp = Experiment(
        workload="transformer", data="memmap", batch_size=8, data_size=64, device="cpu"
    )
    w = build_workload(exp, data_dir=data_dir)
    files = list(data_dir.glob("*.npy"))
    assert sorted(p.name for p in files) == [
        "transformer-n64-64x4-float32-s0.labels.npy",
        "transformer-n64-64x4-float32-s0.npy",
    ]
    on_disk = np.load(data_dir / "transformer-n64-64x4-float32-s0.npy")
    x, y = next(w.make_batches(1))
    assert tuple(x.shape) == (8, 64, 4)
    # every row of the batch is a row of the file
    rows = {r.tobytes() for r in on_disk}
    assert all(r.numpy().tobytes() in rows for r in x)
    assert w.dataset_bytes == on_disk.nbytes
    assert torch.isfinite(w.step(x, y))


def test_memmap_dataset_pickles_without_its_mapping(tmp_path: Path) -> None:
    ds = D.MemmapBatches(D.prepare_memmap(tmp_path / "p.npy", 20, (2,)))
    ds[[0, 1]]  # opens the mapping
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._x is None  # a worker reopens the file itself
    assert torch.equal(clone[[3, 1]][0], ds[[1, 3]][0])  # rows come back in sorted order


def test_loader_with_workers_and_prefetch(data_dir: Path) -> None:
    exp = Experiment(
        workload="mlp",
        data="memmap",
        num_workers=2,
        prefetch_factor=3,
        batch_size=16,
        data_size=256,
        device="cpu",
    )
    w = build_workload(exp, data_dir=data_dir)
    got = list(w.make_batches(20))  # more than one epoch (16 batches) with persistent workers
    assert len(got) == 20 and all(tuple(x.shape) == (16, 64) for x, _ in got)


def test_pin_memory_without_gpu_is_noted(data_dir: Path) -> None:
    w = build_workload(
        Experiment(pin_memory=True, batch_size=4, data_size=8, device="cpu"), data_dir=data_dir
    )
    assert any("pin_memory" in n for n in w.notes)


def test_digits_layouts() -> None:
    x_tr, y_tr, x_te, y_te = D.digits(seed=0)
    assert len(x_tr) + len(x_te) == 1797 and x_tr.shape[1] == 64
    assert abs(float(x_tr.mean())) < 1e-4 and set(y_te.tolist()) == set(range(10))
    img = D.digits_as(x_te, "image16")
    tok = D.digits_as(x_te, "patches16")
    assert img.shape == (len(x_te), 1, 16, 16) and tok.shape == (len(x_te), 64, 4)
    # token t holds the 2x2 patch at row t // 8, column t % 8 of the image
    assert torch.equal(tok[:, 9], img[:, 0, 2:4, 2:4].reshape(len(x_te), 4))
    with pytest.raises(ValueError, match="layout"):
        D.digits_as(x_te, "nope")


def test_mlp_learns_the_digits() -> None:
    # 80 steps of 32 samples; measured 0.91-0.95 test accuracy (10 classes: chance is 0.1).
    acc = accuracy(Experiment(workload="mlp", device="cpu"), train_steps=80)
    assert acc is not None and acc >= 0.85, acc


def test_fit_then_evaluate_keeps_the_run_optimizer_state() -> None:
    w = build_experiment(Experiment(workload="cnn", batch_size=16, data_size=16, device="cpu"))
    untrained = w.evaluate()
    assert untrained is not None and 0.0 <= untrained <= 1.0
    w.fit(40)
    assert w.model.training  # restored
    assert w.optimizer is not None and not w.optimizer.state  # fit used its own optimizer
    trained = w.evaluate()
    assert trained is not None and trained > untrained + 0.2, (untrained, trained)


def _tiny_factory(exp: Experiment, device: str) -> Workload:
    model = nn.Sequential(nn.Linear(3, 2)).to(device)
    x = torch.randn(exp.data_size, 3)
    y = torch.randint(0, 2, (exp.data_size,))

    def batches(num_batches: int | None = None) -> Any:
        for _ in range(num_batches or 1):
            yield x[: exp.batch_size].to(device), y[: exp.batch_size].to(device)

    return Workload(
        name="tiny",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.functional.cross_entropy,
        make_batches=batches,
        samples_per_step=exp.batch_size,
        blocks=[model[0]],
        device=device,
        make_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
    )


def test_user_factory_workload_with_knobs() -> None:
    exp = Experiment(
        workload=_tiny_factory,
        batch_size=4,
        data_size=8,
        device="cpu",
        precision="bf16",
        checkpointing="every-block",
    )
    w = build_experiment(exp)
    assert w.name == "tiny" and w.evaluate() is None and w.fit(3) is None
    assert next(w.model.parameters()).dtype == torch.bfloat16
    x, y = next(w.make_batches(1))
    assert torch.isfinite(w.step(x, y))


def test_user_factory_must_return_a_workload() -> None:
    with pytest.raises(ConfigError, match="must return a memlab.workloads.Workload, got int"):
        build_workload(Experiment(workload=lambda e, d: 3, device="cpu"))


def test_prepare_script(tmp_path: Path) -> None:
    out = tmp_path / "cli.npy"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "data" / "prepare.py"),
            "--workload",
            "cnn",
            "--size",
            "1MB",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "976 x (1, 16, 16) float32" in r.stdout  # 10**6 // 1024 bytes per sample
    assert np.load(out, mmap_mode="r").shape == (976, 1, 16, 16)
    bad = subprocess.run(
        [sys.executable, str(ROOT / "data" / "prepare.py"), "--size", "lots"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "--size must be a byte size" in bad.stderr
    assert "Traceback" not in bad.stderr


# -- the layering: knobs depend on workloads, never the reverse -------------------------------
WORKLOADS_DIR = ROOT / "memlab" / "workloads"


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside a function."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_no_workload_module_imports_the_knobs() -> None:
    modules = sorted(WORKLOADS_DIR.glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "base.py", "builtin.py", "data.py"}
    for p in modules:
        bad = {
            m for m in _imported_modules(p) if m == "memlab.knobs" or m.startswith("memlab.knobs.")
        }
        assert not bad, f"{p.name} imports {bad}: knobs depend on workloads, not the reverse"


def test_building_and_stepping_a_workload_never_loads_the_knobs() -> None:
    names = [p.stem for p in WORKLOADS_DIR.glob("*.py")]
    mods = ", ".join(f"memlab.workloads.{n}" for n in names if n != "__init__")
    code = (
        f"import sys, memlab.workloads, {mods}\n"
        "from memlab.config import Experiment\n"
        "w = memlab.workloads.build_workload(Experiment(batch_size=4, data_size=4, device='cpu'))\n"
        "w.step(*next(w.make_batches(1))); w.metrics\n"
        "print(sorted(m for m in sys.modules if m.startswith('memlab.knobs')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_knobs_reexport_what_moved() -> None:
    """``build_experiment``/``accuracy`` live above both; ``param_bytes_by_dtype`` below."""
    import memlab.knobs as K
    import memlab.workloads as W

    assert not hasattr(W, "build_experiment") and not hasattr(W, "accuracy")
    assert K.param_bytes_by_dtype is W.param_bytes_by_dtype
    w = build_experiment(Experiment(batch_size=4, data_size=4, device="cpu", precision="bf16"))
    assert set(K.param_bytes_by_dtype(w.model)) == {"bfloat16"}
