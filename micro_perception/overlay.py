"""A picture of one measurement (no ROS): the instrument mask, its tip, the nearest point, the
gap in millimetres, coloured by the alert state. For ``measure --overlay`` and the README."""

from __future__ import annotations

import cv2
import numpy as np

from micro_perception.camera import StereoPair
from micro_perception.geometry import project

ALERT = (230, 40, 40)
CLEAR = (40, 200, 60)
UNKNOWN = (230, 200, 40)


def _pt(p) -> tuple[int, int]:
    return int(np.rint(p[0])), int(np.rint(p[1]))


def measurement_overlay(
    image: np.ndarray, result, pair: StereoPair, mode: str = "normal", alert_distance=0.5e-3
) -> np.ndarray:
    """RGB uint8 picture of ``image`` with ``result`` (a pipeline FrameResult) drawn on it."""
    out = image.copy()
    m = result.measurement
    tint = np.zeros_like(out)
    tint[result.mask] = (60, 140, 255)
    out = cv2.addWeighted(out, 1.0, tint, 0.35, 0)
    scale = max(1, round(out.shape[1] / 512))
    if not m.ok:
        colour, text = UNKNOWN, f"distance unknown: {m.reason}"
    else:
        d = m.distance(mode)
        colour = ALERT if d < alert_distance else CLEAR
        text = f"{d * 1e3:.3f} mm ({mode})"
        tip = project(pair, m.tip_xyz)
        near = project(pair, m.nearest_xyz)
        foot = project(pair, m.retina_xyz)
        cv2.circle(out, _pt(tip), 4 * scale, colour, scale, cv2.LINE_AA)
        cv2.line(
            out,
            _pt(near),
            _pt(foot),
            colour,
            scale,
            cv2.LINE_AA,
        )
    cv2.putText(
        out,
        text,
        (8 * scale, 24 * scale),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.6 * scale,
        colour,
        2 * scale,
        cv2.LINE_AA,
    )
    return out
