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
    meta: object = None  # whatever the caller needs back with the stack (e.g. the header)


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


class FocusMatcher:
    """Pairs slices with focus positions by stamp, whichever arrives first.

    Until a focus stream has been seen, slices pass straight through without focus. Once it
    has, a slice whose focus has not arrived yet waits (at most ``max_wait_ns`` and
    ``max_pending`` slices), then goes on without focus.
    """

    def __init__(
        self,
        tolerance_ns: int = 1_000_000,
        max_wait_ns: int = 500_000_000,
        history: int = 256,
        max_pending: int = 32,
    ):
        self.tolerance_ns = tolerance_ns
        self.max_wait_ns = max_wait_ns
        self.history = history
        self.max_pending = max_pending
        self._focus: dict[int, float] = {}
        self._pending: list[Slice] = []
        self.unmatched = 0

    @property
    def has_focus_stream(self) -> bool:
        return bool(self._focus)

    def _lookup(self, stamp_ns: int) -> float | None:
        if stamp_ns in self._focus:
            return self._focus[stamp_ns]
        near = [t for t in self._focus if abs(t - stamp_ns) <= self.tolerance_ns]
        return self._focus[min(near, key=lambda t: abs(t - stamp_ns))] if near else None

    def add_focus(self, stamp_ns: int, position: float) -> list[Slice]:
        """Record a focus position; returns pending slices that are now matched, in order."""
        self._focus[stamp_ns] = position
        while len(self._focus) > self.history:
            del self._focus[min(self._focus)]
        ready = []
        while self._pending:
            z = self._lookup(self._pending[0].stamp_ns)
            if z is None:
                break
            sl = self._pending.pop(0)
            sl.focus = z
            ready.append(sl)
        return ready

    def add_slice(self, sl: Slice) -> list[Slice]:
        """A new slice; returns the slices ready to buffer, in order."""
        ready = []
        z = self._lookup(sl.stamp_ns) if self._focus else None
        if z is not None and not self._pending:
            sl.focus = z
            return [sl]
        if not self._focus:
            return [sl]
        self._pending.append(sl)
        while self._pending and (
            len(self._pending) > self.max_pending
            or sl.stamp_ns - self._pending[0].stamp_ns > self.max_wait_ns
        ):
            late = self._pending.pop(0)
            late.focus = self._lookup(late.stamp_ns)
            self.unmatched += late.focus is None
            ready.append(late)
        return ready
