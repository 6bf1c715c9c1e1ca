"""Named edge targets: how much memory a model may use there, and how fast that memory is.

Pure data (no torch, no numpy): the kernel may import it. memlab never runs at a device's
speed; a latency for a device is an *estimate* from bytes moved and the profile's peak DRAM
bandwidth (``estimate_latency_s``), to be shown beside the time measured on this machine.

Peak bandwidth is the memory standard's arithmetic: bus width (bytes) x transfer rate (MT/s).
Sustained bandwidth on real boards is lower (typically 50-80% of peak for a STREAM copy), so an
estimate from it is a lower bound on time, never a prediction of it.

``budget_bytes`` is memlab's assumption, not a vendor figure: the RAM minus what the firmware
and the operating system keep on that class of device (GPU split, kernel, a minimal userland or
a phone's system services), rounded down. Each profile's comment says how it was chosen; use
``dataclasses.replace(profile, budget_bytes=...)`` for another figure.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeviceProfile", "PROFILES", "get", "estimate_latency_s"]

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class DeviceProfile:
    """One edge target. ``bandwidth_gb_per_s`` is peak DRAM bandwidth in 10**9 bytes/s."""

    name: str
    ram_bytes: int
    budget_bytes: int
    bandwidth_gb_per_s: float
    source: str

    def __post_init__(self) -> None:
        if not 0 < self.budget_bytes <= self.ram_bytes:
            raise ValueError(
                f"{self.name}: budget_bytes must be in (0, ram_bytes={self.ram_bytes}], "
                f"got {self.budget_bytes}"
            )
        if not self.bandwidth_gb_per_s > 0:
            raise ValueError(
                f"{self.name}: bandwidth_gb_per_s must be positive, got {self.bandwidth_gb_per_s}"
            )


def _peak_gb_per_s(bus_bits: int, mega_transfers_per_s: float) -> float:
    """Peak DRAM bandwidth: bus width in bytes x transfers per second, in GB/s (10**9)."""
    return bus_bits / 8 * mega_transfers_per_s * 1e6 / 1e9


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            name="rpi-zero-2w",
            ram_bytes=512 * MIB,
            # 512 MiB minus the firmware's default GPU split (gpu_mem=64 on boards with less
            # than 1 GB) and ~100 MiB for Raspberry Pi OS Lite's kernel and services; half of
            # the RAM leaves margin for the page cache the model's file needs.
            budget_bytes=256 * MIB,
            # Product brief: "512MB LPDDR2 SDRAM" (RP3A0 SiP, BCM2710A1). The Raspberry Pi
            # documentation's overclocking table (config_txt/overclocking.adoc) gives
            # sdram_freq=450 MHz for the Zero 2 W: DDR, so 900 MT/s on a 32-bit bus = 3.6 GB/s.
            bandwidth_gb_per_s=_peak_gb_per_s(32, 900),
            source="Raspberry Pi Zero 2 W product brief (512MB LPDDR2); Raspberry Pi docs, "
            "config.txt overclocking defaults (sdram_freq 450 MHz); 32-bit bus",
        ),
        DeviceProfile(
            name="rpi-4-2gb",
            ram_bytes=2 * GIB,
            # 2 GiB minus the GPU split (76 MiB by default on a Pi 4), the kernel and a
            # minimal userland (~250 MiB with Raspberry Pi OS Lite): 1.5 GiB leaves the rest
            # for the page cache.
            budget_bytes=1536 * MIB,
            # Product brief: "1GB, 2GB, 4GB or 8GB LPDDR4-3200 SDRAM"; BCM2711's LPDDR4
            # interface is 32 bits wide: 3200 MT/s x 4 bytes = 12.8 GB/s.
            bandwidth_gb_per_s=_peak_gb_per_s(32, 3200),
            source="Raspberry Pi 4 Model B product brief (LPDDR4-3200); BCM2711 32-bit bus",
        ),
        DeviceProfile(
            name="phone-4gb",
            ram_bytes=4 * GIB,
            # Android keeps ~1.5-2 GiB of a 4 GiB phone for the system server, the launcher
            # and cached apps, and its low-memory killer ends a foreground app well before
            # RAM is full: 1.5 GiB is a cautious figure for one app's model.
            budget_bytes=1536 * MIB,
            # A Snapdragon 855-class SoC: Qualcomm's product brief gives LPDDR4X at 2133 MHz
            # on 4 x 16-bit channels, i.e. LPDDR4X-4266 (JEDEC JESD209-4's top rate) on a
            # 64-bit bus: 4266 MT/s x 8 bytes = 34.1 GB/s.
            bandwidth_gb_per_s=_peak_gb_per_s(64, 4266),
            source="Qualcomm Snapdragon 855 product brief (LPDDR4X 2133 MHz, 4x16-bit); "
            "JEDEC JESD209-4 LPDDR4X-4266",
        ),
        DeviceProfile(
            name="jetson-orin-nano-8gb",
            ram_bytes=8 * GIB,
            # 8 GiB shared by the CPU and the GPU; JetPack's Ubuntu userland with its desktop
            # takes ~1.5 GiB, the CUDA context a few hundred MiB more: 6 GiB for the model
            # (weights, activations and the CUDA allocator's cache together).
            budget_bytes=6 * GIB,
            # NVIDIA Jetson Orin Nano Series data sheet: "8GB 128-bit LPDDR5", 68 GB/s
            # (128 bits x 4266 MT/s = 68.3 GB/s). JetPack 6.1's "Super" mode raises the
            # memory clock to 102 GB/s; this profile keeps the data sheet's figure.
            bandwidth_gb_per_s=68.0,
            source="NVIDIA Jetson Orin Nano Series Modules data sheet (8GB 128-bit LPDDR5, "
            "68 GB/s)",
        ),
    )
}


def get(name: str) -> DeviceProfile:
    """The profile named ``name``; a ``KeyError`` naming the known profiles otherwise."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        known = ", ".join(PROFILES)
        raise KeyError(f"unknown device profile {name!r}; known profiles: {known}") from None


def estimate_latency_s(bytes_moved: int | float, profile: DeviceProfile) -> float:
    """An *estimate*, never a measurement: the time ``bytes_moved`` bytes of DRAM traffic take
    at the profile's peak bandwidth. It ignores compute, caches and the gap between peak and
    sustained bandwidth, so it is a lower bound from memory traffic alone."""
    if bytes_moved < 0:
        raise ValueError(f"bytes_moved must be >= 0, got {bytes_moved}")
    return float(bytes_moved) / (profile.bandwidth_gb_per_s * 1e9)
