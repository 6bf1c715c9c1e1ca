"""Every lab notebook executes top to bottom in smoke mode (its own asserts are the test), and
afterwards its kernel has never imported torch: measurement, estimates and accuracy jobs all ran
in worker processes (ARCHITECTURE.md, "Process model").

One execution per notebook, in a fresh kernel started from this interpreter (the repo's venv),
with ``MEMLAB_SMOKE=1`` in its environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("[0-9][0-9]_*.ipynb"))

# Run in the kernel after the lab's last cell: what a lab must not have loaded, and which of
# memlab's modules were loaded (to tell who brought torch in when it is there).
PROBE = """\
import json as _json, sys as _sys
print(_json.dumps({
    "torch": "torch" in _sys.modules,
    "memlab": sorted(m for m in _sys.modules if m.startswith("memlab")),
}))
"""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_every_lab_is_collected() -> None:
    assert [p.name[:2] for p in LABS] == [f"{i:02d}" for i in range(len(LABS))]
    assert len(LABS) >= 6


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_lab_runs_in_smoke_mode_without_torch_in_the_kernel(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []), "papermill parameters cell"
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    # The kernel inherits this process's environment, so the lab runs with its smoke sizes.
    monkeypatch.setenv("MEMLAB_SMOKE", "1")
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    probe = json.loads(out.strip().splitlines()[-1])
    assert probe["torch"] is False, f"the kernel imported torch; memlab had: {probe['memlab']}"
