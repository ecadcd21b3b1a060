"""Latency figures of the algorithms and networks, without ROS: what ``micro-perception bench``
reports stage by stage (the transport and end-to-end parts, which need ROS, are in
``micro_perception.ros``).

Every figure is a distribution (median, p95, max) over repeated runs after a warm-up, with CUDA
synchronised around each run, so a figure is the time a caller waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from micro_perception.errors import InputError
from micro_perception.inference import Runtime, RuntimeConfig

NETWORKS = ("fusion", "depth", "segmentation")


def timed(
    fn: Callable[[], object],
    seconds: float = 2.0,
    min_runs: int = 5,
    max_runs: int = 1000,
    warmup: int = 2,
    device: torch.device | None = None,
) -> dict:
    """Run ``fn`` repeatedly for about ``seconds``: {p50, p95, max} in ms and the run count."""
    cuda = device is not None and device.type == "cuda"

    def once() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    for _ in range(warmup):
        once()
    ms: list[float] = []
    end = time.perf_counter() + seconds
    while len(ms) < min_runs or (time.perf_counter() < end and len(ms) < max_runs):
        ms.append(once())
    return summary_ms(ms)


def summary_ms(ms) -> dict:
    a = np.asarray(ms, float)
    return {
        "p50": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "runs": len(a),
    }


def parse_runtimes(text: str, device: str = "auto") -> list[RuntimeConfig]:
    """``torch:fp32,torch:fp16,compile:fp16,tensorrt:fp16`` -> runtime configs."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        backend, _, precision = item.partition(":")
        precision = precision or "fp32"
        if backend == "compile":
            out.append(RuntimeConfig("torch", precision, device, torch_compile=True))
        else:
            out.append(RuntimeConfig(backend, precision, device))
    if not out:
        raise InputError("no runtime named (e.g. torch:fp32,torch:fp16)")
    return out


def runtime_label(rt: Runtime) -> str:
    d = rt.describe()
    name = "compile" if d.get("torch_compile") else d["backend"]
    return f"{name}:{d['precision']}@{d['device']}"


def build_network(name: str, depth_weights=None) -> tuple[torch.nn.Module, str]:
    """The shipped network (or ``depth_weights``), else a randomly initialised one: the latency
    of a network does not depend on its weights. Returns (network, where its weights are from)."""
    from micro_perception.resources import shipped_model

    if name == "fusion":
        from micro_perception.fusion.network import FusionNet, load_fusion_net

        path = shipped_model("fusion.pt")
        return (load_fusion_net(path), str(path)) if path else (FusionNet(), "random")
    if name == "segmentation":
        from micro_perception.depth.segmentation import SegNet, load_seg_net

        path = shipped_model("segmentation.pt")
        return (load_seg_net(path), str(path)) if path else (SegNet(), "random")
    if name == "depth":
        from micro_perception.depth.network import DepthNet, load_depth_net

        path = depth_weights or shipped_model("depth.pt")
        return (load_depth_net(path), str(path)) if path else (DepthNet(), "random")
    raise InputError(f"unknown network {name!r}; known: {list(NETWORKS)}")


def network_input(name: str, size: tuple[int, int], slices: int = 8) -> torch.Tensor:
    h, w = size
    g = torch.Generator().manual_seed(0)
    if name == "fusion":
        return torch.rand(1, slices, 3, h, w, generator=g)
    return torch.rand(1, 3, h, w, generator=g)


def bench_networks(
    names,
    sizes,
    runtimes: list[RuntimeConfig],
    seconds: float = 2.0,
    slices: int = 8,
    depth_weights=None,
    warn: Callable[[str], None] | None = None,
) -> list[dict]:
    """Each network at each size under each runtime: one row per combination."""
    rows = []
    for name in names:
        for cfg in runtimes:
            net, source = build_network(name, depth_weights)
            warnings: list[str] = []
            rt = Runtime(net, name, cfg, warn=(warn or warnings.append))
            for size in sizes:
                x = network_input(name, size, slices).to(rt.device)
                row = {"network": name, "size": list(size), "weights": source}
                try:
                    t0 = time.perf_counter()
                    rt.warmup(x, runs=1)
                    row["first_call_s"] = time.perf_counter() - t0
                    row.update(timed(lambda rt=rt, x=x: rt(x), seconds, device=rt.device))
                except Exception as exc:  # a failed combination is a result too
                    row["error"] = f"{type(exc).__name__}: {exc}"
                row["runtime"] = runtime_label(rt)
                row.update({k: str(v) for k, v in rt.describe().items()})
                if warnings:
                    row["warnings"] = list(warnings)
                if rt.device.type == "cuda":
                    row["gpu_mem_mb"] = torch.cuda.max_memory_allocated(rt.device) / 2**20
                    torch.cuda.reset_peak_memory_stats(rt.device)
                rows.append(row)
            del rt, net
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def bench_stages(
    slices_lr: tuple[np.ndarray, np.ndarray],
    pair,
    runtime: RuntimeConfig,
    seconds: float = 2.0,
    depth_weights=None,
) -> dict:
    """The algorithm stages on one real stereo focal stack (K, H, W, 3) uint8 per eye: focal
    fusion, the depth network, the segmentation network, the stereo teacher, and the geometry
    (segmentation to distance)."""
    from micro_perception.depth.pipeline import DepthPipeline
    from micro_perception.depth.stereo import StereoConfig, stereo_depth
    from micro_perception.fusion.fuser import Fuser
    from micro_perception.geometry import measure

    out: dict[str, dict] = {}
    fuser = Fuser("net", runtime=runtime)
    dev = fuser.device
    left_stack, right_stack = slices_lr
    out["fusion"] = timed(lambda: fuser(left_stack), seconds, device=dev)
    left, right = fuser(left_stack), fuser(right_stack)
    net, source = build_network("depth", depth_weights)
    depth_rt = Runtime(net, "depth", runtime)
    x = torch.from_numpy(left).permute(2, 0, 1).float().div(255)[None].to(depth_rt.device)
    out["depth_net"] = timed(lambda: depth_rt(x), seconds, device=depth_rt.device)
    out["depth_net"]["weights"] = source
    pipe = DepthPipeline(runtime=runtime)
    out["segmentation"] = timed(lambda: pipe.segment([left, right]), seconds, device=dev)
    st = stereo_depth(left, right, pair)
    out["stereo_teacher"] = timed(lambda: stereo_depth(left, right, pair), seconds)
    out["stereo_teacher"]["backend"] = "opencv@cpu"
    if dev.type == "cuda":
        # The GPU stereo teacher the pipeline runs there (stereo backend auto).
        gpu = StereoConfig(backend="torch")
        out["stereo_teacher_gpu"] = timed(
            lambda: stereo_depth(left, right, pair, gpu, dev), seconds, device=dev
        )
        out["stereo_teacher_gpu"]["backend"] = f"torch@{dev}"
    # The geometry as the pipeline runs it: on the probabilities, whose 0.5 crossing places
    # the silhouettes' edges between pixels.
    probs = pipe.segment([left, right])
    args = (pair, st.depth, probs[0], probs[1], st.confidence, None, (left, right))
    out["geometry"] = timed(lambda: measure(*args), seconds)
    out["geometry"]["method"] = measure(*args).method
    out["pipeline"] = timed(lambda: pipe(left, right, pair), seconds, device=dev)
    # depth_node's work when nobody subscribes to the depth image or the point cloud.
    out["pipeline_distance_only"] = timed(
        lambda: pipe(left, right, pair, dense=False), seconds, device=dev
    )
    out["_runtime"] = {"fusion": fuser.runtime.describe(), **pipe.runtimes()}
    return out


def sgbm_peer(left: np.ndarray, right: np.ndarray, seconds: float = 2.0, disparities=64) -> dict:
    """OpenCV StereoSGBM at the same resolution: what ``stereo_image_proc`` computes."""
    import cv2

    gl = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY)
    gr = cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
    # SGBM needs the disparity range well inside the image width.
    disparities = min(disparities, max(16, gl.shape[1] // 32 * 16))
    sgbm = cv2.StereoSGBM_create(0, disparities, 5, 8 * 25, 32 * 25, 1, 63, 10, 100, 1)
    return {**timed(lambda: sgbm.compute(gl, gr), seconds), "disparities": disparities}


def bench_frame(size: tuple[int, int], slices: int = 8, seed: int = 6_000_000):
    """One rendered stereo focal stack at ``size``: ((left (K,H,W,3), right), StereoPair,
    scene). The scene is the first from ``seed`` on with an instrument in it: a frame without
    one skips most of the geometry and would time the easy path."""
    from micro_perception.optics import MicroscopeOptics
    from micro_perception.sim.render import render_sample
    from micro_perception.sim.scene import SceneConfig, make_scene

    optics = MicroscopeOptics().scaled_to(*size)
    scene = make_scene(seed, optics, SceneConfig())
    while scene.instrument is None:
        seed += 1
        scene = make_scene(seed, optics, SceneConfig())
    sample = render_sample(scene, optics, slices)
    stacks = tuple(np.stack(getattr(sample, eye).slices) for eye in ("left", "right"))
    info = {"seed": seed, "instrument": scene.instrument.kind, "gap_normal_m": scene.gap_normal}
    return stacks, optics.stereo(), info


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
