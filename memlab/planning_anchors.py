"""What two edge runtimes plan or hold for the same model: the anchors ``memlab.plan`` is read
against (the benchmark ``benchmarks/planning.py`` and the tests share them).

- ExecuTorch: ``to_edge(torch.export.export(model, inputs)).to_executorch(config)`` with a
  ``MemoryPlanningPass`` running only ``greedy`` or only ``naive`` (``exir/memory_planning.py``);
  the arena is ``execution_plan[0].non_const_buffer_sizes`` (index 0 is reserved, index 1 the
  planned arena). The specs it planned (sizes and lifetimes after ExecuTorch's own passes) are
  returned too, as ``TensorLife``s, so memlab's planners can plan *the same graph*.
- ONNX Runtime: ``SessionOptions.enable_mem_pattern`` (replay the first run's allocation pattern
  as one block) and ``enable_cpu_mem_arena`` (the BFC arena), on and off, measured as RSS in a
  fresh spawned process around the session's first and steady runs (RSS, not tensor bytes:
  ONNX Runtime's allocator is not PyTorch's, so memlab's recorder cannot see it).

Why ExecuTorch's greedy came out at exactly 8,388,608 bytes for two different small CNNs
(measured here, torch 2.13 / executorch 1.5.1, ``benchmarks/planning.py``): memlab's CNN keeps
64 channels at 16x16 in every block, so at batch 32 every activation is 32*64*16*16*4 =
2,097,152 bytes (2**21) whatever the depth, and ExecuTorch's greedy arena came out at exactly
4.00x its largest tensor for depth 4 and depth 2 alike. Not alignment (16 bytes divides 2**21),
not rounding: its ``greedy`` puts tensors into "shared objects" (``pick_shared_obj``), sums the
objects' sizes (``_compute_total_sizes``), and with all sizes equal the order it tries them in
is that of a ``set`` of specs (``bisect.insort`` by size keeps ties in set order), not by
start: greedy interval colouring in arbitrary order needed 4 objects where the lower bound over
ExecuTorch's *own* lifetimes is 3 (6,291,456: memlab's ``greedy_by_size``, which breaks ties by
start, reaches it on the same specs; memlab's ``naive`` at 16 bytes gives ExecuTorch's naive
figure to the byte, 39,890,688, so the specs are the same).

Why ExecuTorch planned 59 MiB (62,128,128 bytes) for a 3-layer ``nn.TransformerEncoder``
(d=192, seq 128, batch 8) where eager peaked near 8 MiB: eager runs each attention as one fused
``_native_multi_head_attention`` op; ``torch.export`` decomposes it, and the edge dialect has no
views, so ``expand`` becomes ``expand_copy``: each layer's in-projection weight (192x576) is
copied 128 times into a (128, 192, 576) tensor, 56,623,104 bytes, for a ``bmm``; that one tensor
is 91% of the arena (three of them, one per layer, at different times). The edge graph also
adds ``_clone_dim_order``, ``permute_copy``/``view_copy`` copies and the mask's ``any``/
``where``/``full_like`` ops. ``executorch_plan`` returns the edge op counts and the largest
tensor; the benchmark prints which ops only one graph has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from memlab.planning import TensorLife

__all__ = ["executorch_plan", "onnxruntime_rss", "EDGE_HINT"]

EDGE_HINT = "pip install 'memlab[edge]'"


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for this anchor: {EDGE_HINT}") from e


def _specs(program: Any) -> list[Any]:
    """The TensorSpecs ExecuTorch's planner placed, collected as its ``apply_algo`` does
    (``exir/memory_planning.py``: ``collect_specs_from_nodes`` with ``do_assertion=False``, graph
    inputs and outputs allocated, the MemoryPlanningPass defaults), less those with a
    ``storage_base`` (they live inside another spec's bytes and take none of their own)."""
    from executorch.exir.memory_planning import collect_specs_from_nodes

    specs = collect_specs_from_nodes(
        program.graph_module.graph.nodes, program.graph_signature, do_assertion=False
    )
    return [
        s for s in specs if getattr(s, "storage_base", None) is None and s.lifetime[0] is not None
    ]


def executorch_plan(model: Any, inputs: Sequence[Any]) -> dict[str, Any]:
    """ExecuTorch's greedy and naive arenas for ``model(*inputs)`` (``non_const_buffer_sizes``),
    the lifetimes it planned (for memlab's planners), its largest tensor, and its op counts."""
    _need("executorch")
    import torch
    from executorch.exir import ExecutorchBackendConfig, to_edge
    from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, greedy, naive
    from executorch.exir.passes import MemoryPlanningPass

    model = model.eval()
    with torch.no_grad():
        exported = torch.export.export(model, tuple(inputs))
    out: dict[str, Any] = {}
    for algo in (greedy, naive):
        suite = MemoryPlanningAlgorithmSuite(algo_list=[algo])
        config = ExecutorchBackendConfig(
            memory_planning_pass=MemoryPlanningPass(memory_planning_algo=suite)
        )
        prog = to_edge(exported).to_executorch(config)
        sizes = list(prog.executorch_program.execution_plan[0].non_const_buffer_sizes)
        out[f"{algo.__name__}_bytes"] = int(sum(sizes))
        if algo is greedy:
            specs = _specs(prog.exported_program())
            out["lives"] = [
                TensorLife(i, int(s.allocated_memory), int(s.lifetime[0]), int(s.lifetime[1]))
                for i, s in enumerate(specs)
            ]
            out["largest_bytes"] = max((int(s.allocated_memory) for s in specs), default=0)
    # Op counts of the edge graph (before to_executorch turns ops into out-variants and
    # memory.alloc nodes): ``aten.convolution.default`` -> ``convolution``.
    edge = to_edge(exported).exported_program().graph_module
    names = [
        str(getattr(n.target, "__name__", n.target)).split(".")
        for n in edge.graph.nodes
        if n.op == "call_function"
    ]
    out["ops"] = Counter(p[-2] if len(p) >= 3 else p[-1] for p in names)
    return out


def ort_child(path: str, feeds_npz: str, on: bool) -> dict[str, int]:
    """In a fresh process (``onnxruntime_rss`` starts one per setting): the RSS high-water mark
    that one session's first run, then three steady runs, added (bytes)."""
    import numpy as np
    import onnxruntime as ort

    def hwm() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/self/status: this anchor needs Linux")

    def reset_hwm() -> None:
        # Writing 5 to clear_refs resets VmHWM to the current RSS (proc(5), clear_refs).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    feeds = dict(np.load(feeds_npz))
    opts = ort.SessionOptions()
    opts.enable_mem_pattern = on
    opts.enable_cpu_mem_arena = on
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    reset_hwm()
    base = hwm()
    sess.run(None, feeds)
    first = hwm() - base
    reset_hwm()
    base = hwm()
    for _ in range(3):
        sess.run(None, feeds)
    return {"first_run_bytes": first, "steady_run_bytes": hwm() - base}


def onnxruntime_rss(model: Any, inputs: Sequence[Any], path: str) -> dict[str, dict[str, int]]:
    """Export ``model`` to ONNX at ``path`` (``torch.onnx.export``), then for each setting
    (mem pattern and CPU arena both on: ``pattern``; both off: ``plain``) the RSS a fresh
    process's first run and steady runs added at their peak (bytes; Linux ``VmHWM``). A fresh
    process each (a subprocess, not multiprocessing: spawn would re-run the caller's script)."""
    _need("onnxruntime")
    _need("onnx")
    import json
    import subprocess
    import sys

    import numpy as np
    import torch

    with torch.no_grad():
        torch.onnx.export(model.eval(), tuple(inputs), path, dynamo=True, verbose=False)
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(path).get_inputs()]
    npz = path + ".inputs.npz"
    np.savez(npz, **{n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    out: dict[str, dict[str, int]] = {}
    for label, on in (("pattern", True), ("plain", False)):
        code = (
            "import json, sys; from memlab.planning_anchors import ort_child; "
            f"print(json.dumps(ort_child({path!r}, {npz!r}, {on})))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"ONNX Runtime child failed: {done.stderr.strip()[-500:]}")
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return out
