"""memlab where no C++ compiler is: a fresh process whose PATH holds no compiler and whose
TORCH_EXTENSIONS_DIR is empty, so the native recorder cannot be built or loaded. memlab.track
and memlab.run (whose spawned worker chooses the source) fall back to torch.profiler, say so,
and measure what the native recorder measures; every lab runs there too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = ("c++", "g++", "gcc", "cc", "clang", "clang++", "cl")
TOLERANCE = 0.01

# Runs in the subprocess: a tracked train step of the tracker tests' MLP, then memlab.run of
# two built-in workloads through the runner; prints one JSON line.
SCRIPT = r"""
import json, shutil, sys, warnings
import torch, memlab
from tests.test_track import mlp, train_step

found = [c for c in sys.argv[1:] if shutil.which(c)]  # the compilers that must be absent
assert not found, f"on PATH: {found}"
out = {}
model, (x, y) = mlp()
opt = torch.optim.Adam(model.parameters())
for _ in range(2):
    train_step(model, opt, x, y)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
        train_step(model, opt, x, y)
out["warnings"] = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
r = rec.result
out["track"] = {"peak": r.peak_bytes, "cats": dict(r.peak_by_category),
                "source": r.timeline.source, "notes": list(r.notes)}
for name in ("mlp", "cnn"):
    res = memlab.run(memlab.Experiment(workload=name, steps=2, data_size=256))
    out[name] = {"status": res.status, "error": res.error, "peak": res.peak_bytes,
                 "cats": dict(res.peak_by_category), "source": res.timeline.source,
                 "notes": list(res.notes)}
print(json.dumps(out))
"""


def compilerless_env(tmp: Path) -> dict[str, str]:
    """os.environ without a compiler: PATH keeps only folders that hold none of them (the
    venv's bin, with python and ninja, stays), and an empty TORCH_EXTENSIONS_DIR."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    keep = [d for d in dirs if not any((Path(d) / c).exists() for c in COMPILERS)]
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in keep:
        keep.insert(0, venv_bin)
    ext = tmp / "torch_extensions"
    ext.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC", "MEMLAB_EVENT_SOURCE")}
    env.update(PATH=os.pathsep.join(keep), TORCH_EXTENSIONS_DIR=str(ext), PYTHONPATH=str(ROOT))
    return env


def run_script(env: dict[str, str], *check_absent: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *check_absent],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_track_and_run_fall_back_to_the_profiler(tmp_path: Path) -> None:
    env = compilerless_env(tmp_path)
    bare = run_script(env, *COMPILERS)
    native = run_script({**os.environ, "PYTHONPATH": str(ROOT)})
    # where a compiler is, the native recorder measures, silently
    assert native["warnings"] == [] and native["track"]["source"] == "cpu-allocator"
    # without one: one notice, in one line, saying why and what is lost
    assert len(bare["warnings"]) == 1, bare["warnings"]
    notice = bare["warnings"][0]
    assert "no C++ compiler" in notice and "op-internal buffers" in notice and "\n" not in notice
    assert not list((tmp_path / "torch_extensions").rglob("*.so"))  # nothing was built
    for key in ("track", "mlp", "cnn"):
        b, n = bare[key], native[key]
        assert b.get("status", "ok") == "ok", b
        assert n.get("status", "ok") == "ok", n
        assert b["source"] == "cpu-profiler" and n["source"] == "cpu-allocator"
        assert any("torch.profiler" in s for s in b["notes"]), b["notes"]
        assert abs(b["peak"] - n["peak"]) <= TOLERANCE * n["peak"], (key, b, n)
        for c, v in n["cats"].items():
            assert abs(b["cats"][c] - v) <= TOLERANCE * n["peak"], (key, c, b, n)


LABS = sorted((ROOT / "labs").glob("*.ipynb"))

# Runs in the subprocess, so that the kernel nbclient starts inherits its environment.
NB_SCRIPT = r"""
import sys, nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=900, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
"""


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("notebook", LABS, ids=[p.stem for p in LABS])
def test_lab_runs_without_a_compiler(notebook: Path, tmp_path: Path) -> None:
    """Each lab in smoke mode, its kernel without a compiler (the labs assert their own
    claims, so an execution without error is the check)."""
    pytest.importorskip("nbclient")
    env = {**compilerless_env(tmp_path), "MEMLAB_SMOKE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", NB_SCRIPT, str(notebook), str(notebook.parent)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert not list((tmp_path / "torch_extensions").rglob("*.so"))
