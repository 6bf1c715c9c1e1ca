"""The attribution rules on hand-written event streams: exact bytes, no torch needed."""

from __future__ import annotations

import numpy as np
import pytest

from memlab.tracking.attribution import CategoryMark, Mark, attribute


def ev(*rows: tuple[int, int, int]) -> np.ndarray:
    """Rows of (addr, delta, module tag); time is the row number in ms."""
    return np.array([(i * 1_000_000, a, d, m) for i, (a, d, m) in enumerate(rows)], dtype=np.int64)


def test_training_step_categories_and_peak() -> None:
    # entry: a 100 B parameter at 0x10 and a 40 B input at 0x20
    entry = {0x10: (100, "parameters"), 0x20: (40, "inputs")}
    events = ev(
        (0xA0, 50, 1),  # 0 forward: activation saved for backward (freed in backward)
        (0xB0, 30, 1),  # 1 forward: temporary, freed in forward
        (0xB0, -30, 1),  # 2
        (0xC0, 100, 0),  # 3 backward: becomes the gradient
        (0xD0, 70, 0),  # 4 backward: op-internal buffer
        (0xD0, -70, 0),  # 5
        (0xA0, -50, 0),  # 6 backward frees the activation
        (0xE0, 200, 0),  # 7 optimizer: state
        (0xF0, 10, 0),  # 8 optimizer: scratch
        (0xF0, -10, 0),  # 9
    )
    marks = [
        Mark(0, 0, "phase", "forward"),
        Mark(3, 3_000_000, "phase", "backward"),
        Mark(7, 7_000_000, "phase", "optimizer"),
    ]
    cmarks = [CategoryMark(7, 0xC0, "gradients"), CategoryMark(10, 0xE0, "optimizer_state")]
    a = attribute(
        events,
        t0_ns=0,
        entry_blocks=entry,
        marks=marks,
        category_marks=cmarks,
        module_names={1: "fc"},
    )
    # running total: 140 +50 +30 -30 +100 +70 -70 -50 +200 +10 -10
    assert a.timeline.total.tolist() == [140, 190, 220, 190, 290, 360, 290, 240, 440, 450, 440]
    assert a.peak_bytes == 450
    assert a.peak_phase == "optimizer"
    assert a.peak_by_category == {
        "parameters": 100,
        "gradients": 100,
        "optimizer_state": 200,
        "activations": 0,
        "inputs": 40,
        "temporaries": 10,
        "other": 0,
    }
    assert a.end_by_category["temporaries"] == 0
    # the entry point is in the phase the block started in ("other")
    assert a.peak_by_phase == {"other": 140, "forward": 220, "backward": 360, "optimizer": 450}
    assert a.activations_by_module == {"fc": 50}
    assert a.block_category[1] == "temporaries" and a.block_category[4] == "temporaries"
    assert a.timeline.t[1] == pytest.approx(0.0) and a.timeline.t[-1] == pytest.approx(0.009)


def test_address_reuse_pairs_each_free_with_its_own_allocation() -> None:
    events = ev((0xA0, 8, 0), (0xA0, -8, 0), (0xA0, 16, 0), (0xA0, -16, 0), (0xA0, 4, 0))
    a = attribute(events, t0_ns=0, entry_blocks={})
    assert a.timeline.total.tolist() == [0, 8, 0, 16, 0, 4]
    assert a.end_by_category["other"] == 4
    assert a.block_category == {0: "temporaries", 2: "temporaries", 4: "other"}


def test_unknown_frees_are_dropped_like_the_profiler() -> None:
    # 0x99 was allocated before the block and not counted at entry: its free is not seen
    events = ev((0x99, -1000, 0), (0xA0, 8, 0))
    a = attribute(events, t0_ns=0, entry_blocks={0x10: (5, "parameters")})
    assert a.timeline.total.tolist() == [5, 13]
    assert a.peak_bytes == 13


def test_entry_block_freed_then_address_reused() -> None:
    events = ev((0x10, -5, 0), (0x10, 7, 0))
    a = attribute(events, t0_ns=0, entry_blocks={0x10: (5, "inputs")})
    assert a.timeline.by_category["inputs"].tolist() == [5, 0, 0]
    assert a.timeline.by_category["other"].tolist() == [0, 0, 7]


def test_mark_claims_only_the_block_alive_at_that_moment() -> None:
    events = ev((0xA0, 8, 0), (0xA0, -8, 0), (0xA0, 8, 0))
    # the gradient mark comes after the first block died: it claims the second one only
    a = attribute(
        events, t0_ns=0, entry_blocks={}, category_marks=[CategoryMark(3, 0xA0, "gradients")]
    )
    assert a.block_category == {0: "temporaries", 2: "gradients"}
    # a parameter mark outranks a gradient mark on the same block (tied storage)
    a = attribute(
        events,
        t0_ns=0,
        entry_blocks={},
        category_marks=[CategoryMark(3, 0xA0, "gradients"), CategoryMark(3, 0xA0, "parameters")],
    )
    assert a.block_category[2] == "parameters"


def test_recompute_and_data_segments() -> None:
    events = ev(
        (0x1, 10, 0),  # 0 data: the batch, alive after the data phase -> inputs
        (0x2, 4, 0),  # 1 data: scratch -> temporaries
        (0x2, -4, 0),  # 2
        (0x3, 6, 2),  # 3 backward, inside a recompute, saved -> activations
        (0x4, 3, 2),  # 4 recompute scratch -> temporaries
        (0x4, -3, 2),  # 5
        (0x3, -6, 0),  # 6 freed by backward
    )
    marks = [
        Mark(0, 0, "phase", "data"),
        Mark(3, 0, "phase", "backward"),
        Mark(3, 0, "recompute_start"),
        Mark(6, 0, "recompute_end"),
    ]
    a = attribute(events, t0_ns=0, entry_blocks={}, marks=marks, module_names={2: "blk"})
    assert a.block_category == {0: "inputs", 1: "temporaries", 3: "activations", 4: "temporaries"}
    assert a.peak_by_category["activations"] == 6
    assert a.activations_by_module == {}  # recomputes are not what forward saved


def test_empty_block() -> None:
    a = attribute(np.zeros((0, 4), dtype=np.int64), t0_ns=0, entry_blocks={0x1: (9, "parameters")})
    assert a.peak_bytes == 9 and len(a.timeline) == 1
