"""Optics of a stereo ophthalmic surgical microscope (no ROS).

The model: two optical paths, ``baseline`` apart, look through one common main objective of focal
length ``objective_focal_length``; the field at the working distance is imaged onto each camera
with lateral magnification ``magnification``. After rectification each path is a pinhole camera
with the same intrinsics, except that the right principal point sits ``fx * B / Z0`` to the right
of the left one (the paths converge on the field; Z0 = working distance). Focusing moves the
focal plane (internal focusing), not the cameras, so intrinsics do not change with focus.

Defocus follows the thin lens. The entrance pupil of each path has diameter
``A = 2 * NA * Z0``; a point at depth Z seen with the focal plane at Zf is blurred, in the focal
plane, into a disc of diameter ``A * |Z - Zf| / Z``, which the camera sees as
``A * fx * |Z - Zf| / (Z * Zf)`` pixels.

Depth of field uses the standard microscope formula (Berek's form for a camera sensor), the sum
of a wave-optical and a geometric term: ``DOF = lambda / NA**2 + e / (M * NA)``, with e the
sensor pixel pitch and M the lateral magnification. With the defaults: 0.22 mm + 0.31 mm =
0.53 mm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from micro_perception.camera import CameraIntrinsics, StereoPair
from micro_perception.errors import InputError


@dataclass(frozen=True)
class MicroscopeOptics:
    """Defaults typical of an ophthalmic surgical microscope imaging the retina."""

    objective_focal_length: float = 0.200  # m; the field sits at its front focal plane
    working_distance: float = 0.200  # m; the convergence distance Z0
    baseline: float = 0.022  # m between the two optical paths
    field_of_view: float = 0.008  # m across the image width at the working distance
    width: int = 512  # px
    height: int = 512  # px
    pixel_pitch: float = 5.5e-6  # m on the sensor
    numerical_aperture: float = 0.05  # object side, of each optical path
    wavelength: float = 550e-9  # m, centre of the visible band

    def __post_init__(self):
        positive = (
            "objective_focal_length",
            "working_distance",
            "baseline",
            "field_of_view",
            "pixel_pitch",
            "numerical_aperture",
            "wavelength",
        )
        for name in positive:
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise InputError(f"optics.{name} must be a positive number, got {value!r}")
        if self.numerical_aperture >= 1:
            raise InputError(
                f"optics.numerical_aperture must be < 1, got {self.numerical_aperture}"
            )
        for name in ("width", "height"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and 8 <= value <= 16384):
                raise InputError(f"optics.{name} must be an integer in 8..16384, got {value!r}")

    @property
    def fx(self) -> float:
        """Focal length in pixels (square pixels: fy == fx)."""
        return self.width * self.working_distance / self.field_of_view

    @property
    def pixel_size(self) -> float:
        """Object-side size of one pixel at the working distance, m."""
        return self.field_of_view / self.width

    @property
    def magnification(self) -> float:
        """Lateral magnification from the field onto the sensor."""
        return self.fx * self.pixel_pitch / self.working_distance

    @property
    def pupil_diameter(self) -> float:
        """Entrance pupil diameter of each optical path, m."""
        return 2.0 * self.numerical_aperture * self.working_distance

    @property
    def depth_of_field(self) -> float:
        """Total depth of field, m (wave-optical + geometric term)."""
        na = self.numerical_aperture
        return self.wavelength / na**2 + self.pixel_pitch / (self.magnification * na)

    def coc_diameter_px(self, depth, focus_distance) -> np.ndarray:
        """Thin-lens blur-disc diameter in pixels of points at ``depth`` (m), focal plane at
        ``focus_distance`` (m)."""
        z = np.asarray(depth, dtype=np.float64)
        zf = float(focus_distance)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.pupil_diameter * self.fx * np.abs(z - zf) / (z * zf)

    def left_camera(self) -> CameraIntrinsics:
        cx, cy = (self.width - 1) / 2.0, (self.height - 1) / 2.0
        return CameraIntrinsics.from_pinhole(self.width, self.height, self.fx, self.fx, cx, cy)

    def right_camera(self) -> CameraIntrinsics:
        left = self.left_camera()
        doffs = self.fx * self.baseline / self.working_distance
        return CameraIntrinsics.from_pinhole(
            self.width,
            self.height,
            self.fx,
            self.fx,
            left.cx + doffs,
            left.cy,
            tx=-self.fx * self.baseline,
        )

    def stereo(self) -> StereoPair:
        return StereoPair(self.left_camera(), self.right_camera())

    def camera_origin(self, eye: str) -> np.ndarray:
        """Optical centre of a camera in the left optical frame, m."""
        if eye == "left":
            return np.zeros(3)
        if eye == "right":
            return np.array([self.baseline, 0.0, 0.0])
        raise InputError(f"eye must be 'left' or 'right', got {eye!r}")

    def camera(self, eye: str) -> CameraIntrinsics:
        self.camera_origin(eye)  # validates the name
        return self.left_camera() if eye == "left" else self.right_camera()

    def scaled_to(self, height: int, width: int) -> MicroscopeOptics:
        """The same microscope with a sensor of another pixel count (same field of view)."""
        pitch = self.pixel_pitch * self.width / width
        fov = self.field_of_view
        return MicroscopeOptics(
            **{
                **asdict(self),
                "width": width,
                "height": height,
                "pixel_pitch": pitch,
                "field_of_view": fov,
            }
        )

    def to_dict(self) -> dict:
        return asdict(self)
