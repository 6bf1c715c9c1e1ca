"""The three dependency declarations (pyproject.toml, environment.yml, constraints.txt) agree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# PEP 508: the name is the leading run of letters, digits, '.', '_' and '-'.
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    assert match, f"not a requirement: {requirement!r}"
    return normalize(match.group(1))


def pyproject_dependencies() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def pyproject_extras() -> list[str]:
    """Every optional extra's requirements except the test tools' (``test`` only names the
    other extras and the tools that run the suite)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    return [r for name, reqs in extras.items() if name != "test" for r in reqs]


def environment_pip_requirements() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    # Options (-c constraints.txt, -e .) are not dependencies.
    return [str(r) for r in pip_sections[0] if not str(r).lstrip().startswith("-")]


def constraint_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*===?\s*(\S+)", line)
        assert match, f"constraints.txt line is not an exact pin: {line!r}"
        name = normalize(match.group(1))
        assert name not in pins, f"{name} pinned twice in constraints.txt"
        pins[name] = match.group(2)
    return pins


def test_environment_yml_lists_the_pyproject_dependencies() -> None:
    project = {requirement_name(r) for r in pyproject_dependencies()}
    conda = {requirement_name(r) for r in environment_pip_requirements()}
    assert conda == project, (
        f"only in pyproject.toml: {sorted(project - conda)}; "
        f"only in environment.yml: {sorted(conda - project)}"
    )


def test_environment_yml_uses_the_same_ranges() -> None:
    def specs(requirements: list[str]) -> dict[str, str]:
        # name -> version specifier/markers with whitespace removed
        return {
            requirement_name(r): re.sub(r"\s+", "", _NAME.sub("", r, count=1)) for r in requirements
        }

    assert specs(environment_pip_requirements()) == specs(pyproject_dependencies())


def test_every_dependency_has_an_exact_pin() -> None:
    pins = constraint_pins()
    extras = pyproject_extras()
    names = sorted(requirement_name(r) for r in pyproject_dependencies() + extras)
    missing = [name for name in names if name not in pins]
    assert not missing, f"not pinned in constraints.txt: {missing}"


def test_torch_is_pinned_to_the_cpu_wheel_version() -> None:
    # An open torch range makes pip fetch a multi-GB CUDA build; 2.13.0 is the local CPU wheel.
    assert constraint_pins().get("torch") == "2.13.0"


@pytest.mark.parametrize(
    ("requirement", "name"),
    [
        ("memory_profiler>=0.6", "memory-profiler"),
        ("Scikit.Learn", "scikit-learn"),
        ("torch", "torch"),
    ],
)
def test_requirement_name(requirement: str, name: str) -> None:
    assert requirement_name(requirement) == name


# -- declared == used -------------------------------------------------------------------------
# Runtime dependencies that memlab's code never imports, each with why it is declared.
_NOT_IMPORTED = {
    "jupyterlab": "make lab serves the labs with it",
    "ipykernel": "the notebooks' kernel",
    "voila": "make app serves the labs with it",
    "ninja": "torch.utils.cpp_extension builds memlab/tracking/_alloc.cpp with it",
    "anywidget": "plotly's FigureWidget is an anywidget; plotly does not require it",
    "onnxscript": "torch.onnx.export needs it (edge extra); memlab calls torch.onnx",
    "onnx": "torch.onnx.export writes ONNX with it (edge extra); planning_anchors checks for it "
    "with an actionable error before exporting",
}


def _imported_top_levels(folder: Path) -> set[str]:
    """Top-level module names imported anywhere under ``folder`` (at import or inside a
    function: an optional import is still a dependency)."""
    import ast

    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_used_and_every_import_is_declared() -> None:
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    # The extras' packages are imported inside the functions that use them (optional).
    extras = pyproject_extras()
    declared = {requirement_name(r) for r in pyproject_dependencies() + extras}
    used: set[str] = set()
    undeclared: list[str] = []
    for module in sorted(_imported_top_levels(ROOT / "memlab")):
        if module == "memlab" or module in sys.stdlib_module_names:
            continue
        owners = {normalize(d) for d in dists.get(module, [])}
        assert owners, f"memlab imports {module!r}, which no installed distribution provides"
        used |= owners & declared
        if not owners & declared:
            undeclared.append(f"{module} (from {sorted(owners)})")
    assert not undeclared, f"imported by memlab but not in pyproject.toml: {undeclared}"
    unused = declared - used - set(_NOT_IMPORTED)
    assert not unused, f"declared in pyproject.toml but never imported by memlab: {sorted(unused)}"
    stale = set(_NOT_IMPORTED) - declared
    assert not stale, f"_NOT_IMPORTED names packages that are not declared: {sorted(stale)}"
