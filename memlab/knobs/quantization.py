"""Real int8 and int4: static int8 of the whole model, weight-only int8/int4 of its Linear layers.

- ``int8-static`` (post-training static quantization, torchao's PT2E flow): ``torch.export``
  with a dynamic batch dimension, ``prepare_pt2e`` with ``X86InductorQuantizer`` (per-channel
  int8 weights, per-tensor uint8 activations, convolution + batch-norm folded), calibration on
  batches of the real digits' training split (the data set the workload trains on), then
  ``convert_pt2e``. The converted graph holds the weights as int8 tensors but computes in the
  reference representation: dequantize -> fp32 op -> quantize. To get int8 *arithmetic* it is
  then lowered to oneDNN's int8 kernels (``onednn.qconv_pointwise``/``qlinear_pointwise``) by
  inductor's freezing passes, run as an FX graph in eager mode (no code generation): what
  ``torchao/quantization/pt2e/lowering.py::lower_pt2e_quantized_to_x86`` does, repeated here
  with a dynamic batch dimension (torchao's re-exports with static shapes, and memlab's requests
  and ``Workload.evaluate`` vary the batch). oneDNN packs each weight into an opaque
  ``torch._mkldnn`` tensor: the tensor account sees no storage for it (counted here by its
  logical int8 size; ``footprint`` measures what it really costs, from RSS). Where lowering fails
  (a torch build without oneDNN, an ARM CPU), the Q/DQ graph runs instead, and the note says so.
- ``int8-weight`` / ``int4-weight``: torchao ``quantize_`` on every ``nn.Linear``:
  ``Int8WeightOnlyConfig`` (per-row int8, an ``Int8Tensor`` subclass), and for int4
  ``IntxWeightOnlyConfig(weight_dtype=torch.int4, PerGroup(32))``: torchao 0.18's packed int4
  layouts do not run on a CPU torch (``Int4WeightOnlyConfig``: ``plain`` needs the mslk package,
  ``tile_packed_to_4d`` needs CUDA and bf16, ``plain_int32`` refuses the CPU; measured here), so
  the int4 values are stored one per int8 byte (``IntxUnpackedToInt8Tensor``): int4's accuracy,
  int8's bytes, plus a scale and zero point per group of 32. Activations stay fp32: each matmul
  dequantizes the weight first.

Order with the other knobs (``apply_knobs``): sparsity and compression run first. Mask-pruned
layers are folded (``prune.remove``) so the quantized weights are the pruned ones;
``SparseLinear`` (CSR) layers are left as they are by weight-only quantization and cannot be
exported by the static flow (a clear ``KnobUnsupported``); compression's ``svd`` layers are
plain Linear layers and quantize like any other.
"""

from __future__ import annotations

import copy
import importlib
import json
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import nn

from memlab.knobs.errors import KnobUnsupported
from memlab.workloads.base import Workload, param_bytes_by_dtype

if TYPE_CHECKING:
    from memlab.config import Experiment

__all__ = [
    "EDGE_HINT",
    "quantize_static_int8",
    "quantize_weight_only",
    "fold_pruning",
    "INT4_GROUP_SIZE",
    "CALIBRATION_SAMPLES",
    "BUILD_STATE_NOTE",
    "Footprint",
    "footprint",
    "EdgeProgram",
    "executorch_program",
]

EDGE_HINT = "pip install 'memlab[edge]'"
#: Group size of int4 weight-only quantization: one fp32 scale and one int8 zero point per 32
#: weights (torchao's int4 group sizes are 32..256; 32 divides every built-in layer but the
#: transformer's 4-feature embedding, which stays fp32).
INT4_GROUP_SIZE = 32
#: Samples of the real training split the static quantizer's observers see.
CALIBRATION_SAMPLES = 256
#: What building an ``int8-static`` model leaves in the process besides the model. Measured
#: on the 2-core x86 CPU this was written on (torch 2.13 CPU, torchao 0.18; RSS after
#: ``gc.collect`` and ``malloc_trim``; the test in tests/test_quantization.py bounds the
#: per-model part). Before issue 12's fix the MLP kept its 32 MiB of fp32 weights too.
BUILD_STATE_NOTE = (
    "the process keeps no fp32 copy of the weights and no export/PT2E graphs, metadata or "
    "fake tensors; what stays is per process, not per model: the code and pattern tables "
    "of torchao's PT2E flow, torch.export and inductor's freezing passes plus scikit-learn's "
    "data sets module for the calibration digits (preload() loads them: about 234 MiB "
    "measured over an imported torch, scikit-learn about 101 MiB of it), and the first "
    "int8-static build's first-use allocations that are never freed (about 38 MiB measured: "
    "oneDNN kernels and primitive caches, inductor and sympy caches); a later int8-static "
    "model adds its packed weights and about 4 MiB (measured)"
)


def _need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs {module.split('.')[0]}: {EDGE_HINT}") from e


def fold_pruning(model: nn.Module) -> int:
    """Fold ``torch.nn.utils.prune``'s reparametrisation (``weight_orig`` * ``weight_mask``)
    into a plain ``weight`` in every pruned module, so what is quantized is the pruned weight;
    returns how many modules were folded."""
    from torch.nn.utils import prune

    n = 0
    for m in model.modules():
        if prune.is_pruned(m) and hasattr(m, "weight_orig"):
            prune.remove(m, "weight")
            n += 1
    return n


def _calibration_batches(workload: Workload) -> Iterator[torch.Tensor]:
    """Batches of the real training split (``CALIBRATION_SAMPLES`` samples), or of the
    synthetic data where the workload has none."""
    splits = workload._splits()  # the cached real splits (loading them once costs ~1 s)
    bs = max(1, min(workload.samples_per_step, 64))
    if splits is not None:
        x_all = splits[0][0]
        for i in range(0, min(len(x_all), CALIBRATION_SAMPLES), bs):
            yield x_all[i : i + bs].to(workload.device)
        return
    for x, _ in workload.make_batches(max(1, CALIBRATION_SAMPLES // bs)):
        yield x


def _lower_to_onednn(gm: torch.fx.GraphModule, example: torch.Tensor, dynamic: Any) -> Any:
    """oneDNN int8 kernels for a converted PT2E graph: transcribes torchao's
    ``lower_pt2e_quantized_to_x86`` (torchao/quantization/pt2e/lowering.py), with the batch
    dimension kept dynamic in its re-export, and that re-export non-strict (torchao's is
    strict, through dynamo): the input is already an exported ATen graph, so dynamo has nothing
    to add, and non-strict leaves no compiled frames or guards in dynamo's process-wide code
    caches (which only ``torch._dynamo.reset()`` would clear, for every model in the process)."""
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    decomp = torch.export.default_decompositions()
    for k in list(decomp.keys()):
        # Post-autograd: keep only the composite-implicit decompositions (as torchao does).
        if not torch._export.utils._is_cia_op(k):
            del decomp[k]
    with torch.no_grad():
        ep = torch.export.export(gm, (example,), dynamic_shapes=dynamic, strict=False)
        lowered: Any = ep.run_decompositions(decomp).module()
        del ep  # its state_dict and graph signature are not needed by the module
        # aten.t -> permute, as torchao's _node_replace: the qlinear patterns match permute.
        g = lowered.graph
        for node in list(g.nodes):
            if node.target == torch.ops.aten.t.default:
                with g.inserting_before(node):
                    perm = g.call_function(torch.ops.aten.permute.default, (node.args[0], [1, 0]))
                node.replace_all_uses_with(perm)
                g.erase_node(node)
        lowered.recompile()
        freezing_passes(lowered, (example,))
        constant_fold(lowered)
    return lowered


def _drop_unused_tensors(gm: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers no node reads: ``convert_pt2e`` and the freezing passes
    leave the original fp32 weights as attributes after folding them into int8 constants, and
    they would be counted (and kept in memory) otherwise."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name in used:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        owner._parameters.pop(leaf, None)
        owner._buffers.pop(leaf, None)


def _onednn_ops(gm: torch.fx.GraphModule) -> dict[str, int]:
    """oneDNN int8 ops by name, and ``reference`` for weights still dequantized to fp32 (a
    pattern the freezing passes did not match, e.g. a Linear on a 3-d input)."""
    out: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        target = str(n.target)
        if target.startswith("onednn."):
            key = target.split(".")[1]
        elif "dequantize_per_channel" in target:
            key = "reference"
        else:
            continue
        out[key] = out.get(key, 0) + 1
    return out


#: ``functools.cache`` functions of a module argument that PT2E's ``prepare`` and ``convert``
#: call (torchao/quantization/pt2e/prepare.py and convert.py, through torchao/utils.py and
#: torch/ao/quantization/fx/utils.py) with the exported and prepared modules.
_MODULE_CACHES = (
    ("torchao.utils", "_assert_and_get_unique_device"),
    ("torch.ao.quantization.fx.utils", "assert_and_get_unique_device"),
)


def _clear_build_caches() -> None:
    """Empty the process-wide caches the export / PT2E / lowering flow fills for one model.
    Each is a cache (a later call recomputes what it needs), and each held this model's state:

    - ``_MODULE_CACHES``: each keeps every module it was called with, and so the exported
      module, its graphs and the ORIGINAL fp32 Parameters it shares with the fp32 model, for
      the life of the process (measured on the MLP: its 32 MiB of fp32 weights were reachable
      from these two caches only);
    - ``torch.fx.experimental.proxy_tensor._FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT``: the last
      export trace's nodes, with their fake tensors, kept until the next trace clears it
      (``_ModuleStackTracer.trace``); export reads it only while that trace finishes;
    - the ``lru_cache`` methods of ``ShapeEnv`` (torch/fx/experimental/symbolic_shapes.py:
      ``lru_cache`` / ``_lru_cache`` on ``get_axioms``, ``size_hint``, ...; each exposes
      ``cache_clear``): a method cache keys on ``self``, so it keeps every export's
      ``ShapeEnv`` alive, with its guards, their stacks and its own fake-tensor dispatch
      cache;
    - ``FakeTensorMode.cache`` (torch/_subclasses/fake_tensor.py, ``cache_clear``): fake-tensor
      dispatch results keyed by this model's shapes;
    - ``PhiloxStateTracker`` (torch/_decomp/decompositions_for_rng.py): AOT autograd's
      ``record_state`` (torch/_functorch/_aot_autograd/graph_capture_wrappers.py) leaves the
      last trace's fake seed and offset in these class attributes, and through them that
      trace's ``FakeTensorMode`` and ``ShapeEnv``; ``reset`` puts fresh empty states back;
    - ``linecache`` (``clearcache``): the source files read to format the stack traces export
      records per node (about 4-6 MiB here), which ``_drop_graph_metadata`` drops.
    """
    import linecache

    from torch._decomp.decompositions_for_rng import PhiloxStateTracker
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental import proxy_tensor
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    for module, name in _MODULE_CACHES:
        clear = getattr(getattr(importlib.import_module(module), name, None), "cache_clear", None)
        if clear is not None:  # a version without the cache has nothing to clear
            clear()
    last_trace = getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", None)
    if isinstance(last_trace, dict):
        last_trace.clear()
    for attr in vars(ShapeEnv).values():
        clear = getattr(attr, "cache_clear", None)
        if callable(clear):
            clear()
    FakeTensorMode.cache_clear()
    PhiloxStateTracker.reset()
    linecache.clearcache()


def _drop_graph_metadata(gm: torch.fx.GraphModule) -> None:
    """Empty the final graph's metadata, and let go of the nodes the passes erased.

    Per node (torch/fx/node.py ``Node.meta``): ``val``, ``example_value`` and
    ``eager_input_vals`` hold fake tensors, which hold their ``FakeTensorMode`` and its
    ``ShapeEnv`` (symbols, guards, a stack summary each); ``from_node`` holds the provenance
    chain of every earlier graph (torch/fx/traceback.py ``NodeSource``). Per graph module
    (``gm.meta``): export's range constraints and name maps. Running the module needs none of
    it: ``recompile`` generated ``forward`` from the nodes' ops and arguments
    (torch/fx/graph_module.py), export's input check is the ``_guards_fn`` submodule (kept),
    and nothing in memlab reads ``meta``.

    ``Graph.erase_node`` leaves an erased node in the graph's name table
    (torch/fx/graph.py, ``_Namespace._obj_to_name``), metadata and all, and the freezing
    passes and constant folding erase most of the graph. ``copy.deepcopy`` of a graph
    (``Graph.__deepcopy__``: ``graph_copy`` of the live nodes, then the output and the
    codegen) holds the live nodes only; the ``graph`` setter recompiles ``forward`` from it."""
    for node in gm.graph.nodes:
        node.meta.clear()
    gm.graph = copy.deepcopy(gm.graph)
    gm.meta.clear()


def _int8_graph(
    workload_name: str, model: nn.Module, batches: list[torch.Tensor], lower: bool
) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """Export, prepare, calibrate, convert and (with ``lower``) lower ``model``; returns the
    final graph and what was done. The intermediates (the ExportedPrograms, the exported,
    prepared and converted modules) are locals here and in ``_lower_to_onednn``, so none
    outlives this call but the one returned."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    example = batches[0]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dynamic = ({0: batch},)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = torch.export.export(model, (example,), dynamic_shapes=dynamic).module()
    except Exception as e:  # torch.export raises many types; the message names the op
        raise KnobUnsupported(
            f"precision 'int8-static' needs torch.export of the {workload_name} model, which "
            f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}. Choose 'int8-weight' "
            "or 'int8' (dynamic)"
        ) from e
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)  # type: ignore[arg-type]
    del exported
    with torch.no_grad():
        for xb in batches:
            prepared(xb)
    converted = convert_pt2e(prepared)
    del prepared
    info: dict[str, Any] = {"kernels": "reference-qdq", "onednn_ops": {}, "lowering_error": None}
    if not lower:
        return converted, info
    try:
        lowered = _lower_to_onednn(converted, example, dynamic)
    except Exception as e:  # noqa: BLE001 - any lowering failure falls back, and is said
        info["lowering_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return converted, info
    info["onednn_ops"] = _onednn_ops(lowered)
    if not set(info["onednn_ops"]) - {"reference"}:
        return converted, info  # nothing matched: the Q/DQ graph is the honest one
    info["kernels"] = "onednn-int8"
    return lowered, info


def quantize_static_int8(workload: Workload, *, lower: bool = True) -> dict[str, Any]:
    """Replace ``workload.model`` by its static int8 graph (module docstring); returns what was
    done: ``kernels`` (``onednn-int8`` or ``reference-qdq``), the oneDNN op counts, the
    lowering error if any, the calibration source and sample count.

    Afterwards the process holds the int8 graph and no fp32 copy of the weights: the
    intermediates die with ``_int8_graph``, ``_clear_build_caches`` empties the caches that
    held the exported modules, ``_drop_graph_metadata`` the graph's fake tensors and
    provenance. What stays is loaded once per process, not per model (``BUILD_STATE_NOTE``)."""
    _need("torchao.quantization.pt2e.quantize_pt2e", "precision 'int8-static'")
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    model = workload.model.eval()
    sparse = [n for n, m in model.named_modules() if type(m).__name__ == "SparseLinear"]
    if sparse:
        raise KnobUnsupported(
            f"precision 'int8-static' cannot quantize CSR-stored layers ({len(sparse)} "
            "SparseLinear, e.g. " + sparse[0] + "): torch.export has no int8 rule for "
            "torch.sparse.mm. Choose sparse_storage 'mask' (pruned weights quantize) or "
            "precision 'int8-weight'"
        )
    shared = [n for n, m in model.named_modules() if type(m).__name__.startswith("Shared")]
    if shared:
        # A shared layer computes its weight from packed indices at every call: PT2E's
        # quantizer finds no stored weight attribute to observe and fails deep inside
        # ("Expected get_attr node"); the codebook is already the compression.
        raise KnobUnsupported(
            f"precision 'int8-static' cannot quantize weight-shared layers ({len(shared)}, "
            f"e.g. {shared[0]}): their weights are b-bit codebook indices, made at each call. "
            "Use compression 'shared' with precision 'fp32', or compression 'svd'/'none' with "
            "'int8-static'"
        )
    if workload.input_dtype is not None:
        raise KnobUnsupported("precision 'int8-static' quantizes fp32 weights only")
    fold_pruning(model)
    batches = list(_calibration_batches(workload))
    try:
        result, info = _int8_graph(workload.name, model, batches, lower)
    finally:  # a failed export or prepare must not leave the model in the caches either
        _clear_build_caches()
    info["calibration"] = "real digits (train split)" if workload.real_data else "synthetic data"
    info["calibration_samples"] = sum(len(b) for b in batches)
    _drop_unused_tensors(result)
    _drop_graph_metadata(result)
    allow_exported_model_train_eval(result)
    workload.model = result
    workload.blocks = []  # the graph has no blocks left to wrap
    return info


def _is_quantizable_linear(module: nn.Module, group: int | None) -> bool:
    if type(module) is not nn.Linear:
        return False
    return group is None or module.in_features % group == 0


def quantize_weight_only(workload: Workload, bits: int) -> dict[str, Any]:
    """Weight-only int8 (``bits=8``) or int4 (``bits=4``) of every ``nn.Linear`` through torchao
    ``quantize_`` (module docstring); returns the quantized and skipped layer names."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    precision = f"int{bits}-weight"
    tq = _need("torchao.quantization", f"precision {precision!r}")
    model = workload.model.eval()
    fold_pruning(model)
    group = INT4_GROUP_SIZE if bits == 4 else None
    quantized = [n for n, m in model.named_modules() if _is_quantizable_linear(m, group)]
    skipped = [
        n
        for n, m in model.named_modules()
        if n not in quantized and (isinstance(m, nn.Linear) or type(m).__name__ == "SparseLinear")
    ]
    if bits == 8:
        config = tq.Int8WeightOnlyConfig()
    else:
        from torchao.quantization.granularity import PerGroup

        int4 = getattr(torch, "int4")  # noqa: B009 - torch >= 2.5; absent from the stubs
        config = tq.IntxWeightOnlyConfig(weight_dtype=int4, granularity=PerGroup(group))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.quantize_(model, config, filter_fn=lambda m, _: _is_quantizable_linear(m, group))
    return {"quantized": quantized, "skipped": skipped}


def describe(workload: Workload, precision: str, info: dict[str, Any]) -> str:
    """The note for ``workload.notes``: what was quantized, what stayed fp32, how it computes."""
    by = param_bytes_by_dtype(workload.model)
    low = sum(v for k, v in by.items() if k in ("int8", "uint8", "int4"))
    other = sum(by.values()) - low
    if precision == "int8-static":
        if info["kernels"] == "onednn-int8":
            ops = ", ".join(
                f"{v} {k}" for k, v in sorted(info["onednn_ops"].items()) if k != "reference"
            )
            ref = info["onednn_ops"].get("reference", 0)
            rest = (
                f", {ref} weights still dequantized to fp32 per request (patterns the "
                "oneDNN lowering does not match, such as Linear layers on 3-d inputs)"
                if ref
                else ""
            )
            how = (
                f"int8 arithmetic in oneDNN kernels ({ops}){rest}, run eagerly as an FX graph; "
                "oneDNN packs the int8 weights into opaque tensors the tensor account cannot "
                "see (counted here by their int8 size; footprint() measures them from RSS)"
            )
        else:
            why = f" (lowering failed: {info['lowering_error']})" if info["lowering_error"] else ""
            how = (
                "reference Q/DQ graph: weights stored int8, each op dequantizes to fp32, "
                f"computes in fp32 and quantizes its output{why}"
            )
        return (
            f"int8-static: convolutions and Linear layers quantized (per-channel int8 weights, "
            f"uint8 activations calibrated on {info['calibration_samples']} samples of "
            f"{info['calibration']}); {how}; {low} bytes int8, {other} bytes of other tensors "
            f"(folded biases, scales, zero points, norms) stay in their dtype; {BUILD_STATE_NOTE}"
        )
    bits = 8 if precision == "int8-weight" else 4
    stored = (
        "int8 per-row weights (Int8WeightOnlyConfig)"
        if bits == 8
        else f"int4 values in groups of {INT4_GROUP_SIZE}, stored one per int8 byte "
        "(IntxUnpackedToInt8Tensor: torchao 0.18's packed int4 layouts need CUDA or mslk)"
    )
    skipped = info["skipped"]
    left = f"; fp32 Linear layers left: {', '.join(skipped)}" if skipped else ""
    return (
        f"{precision}: {len(info['quantized'])} Linear layers quantized to {stored}; "
        "activations and arithmetic stay fp32 (each matmul dequantizes its weight); "
        f"convolutions, norms, biases and the quantization scales take {other} bytes in "
        f"other dtypes{left}"
    )


# -- the packed weights' real cost: RSS in a fresh process per precision -----------------------
class Footprint(TypedDict):
    """What one precision costs in a fresh process (plain data: ints, floats, strings, so it
    crosses to the notebook kernel without torch). RSS is Linux ``/proc/self/status``
    (``memlab/tracking/procmem.py``); ``rss_*`` deltas are bytes."""

    precision: str
    workload: str
    #: Bytes the tensor account sees in the model, by dtype (``param_bytes_by_dtype``).
    model_bytes: dict[str, int]
    #: RSS added by building the workload and applying its knobs (quantization included).
    rss_build: int
    #: RSS added by the first request (lazy allocations: oneDNN's caches, scratch, ...).
    rss_first_request: int
    #: Peak RSS over build + first request, above the process's RSS after importing torch.
    rss_peak: int
    #: RSS after the request above that starting point: what stays.
    rss_after: int
    note: str


#: The precisions whose knob imports the quantization machinery (torchao, torch.export,
#: inductor's freezing passes): about 100+ MiB of code and tables in the process.
MACHINERY_PRECISIONS = ("int8-static", "int8-weight", "int4-weight")


def preload() -> None:
    """Load, once per process, what the quantization knobs load on first use, so that a
    reading of RSS taken afterwards counts it as runtime, not as the cost of one model
    (``footprint``, and a run under a device profile, whose baseline is read after this):
    torchao's PT2E flow, torch.export's tracer, inductor's freezing passes with their pattern
    tables (``lazy_init``, torch/_inductor/fx_passes/freezing_patterns.py), and scikit-learn's
    data sets module, which ``int8-static``'s calibration batches come from (the real digits,
    ``memlab/workloads/data.py::digits``). Measured sizes: ``BUILD_STATE_NOTE``. A missing
    torchao or scikit-learn is left to the knob to report."""
    for module in (
        "torch.export._trace",
        "torch._inductor.freezing",
        "torchao.quantization.pt2e.quantize_pt2e",
        "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer",
        "sklearn.datasets",
    ):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    from torch._inductor.fx_passes.freezing_patterns import lazy_init

    lazy_init()


def _footprint_child(exp: Experiment) -> Footprint:
    """In a fresh process: RSS around building ``exp`` (its knobs included) and one request."""
    import gc

    from memlab.knobs.build import build_experiment
    from memlab.tracking.procmem import read_process_memory, reset_peak_rss

    def rss() -> int:
        return int(read_process_memory()["rss"] or 0)

    # The quantization machinery (torchao, torch.export, inductor's freezing passes) is
    # imported before the baseline for the precisions that use it, so its ~100+ MiB of code
    # and tables are not charged to the model; the others never import it, so their baseline
    # is the same without it (and their child starts seconds sooner). What the exporter keeps
    # after tracing is still charged to ``rss_build``; ``rss_first_request`` is the request's
    # own lazy allocations.
    if exp.precision in MACHINERY_PRECISIONS:
        preload()
    gc.collect()
    reset_peak_rss()
    base = rss()
    w = build_experiment(exp)
    x = next(w.make_batches(1))[0]
    built = rss()
    w.infer(x)
    after = rss()
    hwm = read_process_memory()["rss_hwm"]
    return {
        "precision": exp.precision,
        "workload": w.name,
        "model_bytes": param_bytes_by_dtype(w.model),
        "rss_build": built - base,
        "rss_first_request": after - built,
        "rss_peak": (int(hwm) - base) if hwm is not None else after - base,
        "rss_after": after - base,
        "note": "; ".join(w.notes),
    }


def footprint(exp: Experiment, precisions: Sequence[str] = ("fp32",)) -> list[Footprint]:
    """For each precision, ``exp`` with that precision built and run once in a FRESH process
    (a subprocess: glibc keeps freed memory, so a reused process would carry the last one's
    RSS), its RSS deltas beside the tensor account's model bytes. oneDNN's and fbgemm's packed
    weights live outside PyTorch's allocator; RSS is where their cost shows."""
    import base64
    import pickle
    import subprocess
    import sys

    out: list[Footprint] = []
    for precision in precisions:
        one = exp.replace(precision=precision)  # validates the precision
        blob = base64.b64encode(pickle.dumps(one)).decode()
        code = (
            "import base64, json, pickle, sys; import torch; "
            "from memlab.knobs.quantization import _footprint_child; "
            f"r = _footprint_child(pickle.loads(base64.b64decode({blob!r}))); "
            "sys.stdout.write('\\nFOOTPRINT ' + json.dumps(r) + '\\n')"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
        )
        lines = [s for s in done.stdout.splitlines() if s.startswith("FOOTPRINT ")]
        if done.returncode != 0 or not lines:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"footprint of precision {precision!r} failed: {tail[0]}")
        out.append(json.loads(lines[-1].removeprefix("FOOTPRINT ")))
    return out


# -- what the device would allocate: the ExecuTorch program -------------------------------------
class EdgeProgram(TypedDict):
    """An ExecuTorch program of the workload's model (plain data)."""

    workload: str
    quantized: bool
    batch_size: int
    #: Bytes of the serialized ``.pte`` program (weights included).
    pte_bytes: int
    #: The planned arena: ``execution_plan[0].non_const_buffer_sizes`` summed (index 0 is
    #: reserved and 0; the rest are the memory planner's buffers). Tensors inside an XNNPACK
    #: delegate are XNNPACK's own workspace, not in this plan: with the whole model delegated
    #: the arena holds the delegate's inputs and outputs only.
    arena_bytes: int
    buffer_sizes: list[int]
    #: Ops delegated to XNNPACK vs left to ExecuTorch's portable kernels.
    delegated: int
    #: Median latency of ExecuTorch's Python runtime over ``runs`` executions (seconds; None
    #: where the runtime is not available); measured here, not on the device.
    latency_s: float | None
    runs: int
    max_abs_diff: float | None


def executorch_program(
    exp: Experiment, *, quantize: bool = True, runs: int = 5, calibrate: bool = True
) -> EdgeProgram:
    """Export ``exp``'s model (fp32 weights, as built) through ExecuTorch: ``torch.export``, with
    ``quantize`` the XNNPACK quantizer's static int8 (PT2E, calibrated like ``int8-static``),
    ``to_edge_transform_and_lower`` with the XNNPACK partitioner, ``to_executorch``. Returns
    the ``.pte`` size and the planned arena (what the device would allocate), and, where
    ExecuTorch's Python runtime loads, its median latency here."""
    import statistics
    import time

    import torch

    _need("executorch.exir", "executorch_program")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from memlab.workloads import build_workload

    w = build_workload(exp.replace(precision="fp32", mode="inference"), "cpu")
    model = w.model.eval()
    fold_pruning(model)
    x = next(w.make_batches(1))[0]
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
        if quantize:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer()
            quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(exported.module(), quantizer)  # type: ignore[arg-type]
            for xb in _calibration_batches(w) if calibrate else [x]:
                if len(xb) == len(x):  # the program's batch is static
                    prepared(xb)
            model = convert_pt2e(prepared)
            exported = torch.export.export(model, (x,))
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        prog = edge.to_executorch()
    sizes = [int(s) for s in prog.executorch_program.execution_plan[0].non_const_buffer_sizes]
    delegated = sum(
        1
        for n in prog.exported_program().graph_module.graph.nodes
        if n.op == "call_function" and "executorch_call_delegate" in str(n.target)
    )
    latency: float | None = None
    diff: float | None = None
    try:
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(prog.buffer).load_method("forward")
        times = []
        for _ in range(max(1, runs)):
            t0 = time.perf_counter()
            got = method.execute((x,))[0]
            times.append(time.perf_counter() - t0)
        latency = statistics.median(times)
        with torch.no_grad():
            diff = float((got - w.model(x)).abs().max())
    except (ImportError, RuntimeError):  # no runtime in this build: size and arena still hold
        pass
    return {
        "workload": w.name,
        "quantized": quantize,
        "batch_size": len(x),
        "pte_bytes": len(prog.buffer),
        "arena_bytes": sum(sizes),
        "buffer_sizes": sizes,
        "delegated": delegated,
        "latency_s": latency,
        "runs": runs,
        "max_abs_diff": diff,
    }
