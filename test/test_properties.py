"""Random and hostile input to the parts a node feeds every message through: the focal buffer and
focus matcher, the synchroniser, the geometry and the distance filter. Nothing escapes but the
package's InputError, and an unknown distance is never a number that looks like one.

(The conversion module has its own hostile-header property test in test_conversions.py.)
"""

import math

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from micro_perception.errors import InputError
from micro_perception.fusion.buffer import FocalBuffer, FocusMatcher, Slice
from micro_perception.geometry import GeometryConfig, measure
from micro_perception.optics import MicroscopeOptics
from micro_perception.ros import sync
from micro_perception.tracking import DistanceFilter, ProximityAlert

HOSTILE_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e-300, -1e300, float("nan"), float("inf"), -float("inf")]),
)

SLICE = st.tuples(
    st.integers(0, 50) | st.integers(-(2**40), 2**40),  # stamp steps, some wild
    st.sampled_from([(4, 5, 3), (4, 5, 3), (4, 5, 3), (5, 4, 3), (4, 5)]),
    st.sampled_from(["rgb8", "rgb8", "bgr8", "mono8"]),
    st.none() | HOSTILE_FLOATS | st.floats(0.18, 0.22),
)


@given(st.lists(SLICE, max_size=60), st.integers(2, 6), st.lists(HOSTILE_FLOATS, max_size=20))
@settings(max_examples=200, deadline=None)
def test_focal_buffer_and_matcher_take_anything(slices, per_stack, focus_positions):
    buf = FocalBuffer(slices_per_stack=per_stack, max_buffered=max(per_stack, 8))
    matcher = FocusMatcher(tolerance_ns=5, max_wait_ns=100, max_pending=4)
    stamp = 0
    for i, (step, shape, encoding, focus) in enumerate(slices):
        stamp += step
        if i < len(focus_positions) and math.isfinite(focus_positions[i]):
            ready = matcher.add_focus(stamp, focus_positions[i])
        else:
            ready = []
        sl = Slice(stamp, np.zeros(shape, np.uint8), focus, encoding)
        for ready_slice in ready + matcher.add_slice(sl):
            stack, note = buf.push(ready_slice)
            assert note is None or isinstance(note, str)
            assert len(buf) <= buf.max_buffered
            if stack is None:
                continue
            assert 2 <= len(stack.slices) <= per_stack or stack.complete_because == "reversal"
            assert len({(s.image.shape, s.encoding) for s in stack.slices}) == 1
            stamps = [s.stamp_ns for s in stack.slices]
            assert stamps == sorted(stamps)
            assert all(s.focus is None or math.isfinite(s.focus) for s in stack.slices)
            assert stack.images.shape[0] == len(stack.slices)


def _image(stamp_ns: int, tag: str) -> Image:
    msg = Image(encoding=tag)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3 * 10**9)), max_size=80),
    st.integers(1, 12),
    st.floats(0.0, 0.5),
)
@settings(max_examples=200, deadline=None)
def test_synchroniser_pairs_only_within_slop_and_never_twice(events, queue, slop):
    inputs = [sync.SimpleFilter() for _ in range(3)]
    out = []
    s = sync.ApproximateTimeSync(inputs, queue, slop)
    s.registerCallback(lambda *msgs: out.append(msgs))
    for k, (i, stamp) in enumerate(events):
        inputs[i].signalMessage(_image(stamp, f"{i}:{k}"))
    used = set()
    for msgs in out:
        assert [m.encoding.split(":")[0] for m in msgs] == ["0", "1", "2"]
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs]
        assert (max(stamps) - min(stamps)) * 1e-9 <= slop + 1e-9
        tags = {m.encoding for m in msgs}
        assert not tags & used
        used |= tags


OPTICS = MicroscopeOptics(width=48, height=40, field_of_view=2e-3)
PAIR = OPTICS.stereo()
H, W = OPTICS.height, OPTICS.width


def _retina_depth(radius: float = 12e-3) -> np.ndarray:
    """Depth of a 12 mm eye sphere's far wall at the working distance, seen by the left camera."""
    v, u = np.mgrid[0:H, 0:W]
    cam = PAIR.left
    rays = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones((H, W))], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    centre = np.array([0.0, 0.0, OPTICS.working_distance - radius])
    b = rays @ centre
    t = b + np.sqrt(b * b - (centre @ centre - radius**2))
    return (rays[..., 2] * t).astype(np.float32)


RETINA = _retina_depth()


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["retina", "retina", "noise", "hostile"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "retina":
        depth = RETINA + rng.normal(0, draw(st.floats(0, 50e-6)), (H, W)).astype(np.float32)
    elif kind == "noise":
        depth = rng.uniform(-1, 1, (H, W)).astype(np.float32)
    else:
        choices = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 0.2], np.float32)
        depth = rng.choice(choices, (H, W))
    mask = rng.uniform(size=(H, W)) < draw(st.floats(0.0, 1.0))
    if draw(st.booleans()):  # an instrument-like bar from anywhere to anywhere
        bar = np.zeros((H, W), np.uint8)
        ends = [draw(st.integers(-10, 60)) for _ in range(4)]
        cv2.line(bar, ends[:2], ends[2:], 1, draw(st.integers(1, 9)))
        mask = bar > 0
    if kind == "retina":  # the instrument's pixels stand above it, or do not
        depth[mask] -= draw(st.floats(-1e-3, 3e-3))
    right = None
    if draw(st.booleans()):
        right = np.roll(mask, draw(st.integers(-6, 6)), axis=1)
    confidence = rng.uniform(size=(H, W)).astype(np.float32) if draw(st.booleans()) else None
    return depth, mask, right, confidence


@given(frames())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_geometry_on_anything_says_a_distance_or_why_not(frame):
    depth, mask, right, confidence = frame
    cfg = GeometryConfig(min_retina_points=50, min_instrument_px=10)
    try:
        m = measure(PAIR, depth, mask, right, confidence, cfg)
    except InputError:
        return
    for d in (m.distance_normal, m.distance_axial):
        assert not math.isnan(d)
        assert d >= 0
    if m.ok:
        assert math.isfinite(m.distance_normal) and not m.reason
    else:
        assert m.reason or m.distance_normal == math.inf


@given(
    st.lists(
        st.tuples(st.floats(0.0, 0.3), st.none() | HOSTILE_FLOATS | st.floats(0, 5e-3)),
        max_size=100,
    )
)
@settings(max_examples=200, deadline=None)
def test_filter_and_alert_never_say_nan(updates):
    f = DistanceFilter()
    alert = ProximityAlert()
    t = 0.0
    for dt, z in updates:
        t += dt
        try:
            out = f.update(t, z)
        except InputError:
            continue
        assert out is None or (math.isfinite(out) and out >= 0)
        on = alert.update(out)
        assert on is False or (out is not None and out < alert.threshold + alert.hysteresis)
