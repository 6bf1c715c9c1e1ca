"""memlab.devices: profile lookup, its error, and the latency estimate's arithmetic."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from memlab import devices


def test_the_four_targets_the_issue_names() -> None:
    rams = sorted(p.ram_bytes for p in devices.PROFILES.values())
    assert rams == [512 * 2**20, 2 * 2**30, 4 * 2**30, 8 * 2**30]
    for name, p in devices.PROFILES.items():
        assert p.name == name
        assert 0 < p.budget_bytes < p.ram_bytes  # the OS keeps its share
        assert p.bandwidth_gb_per_s > 0
        assert p.source


def test_bandwidths_are_bus_width_times_transfer_rate() -> None:
    # Independent arithmetic: LPDDR2-900 x32, LPDDR4-3200 x32, LPDDR4X-4266 x64, the Orin
    # Nano data sheet's 68 GB/s.
    expected = {
        "rpi-zero-2w": 4 * 900e6 / 1e9,
        "rpi-4-2gb": 4 * 3200e6 / 1e9,
        "phone-4gb": 8 * 4266e6 / 1e9,
        "jetson-orin-nano-8gb": 68.0,
    }
    got = {n: p.bandwidth_gb_per_s for n, p in devices.PROFILES.items()}
    assert got == pytest.approx(expected, rel=1e-12)


def test_get_and_its_error() -> None:
    assert devices.get("rpi-4-2gb") is devices.PROFILES["rpi-4-2gb"]
    with pytest.raises(KeyError) as e:
        devices.get("rpi-5")
    msg = str(e.value)
    assert "'rpi-5'" in msg
    for name in devices.PROFILES:
        assert name in msg


def test_profiles_are_frozen_and_validated() -> None:
    p = devices.get("phone-4gb")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.budget_bytes = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="budget_bytes"):
        dataclasses.replace(p, budget_bytes=p.ram_bytes + 1)
    with pytest.raises(ValueError, match="bandwidth"):
        dataclasses.replace(p, bandwidth_gb_per_s=0.0)


def test_latency_estimate_arithmetic() -> None:
    pi4 = devices.get("rpi-4-2gb")  # 12.8 GB/s
    # 64 MB of weights read once: 64e6 / 12.8e9 = 5 ms.
    assert devices.estimate_latency_s(64e6, pi4) == pytest.approx(5e-3, rel=1e-12)
    assert devices.estimate_latency_s(0, pi4) == 0.0
    # Twice the bandwidth, half the time.
    fast = dataclasses.replace(pi4, bandwidth_gb_per_s=25.6)
    assert devices.estimate_latency_s(64e6, fast) == pytest.approx(2.5e-3, rel=1e-12)
    with pytest.raises(ValueError, match="bytes_moved"):
        devices.estimate_latency_s(-1, pi4)


def test_importing_devices_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, memlab.devices; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
