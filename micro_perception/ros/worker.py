"""Processing the newest input on a thread of its own, so a slow stage never builds a backlog.

A node's subscription callbacks hand each input to :class:`LatestWorker` and return at once. The
worker processes one input at a time; an input that arrives while it is busy replaces the one
waiting with the same key (one per stream, e.g. per eye), and the replaced one is counted as
dropped. Under overload the latency stays bounded by
about two processing times instead of growing with the queues in front of the node, and the
newest frames are the ones processed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class LatestWorker:
    def __init__(
        self,
        fn: Callable[..., None],
        name: str,
        on_drop: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ):
        self.fn, self.on_drop, self.on_error = fn, on_drop, on_error
        self.dropped = self.processed = 0
        self._items: dict = {}  # key -> the newest waiting input of that stream
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, *item, key=None) -> None:
        with self._cond:
            if self._items.pop(key, None) is not None:
                self.dropped += 1
                if self.on_drop is not None:
                    self.on_drop()
            self._items[key] = item
            self._cond.notify()

    def waiting(self) -> int:
        with self._cond:
            return len(self._items)

    def idle(self) -> bool:
        with self._cond:
            return not self._items and not self._busy

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item = self._items.pop(next(iter(self._items)))  # the oldest stream first
                self._busy = True
            try:
                self.fn(*item)
            except Exception as exc:  # a bug in one frame must not end the node's processing
                if self.on_error is None:
                    raise
                self.on_error(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self.processed += 1

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)
