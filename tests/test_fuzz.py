"""Bad input, fuzzed (issue 15 item 8): generated experiments and CLI argument lists, valid
and invalid, give either an Experiment (a run) or one clear error naming the field, never a
traceback.

The truth each example is checked against is the draw itself: a valid value drawn from the
field's declaration (``FIELDS``) must come back stored as drawn; a value drawn from a set that
breaks the field's rule (wrong type, out of range, unknown string, None, NaN/inf, a huge int, a
bool for an int, nested junk) must be refused with a ``ValueError``/``TypeError`` whose message
names that field. The CLI is run in-process through ``memlab.cli.main`` with the entry points
that would start a worker replaced by a stub that records the Experiment it was given; a few
real ``python -m memlab`` invocations confirm the entry point behaves the same. Examples are
derandomized, so CI sees the same ones every time.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from memlab import cli
from memlab.config import FIELDS, ConfigError, Experiment, FieldSpec, _show, parse_bytes

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- values per field ---------------------------------------------------------------------------
HUGE = 10**5000  # past Python's int-to-str limit (4300 digits): even repr() of it raises
JUNK: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    HUGE,
    -HUGE,
    10**400,
    1e308,
    [],
    [1, 2],
    {},
    {"a": [1, {"b": None}]},
    (None,),
    b"bytes",
    1j,
    object(),
    {1, 2},
]


def valid_values(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values the field's rule allows (workload: the built-in names only)."""
    if spec.kind in ("choice", "workload"):
        return st.sampled_from(spec.choices)
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "bytes":
        return st.none() | st.integers(1, 2**50)
    lo = spec.minimum if spec.minimum is not None else -(2**63)
    if spec.kind == "int":
        hi = spec.maximum if spec.maximum is not None else int(lo) + 10**6
        # batch_size stays within the default data_size, so a valid draw alone constructs.
        if spec.name == "batch_size":
            hi = FIELDS["data_size"].default
        return st.integers(int(lo), int(hi))
    assert spec.maximum is not None
    return st.floats(lo, spec.maximum, allow_nan=False)


def invalid_values(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values the field's rule refuses, whatever the other fields hold."""
    junk = [v for v in JUNK if not (spec.kind == "float" and isinstance(v, float) and 0 <= v)]
    junk += [v for v in (float("nan"), 1e308, 10**400) if spec.kind == "float"]
    common: st.SearchStrategy[Any] = st.sampled_from(junk)
    if not spec.optional:
        common = common | st.none()
    if spec.kind in ("choice", "workload"):
        # a string with ':' may name a user factory in from_dict: tested on its own below
        words = st.text(max_size=12).filter(lambda s: s not in spec.choices and ":" not in s)
        return common | words | st.integers() | st.booleans()
    if spec.kind == "bool":
        return common | st.integers(0, 1) | st.sampled_from(["true", "False", "yes", ""])
    if spec.kind == "bytes":
        bad_text = st.sampled_from(
            ["", "0", "-1MB", "0.5B", "1.5B", "12XB", "nan", "inf", "1e9", "MB", "1 2", "0GiB"]
        )
        return common | st.integers(max_value=0) | st.booleans() | st.floats() | bad_text
    lo, hi = spec.minimum, spec.maximum
    out = common | st.booleans() | st.text(max_size=6)
    if spec.kind == "int":
        out = out | st.floats() | st.decimals(allow_nan=False).map(float).map(lambda x: x + 0.5)
        if lo is not None:
            out = out | st.integers(max_value=int(lo) - 1)
        if hi is not None:
            out = out | st.integers(min_value=int(hi) + 1)
        return out
    assert lo is not None and hi is not None
    return (
        out
        | st.floats(max_value=lo, exclude_max=True, allow_nan=False)
        | st.floats(min_value=hi, exclude_min=True)
        | st.integers(min_value=int(hi) + 1)
        | st.integers(max_value=int(lo) - 1)
    )


def stored(spec: FieldSpec, value: Any) -> Any:
    """What the field keeps for a valid ``value`` (a float field holds a float)."""
    return float(value) if spec.kind == "float" else value


# One draw: valid values for some fields, and maybe one field given a value its rule refuses.
field_names = st.sampled_from(list(FIELDS))


@st.composite
def draws(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    names = draw(st.lists(field_names, max_size=6, unique=True))
    kw = {n: draw(valid_values(FIELDS[n])) for n in names}
    bad = draw(st.none() | field_names)
    if bad is not None:
        kw[bad] = draw(invalid_values(FIELDS[bad]))
    return kw, bad


def _names(msg: str, *fields: str) -> bool:
    """Whether ``msg`` names one of ``fields`` (by field name or the CLI's alias)."""
    return any(f in msg or (FIELDS[f].alias and FIELDS[f].alias in msg) for f in fields)


def _check(build: Any, kw: dict[str, Any], bad: str | None) -> None:
    """``build()`` constructs an Experiment holding ``kw`` or refuses with a message that names
    the bad field (or, every value being valid, one of the fields a cross-field rule joins)."""
    try:
        exp = build()
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert "\n" not in msg, msg
        if bad is not None:
            assert _names(msg, bad), f"{bad}={_show(kw[bad])}: {msg}"
        else:  # a rule across fields: it names at least one field that was set
            assert isinstance(e, ConfigError), msg
            assert _names(msg, *kw), msg
        return
    assert bad is None, f"{bad}={_show(kw[bad])} was accepted"
    for name, v in kw.items():
        assert getattr(exp, name) == stored(FIELDS[name], v), name


@settings(FAST, max_examples=400)
@given(draws())
def test_experiment_constructs_or_names_the_field(d: tuple[dict[str, Any], str | None]) -> None:
    kw, bad = d
    _check(lambda: Experiment(**kw), kw, bad)


@settings(FAST, max_examples=300)
@given(draws(), draws())
def test_replace_constructs_or_names_the_field(
    base: tuple[dict[str, Any], str | None], d: tuple[dict[str, Any], str | None]
) -> None:
    try:
        start = Experiment(**base[0])
    except (ValueError, TypeError):
        start = Experiment()
    kw, bad = d
    _check(lambda: start.replace(**kw), kw, bad)


@settings(FAST, max_examples=300)
@given(
    draws(),
    st.dictionaries(
        st.text(max_size=10).filter(lambda s: s not in FIELDS) | st.integers() | st.none(),
        st.sampled_from(JUNK) | st.integers(),
        max_size=2,
    ),
)
def test_from_dict_constructs_or_names_the_field(
    d: tuple[dict[str, Any], str | None], unknown: dict[Any, Any]
) -> None:
    kw, bad = d
    data = {**Experiment().to_dict(), **kw, **unknown}
    if unknown:  # an unknown key is refused first, by name
        with pytest.raises(ConfigError) as e:
            Experiment.from_dict(data)
        assert all(str(k) in str(e.value) for k in unknown), str(e.value)
        return
    _check(lambda: Experiment.from_dict(data), kw, bad)


@settings(FAST, max_examples=100)
@given(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True).filter(lambda s: s not in FIELDS),
    st.sampled_from(JUNK) | st.integers(),
)
def test_an_unknown_field_is_named(name: str, value: Any) -> None:
    with pytest.raises(TypeError, match=name):
        Experiment(**{name: value})
    with pytest.raises(ConfigError, match=name):
        Experiment().replace(**{name: value})


@settings(FAST, max_examples=100)
@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz._:\x00 -", max_size=20).filter(lambda s: ":" in s)
    | st.sampled_from(
        [
            "..:x",
            ".:x",
            "os:getcwd",
            "os:path",
            "memlab.config:MIB",
            "memlab.config:Experiment.nope",
            "memlab:<lambda>",
            ":f",
            "m:",
        ]
    )
)
def test_a_user_factory_name_loads_or_names_the_workload(name: str) -> None:
    """``from_dict`` imports a ``module:qualname`` workload: an import that fails in any way
    is a ConfigError naming the workload, never the import machinery's own exception."""
    try:
        exp = Experiment.from_dict({"workload": name})
    except ConfigError as e:
        assert "workload" in str(e) and "\n" not in str(e), str(e)
        return
    # os:getcwd is posix:getcwd once imported: the qualname is what must survive
    assert callable(exp.workload) and exp.workload_name.split(":")[1] == name.split(":")[1]


def test_parse_bytes_examples() -> None:
    """The byte sizes the generators call valid/invalid, against hand-computed values."""
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("512MB") == 512 * 10**6
    for text in ("0.5B", "1.5B", "12XB", "nan", "1e9", "0GiB", "-1MB"):
        with pytest.raises(ConfigError, match="budget"):
            parse_bytes(text, name="budget")


# -- the command line ---------------------------------------------------------------------------
class Reached(Exception):
    """Raised by the stubbed entry points: the CLI got as far as starting the work."""

    def __init__(self, exp: Experiment) -> None:
        super().__init__("reached")
        self.exp = exp


def _stub(exp: Any, *a: Any, **k: Any) -> Any:
    raise Reached(exp)


@contextlib.contextmanager
def stubbed() -> Iterator[None]:
    """The entry points ``memlab run/estimate/plan/roofline`` call, replaced by ``_stub``."""
    import memlab.estimator
    import memlab.planning
    import memlab.rooflines
    import memlab.runner

    with pytest.MonkeyPatch.context() as mp:
        for mod, name in (
            (memlab.runner, "start"),
            (memlab.estimator, "estimate"),
            (memlab.estimator, "max_batch_size"),
            (memlab.planning, "plan"),
            (memlab.rooflines, "roofline"),
        ):
            mp.setattr(mod, name, _stub)
        yield


def _text(spec: FieldSpec, v: Any) -> str:
    """How a user types the valid value ``v``."""
    return repr(v) if spec.kind == "float" else str(v)


# Texts a user might mistype. Those starting with '-' are the ones whose reading argparse
# decides (an option, a negative number, or a lone '-' value); OPTION_LIKE are read as options.
BAD_TEXT = st.sampled_from(
    ["", "x", "-", "-x", "--json", "1e3", "nan", "inf", "-inf", "0x10", "3.5", "1,000", "0", "-1",
     "99999999999999999999999999999", "true", "none", "GPU", "  ", "\x00", "\udcff", "512XB"]
)  # fmt: skip
OPTION_LIKE = {"-x", "--json", "-inf"}


def _cli_value(spec: FieldSpec, text: str) -> Any:
    """The value the CLI passes on for ``text`` (ints and floats converted where they parse),
    checked by the field's rule: raises ConfigError where the rule refuses it."""
    convert = {"int": int, "float": float}.get(spec.kind)
    value: Any = text
    if convert is not None:
        try:
            value = convert(text)
        except ValueError:
            pass
    return spec.check(value)


@st.composite
def argvs(draw: st.DrawFn) -> tuple[list[str], dict[str, Any], set[str], set[str]]:
    """An argument list; the Python values of its valid options (the last one wins, as in
    argparse); the fields whose last value the rule refuses; and the words argparse itself
    refuses (an option given no value, an unknown option, a stray word)."""
    cmd = draw(st.sampled_from(["run", "estimate", "plan", "roofline"]))
    argv, values = [cmd], {}
    bad: set[str] = set()
    refused: set[str] = set()
    for name in draw(st.lists(field_names, max_size=6)):
        spec = FIELDS[name]
        flag = draw(st.sampled_from(cli._flags(spec)))
        if spec.kind == "bool":
            on = draw(st.booleans())
            argv.append(flag if on else "--no-" + flag[2:])
            values[name] = on
            continue
        if draw(st.integers(0, 4)) == 0:
            junk = st.text(max_size=8).filter(lambda s: not s.startswith("-"))
            text = draw(BAD_TEXT | junk).replace(":", "")  # 'm:f' would import module m
            if text in OPTION_LIKE:
                refused.add(flag)
            else:
                try:
                    values[name] = _cli_value(spec, text)
                    bad.discard(name)
                except ConfigError:
                    bad.add(name)
                    values.pop(name, None)
        else:
            v = draw(valid_values(spec))
            if v is None:
                continue
            text = _text(spec, v)
            values[name] = stored(spec, v)
            bad.discard(name)
        argv += [flag, text]
    if cmd == "run" and draw(st.booleans()):
        # seconds: a positive finite number; '-5' is a negative number to argparse, 'x' not float
        text = draw(st.sampled_from(["5", "0.5", "1e3", "-5", "0", "nan", "inf", "x", ""]))
        argv += ["--timeout", text]
        if text not in ("5", "0.5", "1e3"):
            refused.add("--timeout")
    tail = draw(st.sampled_from(["", "", "", "", "", "", "--frobnicate", "stray", "-q", "--seed"]))
    if tail:
        argv.append(tail)
        refused.add(tail)
    return argv, values, bad, refused


@settings(FAST, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argvs())
def test_cli_arguments_reach_the_entry_or_fail_in_one_line(
    capsys: pytest.CaptureFixture[str], a: Any
) -> None:
    argv, values, bad, refused = a
    capsys.readouterr()
    got: Experiment | None = None
    try:
        with stubbed():
            code = cli.main(argv)
    except Reached as r:
        code, got = 0, r.exp
    except SystemExit as e:  # argparse's own errors exit through SystemExit
        code = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if got is not None:
        assert not bad and not refused, (argv, bad, refused)
        # the Experiment the arguments describe, built in Python from their values
        assert got == Experiment(**values), argv
        return
    assert code == 2, (argv, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("memlab: error: "), err
    line = lines[0]
    if bad or refused:
        flags = [f for n in bad for f in cli._flags(FIELDS[n])]
        assert _names(line, *bad) or any(w in line for w in [*flags, *refused]), (argv, line)
        return
    # every value valid: a rule across fields, worded as Python words it
    with pytest.raises(ConfigError) as e:
        Experiment(**values)
    assert line == f"memlab: error: {e.value}", argv


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--batch-size", "-3"], "batch_size"),
        (["estimate", "--sparsity", "nan"], "sparsity"),
        (["plan", "--budget", "12XB"], "budget"),
        (["run", "--workload", "..:x"], "workload"),
        (["estimate", "--precision"], "--precision"),
    ],
)
def test_the_real_entry_point_fails_in_one_line(argv: list[str], needle: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "memlab", *argv],
        cwd=ROOT,
        env={**os.environ, "MEMLAB_STORE": "off"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


# -- valid experiments estimated ---------------------------------------------------------------
ESTIMATED = [
    "mode", "precision", "checkpointing", "sparsity", "sparse_storage", "inplace", "compression",
    "workload", "rank", "codebook_bits", "fuse", "offload_activations",
]  # fmt: skip


@st.composite
def small_valid(draw: st.DrawFn) -> Experiment:
    """A valid experiment small enough to estimate in about a second."""
    kw: dict[str, Any] = {"device": "cpu", "batch_size": draw(st.integers(1, 8)), "data_size": 8}
    for name in draw(st.lists(st.sampled_from(ESTIMATED), max_size=4, unique=True)):
        kw[name] = draw(valid_values(FIELDS[name]))
    for fix in ({}, {"mode": "inference", "offload_activations": "off"}, {"mode": "train"}):
        try:  # a cross-field rule broken: the nearest valid experiment
            exp = Experiment(**{**kw, **fix})
        except ConfigError:
            continue
        # amp-fp16 training is the known failure below (test_amp_fp16_training_estimate)
        if not (exp.precision == "amp-fp16" and exp.mode == "train"):
            return exp
    return Experiment(device="cpu", batch_size=kw["batch_size"], data_size=8)


@settings(
    FAST,
    max_examples=8,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example builds a model
    suppress_health_check=list(HealthCheck),
)
@given(small_valid())
def test_valid_experiments_estimate_or_say_what_is_unsupported(exp: Experiment) -> None:
    """A valid experiment gives an Estimate whose categories add up to its peak, or an
    EstimateError that names the field it cannot estimate (quantization, planned buffers)."""
    from memlab.estimator import Estimate, EstimateError, estimate

    try:
        est = estimate(exp)
    except EstimateError as e:
        changed = [n for n in FIELDS if getattr(exp, n) != FIELDS[n].default]
        assert _names(str(e), *changed), f"{exp}: {e}"
        return
    assert isinstance(est, Estimate)
    assert est.peak_bytes > 0
    assert est.peak_bytes == sum(est.peak_by_category.values())


def test_amp_fp16_training_estimate() -> None:
    from memlab.estimator import EstimateError, estimate

    exp = Experiment(precision="amp-fp16", device="cpu", batch_size=1, data_size=8)
    try:
        estimate(exp)
    except EstimateError as e:
        assert "precision" in str(e) or "amp-fp16" in str(e), str(e)
