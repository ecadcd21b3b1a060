"""The stereo teacher: semi-global matching on the rectified pair, checked left against right,
turned into metric depth with the converged microscope's disparity offset (no ROS).

Disparity d = u_left - u_right. A converging stereo microscope gives d = 0 at the convergence
distance and signed disparities around it, so the search range comes from a depth range, not
from zero. Depth is ``Z = fx B / (d + cx_right - cx_left)`` (StereoPair.depth_from_disparity).
The right view's disparity, from matching the mirrored pair, must agree with the left's within
``lr_max_diff`` pixels, or the pixel is left unknown (NaN). Confidence falls with the
left-right disagreement and with the lack of texture to match on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from micro_perception.camera import StereoPair
from micro_perception.errors import InputError

STEREO_BACKENDS = ("auto", "opencv", "torch")


@dataclass(frozen=True)
class StereoConfig:
    z_near: float = 0.190  # m: the closest depth searched
    z_far: float = 0.206  # m: the farthest
    block_size: int = 5
    uniqueness: int = 5
    speckle_window: int = 100
    speckle_range: int = 2
    lr_max_diff: float = 1.0  # px allowed between the left and right disparities
    disparity_precision: float = 0.5  # px: the sub-pixel precision claimed for matched pixels
    texture_floor: float = 0.5  # gradient (grey levels / px) below which confidence fades
    # opencv: StereoSGBM on the CPU. torch: semi-global matching in torch (sgm.py) on the
    # caller's device, Triton kernels on CUDA. auto: torch on CUDA, opencv otherwise.
    backend: str = "auto"
    sgm_p1: int = 32  # torch backend: penalty of a one-pixel disparity step (census bits)
    sgm_p2: int = 400  # torch backend: penalty of a larger step
    sgm_census_radius: int = 3  # torch backend: census window (2 r + 1)^2

    def __post_init__(self):
        if self.backend not in STEREO_BACKENDS:
            raise InputError(
                f"stereo backend must be one of {list(STEREO_BACKENDS)}, got {self.backend!r}"
            )
        if not 0 < self.sgm_p1 < self.sgm_p2 <= 4000:
            raise InputError(f"need 0 < sgm_p1 < sgm_p2 <= 4000, got {self.sgm_p1}, {self.sgm_p2}")
        if self.sgm_census_radius not in (1, 2, 3):
            raise InputError(f"sgm_census_radius must be 1, 2 or 3, got {self.sgm_census_radius}")
        if not 0 < self.z_near < self.z_far:
            raise InputError(f"need 0 < z_near < z_far, got {self.z_near}, {self.z_far}")
        if self.block_size < 3 or self.block_size % 2 == 0:
            raise InputError(f"block_size must be odd and >= 3, got {self.block_size}")


@dataclass
class StereoResult:
    depth: np.ndarray  # (H, W) float32 m, NaN where unknown
    confidence: np.ndarray  # (H, W) float32 in [0, 1]
    disparity: np.ndarray  # (H, W) float32 px, NaN where unknown

    def depth_tolerance(self, pair: StereoPair, precision_px: float) -> np.ndarray:
        """Depth uncertainty (m) implied by ``precision_px`` of disparity: Z^2 / (fx B) dd."""
        return self.depth**2 / (pair.left.fx * pair.baseline) * precision_px


def _grey(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.dtype == np.uint16:
        img = (img / 257).astype(np.uint8)
    if img.dtype != np.uint8:
        raise InputError(f"stereo images must be 8- or 16-bit, got {img.dtype}")
    return img


def _matcher(cfg: StereoConfig, d_min: int, n_disp: int) -> cv2.StereoSGBM:
    bs = cfg.block_size
    return cv2.StereoSGBM_create(
        minDisparity=d_min,
        numDisparities=n_disp,
        blockSize=bs,
        P1=8 * bs * bs,
        P2=32 * bs * bs,
        disp12MaxDiff=-1,
        uniquenessRatio=cfg.uniqueness,
        speckleWindowSize=cfg.speckle_window,
        speckleRange=cfg.speckle_range,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )


def disparity_range(pair: StereoPair, cfg: StereoConfig) -> tuple[int, int]:
    """(minDisparity, numDisparities) of the matcher for the configured depth range."""
    d_far, d_near = pair.disparity_from_depth(np.array([cfg.z_far, cfg.z_near]))
    d_min = int(np.floor(d_far)) - 2
    n = int(np.ceil((d_near - d_min + 2) / 16.0)) * 16
    return d_min, max(n, 16)


def resolve_backend(cfg: StereoConfig, device: torch.device | None) -> str:
    """The matcher that runs: ``auto`` is torch on CUDA, opencv elsewhere."""
    if cfg.backend != "auto":
        return cfg.backend
    return "torch" if device is not None and device.type == "cuda" else "opencv"


def stereo_depth(
    left: np.ndarray,
    right: np.ndarray,
    pair: StereoPair,
    cfg: StereoConfig | None = None,
    device: torch.device | None = None,
    warn=None,
) -> StereoResult:
    """Metric depth of the left view from a rectified pair (RGB or grey, 8/16-bit). ``device``:
    where the torch backend runs (default CPU); ``warn``: told once if its GPU kernels fail."""
    cfg = cfg or StereoConfig()
    gl, gr = _grey(left), _grey(right)
    if gl.shape != gr.shape:
        raise InputError(f"left {gl.shape} and right {gr.shape} images differ in size")
    if (gl.shape[1], gl.shape[0]) != (pair.left.width, pair.left.height):
        raise InputError(
            f"images are {gl.shape[1]}x{gl.shape[0]}, camera_info says "
            f"{pair.left.width}x{pair.left.height}"
        )
    d_min, n_disp = disparity_range(pair, cfg)
    if resolve_backend(cfg, device) == "torch":
        device = device or torch.device("cpu")
        return _torch_depth(gl, gr, pair, cfg, d_min, n_disp, device, warn)
    matcher = _matcher(cfg, d_min, n_disp)
    # SGBM gives up on the first d_min + n_disp columns; padding on the left keeps them.
    pad = max(0, d_min + n_disp)

    def match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = cv2.copyMakeBorder(a, 0, 0, pad, 0, cv2.BORDER_REPLICATE)
        b = cv2.copyMakeBorder(b, 0, 0, pad, 0, cv2.BORDER_REPLICATE)
        return matcher.compute(a, b)[:, pad:].astype(np.float32) / 16.0

    disp_l = match(gl, gr)
    # The right view's disparity: the mirrored pair, matched the same way, mirrored back.
    disp_r = match(np.ascontiguousarray(gr[:, ::-1]), np.ascontiguousarray(gl[:, ::-1]))[:, ::-1]
    # SGBM marks a pixel it gave up on by a disparity below the range; the last one is a clamp.
    disp_l = np.where((disp_l >= d_min) & (disp_l < d_min + n_disp - 1), disp_l, np.nan)
    disp_r = np.where(disp_r >= d_min, disp_r, np.nan)
    gx = cv2.Sobel(gl, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    texture = cv2.blur(np.abs(gx), (cfg.block_size, cfg.block_size))
    return _left_right_checked(
        *(
            torch.from_numpy(np.ascontiguousarray(a, np.float32))
            for a in (disp_l, disp_r, texture)
        ),
        pair,
        cfg,
    )


@torch.inference_mode()
def _torch_depth(gl, gr, pair: StereoPair, cfg: StereoConfig, d_min, n_disp, device, warn):
    """The torch backend, computed where the frames are."""
    from micro_perception.depth import sgm

    tl = torch.from_numpy(gl).to(device).float()
    tr = torch.from_numpy(gr).to(device).float()
    disp_l, disp_r = sgm.sgm_disparity(
        tl,
        tr,
        d_min,
        n_disp,
        cfg.sgm_p1,
        cfg.sgm_p2,
        cfg.uniqueness,
        radius=cfg.sgm_census_radius,
        warn=warn,
    )
    return _left_right_checked(disp_l, disp_r, sgm.sobel_texture(tl, cfg.block_size), pair, cfg)


def _left_right_checked(disp_l, disp_r, texture, pair: StereoPair, cfg: StereoConfig):
    """Both matchers' last step, on float32 tensors wherever they are (NaN: no disparity): the
    left disparity where the right view's, at the pixel it maps to, agrees; its depth; and a
    confidence from that agreement and the texture (grey levels / px)."""
    h, w = disp_l.shape
    xs = torch.arange(w, device=disp_l.device, dtype=torch.float32).expand(h, w)
    x_right = torch.round(xs - disp_l)
    inside = (x_right >= 0) & (x_right < w)
    idx = torch.nan_to_num(x_right, nan=0.0).clamp(0, w - 1).long()
    other = torch.where(inside, disp_r.gather(1, idx), torch.nan)
    lr_error = (disp_l - other).abs()
    valid = inside & (lr_error <= cfg.lr_max_diff)
    confidence = torch.exp(
        -((torch.nan_to_num(lr_error, nan=99.0) / max(cfg.lr_max_diff, 1e-3)) ** 2)
    )
    confidence = confidence * texture / (texture + cfg.texture_floor)
    disparity = torch.where(valid, disp_l, torch.nan).float().cpu().numpy()
    depth = pair.depth_from_disparity(disparity).astype(np.float32)
    confidence = np.where(valid.cpu().numpy() & np.isfinite(depth), confidence.cpu().numpy(), 0)
    return StereoResult(depth, confidence.astype(np.float32), disparity)
