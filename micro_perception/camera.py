"""Pinhole cameras and rectified stereo pairs, as ROS camera_info describes them (no ROS import).

A rectified pair from a converging stereo microscope keeps the right principal point
``fx * B / Z0`` to the right of the left one, so depth is ``Z = fx * B / (d + cx_r - cx_l)``
(the ``doffs`` of stereo_image_proc), with ``B = -P_right[0, 3] / fx``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from micro_perception.errors import InputError

# Relative tolerance when checking that two rectified cameras share fx, fy and cy.
_RECTIFIED_RTOL = 1e-6


def _matrix(value, shape: tuple[int, int], name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != shape[0] * shape[1]:
        raise InputError(f"{name} must have {shape[0] * shape[1]} elements, got {arr.size}")
    arr = arr.reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf")
    return arr


@dataclass(frozen=True)
class CameraIntrinsics:
    """One camera: image size, K, distortion, rectification R and projection P (3x4)."""

    width: int
    height: int
    K: np.ndarray
    P: np.ndarray
    D: np.ndarray = field(default_factory=lambda: np.zeros(5))
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    distortion_model: str = "plumb_bob"

    def __post_init__(self):
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise InputError(f"camera_info.{name} must be a positive integer, got {value!r}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "K", _matrix(self.K, (3, 3), "camera_info.k"))
        object.__setattr__(self, "P", _matrix(self.P, (3, 4), "camera_info.p"))
        object.__setattr__(self, "R", _matrix(self.R, (3, 3), "camera_info.r"))
        D = np.asarray(self.D, dtype=np.float64).ravel()
        if not np.all(np.isfinite(D)):
            raise InputError("camera_info.d contains NaN or Inf")
        object.__setattr__(self, "D", D)
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise InputError(
                f"camera_info.k has no focal length (K[0]={self.K[0, 0]}, K[4]={self.K[1, 1]}): "
                "the camera is not calibrated"
            )
        if self.P[0, 0] <= 0 or self.P[1, 1] <= 0:
            raise InputError(
                f"camera_info.p has no focal length (P[0]={self.P[0, 0]}, P[5]={self.P[1, 1]}): "
                "the camera is not calibrated"
            )

    @classmethod
    def from_pinhole(
        cls, width: int, height: int, fx: float, fy: float, cx: float, cy: float, tx: float = 0.0
    ) -> CameraIntrinsics:
        """A distortion-free, rectified camera; ``tx`` is P[0, 3] (-fx * B for a right camera)."""
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        P = np.array([[fx, 0.0, cx, tx], [0.0, fy, cy, 0.0], [0.0, 0.0, 1.0, 0.0]])
        return cls(width=width, height=height, K=K, P=P)

    # Rectified projection parameters: what every algorithm downstream of rectification uses.
    @property
    def fx(self) -> float:
        return float(self.P[0, 0])

    @property
    def fy(self) -> float:
        return float(self.P[1, 1])

    @property
    def cx(self) -> float:
        return float(self.P[0, 2])

    @property
    def cy(self) -> float:
        return float(self.P[1, 2])

    @property
    def tx(self) -> float:
        return float(self.P[0, 3])

    @property
    def baseline(self) -> float:
        """Baseline in metres implied by P[0, 3] = -fx * B (0 for a left/mono camera)."""
        return -self.tx / self.fx

    @property
    def is_distorted(self) -> bool:
        return bool(np.any(self.D != 0.0))

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "distortion_model": self.distortion_model,
            "K": self.K.ravel().tolist(),
            "D": self.D.tolist(),
            "R": self.R.ravel().tolist(),
            "P": self.P.ravel().tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CameraIntrinsics:
        try:
            return cls(
                int(d["width"]),
                int(d["height"]),
                d["K"],
                d["P"],
                d.get("D", [0.0] * 5),
                d.get("R", np.eye(3)),
                d.get("distortion_model", "plumb_bob"),
            )
        except KeyError as exc:
            raise InputError(f"camera description lacks {exc.args[0]!r}") from None

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera resampled to another image size (pixel-centre convention)."""
        sx, sy = width / self.width, height / self.height
        S = np.diag([sx, sy, 1.0])
        K = S @ self.K
        K[0, 2] = (self.K[0, 2] + 0.5) * sx - 0.5
        K[1, 2] = (self.K[1, 2] + 0.5) * sy - 0.5
        P = S @ self.P
        P[0, 2] = (self.P[0, 2] + 0.5) * sx - 0.5
        P[1, 2] = (self.P[1, 2] + 0.5) * sy - 0.5
        return CameraIntrinsics(width, height, K, P, self.D, self.R, self.distortion_model)


@dataclass(frozen=True)
class StereoPair:
    """A rectified stereo pair; construction checks that the two cameras form one."""

    left: CameraIntrinsics
    right: CameraIntrinsics

    def __post_init__(self):
        left, right = self.left, self.right
        if (left.width, left.height) != (right.width, right.height):
            raise InputError(
                f"stereo camera_info sizes differ: left {left.width}x{left.height}, "
                f"right {right.width}x{right.height}"
            )
        if left.is_distorted or right.is_distorted:
            raise InputError(
                "stereo camera_info has non-zero distortion d: the pair is not rectified "
                "(rectify with image_proc first)"
            )
        for name in ("fx", "fy", "cy"):
            a, b = getattr(left, name), getattr(right, name)
            if not np.isclose(a, b, rtol=_RECTIFIED_RTOL, atol=0.0):
                raise InputError(
                    f"stereo camera_info {name} differs (left {a}, right {b}): "
                    "the pair is not rectified"
                )
        if left.tx != 0.0:
            raise InputError(f"left camera_info P[3] must be 0, got {left.tx}")
        if right.P[1, 3] != 0.0:
            raise InputError(
                f"right camera_info P[7] must be 0 for a horizontal pair, got {right.P[1, 3]}"
            )
        if not right.baseline > 0.0:
            raise InputError(
                f"right camera_info P[3] = {right.tx} gives no positive baseline "
                "(expected P[3] = -fx * baseline)"
            )

    def to_dict(self) -> dict:
        return {"left": self.left.to_dict(), "right": self.right.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> StereoPair:
        return cls(CameraIntrinsics.from_dict(d["left"]), CameraIntrinsics.from_dict(d["right"]))

    @property
    def baseline(self) -> float:
        return self.right.baseline

    @property
    def doffs(self) -> float:
        """cx_right - cx_left in pixels: the disparity offset of a converging pair."""
        return self.right.cx - self.left.cx

    @property
    def convergence_distance(self) -> float:
        """Depth at which disparity is zero (inf for a parallel pair)."""
        if self.doffs == 0.0:
            return float("inf")
        return self.left.fx * self.baseline / self.doffs

    def depth_from_disparity(self, disparity: np.ndarray) -> np.ndarray:
        """Metric depth of each disparity (pixels); NaN where the disparity is not usable."""
        d = np.asarray(disparity, dtype=np.float64)
        denom = d + self.doffs
        with np.errstate(divide="ignore", invalid="ignore"):
            z = self.left.fx * self.baseline / denom
        return np.where(np.isfinite(d) & (denom > 0.0), z, np.nan)

    def disparity_from_depth(self, depth: np.ndarray) -> np.ndarray:
        z = np.asarray(depth, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = self.left.fx * self.baseline / z - self.doffs
        return np.where(np.isfinite(z) & (z > 0.0), d, np.nan)


def _yaml_matrix(doc: dict, key: str, shape: tuple[int, int], path) -> np.ndarray:
    entry = doc.get(key)
    if not isinstance(entry, dict) or "data" not in entry:
        raise InputError(f"{path}: calibration lacks {key} (a mapping with rows, cols, data)")
    data = np.asarray(entry["data"], dtype=np.float64)
    rows, cols = int(entry.get("rows", shape[0])), int(entry.get("cols", shape[1]))
    if key != "distortion_coefficients" and (rows, cols) != shape:
        raise InputError(f"{path}: {key} is {rows}x{cols}, expected {shape[0]}x{shape[1]}")
    if data.size != rows * cols:
        raise InputError(f"{path}: {key} has {data.size} values for {rows}x{cols}")
    return data.reshape(rows, cols) if key != "distortion_coefficients" else data.ravel()


def load_camera_yaml(path) -> CameraIntrinsics:
    """A camera from the YAML that ROS camera calibration writes (image_width, image_height,
    camera_matrix, distortion_model, distortion_coefficients, rectification_matrix,
    projection_matrix)."""
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise InputError(f"calibration file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"calibration file {path} is not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"calibration file {path} holds no mapping")
    for key in ("image_width", "image_height"):
        if key not in doc:
            raise InputError(f"{path}: calibration lacks {key}")
    return CameraIntrinsics(
        width=int(doc["image_width"]),
        height=int(doc["image_height"]),
        K=_yaml_matrix(doc, "camera_matrix", (3, 3), path),
        P=_yaml_matrix(doc, "projection_matrix", (3, 4), path),
        D=_yaml_matrix(doc, "distortion_coefficients", (1, 5), path)
        if "distortion_coefficients" in doc
        else np.zeros(5),
        R=_yaml_matrix(doc, "rectification_matrix", (3, 3), path)
        if "rectification_matrix" in doc
        else np.eye(3),
        distortion_model=str(doc.get("distortion_model", "plumb_bob")),
    )


def camera_yaml(cam: CameraIntrinsics, name: str = "camera") -> str:
    """The ROS camera calibration YAML of a camera (what load_camera_yaml reads)."""
    import yaml

    def mat(a: np.ndarray) -> dict:
        a = np.atleast_2d(a)
        return {"rows": a.shape[0], "cols": a.shape[1], "data": a.ravel().tolist()}

    return yaml.safe_dump(
        {
            "image_width": cam.width,
            "image_height": cam.height,
            "camera_name": name,
            "camera_matrix": mat(cam.K),
            "distortion_model": cam.distortion_model,
            "distortion_coefficients": mat(cam.D[None]),
            "rectification_matrix": mat(cam.R),
            "projection_matrix": mat(cam.P),
        },
        sort_keys=False,
    )
