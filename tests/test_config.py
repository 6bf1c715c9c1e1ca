"""Experiment validation: every field rejects bad values with a message naming field and value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memlab.config import (
    ALLOCATIONS,
    CHECKPOINTING,
    COMPRESSIONS,
    DATA_SOURCES,
    DEVICES,
    FIELDS,
    FUSES,
    MAX_SPARSITY,
    MEMORY_FIELDS,
    MODES,
    OFFLOADS,
    PRECISIONS,
    PROFILE_NAMES,
    QUANTIZED,
    SPARSE_STORAGES,
    WEIGHTS,
    WORKLOADS,
    ConfigError,
    Experiment,
    FieldSpec,
    parse_bytes,
)

from .experiments import every_field_changed

ROOT = Path(__file__).resolve().parents[1]


def user_factory(exp: Experiment, device: str) -> Any:
    """A module-level user factory (what to_dict can name and from_dict can load again)."""
    raise NotImplementedError


def test_defaults_are_valid_and_sensible() -> None:
    e = Experiment()
    assert e.workload in WORKLOADS and e.mode == "train" and e.precision == "fp32"
    assert e.batch_size > 0 and e.steps > 0 and e.warmup >= 0 and e.data_size >= e.batch_size
    assert e.checkpointing == "off" and e.sparsity == 0.0 and e.data == "ram"
    assert e.device == "auto" and e.budget_bytes is None


def test_frozen() -> None:
    e = Experiment()
    with pytest.raises(AttributeError):
        e.batch_size = 4  # type: ignore[misc]


# (field, bad value, words the message must contain besides the field name)
BAD: list[tuple[str, Any, str]] = [
    ("workload", "resnet", "'mlp', 'cnn', 'transformer'"),
    ("workload", 3, "callable"),
    ("mode", "eval", "'train', 'inference'"),
    ("batch_size", -3, "positive int"),
    ("batch_size", 0, "positive int"),
    ("batch_size", 2.0, "positive int"),
    ("batch_size", True, "positive int"),
    ("precision", "fp16", "'amp-fp16'"),
    ("checkpointing", "on", "'every-block'"),
    ("checkpointing", 1, "'off'"),
    ("sparsity", 1.0, "0.99"),
    ("sparsity", -0.1, "0.99"),
    ("sparsity", "0.5", "0.99"),
    ("sparsity", float("nan"), "0.99"),
    ("sparse_storage", "csr", "'mask', 'sparse'"),
    ("allocation", "static", "'dynamic', 'preallocated', 'lazy'"),
    ("inplace", "yes", "True or False"),
    ("fuse", "jit", "'none', 'fold', 'compile'"),
    ("compression", "prune", "'none', 'svd', 'shared'"),
    ("rank", 0, "positive int"),
    ("rank", 2.5, "positive int"),
    ("codebook_bits", 9, "1 <= codebook_bits <= 8"),
    ("codebook_bits", 0, "1 <= codebook_bits <= 8"),
    ("profile", "rpi-5", "'rpi-zero-2w'"),
    ("offload_activations", "gpu", "'off', 'cpu', 'disk', 'disk-compressed'"),
    ("weights", "mmap", "'resident', 'streamed'"),
    ("profile", None, "'none'"),
    ("data", "disk", "'ram', 'memmap'"),
    ("num_workers", -1, ">= 0"),
    ("num_workers", 1.5, ">= 0"),
    ("pin_memory", "yes", "True or False"),
    ("pin_memory", 1, "True or False"),
    ("prefetch_factor", 0, "positive int"),
    ("data_size", 0, "positive int"),
    ("steps", 0, "positive int"),
    ("steps", "5", "positive int"),
    ("warmup", -1, ">= 0"),
    ("device", "gpu", "'auto', 'cpu', 'cuda'"),
    ("budget_bytes", -5, "positive"),
    ("budget_bytes", "lots", "512MB"),
    ("budget_bytes", 0, "positive"),
    ("seed", 1.5, "int"),
    ("seed", None, "int"),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_value_names_field_value_and_rule(field: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        Experiment(**{field: value})
    msg = str(ei.value)
    assert msg.startswith(field), msg
    assert repr(value) in msg or str(value) in msg, msg
    assert words in msg, msg
    assert isinstance(ei.value, ValueError)


def test_example_message_from_the_issue() -> None:
    with pytest.raises(ConfigError, match=r"^batch_size must be a positive int, got -3$"):
        Experiment(batch_size=-3)


def test_every_field_has_a_bad_value_test() -> None:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(Experiment) if f.init}
    assert fields <= {f for f, _, _ in BAD}, fields - {f for f, _, _ in BAD}


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("workload", WORKLOADS),
        ("mode", MODES),
        ("checkpointing", CHECKPOINTING),
        ("sparse_storage", SPARSE_STORAGES),
        ("data", DATA_SOURCES),
        ("device", DEVICES),
    ],
)
def test_every_allowed_choice_is_accepted(field: str, values: tuple[str, ...]) -> None:
    for v in values:
        assert getattr(Experiment(**{field: v}), field) == v


def test_precisions_and_the_int8_rule() -> None:
    for p in PRECISIONS:
        if p not in QUANTIZED:
            assert Experiment(precision=p).precision == p
    assert set(QUANTIZED) < set(PRECISIONS)
    for q in QUANTIZED:
        assert Experiment(precision=q, mode="inference").precision == q
        with pytest.raises(ConfigError, match=rf"{q}.*inference.*got mode 'train'"):
            Experiment(precision=q, mode="train")


def test_shared_compression_is_for_inference_and_svd_trains() -> None:
    assert Experiment(compression="svd", rank=4).rank == 4
    assert Experiment(compression="shared", mode="inference").codebook_bits == 4
    with pytest.raises(ConfigError, match=r"compression 'shared'.*inference.*got mode 'train'"):
        Experiment(compression="shared")


def test_offload_is_for_training() -> None:
    assert Experiment(offload_activations="disk").offload_activations == "disk"
    with pytest.raises(ConfigError, match=r"offload_activations 'disk'.*train.*got mode"):
        Experiment(offload_activations="disk", mode="inference")


def test_a_profile_sets_the_budget_unless_one_is_given() -> None:
    from memlab.devices import PROFILES

    assert Experiment().effective_budget_bytes is None
    pi = Experiment(profile="rpi-4-2gb")
    assert pi.budget_bytes is None  # the field keeps what the user gave
    assert pi.effective_budget_bytes == PROFILES["rpi-4-2gb"].budget_bytes
    assert Experiment(profile="rpi-4-2gb", budget_bytes="100MB").effective_budget_bytes == 10**8
    assert Experiment.from_dict(pi.to_dict()) == pi


def test_data_size_must_hold_a_batch() -> None:
    with pytest.raises(ConfigError, match=r"^data_size must be at least batch_size \(64\).*32$"):
        Experiment(batch_size=64, data_size=32)


def test_sparsity_bounds_and_int_accepted() -> None:
    assert Experiment(sparsity=0).sparsity == 0.0
    assert isinstance(Experiment(sparsity=0).sparsity, float)
    assert Experiment(sparsity=0.99).sparsity == 0.99


def test_budget_accepts_strings() -> None:
    assert Experiment(budget_bytes="512MB").budget_bytes == 512 * 10**6
    assert Experiment(budget_bytes=2**20).budget_bytes == 2**20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512_000_000),
        ("2GB", 2_000_000_000),
        ("1.5GiB", 1_610_612_736),
        ("64 MiB", 64 * 2**20),
        ("10kb", 10_000),
        ("4096", 4096),
        ("100B", 100),
        (12345, 12345),
    ],
)
def test_parse_bytes(text: Any, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "junk", ["", "MB", "1.5.2GB", "12XB", "-5MB", "0", "0.1B", True, 1.5, None]
)
def test_parse_bytes_rejects_junk(junk: Any) -> None:
    with pytest.raises(ConfigError, match=r"^size must be"):
        parse_bytes(junk)


def test_replace_revalidates() -> None:
    e = Experiment(batch_size=8, data_size=64)
    assert e.replace(batch_size=16).batch_size == 16
    assert e.replace(batch_size=16) != e
    with pytest.raises(ConfigError, match="batch_size"):
        e.replace(batch_size=0)
    with pytest.raises(ConfigError, match="unknown Experiment field"):
        e.replace(batchsize=16)


def test_dict_round_trip_is_json_safe() -> None:
    for e in every_field_changed():
        d = json.loads(json.dumps(e.to_dict()))
        assert Experiment.from_dict(d) == e
        assert d["budget_bytes"] == 2**30


def test_callable_workload_serialises_by_qualified_name() -> None:
    e = Experiment(workload=user_factory)
    d = e.to_dict()
    assert d["workload"].endswith(":user_factory")
    assert e.workload_name == d["workload"]
    back = Experiment.from_dict(json.loads(json.dumps(d)))
    assert back.workload is user_factory
    assert back == e


def test_lambda_workload_is_accepted_but_cannot_be_reloaded() -> None:
    e = Experiment(workload=lambda exp, dev: None)
    with pytest.raises(ConfigError, match="module-level callable"):
        Experiment.from_dict(e.to_dict())


def test_from_dict_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown Experiment field.*colour"):
        Experiment.from_dict({"colour": "red"})
    with pytest.raises(ConfigError, match="^steps must be a positive int, got 0$"):
        Experiment.from_dict({"steps": 0})
    with pytest.raises(ConfigError, match="cannot be loaded"):
        Experiment.from_dict({"workload": "no_such_module_xyz:f"})


def test_resolved_device() -> None:
    import torch

    assert Experiment(device="cpu").resolved_device() == "cpu"
    auto = Experiment(device="auto").resolved_device()
    assert auto == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device 'cuda'.*no CUDA device.*'cpu' or 'auto'"):
            Experiment(device="cuda").resolved_device()
    else:  # pragma: no cover - GPU machines
        assert Experiment(device="cuda").resolved_device() == "cuda"


def test_config_does_not_import_torch() -> None:
    code = (
        "import sys, memlab.config as c; c.Experiment(batch_size=4).to_dict(); "
        "c.parse_bytes('1GB'); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "False"


# -- the declaration: every field once, with its rule -------------------------------------------
def test_fields_declare_every_field_once_with_the_dataclass_default() -> None:
    import dataclasses

    init = [f for f in dataclasses.fields(Experiment) if f.init]
    assert list(FIELDS) == [f.name for f in init]
    assert all(isinstance(s, FieldSpec) and s.name == n for n, s in FIELDS.items())
    assert all(FIELDS[f.name].default == f.default for f in init)
    assert Experiment(**{n: s.default for n, s in FIELDS.items()}) == Experiment()
    with pytest.raises(TypeError):
        FIELDS["batch_size"] = FIELDS["steps"]  # type: ignore[index]  # read-only


def test_the_public_choice_lists_are_the_declared_ones() -> None:
    declared = {n: s.choices for n, s in FIELDS.items() if s.choices}
    assert declared == {
        "workload": WORKLOADS,
        "mode": MODES,
        "precision": PRECISIONS,
        "checkpointing": CHECKPOINTING,
        "sparse_storage": SPARSE_STORAGES,
        "allocation": ALLOCATIONS,
        "fuse": FUSES,
        "compression": COMPRESSIONS,
        "offload_activations": OFFLOADS,
        "weights": WEIGHTS,
        "data": DATA_SOURCES,
        "device": DEVICES,
        "profile": PROFILE_NAMES,
    }
    assert FIELDS["sparsity"].maximum == MAX_SPARSITY
    assert MEMORY_FIELDS == tuple(n for n, s in FIELDS.items() if s.memory)
    assert {"steps", "seed", "budget_bytes", "data"}.isdisjoint(MEMORY_FIELDS)


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_declared_choice_and_bound_is_accepted(name: str) -> None:
    spec = FIELDS[name]
    # inference allows precision int8 (training the activation offload); batch 1 and 1024
    # samples fit every batch_size/data_size
    mode = "train" if name == "offload_activations" else "inference"
    base = Experiment(mode=mode, batch_size=1, data_size=1024)
    good: list[Any] = list(spec.choices) or [spec.default]
    good += [v for v in (spec.minimum, spec.maximum, spec.typical_max) if v is not None]
    for v in good:
        v = int(v) if spec.kind == "int" else v
        assert getattr(base.replace(**{name: v}), name) == v


@pytest.mark.parametrize("name", [n for n, s in FIELDS.items() if s.kind in ("int", "float")])
def test_numbers_outside_the_declared_range_say_the_rule(name: str) -> None:
    spec = FIELDS[name]
    step = 1 if spec.kind == "int" else 0.005
    outside = [] if spec.minimum is None else [spec.minimum - step]
    outside += [] if spec.maximum is None else [spec.maximum + step]
    for v in outside:
        with pytest.raises(ConfigError) as ei:
            Experiment(**{name: v})
        assert str(ei.value) == f"{name} must be {spec.rule()}, got {v!r}"


def test_rules_read_as_the_messages_always_did() -> None:
    assert FIELDS["batch_size"].rule() == "a positive int"
    assert FIELDS["warmup"].rule() == "an int >= 0"
    assert FIELDS["seed"].rule() == "an int"
    assert FIELDS["sparsity"].rule() == "a number with 0 <= sparsity <= 0.99"
    assert FIELDS["pin_memory"].rule() == "True or False"
    assert FIELDS["budget_bytes"].option == "budget" and FIELDS["budget_bytes"].optional
