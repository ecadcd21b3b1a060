"""Focal-stack datasets on disk: the simulator's writer and one reader for simulated and user data.

Layout (format ``micro_perception.focal_stacks/1``)::

    DATASET/
      dataset.json            format, optics, camera_info of both eyes, split, seeds, generator
      00000/                  one focal stack (a sample)
        meta.json             focus_distances_m, ground truth figures, scene seed
        left/slice_00.png ... slice_K-1.png   8-bit sRGB slices, nearest focus first
        left/aif.png          all-in-focus target (simulated only)
        left/depth.npy        float32 metric depth Z, m (NaN unknown), np.save format
        left/mask.png         instrument mask, 0/255
        right/...             the same for the right eye

A user's own recordings need only the images: a folder per focal stack holding ``left/`` (and
optionally ``right/``) with one image per slice, named so they sort in sweep order, and
optionally ``focus.txt`` (one focal distance in metres per line, in the same order). A folder
holding such stack folders, or a single stack folder, is a dataset; no dataset.json is needed.
``aif.*``, ``depth.npy`` and ``mask.*`` inside an eye folder are ground truth when present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from micro_perception.errors import InputError
from micro_perception.optics import MicroscopeOptics
from micro_perception.sim.render import SensorConfig, StereoSample, render_sample
from micro_perception.sim.scene import SceneConfig, make_scene

FORMAT = "micro_perception.focal_stacks/1"
EYES = ("left", "right")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RESERVED = ("aif", "mask", "depth")
SPLITS = {"train": 0, "val": 3_000_000, "test": 6_000_000}
MAX_PER_SPLIT = 3_000_000


def scene_seed(base_seed: int, split: str, index: int) -> int:
    """The scene seed of sample ``index``: disjoint ranges per split, so splits share no scene."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not 0 <= index < MAX_PER_SPLIT:
        raise InputError(f"sample index must be in 0..{MAX_PER_SPLIT - 1}, got {index}")
    return int(base_seed) * 10_000_000 + SPLITS[split] + index


@dataclass(frozen=True)
class SimulationSpec:
    optics: MicroscopeOptics
    scene: SceneConfig
    sensor: SensorConfig
    slices: int = 8
    noise: bool = True


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")


def write_sample(directory: Path, sample: StereoSample) -> dict:
    """Write one rendered stereo sample; meta.json goes last, so its presence marks completion."""
    directory.mkdir(parents=True, exist_ok=True)
    scene = sample.scene
    for eye in EYES:
        images = getattr(sample, eye)
        eye_dir = directory / eye
        eye_dir.mkdir(exist_ok=True)
        for k, img in enumerate(images.slices):
            _write_rgb(eye_dir / f"slice_{k:02d}.png", img)
        _write_rgb(eye_dir / "aif.png", images.aif)
        np.save(eye_dir / "depth.npy", images.depth.astype(np.float32), allow_pickle=False)
        if not cv2.imwrite(str(eye_dir / "mask.png"), images.mask):
            raise OSError(f"could not write {eye_dir / 'mask.png'}")
    inst = scene.instrument
    finite = np.isfinite(scene.gap_normal)
    meta = {
        "scene_seed": scene.seed,
        "focus_distances_m": [float(z) for z in sample.focus_distances],
        "instrument": inst.kind if inst else None,
        "tip_m": inst.tip.tolist() if inst else None,
        "nearest_point_m": scene.nearest_point.tolist()
        if scene.nearest_point is not None
        else None,
        "gap_normal_m": float(scene.gap_normal) if finite else None,
        "gap_axial_m": float(scene.gap_axial) if finite else None,
        "shaft_radius_m": float(inst.shaft_radius) if inst else None,
        "jaw_reach_m": inst.jaw_reach if inst else None,
        "vignette": scene.vignette,
    }
    tmp = directory / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, directory / "meta.json")
    return meta


def render_and_write(spec: SimulationSpec, seed: int, directory: Path) -> dict:
    if (directory / "meta.json").is_file():  # already complete: resume
        return json.loads((directory / "meta.json").read_text())
    scene = make_scene(seed, spec.optics, spec.scene)
    sample = render_sample(scene, spec.optics, spec.slices, sensor=spec.sensor, noise=spec.noise)
    return write_sample(directory, sample)


def dataset_header(spec: SimulationSpec, split: str, base_seed: int, samples: int) -> dict:
    return {
        "format": FORMAT,
        "split": split,
        "base_seed": int(base_seed),
        "samples": int(samples),
        "slices": spec.slices,
        "optics": spec.optics.to_dict(),
        "scene": asdict(spec.scene),
        "sensor": asdict(spec.sensor),
        "noise": spec.noise,
        "camera_info": spec.optics.stereo().to_dict(),
    }


# --- reading ---------------------------------------------------------------------------------


def jaw_reach(sample_dir: Path, meta: dict) -> float:
    """How far the sample's jaws or blades reach past its shaft's end (m; 0 without them), as
    its tool's maker would say: from meta.json, or for a set written before it was recorded
    there, from the scene its seed and its set's dataset.json draw again."""
    if meta.get("instrument") not in ("forceps", "scissors"):
        return 0.0
    if meta.get("jaw_reach_m") is not None:
        return float(meta["jaw_reach_m"])
    header = Path(sample_dir).parent / "dataset.json"
    if not header.is_file():
        raise InputError(f"{sample_dir} records no jaw reach and has no dataset.json to draw it")
    spec = json.loads(header.read_text())
    optics = MicroscopeOptics(**spec["optics"])
    scene = SceneConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in spec["scene"].items()}
    )
    return make_scene(meta["scene_seed"], optics, scene, texture=False).instrument.jaw_reach


def dataset_stereo_pair(root: Path):
    """The camera_info pair a dataset.json records (a StereoPair)."""
    from micro_perception.camera import StereoPair

    header = Path(root) / "dataset.json"
    if not header.is_file():
        raise InputError(f"{root} has no dataset.json with the camera_info pair")
    return StereoPair.from_dict(json.loads(header.read_text())["camera_info"])


@dataclass
class StackRecord:
    """Where the files of one focal stack are, and what is known about it."""

    root: Path
    slices: dict[str, list[Path]]  # eye -> slice images in sweep order
    focus_distances: np.ndarray | None  # (K,) m, or None when not recorded
    meta: dict


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.lower() not in RESERVED
    )


def _read_focus(stack: Path, meta: dict, count: int) -> np.ndarray | None:
    if "focus_distances_m" in meta:
        focus = np.asarray(meta["focus_distances_m"], np.float64)
    elif (stack / "focus.txt").is_file():
        lines = [ln.strip() for ln in (stack / "focus.txt").read_text().splitlines()]
        try:
            focus = np.array([float(ln) for ln in lines if ln and not ln.startswith("#")])
        except ValueError as exc:
            raise InputError(f"{stack / 'focus.txt'}: {exc}") from None
    else:
        return None
    if len(focus) != count:
        raise InputError(f"{stack}: {len(focus)} focus distances for {count} slices")
    return focus


def _record(stack: Path) -> StackRecord:
    meta = json.loads((stack / "meta.json").read_text()) if (stack / "meta.json").is_file() else {}
    slices = {}
    for eye in EYES:
        if (stack / eye).is_dir():
            files = _images(stack / eye)
            if not files:
                raise InputError(f"{stack / eye} holds no slice images")
            slices[eye] = files
    if "left" not in slices:
        raise InputError(f"{stack} has no left/ folder of slice images")
    counts = {len(v) for v in slices.values()}
    if len(counts) != 1:
        raise InputError(f"{stack}: left and right hold different numbers of slices")
    return StackRecord(stack, slices, _read_focus(stack, meta, counts.pop()), meta)


def find_stacks(root: Path) -> list[StackRecord]:
    """Every focal stack under ``root`` (a dataset folder, a folder of stacks, or one stack)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    if (root / "left").is_dir():
        return [_record(root)]
    stacks = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / "left").is_dir():
            if (root / "dataset.json").is_file() and not (child / "meta.json").is_file():
                continue  # a simulated sample still being written
            stacks.append(_record(child))
    if not stacks:
        raise InputError(
            f"{root} holds no focal stacks: expected folders with left/ (and optionally right/) "
            "slice images, see micro_perception.sim.dataset"
        )
    return stacks


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path} is not a readable image")
    return np.ascontiguousarray(img[..., ::-1])


def read_ground_truth(eye_dir: Path) -> dict[str, np.ndarray]:
    """aif (H, W, 3) uint8, depth (H, W) float32, mask (H, W) bool: those that exist."""
    out = {}
    for p in sorted(eye_dir.glob("aif.*")):
        out["aif"] = read_rgb(p)
        break
    if (eye_dir / "depth.npy").is_file():
        depth = np.load(eye_dir / "depth.npy", allow_pickle=False)
        if depth.ndim != 2 or depth.dtype.kind != "f":
            raise InputError(f"{eye_dir / 'depth.npy'} must be a 2D float array")
        out["depth"] = depth.astype(np.float32)
    for p in sorted(eye_dir.glob("mask.*")):
        mask = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise InputError(f"{p} is not a readable image")
        out["mask"] = mask > 127
        break
    return out


def iter_stack_images(record: StackRecord, eye: str) -> Iterator[np.ndarray]:
    for path in record.slices[eye]:
        yield read_rgb(path)


# --- generation ------------------------------------------------------------------------------

_COMPARED = ("format", "split", "base_seed", "slices", "optics", "scene", "sensor", "noise")


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one render per core


def _render_task(args) -> dict:
    spec, seed, directory = args
    return render_and_write(spec, seed, Path(directory))


def generate_dataset(
    out: Path,
    spec: SimulationSpec,
    samples: int,
    base_seed: int,
    split: str = "train",
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Render ``samples`` stacks into ``out`` (resuming a partial run); return a summary."""
    from tqdm import tqdm

    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = dataset_header(spec, split, base_seed, samples)
    existing_path = out / "dataset.json"
    if existing_path.is_file():
        existing = json.loads(existing_path.read_text())
        clash = [k for k in _COMPARED if json.dumps(existing.get(k)) != json.dumps(header[k])]
        if clash:
            raise InputError(
                f"{out} already holds a dataset made with other settings "
                f"({', '.join(clash)}); choose another --out"
            )
        header["samples"] = max(int(existing["samples"]), samples)
    existing_path.write_text(json.dumps(header, indent=1))

    tasks = [
        (spec, scene_seed(base_seed, split, i), str(out / f"{i:05d}")) for i in range(samples)
    ]
    metas = []
    with tqdm(total=samples, desc=f"simulate {split}", unit="stack", disable=not progress) as bar:
        if workers <= 1:
            _worker_init()
            for task in tasks:
                metas.append(_render_task(task))
                bar.update()
        else:
            import multiprocessing as mp

            # fork: workers inherit the loaded modules (and need no importable __main__).
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            with ctx.Pool(workers, initializer=_worker_init) as pool:
                for meta in pool.imap_unordered(_render_task, tasks):
                    metas.append(meta)
                    bar.update()
    gaps = [m["gap_normal_m"] for m in metas if m["gap_normal_m"] is not None]
    kinds = {}
    for m in metas:
        kinds[m["instrument"] or "none"] = kinds.get(m["instrument"] or "none", 0) + 1
    return {
        "out": str(out),
        "samples": len(metas),
        "instruments": kinds,
        "gap_mm_min": 1e3 * min(gaps) if gaps else None,
        "gap_mm_median": 1e3 * float(np.median(gaps)) if gaps else None,
        "gap_mm_max": 1e3 * max(gaps) if gaps else None,
    }
