"""Training the edge refiner (``micro_perception.depth.edge_refine``) on simulated frames.

Each frame is fused and segmented as the depth node does it (the fusion network, the
segmentation network with its mirror images), and every row where the network's mask and the
true mask each hold one run gives two samples: an edge's features and its outward error (the
network's sub-pixel edge less the true mask's, positive outward). Rows of two runs (open jaws)
are left out: which true run is which network run is not known. The samples of a set can be
kept (``cache``): fusing and segmenting is most of the time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from micro_perception.depth.edge_refine import FEATURES, EdgeNet, EdgeNetConfig, view_edges
from micro_perception.errors import InputError
from micro_perception.geometry import mask_runs
from micro_perception.training.common import TrainConfigBase, TrainJob, run_training

BORDER_PX = 9  # runs this close to the image's side have an edge the border cut


@dataclass
class EdgeTrainConfig(TrainConfigBase):
    out: str = "edge_refiner.pt"
    epochs: int = 8
    batch: int = 1024
    lr: float = 3e-3
    # Simulated sets, comma-separated; frames whose index is a multiple of val_every validate.
    val_every: int = 10
    seg_weights: str = "default"  # the segmentation network whose edges are corrected
    seg_flips: int = 2
    input: str = "fused"
    max_label_px: float = 3.0  # a network edge further than this from the true one: a wrong run
    limit: int | None = None  # frames per set
    cache: str | None = None  # a folder keeping each set's samples
    net: EdgeNetConfig = field(default_factory=EdgeNetConfig)

    def __post_init__(self):
        if self.input not in ("aif", "fused"):
            raise InputError(f"input must be aif or fused, got {self.input!r}")
        if self.val_every < 2 or self.max_label_px <= 0:
            raise InputError(
                f"val_every must be >= 2 and max_label_px > 0, got {self.val_every} and "
                f"{self.max_label_px}"
            )

    @property
    def sets(self) -> list[str]:
        return [s for s in self.data.split(",") if s]


def frame_samples(
    soft: np.ndarray, image: np.ndarray, true_mask: np.ndarray, max_label_px: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, FEATURES), outward errors (N,) px) of one view's edges on the rows where
    the network's mask (``soft``, a probability) and the true mask each hold one run."""
    h, w = soft.shape
    rows, first, last, left, right, f_left, f_right = view_edges(soft, image)
    t_rows, _, _, t_left, t_right = mask_runs((true_mask > 0).astype(np.float32))
    count = np.bincount(rows, minlength=h)
    t_count = np.bincount(t_rows, minlength=h)
    true_left, true_right = np.full(h, np.nan), np.full(h, np.nan)
    true_left[t_rows], true_right[t_rows] = t_left, t_right
    err_left = true_left[rows] - left  # outward is toward smaller columns on the left edge
    err_right = right - true_right[rows]
    with np.errstate(invalid="ignore"):
        keep = (count[rows] == 1) & (t_count[rows] == 1)
        keep &= (np.abs(err_left) < max_label_px) & (np.abs(err_right) < max_label_px)
    keep &= (first >= BORDER_PX) & (last < w - BORDER_PX)
    x = np.concatenate([f_left[keep], f_right[keep]])
    y = np.concatenate([err_left[keep], err_right[keep]]).astype(np.float32)
    return x, y


def collect_samples(root: str, cfg: EdgeTrainConfig, progress: bool = True) -> dict:
    """One simulated set's samples: {"x", "y", "frame"} (the frame's index for each sample),
    read from ``cfg.cache`` when it holds them for the same network and settings."""
    from tqdm import tqdm

    from micro_perception.depth.pipeline import DepthPipeline, PipelineConfig
    from micro_perception.fusion.fuser import Fuser
    from micro_perception.sim.dataset import dataset_stereo_pair, find_stacks
    from micro_perception.training.depth_eval import eval_frame

    key = {
        "set": str(Path(root).resolve()),
        "seg_weights": cfg.seg_weights,
        "seg_flips": cfg.seg_flips,
        "seg_px_per_mm": PipelineConfig.seg_px_per_mm,
        "input": cfg.input,
        "limit": cfg.limit,
        "max_label_px": cfg.max_label_px,
        "features": FEATURES,
    }
    cached = Path(cfg.cache) / f"{Path(root).resolve().name}.npz" if cfg.cache else None
    if cached is not None and cached.is_file():
        blob = np.load(cached)
        if json.loads(str(blob["key"])) == key:
            return {k: blob[k] for k in ("x", "y", "frame")}
    pipe = DepthPipeline(
        PipelineConfig(seg_flips=cfg.seg_flips), seg_weights=cfg.seg_weights, device="cpu"
    )
    if pipe.seg is None:
        raise InputError("training the edge refiner needs a segmentation network")
    fuser = Fuser("net", "cpu") if cfg.input == "fused" else None
    records = find_stacks(Path(root))[: cfg.limit]
    pair = dataset_stereo_pair(Path(root))
    xs, ys, frames = [], [], []
    bar = tqdm(records, desc=f"edges of {Path(root).name}", disable=not progress)
    for i, rec in enumerate(bar):
        gts, _, images = eval_frame(rec, fuser)
        # As the node segments: at the network's pixel scale (the true depth places the retina).
        scale = pipe.seg_scale(pair, gts["left"].get("depth"))
        probs = pipe.segment([images["left"], images["right"]], scale)
        for prob, eye in zip(probs, ("left", "right"), strict=True):
            if "mask" not in gts[eye]:
                raise InputError(f"{rec.root / eye} has no mask.png to learn the edges from")
            x, y = frame_samples(prob, images[eye], gts[eye]["mask"], cfg.max_label_px)
            xs.append(x)
            ys.append(y)
            frames.append(np.full(len(y), i))
    out = {
        "x": np.concatenate(xs) if xs else np.zeros((0, FEATURES), np.float32),
        "y": np.concatenate(ys) if ys else np.zeros(0, np.float32),
        "frame": np.concatenate(frames) if frames else np.zeros(0, int),
    }
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cached, key=json.dumps(key), **out)
    return out


def train_edges(cfg: EdgeTrainConfig, progress: bool = True) -> dict:
    if not cfg.sets:
        raise InputError("no simulated set to learn the edges from (--data)")

    def build(device: torch.device) -> TrainJob:
        parts = [collect_samples(root, cfg, progress) for root in cfg.sets]
        x = np.concatenate([p["x"] for p in parts])
        y = np.concatenate([p["y"] for p in parts])
        val = np.concatenate([p["frame"] % cfg.val_every == 0 for p in parts])
        if val.all() or not val.any():
            raise InputError(
                f"{len(val)} edges from {len(cfg.sets)} set(s) split into no training or no "
                f"validation part (val_every {cfg.val_every})"
            )
        x_train, y_train = torch.from_numpy(x[~val]), torch.from_numpy(y[~val])
        x_val, y_val = torch.from_numpy(x[val]).to(device), torch.from_numpy(y[val]).to(device)
        net = EdgeNet(cfg.net)
        net.set_normalisation(x_train)

        def step(model, batch, rng):
            features, error = batch
            loss = torch.nn.functional.smooth_l1_loss(model(features), error, beta=0.5)
            return loss, {"edge": float(loss.detach())}

        def validate(model) -> dict:
            before = float(torch.sqrt((y_val**2).mean()))
            after = float(torch.sqrt(((y_val - model(x_val)) ** 2).mean()))
            # The true edges are whole-pixel masks' (+-0.5 px): both figures carry that noise.
            return {"gain_px": before - after, "rmse_px": after, "rmse_before_px": before}

        return TrainJob(
            kind="edges",
            net=net,
            net_config=cfg.net.to_dict(),
            data=torch.utils.data.TensorDataset(x_train, y_train),
            step=step,
            validate=validate,
            score="gain_px",
        )

    return run_training(cfg, build, progress)
