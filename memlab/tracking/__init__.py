"""Measurement: the exact tensor tracker and process-memory readings."""

from memlab.tracking.tracker import Tracker, track

__all__ = ["track", "Tracker"]
