"""ARCHITECTURE.md stays true: its add-a-lab example runs, every module it names exists, and
every in-code reference to it names one of its sections."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from memlab.config import Experiment
from memlab.labs.sweeps import Sweep
from memlab.timeline import RunResult

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "ARCHITECTURE.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else None]


def test_the_add_a_lab_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section("Walkthrough: add a lab"), re.S)
    assert len(blocks) == 1
    code = "\n".join(line[3:] if line.startswith("   ") else line for line in blocks[0].split("\n"))
    path = tmp_path / "example_lab.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("example_lab", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    base = Experiment(workload="mlp")
    small = RunResult(peak_bytes=3 * 2**20, peak_by_category={"activations": 3 * 2**20})
    big = RunResult(peak_bytes=5 * 2**20, peak_by_category={"activations": 5 * 2**20})
    sweep = Sweep(("a", "b"), (base, base.replace(batch_size=64)), (small, big))
    assert "3.0 MiB" in mod.explain(sweep)
    assert mod.check_biggest("b", sweep).ok is True
    assert mod.check_biggest("a", sweep).ok is False
    assert mod.check_biggest(None, sweep).ok is None  # not answered yet


def test_every_module_path_it_names_exists() -> None:
    paths = set(
        re.findall(r"`((?:memlab|labs|tests|benchmarks)/[\w/.]+\.(?:py|ipynb|cpp|js))`", DOC)
    )
    assert len(paths) > 20
    # The walkthroughs name files a contributor is about to create.
    planned = {"memlab/labs/peaks.py", "labs/12_peaks.ipynb", "memlab/knobs/offload.py"}
    missing = sorted(p for p in paths - planned if not (ROOT / p).exists())
    assert not missing, f"ARCHITECTURE.md names files that do not exist: {missing}"


def test_every_reference_in_the_code_names_a_section() -> None:
    headings = re.findall(r"^## (.+)$", DOC, re.M)
    refs: list[tuple[str, str]] = []
    for folder in ("memlab", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert "DESIGN.md" not in text or path.name == "test_architecture.py", path
            found = re.findall(r'ARCHITECTURE\.md,\s+"([^"]+)"', text)
            refs += [(str(path), re.sub(r"\s+", " ", r)) for r in found]
    assert refs
    bad = [(p, r) for p, r in refs if not any(h.startswith(r) for h in headings)]
    assert not bad, f"no such section in ARCHITECTURE.md: {bad}; sections: {headings}"


def test_no_submodule_shadows_a_public_function() -> None:
    """``memlab.compare`` must stay the function after ``memlab.comparing`` (or any other
    submodule) is imported: a submodule named like a public name replaces it on the package at
    its first import. Checked in a fresh interpreter that imports every submodule first."""
    import subprocess
    import sys

    script = (
        "import importlib, pkgutil, types, memlab\n"
        "for m in pkgutil.walk_packages(memlab.__path__, 'memlab.'):\n"
        "    if not m.name.startswith(('memlab.ui', 'memlab.labs')):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [n for n in memlab.__all__ if n != 'exports'\n"
        "       and isinstance(getattr(memlab, n), types.ModuleType)]\n"
        "print(bad)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout
