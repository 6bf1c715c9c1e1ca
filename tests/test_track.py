"""memlab.track against independent truths: known tensor sizes, the profiler's allocator events,
and the bytes of parameters, gradients and optimizer state. Every peak is taken after a warm-up.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import memlab  # noqa: E402
from memlab.timeline import CATEGORIES  # noqa: E402

from .conftest import profiler_peak  # noqa: E402

TOLERANCE = 0.01  # the bar: within 1% of the allocator-level truth


def nbytes(tensors) -> int:  # type: ignore[no-untyped-def]
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


# -- models memlab has never seen -----------------------------------------------------------
def mlp() -> tuple[nn.Module, tuple]:  # type: ignore[type-arg]
    m = nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 10)
    )
    return m, (torch.randn(64, 256), torch.randint(0, 10, (64,)))


def small_cnn() -> tuple[nn.Module, tuple]:  # type: ignore[type-arg]
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 16, 10),
    )
    return m, (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 100)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.encoder(self.embed(x))).mean(1)


def transformer() -> tuple[nn.Module, tuple]:  # type: ignore[type-arg]
    return Encoder(), (torch.randint(0, 100, (8, 32)), torch.randint(0, 100, (8,)))


MODELS = {"mlp": mlp, "cnn": small_cnn, "transformer": transformer}


def train_step(model, opt, x, y) -> None:  # type: ignore[no-untyped-def]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def measure_with_truth(model, step, *, optimizer=None, inputs=(), guard=None):  # type: ignore[no-untyped-def]
    """Run ``step`` once inside memlab.track and torch.profiler together; return memlab's
    result and the profiler's truth (bytes counted at entry plus the highest rise of its
    allocator events)."""
    import contextlib

    def tracked() -> object:
        with (
            (guard or contextlib.nullcontext)(),
            memlab.track(model, optimizer=optimizer, inputs=inputs) as rec,
        ):
            step()
        return rec

    rise, rec = profiler_peak(tracked)
    r = rec.result  # type: ignore[attr-defined]
    return r, sum(r.entry_by_category.values()) + rise


# -- exact bytes on tensors of known size --------------------------------------------------
def test_known_sizes_exact() -> None:
    keep = torch.empty(1000, dtype=torch.float32)  # 4000 B, alive at entry
    with memlab.track(inputs=(keep,)) as rec:
        a = torch.empty(250_000, dtype=torch.float64)  # 2,000,000 B, freed inside
        del a
        b = torch.empty(3000, dtype=torch.int16)  # 6,000 B, alive at exit
    r = rec.result
    assert r is not None
    assert r.entry_by_category["inputs"] == 4000
    assert r.peak_bytes == 4000 + 2_000_000
    assert r.peak_by_category["temporaries"] == 2_000_000
    assert r.end_by_category["other"] == 6000
    assert r.end_by_category["inputs"] == 4000
    assert sum(r.peak_by_category.values()) == r.peak_bytes
    assert r.timeline.total[-1] == 10_000
    del b


def test_free_of_entry_storage_is_seen() -> None:
    x = torch.empty(10_000, dtype=torch.float32)  # allocated before any tracking
    with memlab.track(inputs=(x,)) as rec:
        del x
        y = torch.empty(5_000, dtype=torch.float32)
    r = rec.result
    assert r is not None
    assert r.peak_bytes == 40_000  # the free came first, so the peak stays at entry
    assert r.end_by_category["inputs"] == 0
    assert r.end_by_category["other"] == 20_000
    del y


# -- peak against the profiler's allocator events ------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_peak_matches_profiler_truth(name: str) -> None:
    model, (x, y) = MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # warm-up: optimizer state exists, lazy allocations are done
        train_step(model, opt, x, y)

    r, truth = measure_with_truth(
        model, lambda: train_step(model, opt, x, y), optimizer=opt, inputs=(x, y)
    )
    assert abs(r.peak_bytes - truth) <= TOLERANCE * truth, (r.peak_bytes, truth)
    # 100% categorized: the categories sum to the peak, none negative
    assert sum(r.peak_by_category.values()) == r.peak_bytes
    assert all(v >= 0 for v in r.peak_by_category.values())
    # entry state is exactly the model, the optimizer state and the inputs
    params = list(model.parameters()) + list(model.buffers())
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    assert r.entry_by_category["parameters"] == nbytes(params)
    assert r.entry_by_category["optimizer_state"] == nbytes(state)
    assert r.entry_by_category["inputs"] == nbytes([x, y])
    assert set(r.peak_by_phase) >= {"forward", "backward", "optimizer"}


def test_op_internal_buffers_are_counted() -> None:
    """Convolution backward allocates buffers no dispatch-level tracker sees (the trap); the
    tracker counts them, byte for byte with the profiler's allocator events of the same pass.
    (Two separate passes may differ: oneDNN's per-thread scratch depends on scheduling.)"""
    model = nn.Sequential(nn.Conv2d(8, 16, 5), nn.ReLU(), nn.Conv2d(16, 16, 5))
    x = torch.randn(4, 8, 40, 40)
    model(x).sum().backward()
    model.zero_grad(set_to_none=True)

    r, truth = measure_with_truth(model, lambda: model(x).sum().backward(), inputs=(x,))
    assert abs(r.peak_bytes - truth) <= TOLERANCE * truth
    # op-internal buffers: what lived and died inside the ops, beside the outputs and grads
    assert r.peak_by_category["temporaries"] > 0


# -- category identities -------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=False),
    ],
    ids=["sgd-momentum", "adam", "adamw-foreach", "adamw-forloop"],
)
def test_categories_equal_tensor_bytes_after_step(make_opt) -> None:  # type: ignore[no-untyped-def]
    model, (x, y) = mlp()
    opt = make_opt(model.parameters())
    train_step(model, opt, x, y)
    with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
        F.cross_entropy(model(x), y).backward()
        opt.step()  # no zero_grad: gradients stay
    r = rec.result
    assert r is not None
    params = list(model.parameters()) + list(model.buffers())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    assert r.end_by_category["parameters"] == nbytes(params)
    assert r.end_by_category["gradients"] == nbytes(grads)
    assert r.end_by_category["optimizer_state"] == nbytes(state)
    assert sum(r.peak_by_category.values()) == r.peak_bytes


def test_first_step_creates_optimizer_state() -> None:
    model, (x, y) = mlp()
    opt = torch.optim.Adam(model.parameters())
    with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
        train_step(model, opt, x, y)
    r = rec.result
    assert r is not None
    p = nbytes(model.parameters())
    assert r.entry_by_category["optimizer_state"] == 0
    # Adam keeps exp_avg and exp_avg_sq (2x params) plus a 4-byte step per parameter
    assert r.end_by_category["optimizer_state"] == 2 * p + 4 * len(list(model.parameters()))


def test_tied_weights_counted_once() -> None:
    emb = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    x = torch.randint(0, 50, (4, 6))
    with memlab.track(model, inputs=(x,)) as rec:
        model(x).sum().backward()
    r = rec.result
    assert r is not None
    assert r.entry_by_category["parameters"] == 50 * 16 * 4
    assert r.end_by_category["gradients"] == 50 * 16 * 4


def test_pruned_weights_are_parameters_every_step() -> None:
    """torch's prune keeps weight_orig and weight_mask and recomputes weight before each forward:
    three dense copies of the model state, and never an activation."""
    from torch.nn.utils import prune

    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    for layer in (model[0], model[2]):
        prune.l1_unstructured(layer, "weight", amount=0.9)
    x, y = torch.randn(32, 256), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, opt, x, y)
    with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
        for _ in range(3):
            train_step(model, opt, x, y)
    r = rec.result
    assert r is not None
    weights, biases = 256 * 256 + 256 * 10, 256 + 10
    assert r.peak_by_category["parameters"] == (3 * weights + biases) * 4
    assert r.end_by_category["parameters"] == (3 * weights + biases) * 4
    assert r.peak_by_category["activations"] <= 64  # the loss scalar at most


def test_activation_bytes_per_module_exact() -> None:
    model = nn.Sequential(nn.Linear(64, 64, bias=False), nn.ReLU())
    x = torch.randn(8, 64)
    model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    with memlab.track(model, inputs=(x,)) as rec:
        out = model(x)
        loss = out.sum()
        loss.backward()
    r = rec.result
    assert r is not None
    # ReLU saves its output (8x64 fp32); the Linear output is freed in forward (a temporary)
    assert r.activations_by_module["1"] == 8 * 64 * 4
    assert r.activations_by_module.get("0", 0) == 0
    del out, loss


def test_user_phase_and_inputs() -> None:
    model, _ = mlp()
    with memlab.track(model) as rec:
        with rec.phase("data"):
            x = torch.randn(64, 256)
        with torch.no_grad():
            model(x)
    r = rec.result
    assert r is not None
    assert r.end_by_category["inputs"] == 64 * 256 * 4
    assert "data" in r.peak_by_phase and "inference" in r.peak_by_phase
    with pytest.raises(ValueError, match="phase must be one of"):
        with rec.phase("warmup"):
            pass


# -- any model, any style --------------------------------------------------------------------
class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return 2 * x * g


class Odd(nn.Module):
    """In-place ops, a custom autograd Function and a checkpointed block in one model."""

    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.a = nn.Linear(128, 256)
        self.b = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh())
        self.c = nn.Linear(256, 10)
        self.checkpointed = checkpointed

    def forward(self, x):  # type: ignore[no-untyped-def]
        h = self.a(x)
        h.relu_()
        h = Square.apply(h)
        if self.checkpointed:
            h = torch.utils.checkpoint.checkpoint(self.b, h, use_reentrant=False)
        else:
            h = self.b(h)
        return self.c(h)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_any_model_matches_truth(checkpointed: bool) -> None:
    model = Odd(checkpointed)
    x, y = torch.randn(256, 128), torch.randint(0, 10, (256,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt, x, y)

    r, truth = measure_with_truth(
        model, lambda: train_step(model, opt, x, y), optimizer=opt, inputs=(x, y)
    )
    assert abs(r.peak_bytes - truth) <= TOLERANCE * truth
    assert sum(r.peak_by_category.values()) == r.peak_bytes


def test_checkpointing_lowers_activations() -> None:
    x, y = torch.randn(256, 128), torch.randint(0, 10, (256,))
    acts = {}
    for ck in (False, True):
        torch.manual_seed(0)
        model = Odd(ck)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_step(model, opt, x, y)
        with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
            train_step(model, opt, x, y)
        assert rec.result is not None
        acts[ck] = sum(rec.result.activations_by_module.values())
    # Inside the checkpointed block only the first Tanh's output (256x256 fp32) was saved for
    # backward (Linear saves its input, Tanh its output, which is the next Linear's input, and
    # the last output leaves the block). Checkpointing keeps the CPU RNG state instead (~5 KB).
    saved = 256 * 256 * 4
    assert saved - 8 * 1024 <= acts[False] - acts[True] <= saved


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode"])
def test_eval_only_without_optimizer(ctx: str) -> None:
    model, (x, _) = small_cnn()
    model.eval()
    guard = torch.no_grad if ctx == "no_grad" else torch.inference_mode
    with guard():
        model(x)

    r, truth = measure_with_truth(model, lambda: model(x), inputs=(x,), guard=guard)
    assert abs(r.peak_bytes - truth) <= TOLERANCE * truth
    assert r.peak_phase == "inference"
    assert r.peak_by_category["gradients"] == 0


def test_repeated_and_nested_blocks_agree() -> None:
    model, (x, y) = small_cnn()
    opt = torch.optim.Adam(model.parameters())
    train_step(model, opt, x, y)
    peaks = []
    for _ in range(2):
        with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
            train_step(model, opt, x, y)
        assert rec.result is not None
        peaks.append(rec.result.peak_bytes)
    with memlab.track(model, optimizer=opt, inputs=(x, y)) as outer:
        with memlab.track(model, optimizer=opt, inputs=(x, y)) as inner:
            train_step(model, opt, x, y)
    assert inner.result is not None and outer.result is not None
    assert peaks[0] == peaks[1]
    assert inner.result.peak_bytes == peaks[0]
    assert outer.result.peak_bytes == peaks[0]
    assert inner.result.peak_by_category == outer.result.peak_by_category


def test_error_inside_block_is_reported_and_hooks_removed() -> None:
    model, (x, y) = mlp()
    with pytest.raises(RuntimeError):
        with memlab.track(model, inputs=(x,)) as rec:
            model(torch.randn(3, 7))  # wrong shape
    assert rec.result is not None and rec.result.status == "error"
    assert "mat1 and mat2" in (rec.result.error or "")
    assert not model._forward_pre_hooks and not model._forward_hooks
    from memlab.tracking import hooks

    # the backward patch and the optimizer hooks are gone: torch's own functions again
    assert not hooks._patched and not hooks._global_handles and not hooks.active()
    assert not hasattr(torch.autograd.backward, "__wrapped__")
    assert not hasattr(torch.autograd.grad, "__wrapped__")
    assert not hooks._models


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        memlab.track("resnet")
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        memlab.track(nn.Linear(2, 2), optimizer=3)
    with pytest.raises(ValueError, match="sample_interval_s"):
        memlab.track(sample_interval_s=0)


def test_budget_stops_at_the_allocation_that_does_not_fit() -> None:
    model, (x, y) = mlp()
    opt = torch.optim.Adam(model.parameters())
    train_step(model, opt, x, y)
    with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
        train_step(model, opt, x, y)
    assert rec.result is not None
    peak = rec.result.peak_bytes
    # a budget 10% under the measured peak must stop the step; one at the peak must not
    with pytest.raises(torch.OutOfMemoryError, match="memlab budget exceeded"):
        with memlab.track(model, optimizer=opt, inputs=(x, y), budget_bytes=int(peak * 0.9)) as r2:
            train_step(model, opt, x, y)
    assert r2.result is not None and r2.result.status == "oom"
    assert r2.result.peak_bytes <= int(peak * 0.9)
    opt.zero_grad()
    with memlab.track(model, optimizer=opt, inputs=(x, y), budget_bytes=peak) as r3:
        train_step(model, opt, x, y)
    assert r3.result is not None and r3.result.status == "ok" and r3.result.peak_bytes == peak
    # below what is live at entry: refused at once, and nothing is left hooked
    with pytest.raises(torch.OutOfMemoryError, match="live at entry"):
        with memlab.track(model, optimizer=opt, inputs=(x, y), budget_bytes=1000):
            pass
    assert not model._forward_pre_hooks
    torch.ones(10_000_000)  # no limit left behind
    with pytest.raises(ValueError, match="budget_bytes must be a positive int"):
        memlab.track(budget_bytes=-5)


# -- process memory ------------------------------------------------------------------------
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="Linux /proc")
def test_process_memory_sees_a_big_tensor() -> None:
    """In a fresh process: in a long-lived one glibc may hand back memory it kept from earlier
    tests, and RSS would not move (ARCHITECTURE.md, "Known traps")."""
    import json
    import subprocess
    import sys

    code = (
        "import json, torch, memlab\n"
        "with memlab.track(sample_interval_s=0.005) as rec:\n"
        "    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched\n"
        "    del big\n"
        "r = rec.result\n"
        "print(json.dumps({'peak': r.peak_bytes, 'hwm': r.rss_hwm_bytes,\n"
        "    'anon': r.rss_anon_peak_bytes, 'file': r.rss_file_peak_bytes,\n"
        "    'rss0': int(r.process.parts['rss'][0]),\n"
        "    'anon0': int(r.process.parts['rss_anon'][0])}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert d["peak"] == 64 * 2**20
    assert d["anon"] is not None and d["file"] is not None and d["anon0"] > 0
    # the high-water mark was reset at entry, so it shows this block's 64 MiB
    assert d["hwm"] - d["rss0"] >= 60 * 2**20


def test_live_samples_stream_tensor_bytes() -> None:
    seen: list[int] = []
    with memlab.track(
        sample_interval_s=0.002, on_sample=lambda t, s: seen.append(s["tensor_bytes"])
    ):
        a = torch.ones(2**20)
        import time

        time.sleep(0.05)
        del a
    assert max(seen) == 4 * 2**20
    assert seen[-1] == 0


def test_categories_vocabulary() -> None:
    assert CATEGORIES == (
        "parameters",
        "gradients",
        "optimizer_state",
        "activations",
        "inputs",
        "temporaries",
        "other",
    )


# -- CUDA ------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(MODELS))
def test_cuda_peak_matches_allocator(name: str) -> None:
    model, (x, y) = MODELS[name]()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    opt = torch.optim.Adam(model.parameters())
    for _ in range(2):
        train_step(model, opt, x, y)
    torch.cuda.synchronize()
    with memlab.track(model, optimizer=opt, inputs=(x, y)) as rec:
        train_step(model, opt, x, y)
    r = rec.result
    assert r is not None and r.cuda is not None
    # the allocator's own peak after a reset, counted from what memlab counts at entry
    truth = r.cuda["peak"] - r.cuda["allocated_at_entry"] + sum(r.entry_by_category.values())
    assert abs(r.peak_bytes - truth) <= TOLERANCE * truth, (r.peak_bytes, truth, r.cuda)
    assert sum(r.peak_by_category.values()) == r.peak_bytes
    assert r.device.startswith("cuda")


def test_cpu_model_never_initializes_cuda() -> None:
    """In a fresh process (other tests here may have used CUDA already)."""
    import subprocess
    import sys

    code = (
        "import torch, memlab\n"
        "m = torch.nn.Linear(8, 8); x = torch.randn(2, 8)\n"
        "with memlab.track(m, inputs=(x,)):\n"
        "    m(x).sum().backward()\n"
        "print(torch.cuda.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
