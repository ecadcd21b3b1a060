"""The focal buffer: collects the slices of a focus sweep into stacks (no ROS).

A stack is complete after ``slices_per_stack`` slices, or earlier when the focus direction
reverses (the next sweep has begun; the reversing slice starts the new stack). Slices without a
known focus position are grouped by count alone. The buffer holds at most ``max_buffered``
slices; a slice that changes size or encoding mid-stack drops the stack being built (it cannot
be fused with the others) and starts a new one; stamps going backwards (a looping bag) reset it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from micro_perception.errors import InputError


@dataclass
class Slice:
    stamp_ns: int
    image: np.ndarray
    focus: float | None = None  # focal-plane distance, m
    encoding: str = "rgb8"


@dataclass
class Stack:
    slices: list[Slice]
    complete_because: str  # "count" or "reversal"

    @property
    def images(self) -> np.ndarray:
        return np.stack([s.image for s in self.slices])

    @property
    def focus(self) -> np.ndarray | None:
        values = [s.focus for s in self.slices]
        return None if any(v is None for v in values) else np.asarray(values, np.float64)

    @property
    def stamp_ns(self) -> int:
        return self.slices[-1].stamp_ns


@dataclass
class FocalBuffer:
    slices_per_stack: int = 8
    max_buffered: int = 32
    min_slices: int = 2  # a reversal closes a stack only if it has at least this many
    _slices: list[Slice] = field(default_factory=list)
    dropped: int = 0  # slices thrown away (bad, overflow)
    resets: int = 0

    def __post_init__(self):
        if self.slices_per_stack < 2:
            raise InputError(f"slices_per_stack must be >= 2, got {self.slices_per_stack}")
        if self.max_buffered < self.slices_per_stack:
            raise InputError(
                f"max_buffered ({self.max_buffered}) must be >= slices_per_stack "
                f"({self.slices_per_stack})"
            )

    def __len__(self) -> int:
        return len(self._slices)

    def clear(self) -> None:
        self._slices.clear()

    def _direction(self, a: float, b: float) -> int:
        return 0 if b == a else (1 if b > a else -1)

    def push(self, sl: Slice) -> tuple[Stack | None, str | None]:
        """Add a slice; returns (a complete stack or None, a reason if something was dropped)."""
        if sl.focus is not None and not math.isfinite(sl.focus):
            self.dropped += 1
            return None, f"focus position {sl.focus} is not finite"
        note = None
        if self._slices:
            last = self._slices[-1]
            if sl.stamp_ns < last.stamp_ns:
                self.resets += 1
                self._slices.clear()
                note = "stamps went backwards (bag loop?): focal buffer reset"
            elif sl.image.shape != last.image.shape or sl.encoding != last.encoding:
                self.dropped += len(self._slices)
                self._slices.clear()
                note = (
                    f"slice changed from {last.image.shape} {last.encoding} to "
                    f"{sl.image.shape} {sl.encoding} mid-stack: stack dropped"
                )
        done = None
        if len(self._slices) >= 2 and sl.focus is not None:
            prev, last = self._slices[-2].focus, self._slices[-1].focus
            if prev is not None and last is not None:
                before = self._direction(prev, last)
                now = self._direction(last, sl.focus)
                if before and now and now != before and len(self._slices) >= self.min_slices:
                    done = Stack(self._slices, "reversal")
                    self._slices = []
        self._slices.append(sl)
        if done is None and len(self._slices) >= self.slices_per_stack:
            done = Stack(self._slices, "count")
            self._slices = []
        if len(self._slices) > self.max_buffered:
            excess = len(self._slices) - self.max_buffered
            del self._slices[:excess]
            self.dropped += excess
        return done, note
