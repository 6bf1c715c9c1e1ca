"""The knobs' own error: a technique this platform cannot run."""

from __future__ import annotations

__all__ = ["KnobUnsupported"]


class KnobUnsupported(RuntimeError):
    """A knob setting that is valid in general but cannot run here (this device, this torch
    build, this mode); the message says which and what to choose instead."""
