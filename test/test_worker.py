"""LatestWorker: under overload the newest input is processed and the rest are counted."""

import threading
import time

from micro_perception.ros.worker import LatestWorker


def _wait(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_newest_input_wins_while_busy_and_the_rest_are_counted():
    release = threading.Event()
    done, drops = [], []

    def slow(i):
        if i == 0:
            release.wait(5)
        done.append(i)

    w = LatestWorker(slow, "test", on_drop=lambda: drops.append(1))
    try:
        w.submit(0)
        assert _wait(lambda: not w.idle() and w.waiting() == 0)  # 0 is being processed
        for i in range(1, 6):  # arrive while 0 is processed: only the newest survives
            w.submit(i)
        release.set()
        assert _wait(w.idle)
        assert done == [0, 5]
        assert w.dropped == len(drops) == 4 and w.processed == 2
    finally:
        w.stop()


def test_an_error_in_one_input_is_reported_and_processing_goes_on():
    errors, done = [], []

    def fn(i):
        if i == 1:
            raise ValueError("bad frame")
        done.append(i)

    w = LatestWorker(fn, "test", on_error=errors.append)
    try:
        for i in range(3):
            w.submit(i)
            assert _wait(w.idle)
        assert done == [0, 2] and len(errors) == 1 and "bad frame" in str(errors[0])
    finally:
        w.stop()
    assert not w._thread.is_alive()


def test_each_stream_keeps_its_newest_input():
    release = threading.Event()
    done = []

    def slow(eye, i):
        if i == 0:
            release.wait(5)
        done.append((eye, i))

    w = LatestWorker(slow, "test")
    try:
        w.submit("left", 0, key="left")
        assert _wait(lambda: not w.idle() and w.waiting() == 0)
        for i in (1, 2):
            w.submit("left", i, key="left")
            w.submit("right", i, key="right")
        release.set()
        assert _wait(w.idle)
        assert done == [("left", 0), ("left", 2), ("right", 2)] and w.dropped == 2
    finally:
        w.stop()
