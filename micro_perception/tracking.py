"""Steady distance and a proximity alert from per-frame measurements (no ROS).

* :class:`DistanceFilter`: a constant-velocity Kalman filter on the distance. A measurement
  whose innovation exceeds ``gate_sigma`` standard deviations is an outlier and is skipped;
  after ``max_outliers`` in a row the instrument really moved and the filter restarts from the
  measurement. With no measurement for ``stale_after`` seconds the distance is unknown again,
  and the next measurement restarts the filter (also where frames come slower than that).
  Each measurement may carry its calibrated standard deviation (``uncertainty.py``);
  ``sigma`` is that of the measurement the estimate rests on. It is not the filter's
  measurement noise: most of a frame's error is its pose's (how the jaws lie, which rows the
  shaft crosses) and lasts while the pose does, so averaging frames does not shrink it; the
  frame-to-frame noise the filter averages is ``measurement_noise``.
* :class:`ProximityAlert`: on when the distance drops below ``threshold``, off only once it is
  above ``threshold + hysteresis``; off while the distance is unknown (the node reports why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from micro_perception.errors import InputError


@dataclass(frozen=True)
class FilterConfig:
    measurement_noise: float = 25e-6  # m, one frame's distance error (std)
    acceleration_noise: float = 2e-3  # m/s^2, how briskly a surgeon changes speed (std)
    gate_sigma: float = 4.0
    max_outliers: int = 3
    stale_after: float = 0.5  # s

    def __post_init__(self):
        if not (self.measurement_noise > 0 and self.acceleration_noise > 0):
            raise InputError("measurement_noise and acceleration_noise must be > 0")
        if not self.gate_sigma > 0 or self.max_outliers < 1 or not self.stale_after > 0:
            raise InputError("gate_sigma, max_outliers and stale_after must be positive")


class DistanceFilter:
    def __init__(self, cfg: FilterConfig | None = None):
        self.cfg = cfg or FilterConfig()
        self.reset()

    def reset(self) -> None:
        self.t: float | None = None
        self.x = [0.0, 0.0]  # distance, rate
        self.p = [[0.0, 0.0], [0.0, 0.0]]
        self.outliers = 0
        self.last_measurement: float | None = None
        self.sigma: float | None = None

    @property
    def known(self) -> bool:
        return self.t is not None

    def _start(self, t: float, z: float, sigma: float | None) -> float:
        r = self.cfg.measurement_noise**2
        self.t, self.x, self.outliers, self.sigma = t, [z, 0.0], 0, sigma
        self.p = [[r, 0.0], [0.0, (2e-3) ** 2]]  # rate unknown: a few mm/s
        self.last_measurement = t
        return z

    def update(self, t: float, z: float | None, sigma: float | None = None) -> float | None:
        """The filtered distance at time ``t`` (s) given this frame's measurement (None or a
        non-finite value: nothing measured) and its standard deviation ``sigma`` (m, None or
        NaN: not known); None while unknown."""
        measured = z is not None and math.isfinite(z)
        if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
            sigma = None
        if measured:
            z = max(z, 0.0)  # inside the retina reads as contact
        # Time going backwards (a looping bag) and stale state both forget. Stale also where a
        # measurement comes with no empty frame between (a node slower than stale_after): a
        # rate learnt across a long gap, extrapolated, read 0.77 mm as contact.
        if self.t is not None and (t < self.t or t - self.last_measurement > self.cfg.stale_after):
            self.reset()
        if self.t is None:
            return self._start(t, z, sigma) if measured else None
        if not measured:
            return self._predict(t)
        self._predict(t)
        r = self.cfg.measurement_noise**2
        s = self.p[0][0] + r
        innovation = z - self.x[0]
        if innovation * innovation > self.cfg.gate_sigma**2 * s:
            self.outliers += 1
            if self.outliers >= self.cfg.max_outliers:
                return self._start(t, z, sigma)
            return max(self.x[0], 0.0)
        self.outliers = 0
        k0, k1 = self.p[0][0] / s, self.p[1][0] / s
        self.x = [self.x[0] + k0 * innovation, self.x[1] + k1 * innovation]
        p00, p01, p10, p11 = self.p[0][0], self.p[0][1], self.p[1][0], self.p[1][1]
        self.p = [
            [(1 - k0) * p00, (1 - k0) * p01],
            [p10 - k1 * p00, p11 - k1 * p01],
        ]
        self.last_measurement = t
        self.sigma = sigma
        return max(self.x[0], 0.0)

    def _predict(self, t: float) -> float:
        dt = t - self.t
        self.t = t
        if dt <= 0:
            return max(self.x[0], 0.0)
        q = self.cfg.acceleration_noise**2
        x0, x1 = self.x
        self.x = [x0 + dt * x1, x1]
        p00, p01, p10, p11 = self.p[0][0], self.p[0][1], self.p[1][0], self.p[1][1]
        self.p = [
            [
                p00 + dt * (p10 + p01) + dt * dt * p11 + q * dt**4 / 4,
                p01 + dt * p11 + q * dt**3 / 2,
            ],
            [p10 + dt * p11 + q * dt**3 / 2, p11 + q * dt * dt],
        ]
        return max(self.x[0], 0.0)


class ProximityAlert:
    """``sigmas``: the distance is taken ``sigmas`` of its standard deviation nearer than it
    reads, where one is known (a guard band as wide as the frame's own uncertainty)."""

    def __init__(self, threshold: float = 0.5e-3, hysteresis: float = 0.1e-3, sigmas: float = 0.0):
        if not threshold > 0 or hysteresis < 0 or not sigmas >= 0:
            raise InputError(
                "alert threshold must be > 0, hysteresis and sigmas >= 0, got "
                f"{threshold}, {hysteresis}, {sigmas}"
            )
        self.threshold, self.hysteresis, self.sigmas = threshold, hysteresis, sigmas
        self.on = False

    def update(self, distance: float | None, sigma: float | None = None) -> bool:
        if distance is None or not math.isfinite(distance):
            self.on = False
            return self.on
        if sigma is not None and math.isfinite(sigma):
            distance -= self.sigmas * sigma
        if distance < self.threshold:
            self.on = True
        elif distance > self.threshold + self.hysteresis:
            self.on = False
        return self.on
