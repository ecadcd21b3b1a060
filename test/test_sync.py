"""The approximate-time synchroniser's semantics, on real messages.

Runs against this package's implementation and, where a ROS 2 distro provides it, against
message_filters too, so both behave the same where the package relies on them.
"""

import importlib.util

import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import String

from micro_perception.ros import sync

BACKENDS = [pytest.param(sync.ApproximateTimeSync, id="micro_perception")]
if importlib.util.find_spec("message_filters") is not None:  # pragma: no cover - robot only
    import message_filters

    BACKENDS.append(
        pytest.param(message_filters.ApproximateTimeSynchronizer, id="message_filters")
    )


def image(t: float, tag: str = "") -> Image:
    msg = Image(encoding=tag)
    msg.header.stamp.sec = int(t)
    msg.header.stamp.nanosec = round((t - int(t)) * 1e9)
    return msg


class Harness:
    def __init__(self, cls, n=2, queue_size=5, slop=0.01, **kwargs):
        self.inputs = [sync.SimpleFilter() for _ in range(n)]
        self.out = []
        self.sync = cls(self.inputs, queue_size, slop, **kwargs)
        self.sync.registerCallback(lambda *msgs: self.out.append(tuple(m.encoding for m in msgs)))

    def push(self, i, t, tag=None):
        self.inputs[i].signalMessage(image(t, tag or f"{'LR'[i] if i < 2 else i}{t}"))


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_exact_stamps_pair(backend):
    h = Harness(backend)
    for t in (1.0, 1.1, 1.2):
        h.push(0, t)
        h.push(1, t)
    assert h.out == [("L1.0", "R1.0"), ("L1.1", "R1.1"), ("L1.2", "R1.2")]


def test_stamps_within_slop_pair_and_beyond_do_not(backend):
    h = Harness(backend, slop=0.01)
    h.push(0, 1.000)
    h.push(1, 1.004)
    assert h.out == [("L1.0", "R1.004")]
    h.push(0, 2.000)
    h.push(1, 2.050)
    assert len(h.out) == 1


def test_nearest_candidate_wins(backend):
    h = Harness(backend, slop=0.02)
    h.push(1, 0.990, "far")
    h.push(1, 1.003, "near")
    h.push(0, 1.000, "L")
    assert h.out == [("L", "near")]


def test_out_of_order_arrival(backend):
    h = Harness(backend)
    h.push(1, 1.2)
    h.push(1, 1.1)
    h.push(0, 1.1)
    h.push(0, 1.2)
    assert sorted(h.out) == [("L1.1", "R1.1"), ("L1.2", "R1.2")]


def test_queue_overflow_drops_the_oldest(backend):
    h = Harness(backend, queue_size=2)
    for t in (1.0, 2.0, 3.0):
        h.push(0, t)
    h.push(1, 1.0)  # its partner was pushed out of the left queue
    assert h.out == []
    h.push(1, 3.0)
    assert h.out == [("L3.0", "R3.0")]


def test_paired_messages_are_consumed(backend):
    h = Harness(backend)
    h.push(0, 1.0)
    h.push(1, 1.0)
    h.push(1, 1.0, "R-again")  # its left partner is gone
    assert h.out == [("L1.0", "R1.0")]


def test_three_inputs(backend):
    h = Harness(backend, n=3, slop=0.01)
    h.push(0, 1.000)
    h.push(1, 1.002)
    assert h.out == []
    h.push(2, 0.998)
    assert h.out == [("L1.0", "R1.002", "20.998")]


def test_headerless_messages_are_ignored_unless_allowed():
    inputs = [sync.SimpleFilter(), sync.SimpleFilter()]
    out = []
    s = sync.ApproximateTimeSync(inputs, 5, 0.5)
    s.registerCallback(lambda *m: out.append(m))
    inputs[0].signalMessage(String(data="a"))
    inputs[1].signalMessage(String(data="b"))
    assert out == []
    s_allowed = sync.ApproximateTimeSync(inputs, 5, 0.5, allow_headerless=True)
    s_allowed.registerCallback(lambda *m: out.append(m))
    inputs[0].signalMessage(String(data="a"))
    inputs[1].signalMessage(String(data="b"))
    assert [tuple(m.data for m in pair) for pair in out] == [("a", "b")]


@pytest.mark.parametrize(("queue_size", "slop"), [(0, 0.1), (5, -0.1), (5, float("nan"))])
def test_bad_arguments_are_refused(queue_size, slop):
    with pytest.raises(ValueError):
        sync.ApproximateTimeSync([sync.SimpleFilter()], queue_size, slop)


def test_callback_extra_args_are_passed():
    inputs = [sync.SimpleFilter(), sync.SimpleFilter()]
    got = []
    s = sync.ApproximateTimeSync(inputs, 5, 0.1)
    s.registerCallback(lambda left, right, tag: got.append(tag), "extra")
    inputs[0].signalMessage(image(1.0))
    inputs[1].signalMessage(image(1.0))
    assert got == ["extra"]
