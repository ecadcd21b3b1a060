"""The ``micro-perception`` command.

Subcommands that need ROS import it lazily, so ``micro-perception info`` works (and says what is
missing) on a machine without ROS 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        return f"not available ({type(exc).__name__}: {exc})"
    return str(getattr(mod, "__version__", "available"))


def cmd_info(args: argparse.Namespace) -> int:
    """Report the runtime: Python, ROS 2 middleware, synchroniser backend, torch and CUDA."""
    rows = {
        "python": platform.python_version(),
        "micro_perception": _version("micro_perception"),
        "numpy": _version("numpy"),
        "opencv": _version("cv2"),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "torch_tensorrt": _version("torch_tensorrt"),
        "rclpy": _version("rclpy"),
    }
    try:
        import torch

        rows["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        rows["cuda"] = "torch missing"
    try:
        from rclpy.utilities import get_rmw_implementation_identifier

        rows["rmw"] = get_rmw_implementation_identifier()
        from micro_perception.ros import conversions, sync

        rows["stereo_sync"] = sync.BACKEND
        rows["pointcloud2"] = (
            "sensor_msgs_py" if conversions._sensor_msgs_py_pc2 else "micro_perception"
        )
    except ImportError as exc:
        rows["rmw"] = f"ROS 2 not importable ({exc}); install the `ros` extra or source a distro"
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(map(len, rows))
        for key, value in rows.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _add_transport_args(p: argparse.ArgumentParser, frames: int, size: tuple[int, int]) -> None:
    p.add_argument("--size", nargs=2, type=int, default=list(size), metavar=("H", "W"))
    p.add_argument("--frames", type=int, default=frames, help="stereo pairs to send")
    p.add_argument("--rate", type=float, default=10.0, help="pairs per second")
    p.add_argument("--encoding", default="rgb8", choices=["rgb8", "bgr8", "mono8"])
    p.add_argument(
        "--reliability",
        default="best_effort",
        choices=["best_effort", "reliable"],
        help="QoS reliability of the receiving side",
    )
    p.add_argument(
        "--in-process", action="store_true", help="publisher in this process instead of its own"
    )
    p.add_argument(
        "--default-transport",
        action="store_true",
        help="use Fast DDS's default transports, not the package's large-image profile",
    )
    p.add_argument(
        "--transport",
        default="raw",
        choices=["raw", "shm", "auto"],
        help="images as sensor_msgs/Image over DDS (raw), through shared memory (shm), or "
        "auto: as arrays from a publisher in this process (--in-process), else shared memory",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _transport_check(args: argparse.Namespace) -> int:
    from micro_perception.resources import use_large_image_transport
    from micro_perception.ros.transport_check import TransportCheckConfig, run_transport_check

    profile = "Fast DDS defaults" if args.default_transport else use_large_image_transport()

    cfg = TransportCheckConfig(
        height=args.size[0],
        width=args.size[1],
        encoding=args.encoding,
        frames=args.frames,
        rate=args.rate,
        reliability=args.reliability,
        separate_process=not args.in_process,
        transport=args.transport,
    )
    where = "in this process" if cfg.separate_process is False else "in its own process"
    if not args.json:
        print(
            f"sending {cfg.frames} {cfg.width}x{cfg.height} {cfg.encoding} stereo pairs at "
            f"{cfg.rate} Hz from stereo_pattern_node ({where}) to stereo_check_node "
            f"({cfg.reliability} subscriptions, {cfg.transport} images, "
            "ApproximateTimeSynchronizer); "
            f"DDS profile: {profile}",
            flush=True,
        )
    report = run_transport_check(cfg)
    report["dds_profile"] = profile
    failed = report["pairs"] == 0 or report["corrupt"] > 0 or report["bad_input"] > 0
    if args.json:
        print(json.dumps(report, indent=2))
    else:

        def ms(v):
            return "-" if v is None else f"{v:.1f} ms"

        print(
            f"  pairs received   {report['pairs']} of {report['sent']} "
            f"({report['missing']} lost in between)"
        )
        print(
            f"  bit-exact        {report['exact']}  corrupt {report['corrupt']}  "
            f"rejected {report['bad_input']}"
        )
        via = report.get("transport", {}).get("left", {})
        print("  arrived via      " + ", ".join(f"{k} {n}" for k, n in via.items() if n))
        print(
            f"  latency          p50 {ms(report['latency_ms_p50'])}  "
            f"p95 {ms(report['latency_ms_p95'])}  max {ms(report['latency_ms_max'])}  "
            f"(now - header.stamp)"
        )
        if report["baseline_m"] is not None:
            print(
                f"  camera_info      baseline {report['baseline_m'] * 1e3:.1f} mm, "
                f"convergence {report['convergence_m'] * 1e3:.1f} mm"
            )
        print("  result           " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """Check DDS transport, conversion and stereo sync end to end on this machine."""
    return _transport_check(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: a virtual-microscope rosbag replayed through the nodes over DDS, the
    outputs recorded to a rosbag and scored against ground truth."""
    import subprocess

    from micro_perception.resources import use_large_image_transport
    from micro_perception.ros.demo import DemoConfig, run_demo, summary_table

    use_large_image_transport()
    cfg = DemoConfig(
        out=args.out,
        seconds=args.seconds,
        size=tuple(args.size),
        slices=args.slices,
        rate=args.rate,
        device=args.device,
        instrument=args.instrument,
    )
    print(f"micro_perception demo -> {cfg.out}/", flush=True)

    def say(text, end="\n"):
        print(text, end=end, flush=True)

    try:
        metrics = run_demo(cfg, say)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print("5/5 summary")
    print(summary_table(metrics))
    print(
        f"files: {cfg.out}/montage.png, {cfg.out}/distance.png, {cfg.out}/metrics.json, "
        f"{cfg.out}/output_bag (ros2 bag play {cfg.out}/output_bag); took "
        f"{metrics['seconds']:.0f} s"
    )
    return 0


def _sim_spec(args: argparse.Namespace):
    from micro_perception.optics import MicroscopeOptics
    from micro_perception.sim.dataset import SimulationSpec
    from micro_perception.sim.render import SensorConfig
    from micro_perception.sim.scene import SceneConfig

    optics = MicroscopeOptics().scaled_to(args.size[0], args.size[1])
    sensor = SensorConfig(jpeg_quality=getattr(args, "jpeg_quality", 0))
    return SimulationSpec(
        optics,
        SceneConfig(),
        sensor,
        slices=args.slices,
        noise=not getattr(args, "no_noise", False),
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    """Render a focal-stack dataset with the virtual microscope."""
    from pathlib import Path

    from micro_perception.sim.dataset import generate_dataset, scene_seed

    spec = _sim_spec(args)
    summary = generate_dataset(
        Path(args.out),
        spec,
        args.samples,
        args.seed,
        args.split,
        args.workers,
        progress=not args.json,
    )
    if args.preview:
        import cv2

        from micro_perception.sim.preview import sample_montage
        from micro_perception.sim.render import render_sample
        from micro_perception.sim.scene import make_scene

        scene = make_scene(scene_seed(args.seed, args.split, 0), spec.optics, spec.scene)
        sample = render_sample(
            scene, spec.optics, spec.slices, sensor=spec.sensor, noise=spec.noise
        )
        cv2.imwrite(args.preview, sample_montage(sample)[..., ::-1])
        summary["preview"] = args.preview
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:<14} {value}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a network as ONNX, a torch.export program, or a Torch-TensorRT program."""
    from micro_perception.errors import InputError
    from micro_perception.export import export_model
    from micro_perception.resources import shipped_model

    loaders = {
        "fusion": ("micro_perception.fusion.network", "load_fusion_net", "fusion.pt"),
        "depth": ("micro_perception.depth.network", "load_depth_net", "depth.pt"),
        "segmentation": ("micro_perception.depth.segmentation", "load_seg_net", "segmentation.pt"),
    }
    module, fn, shipped = loaders[args.model]
    weights = args.weights or shipped_model(shipped)
    if weights is None:
        raise InputError(f"no {args.model} weights installed: pass --weights FILE")
    net = getattr(__import__(module, fromlist=[fn]), fn)(weights)
    info = export_model(
        net,
        args.model,
        args.format,
        args.out,
        tuple(args.size),
        args.slices,
        args.dynamic,
        args.precision,
    )
    info["weights"] = str(weights)
    print(
        json.dumps(info, indent=2) if args.json else f"wrote {info['out']} ({info['bytes']} bytes)"
    )
    return 0


def _conversion_stages(image, seconds: float) -> dict:
    """sensor_msgs/Image -> array (with the copy a node keeps) and array -> Image, where the
    ROS message packages are installed."""
    try:
        from micro_perception.ros.conversions import image_to_numpy, numpy_to_image
    except ImportError:
        return {}
    import numpy as np

    from micro_perception import bench

    msg = numpy_to_image(image, "rgb8")
    return {
        "msg_to_array": bench.timed(lambda: np.array(image_to_numpy(msg)), seconds),
        "array_to_msg": bench.timed(lambda: numpy_to_image(image, "rgb8"), seconds),
    }


def cmd_config(args: argparse.Namespace) -> int:
    """Write the parameter file of the pipeline's nodes (every parameter at its default)."""
    from micro_perception.ros.config import render_yaml

    text = render_yaml()
    if args.out == "-":
        sys.stdout.write(text)
    else:
        from pathlib import Path

        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The pipeline's nodes in this process (an executor and thread each; images pass between
    them as arrays), with a parameter file: what ros2 launch starts, for machines without a
    ROS distro."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.parameter import Parameter

    from micro_perception.resources import config_file, use_large_image_transport
    from micro_perception.ros.chain import FUSED
    from micro_perception.ros.config import load_params
    from micro_perception.ros.depth_node import DepthNode
    from micro_perception.ros.focal_fusion_node import FocalFusionNode
    from micro_perception.ros.runner import spin_each
    from micro_perception.ros.sim_microscope_node import SimMicroscopeNode

    use_large_image_transport()
    params_file = args.params or str(config_file("micro_perception.yaml"))
    ns = args.namespace
    raw = ["--ros-args", "-r", "left/image:=left/image_raw", "-r", "right/image:=right/image_raw"]
    plan = [(SimMicroscopeNode, "sim_microscope_node", None)] if args.sim else []
    if not args.no_fusion:
        plan.append((FocalFusionNode, "focal_fusion_node", None))
    plan.append((DepthNode, "depth_node", raw if args.no_fusion else FUSED))
    # Our own SIGINT/SIGTERM handling: a stop flag the spin loop checks, so Ctrl-C stops cleanly
    # whatever the executor is waiting on (with sim time and no /clock, rclpy's own handler
    # did not wake it).
    import signal
    import threading

    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    nodes, executors = [], []
    try:
        for cls, name, cli_args in plan:
            values = load_params(params_file, name, ns)
            values["use_sim_time"] = args.use_sim_time
            overrides = [Parameter(k, value=v) for k, v in values.items()]
            nodes.append(cls(namespace=ns, parameter_overrides=overrides, cli_args=cli_args))
        started, threads = spin_each(nodes)
        executors.extend(started)
        nodes[-1].get_logger().info(
            f"running {', '.join(name for _, name, _ in plan)} in /{ns.strip('/')} "
            f"with {params_file}; Ctrl-C stops"
        )
        while not stop.wait(0.2) and all(t.is_alive() for t in threads):
            pass
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for ex in executors:
            ex.shutdown(timeout_sec=2.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Play a rosbag2 (mcap or sqlite3) onto the live graph with its original stamps."""
    import threading
    import time

    import rclpy

    from micro_perception.resources import use_large_image_transport
    from micro_perception.ros.replay import BagPlayer

    use_large_image_transport()
    rclpy.init()
    stop = threading.Event()
    player = None
    try:
        player = BagPlayer(args.bag, args.rate, args.loop, args.clock, args.topics)
        log = player.get_logger()
        log.info(
            f"playing {args.bag} at x{args.rate}"
            + (" in a loop" if args.loop else "")
            + (", publishing /clock" if args.clock else "")
        )
        time.sleep(args.delay)  # let subscribers discover the publishers first
        if args.wait_for_subscribers and not player.wait_for_subscribers(
            args.wait_for_subscribers
        ):
            log.warning(f"not every topic has {args.wait_for_subscribers} subscribers; playing")
        report = player.play(stop)
        log.info(f"published {sum(report['published'].values())} messages: {report}")
        if args.json:
            print(json.dumps(report, indent=2))
    except KeyboardInterrupt:
        stop.set()
    finally:
        if player is not None:
            player.destroy_node()
        rclpy.try_shutdown()
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    """Minutes of the virtual microscope at full rate through the node processes: RSS and latency
    at the start and the end, frames in and out. Exit 1 when a node's RSS grew by more than
    --max-growth percent."""
    from micro_perception.resources import use_large_image_transport
    from micro_perception.ros.bench_dds import run_end_to_end

    use_large_image_transport()
    seconds = args.minutes * 60
    window = min(args.window, seconds / 3)
    if not args.json:
        print(
            f"soak: {args.minutes:g} min of {args.size[0]}x{args.size[1]} sweeps at "
            f"{args.sweep_rate:g} Hz through sim -> focal_fusion_node -> depth_node ...",
            flush=True,
        )
    r = run_end_to_end(
        tuple(args.size),
        seconds,
        args.slices,
        args.sweep_rate,
        {"device": args.device},
        warmup_s=args.warmup,
        soak_window_s=window,
    )
    soak = r["soak"]
    worst = max(soak["rss_growth_pct"].values(), default=0.0)
    out = {
        "minutes": args.minutes,
        "size": r["size"],
        "sweeps_in": r["sweeps_in"],
        "distances_out": r["distances_out"],
        "dropped": r["dropped"],
        "rate_hz": r["rate_hz"],
        **soak,
        "max_rss_growth_pct": worst,
        "ok": worst <= args.max_growth,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name in soak["rss_start_mb"]:
            print(
                f"  {name:<20} RSS {soak['rss_start_mb'][name]:.0f} -> "
                f"{soak['rss_end_mb'][name]:.0f} MB ({soak['rss_growth_pct'].get(name, 0):+.1f} %)"
            )
        for key in ("latency_first_ms", "latency_last_ms"):
            lat = soak[key] or {}
            print(
                f"  {key.replace('_', ' ')}: p50 {lat.get('p50', float('nan')):.0f}, "
                f"p95 {lat.get('p95', float('nan')):.0f} ms"
            )
        print(
            f"  sweeps in {r['sweeps_in']:.0f}, distances out {r['distances_out']}, "
            f"{r['dropped']} dropped; worst RSS growth {worst:+.1f} % "
            f"({'ok' if out['ok'] else 'over'} {args.max_growth:g} %)"
        )
    return 0 if out["ok"] else 1


BENCH_PARTS = ("stages", "peers", "networks", "end_to_end", "transport")


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    # Literals, not depth.pipeline's SEG_FLIPS and default: building the parser imports no torch.
    p.add_argument(
        "--stereo-backend",
        default="auto",
        choices=["auto", "opencv", "torch"],
        help="stereo teacher: OpenCV SGBM on the CPU, or semi-global matching in torch on "
        "--device (Triton kernels on CUDA); auto: torch on CUDA, else opencv",
    )
    p.add_argument(
        "--seg-flips",
        type=int,
        default=2,
        choices=[1, 2, 4],
        help="segment each image as is (1), also mirrored (2, the default: left-right; 4: and "
        "upside down) and average; 2x or 4x the segmentation time",
    )
    p.add_argument(
        "--seg-px-per-mm",
        type=float,
        default=-1.0,
        metavar="S",
        help="pixel scale the segmentation network learned at, px per mm at the working "
        "distance: images at another scale are resized to it for segmenting (default: the "
        "shipped network's 64 with the shipped weights, else 0; 0: never resized)",
    )
    p.add_argument(
        "--light-pipe-glow",
        type=float,
        default=0.35e-3,
        metavar="M",
        help="a light pipe's fibre glows this far past its metal sleeve, m (the virtual "
        "microscope's 0.35 mm; 0: the mask's end is believed)",
    )
    p.add_argument(
        "--symmetric-jaws",
        action="store_true",
        help="the instrument has two straight jaws symmetric about its shaft (forceps): a jaw "
        "hidden behind the other is placed by symmetry (not for scissors)",
    )
    p.add_argument(
        "--jaw-reach",
        type=float,
        default=0.0,
        metavar="M",
        help="how far the tool's closed jaws or blades reach past its shaft's end, m (0: not "
        "told): jaws a steep shaft hides below its end are placed that far along it",
    )


def _add_edge_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--edge-weights",
        help="edge refiner weights, or none (default: the shipped ones with the shipped "
        "segmentation weights, else none)",
    )


def _add_uncertainty_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--uncertainty",
        help="distance uncertainty file (`train uncertainty`), or none (default: the shipped "
        "models/distance_uncertainty.json with the shipped segmentation weights and edge "
        "refiner, else none)",
    )


def _pipeline_config(args: argparse.Namespace, **kwargs):
    from micro_perception.depth.pipeline import PipelineConfig
    from micro_perception.depth.stereo import StereoConfig
    from micro_perception.geometry import TOOL_SETTINGS, tool_geometry

    return PipelineConfig(
        seg_flips=args.seg_flips,
        seg_px_per_mm=args.seg_px_per_mm,
        stereo=StereoConfig(backend=args.stereo_backend),
        geometry=tool_geometry({k: getattr(args, k) for k in TOOL_SETTINGS}),
        **kwargs,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency, stage by stage and network by network, with peers measured in the same run."""
    import torch

    from micro_perception import bench
    from micro_perception.errors import InputError
    from micro_perception.inference import library_versions, pick_device

    parts = set(filter(None, args.parts.split(",")))
    unknown = parts - set(BENCH_PARTS)
    if unknown:
        raise InputError(f"unknown bench parts {sorted(unknown)}; known: {list(BENCH_PARTS)}")
    device = pick_device(args.device)
    runtimes = args.runtimes or (
        "torch:fp32,torch:fp16,compile:fp16,tensorrt:fp16"
        if device.type == "cuda"
        else "torch:fp32"
    )
    configs = bench.parse_runtimes(runtimes, str(device))
    sizes = [tuple(s) for s in (args.size or [(512, 512), (1080, 1920)])]
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    out: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
        "sizes": [list(s) for s in sizes],
    }
    if "stages" in parts or "peers" in parts:
        out["stages"], out["peers"] = {}, {"sgbm": {}}
        for size in sizes:
            key = f"{size[0]}x{size[1]}"
            say(f"rendering a {key} stereo stack of {args.slices} slices ...")
            stacks, pair, scene = bench.bench_frame(size, args.slices)
            if "stages" in parts:
                stages = bench.bench_stages(
                    stacks, pair, configs[0], args.seconds, args.depth_weights
                )
                out["stages"][key] = {
                    **_conversion_stages(stacks[0][-1], args.seconds),
                    **stages,
                    "_scene": scene,
                }
            if "peers" in parts:
                left = stacks[0][len(stacks[0]) // 2]
                right = stacks[1][len(stacks[1]) // 2]
                out["peers"]["sgbm"][key] = bench.sgbm_peer(left, right, args.seconds)
            say(f"{key}: done")
    if "networks" in parts:
        out["networks"] = bench.bench_networks(
            args.networks.split(","),
            sizes,
            configs,
            args.seconds,
            args.slices,
            args.depth_weights,
        )
    if "end_to_end" in parts or "transport" in parts:
        from micro_perception.resources import use_large_image_transport
        from micro_perception.ros import bench_dds

        use_large_image_transport()
        runtime = {k: v for k, v in configs[0].to_dict().items() if k != "engine_cache_dir"}
        runtime["device"] = str(device).split(":")[0]
    if "end_to_end" in parts:
        out["end_to_end"] = {}
        for size in sizes:
            key = f"{size[0]}x{size[1]}"
            say(
                f"end to end at {key}: sim -> focal_fusion_node -> depth_node "
                + (
                    "(fusion and depth in one process) ..."
                    if args.one_process
                    else "processes ..."
                )
            )
            out["end_to_end"][key] = bench_dds.run_end_to_end(
                size,
                args.e2e_seconds,
                args.slices,
                args.sweep_rate,
                runtime,
                one_process=args.one_process,
            )
    if "transport" in parts:
        size = max(sizes, key=lambda s: s[0] * s[1])
        say(f"transport: {size[0]}x{size[1]} rgb8 pairs between processes, in one, memcpy ...")
        out["transport"] = bench_dds.run_transport(size, args.transport_frames)
    out["rss_mb"] = {"bench": bench.peak_rss_mb()}
    for key, e2e in out.get("end_to_end", {}).items():
        for name, mb in e2e["rss_mb"].items():
            out["rss_mb"][f"{name}@{key}"] = mb
    if device.type == "cuda":
        out["gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for size, stages in out.get("stages", {}).items():
        scene = stages["_scene"]
        print(
            f"\nstages at {size} ({out['device']}; a {scene['instrument']} "
            f"{scene['gap_normal_m'] * 1e3:.2f} mm above the retina, geometry method "
            f"{stages['geometry']['method']}), ms:"
        )
        print(f"  {'stage':<20}{'p50':>9}{'p95':>9}{'max':>9}")
        for name, t in stages.items():
            if not name.startswith("_"):
                print(f"  {name:<20}{t['p50']:9.2f}{t['p95']:9.2f}{t['max']:9.2f}")
    for size, t in out.get("peers", {}).get("sgbm", {}).items():
        print(f"peer OpenCV StereoSGBM at {size}: p50 {t['p50']:.2f} ms, p95 {t['p95']:.2f} ms")
    if "networks" in out:
        print(f"\nnetworks ({out['device']}), ms:")
        print(f"  {'network':<13}{'size':<11}{'runtime':<28}{'p50':>9}{'p95':>9}{'max':>9}")
        for r in out["networks"]:
            size = f"{r['size'][0]}x{r['size'][1]}"
            if "error" in r:
                print(f"  {r['network']:<13}{size:<11}{r['runtime']:<28}  {r['error'][:60]}")
                continue
            print(
                f"  {r['network']:<13}{size:<11}{r['runtime']:<28}"
                f"{r['p50']:9.2f}{r['p95']:9.2f}{r['max']:9.2f}"
            )
    for size, e in out.get("end_to_end", {}).items():
        lat = e["latency_ms"] or {}
        print(
            f"\nend to end at {size} ({' + '.join(e['processes'])}): {e['rate_hz']:.2f} Hz out of "
            f"{e['input_rate_hz']:.2f} Hz sweeps in, {e['dropped']} dropped; latency p50 "
            f"{lat.get('p50', float('nan')):.0f} ms, p95 {lat.get('p95', float('nan')):.0f} ms, "
            f"max {lat.get('max', float('nan')):.0f} ms"
        )
        for name, fig in e.get("nodes", {}).items():
            times = ", ".join(f"{k} {v:.0f}" for k, v in fig.items() if k.endswith("_ms"))
            dropped = fig.get("superseded_in_window")
            print(
                f"  {name} (median of {fig['reports']} reports): {times or '-'}"
                + (f"; superseded {dropped}" if dropped is not None else "")
            )
    if "transport" in out:
        t = out["transport"]
        for key in ("between_processes", "in_process", "shm_between_processes", "intra_process"):
            lat = t[key]["latency_ms"] or {}
            print(
                f"transport {t['size'][0]}x{t['size'][1]} rgb8 pairs {key.replace('_', ' ')}: "
                f"{t[key]['received']}/{t['frames']}, p50 {lat.get('p50', float('nan')):.1f} ms"
            )
        hand = t["intra_process_handover_ms"]
        print(
            "intra-process handover alone, from publish(), p50: one image "
            f"{hand['image']['p50']:.2f} ms, a synchronised pair {hand['pair']['p50']:.2f} ms; "
            f"on the publisher's thread {hand['image_direct']['p50']:.2f} and "
            f"{hand['pair_direct']['p50']:.2f} ms"
        )
        print(
            f"memcpy of one frame (warm): p50 {t['memcpy_ms']['p50']:.2f} ms; mp_shm's copies of "
            f"a pair (2 writes, 2 reads, no ROS): p50 {t['shm_copies_ms']['p50']:.2f} ms"
        )
    print("\npeak RSS, MB: " + ", ".join(f"{k} {v:.0f}" for k, v in out["rss_mb"].items() if v))
    return 0


def cmd_bench_sim(args: argparse.Namespace) -> int:
    """Time the virtual microscope on one core: scene, ray casting, sweeps + sensor."""
    import time

    import cv2
    import numpy as np
    import torch

    from micro_perception.sim.render import render_layers, render_sample
    from micro_perception.sim.scene import make_scene

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    spec = _sim_spec(args)
    make_scene(args.seed, spec.optics)  # warm caches (kernels, imports)
    rows = []
    for i in range(args.samples):
        t0 = time.perf_counter()
        scene = make_scene(args.seed + i, spec.optics, spec.scene)
        t1 = time.perf_counter()
        render_layers(scene, spec.optics, "left")
        t2 = time.perf_counter()
        render_sample(scene, spec.optics, spec.slices, sensor=spec.sensor, noise=spec.noise)
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t1))
    times = np.array(rows)
    report = {
        "size": list(args.size),
        "slices_per_eye": args.slices,
        "samples": args.samples,
        "threads": 1,
        "scene_s_mean": float(times[:, 0].mean()),
        "raycast_one_eye_s_mean": float(times[:, 1].mean()),
        "stereo_sample_s_mean": float((times[:, 0] + times[:, 2]).mean()),
        "stereo_sample_s_p50": float(np.median(times[:, 0] + times[:, 2])),
        "stereo_sample_s_max": float((times[:, 0] + times[:, 2]).max()),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"one stereo sample ({args.size[0]}x{args.size[1]}, {args.slices} slices per eye, "
            f"both eyes, 1 thread), {args.samples} scenes:"
        )
        print(f"  scene generation   {report['scene_s_mean'] * 1e3:7.0f} ms mean")
        print(f"  ray casting, 1 eye {report['raycast_one_eye_s_mean'] * 1e3:7.0f} ms mean")
        print(
            f"  whole sample       {report['stereo_sample_s_mean'] * 1e3:7.0f} ms mean, "
            f"{report['stereo_sample_s_p50'] * 1e3:.0f} ms p50, "
            f"{report['stereo_sample_s_max'] * 1e3:.0f} ms max"
        )
    return 0


def _add_sequence_args(p: argparse.ArgumentParser) -> None:
    from micro_perception.sim.scene import INSTRUMENT_KINDS

    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--slices", type=int, default=8, help="focal slices per sweep")
    p.add_argument("--poses", type=int, default=16, help="instrument positions per cycle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instrument", default="needle", choices=INSTRUMENT_KINDS)
    p.add_argument("--sweep-rate", type=float, default=2.0, help="focus sweeps per second")
    p.add_argument(
        "--period", type=float, default=10.0, help="seconds per approach-hover-retract cycle"
    )


def _sequence_player(args: argparse.Namespace, quiet: bool):
    from tqdm import tqdm

    from micro_perception.sim.sequence import Sequence, SequenceConfig, SequencePlayer

    config = SequenceConfig(
        seed=args.seed,
        height=args.size[0],
        width=args.size[1],
        slices=args.slices,
        poses=args.poses,
        kind=args.instrument,
    )
    with tqdm(total=config.poses, desc="render poses", unit="pose", disable=quiet) as bar:
        sequence = Sequence.load_or_render(config, progress=lambda i, n: bar.update())
    return SequencePlayer(sequence, args.sweep_rate, args.period)


def cmd_make_bag(args: argparse.Namespace) -> int:
    """Write virtual-microscope streams to a rosbag2 that `ros2 bag play` plays."""
    import time

    from tqdm import tqdm

    from micro_perception.ros.bag import write_sequence_bag

    player = _sequence_player(args, quiet=args.json)
    start_ns = int((time.time() if args.start_time is None else args.start_time) * 1e9)
    with tqdm(desc="write bag", unit="slice", disable=args.json) as bar:

        def progress(i, n):
            bar.total = n
            bar.update(i - bar.n)

        counts = write_sequence_bag(
            player,
            args.out,
            args.seconds,
            start_ns,
            args.namespace,
            args.storage,
            args.distro,
            args.distance_mode,
            progress,
        )
    report = {
        "bag": args.out,
        "storage": args.storage,
        "distro": args.distro,
        "seconds": args.seconds,
        "messages": counts,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"wrote {args.out} ({args.storage}, {args.distro} message definitions, "
            f"{args.seconds} s):"
        )
        for topic, count in counts.items():
            print(f"  {topic:<42} {count}")
        print(f"play it on a robot with: ros2 bag play {args.out}")
    return 0


def _training_kwargs(args: argparse.Namespace) -> dict:
    """The config fields every ``train`` subcommand takes from its shared options."""
    return {
        "data": args.data,
        "val": args.val,
        "out": args.out,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "crop": args.size,
        "workers": args.workers,
        "device": args.device,
        "seed": args.seed,
        "log_dir": args.log_dir,
        "resume": args.resume,
        "amp": args.amp,
        "time_budget_s": args.time_budget,
    }


def _print_training(result: dict) -> None:
    """A training run's summary: best score and where it went, and the first and last epoch's
    training loss."""
    history = result["history"]
    first_last = [history[0]["train_loss"], history[-1]["train_loss"]] if history else None
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "history"}
            | {"train_loss_first_last": first_last},
            indent=2,
        )
    )


def cmd_train_fusion(args: argparse.Namespace) -> int:
    """Train the fusion network on focal stacks with all-in-focus ground truth."""
    from micro_perception.fusion.network import FusionNetConfig
    from micro_perception.training.fusion_train import FusionTrainConfig, train_fusion

    cfg = FusionTrainConfig(
        net=FusionNetConfig(kernel=args.kernel, kernel_mode=args.kernel_mode),
        crops_per_stack=args.crops_per_stack,
        vgg_weights=args.vgg_weights,
        **_training_kwargs(args),
    )
    if args.vgg_weights:
        cfg.loss.perceptual = args.perceptual_weight
    _print_training(train_fusion(cfg))
    return 0


def cmd_train_depth(args: argparse.Namespace) -> int:
    """Train the depth network (ground truth, stereo-teacher distillation, or both)."""
    from micro_perception.training.depth_train import DepthTrainConfig, train_depth

    cfg = DepthTrainConfig(
        supervision=args.supervision,
        input=args.input,
        crops_per_frame=args.crops_per_frame,
        imagenet_weights=args.imagenet_weights,
        **_training_kwargs(args),
    )
    _print_training(train_depth(cfg))
    return 0


def cmd_train_segment(args: argparse.Namespace) -> int:
    """Train the instrument segmentation network on simulated masks."""
    from micro_perception.depth.segmentation import SegNetConfig
    from micro_perception.model_io import load_weights
    from micro_perception.training.segment_train import SegmentTrainConfig, train_segment

    if args.widths:
        net = SegNetConfig(tuple(args.widths))
    elif args.init:
        net = SegNetConfig.from_dict(load_weights(args.init, "segmentation")[0])
    else:
        net = SegNetConfig()
    cfg = SegmentTrainConfig(
        net=net,
        input=args.input,
        crops_per_frame=args.crops_per_frame,
        init=args.init,
        bright_weight=args.bright_weight,
        bright_crops=args.bright_crops,
        tip_crops=args.tip_crops,
        edge_weight=args.edge_weight,
        edge_band=args.edge_band,
        tip_weight=args.tip_weight,
        tip_radius=args.tip_radius,
        **_training_kwargs(args),
    )
    _print_training(train_segment(cfg))
    return 0


def cmd_train_edges(args: argparse.Namespace) -> int:
    """Train the edge refiner: where the segmentation network's edges lie off the true ones."""
    from micro_perception.depth.edge_refine import EdgeNetConfig
    from micro_perception.training.edge_train import EdgeTrainConfig, train_edges

    cfg = EdgeTrainConfig(
        data=",".join(str(d) for d in args.data),
        out=args.out,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        log_dir=args.log_dir,
        resume=args.resume,
        val_every=args.val_every,
        seg_weights=args.seg_weights or "default",
        seg_flips=args.seg_flips,
        input=args.input,
        limit=args.limit,
        cache=args.cache,
        net=EdgeNetConfig(hidden=args.hidden, max_shift_px=args.max_shift),
        amp=args.amp,
        time_budget_s=args.time_budget,
    )
    _print_training(train_edges(cfg, progress=not args.quiet))
    return 0


def cmd_train_uncertainty(args: argparse.Namespace) -> int:
    """Calibrate the distance's standard deviation by how it was measured, on frames files."""
    from pathlib import Path

    from micro_perception.training.distance_eval import load_frames
    from micro_perception.uncertainty import DistanceUncertainty, normal_quantile

    rows = []
    for path in args.frames:
        # Frame names repeat between sets: only the rows' values are used.
        rows += load_frames(path)
    model = DistanceUncertainty.fit(
        rows,
        args.quantile,
        args.min_frames,
        {"sources": [Path(p).name for p in args.frames]},
    )
    model.save(args.out)
    if args.json:
        print(json.dumps(model.to_json(), indent=2))
        return 0
    counts = model.calibration["counts"]
    print(
        f"{model.calibration['frames']} frames -> {args.out}: sigma is a kind's "
        f"{model.quantile:.0%} quantile of |error| over {normal_quantile(model.quantile):.2f}"
    )
    for kind, n in counts.items():
        sigma = model.sigma(kind)
        if kind in model.sigma_m:
            print(f"  {kind:<18} n={n:<4} sigma {sigma * 1e6:6.1f} um")
        elif sigma == sigma:
            print(f"  {kind:<18} n={n:<4} sigma {sigma * 1e6:6.1f} um (too few: its end's or all)")
        else:
            print(f"  {kind:<18} n={n:<4} sigma not known (its method is not calibrated)")
    print(f"  any other kind     sigma {model.fallback_m * 1e6:6.1f} um")
    print(
        f"  times {model.steep_factor:.2f} on shafts within {model.steep_deg:g} degrees of the "
        f"optical axis, {model.flat_factor:.2f} on the others"
    )
    return 0


def cmd_eval_hover(args: argparse.Namespace) -> int:
    """Frame-to-frame jitter of depth_node's distance while the virtual instrument hovers."""
    import time

    import numpy as np
    import rclpy

    from micro_perception.geometry import TOOL_SETTINGS
    from micro_perception.resources import use_large_image_transport
    from micro_perception.ros.chain import run_chain
    from micro_perception.training.stats import block_bootstrap_ci, correlation_length

    use_large_image_transport()
    h, w = args.size
    sim = {
        "seed": args.seed,
        "width": w,
        "height": h,
        "slices": args.slices,
        "poses": 2,
        "instrument": args.instrument,
        "far_gap": args.gap,  # the cycle starts at far_gap; a one-hour cycle stays there
        "near_gap": args.gap / 2,
        "sweep_rate": args.sweep_rate,
        "period": 3600.0,
        "frame_noise": args.frame_noise,
    }

    def done(got):
        return len(got["range"]) >= args.frames + args.warmup

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        t0 = time.monotonic()
        got, health = run_chain(
            context,
            sim,
            {"slices_per_stack": args.slices, "device": args.device, "publish_focus_depth": False},
            {
                "device": args.device,
                "seg_flips": args.seg_flips,
                "seg_px_per_mm": args.seg_px_per_mm,
                "stereo_backend": args.stereo_backend,
                **{k: getattr(args, k) for k in TOOL_SETTINGS},
            },
            done,
            args.timeout,
            namespace="/hover",
            images=False,
        )
        wall = time.monotonic() - t0
    finally:
        rclpy.shutdown(context=context)
    ranges = got["range"][args.warmup :]
    d = np.array([m.range for m in ranges])
    known = d[np.isfinite(d)]
    truth = [m.range for m in got["truth"]]
    lat = [
        (arr - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)) * 1e3
        for m, arr in zip(got["range"], got["arrival"]["range"], strict=True)
    ][args.warmup :]
    values = {kv.key: kv.value for kv in health.values}
    out = {
        "frames": len(d),
        "known": len(known),
        "true_distance_m": float(np.median(truth)) if truth else None,
        "mean_distance_m": float(known.mean()) if len(known) else None,
        "jitter_std_um": float(known.std() * 1e6) if len(known) > 1 else None,
        # Neighbouring filtered distances are correlated: blocks of them are resampled.
        "jitter_std_ci95_um": block_bootstrap_ci(known * 1e6, lambda a: a.std(-1)),
        "correlation_frames": correlation_length(known) if len(known) > 2 else None,
        "step_std_um": float(np.diff(known).std() * 1e6) if len(known) > 2 else None,
        "rate_hz": float(len(got["range"]) / wall) if wall > 0 else None,
        "latency_ms_p50": float(np.median(lat)) if lat else None,
        "alert_messages_on": int(sum(m.data for m in got["alert"])),
        "masks": values.get("masks"),
        "device": values.get("device"),
        "config": sim,
        "distances_m": [float(x) if np.isfinite(x) else None for x in d],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if out["frames"] >= args.frames else 1
    print(
        f"{out['frames']} distances ({out['known']} known) at {out['rate_hz']:.2f} Hz, hovering "
        f"at {sim['far_gap'] * 1e3:.2f} mm ({args.instrument}); masks {out['masks']}"
    )
    if out["jitter_std_um"] is not None:
        print(
            f"  mean {out['mean_distance_m'] * 1e3:.4f} mm vs true "
            f"{out['true_distance_m'] * 1e3:.4f} mm; jitter (std) {out['jitter_std_um']:.1f} um "
            f"{_ci(out['jitter_std_ci95_um'])} (95 %, blocks of neighbouring frames), "
            f"frame-to-frame step std {out['step_std_um']:.1f} um; latency p50 "
            f"{out['latency_ms_p50']:.0f} ms"
        )
    return 0 if out["frames"] >= args.frames else 1


def cmd_eval_segment(args: argparse.Namespace) -> int:
    """Score the instrument segmentation network against simulated masks."""
    from micro_perception.errors import InputError
    from micro_perception.resources import shipped_model
    from micro_perception.training.segment_train import evaluate_segment

    weights = args.weights or shipped_model("segmentation.pt")
    if weights is None:
        raise InputError("no segmentation weights: pass --weights (models/segmentation.pt absent)")
    result = evaluate_segment(args.data, weights, args.input, args.limit, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    meta = result["_meta"]
    print(
        f"{meta['images']} images from {meta['data']} ({meta['input']}): IoU "
        f"{result['iou']:.4f}, edges within 1 px {result['edge_1px']:.4f}, "
        f"{result['ms']:.0f} ms/image on {meta['threads']} threads"
    )
    return 0


def cmd_eval_fusion(args: argparse.Namespace) -> int:
    """Score the fusion network and the classical baselines against ground truth."""
    from micro_perception.fusion.fuser import default_fusion_weights
    from micro_perception.training.common import pick_device
    from micro_perception.training.fusion_eval import evaluate_fusion

    weights = args.weights or default_fusion_weights()
    methods = args.methods
    if weights is None and "net" in methods:
        methods = [m for m in methods if m != "net"]
        print(
            "no fusion weights found (models/fusion.pt or --weights): scoring baselines only",
            file=sys.stderr,
        )
    result = evaluate_fusion(
        args.data, methods, weights, pick_device(args.device), args.limit, progress=not args.json
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    meta = result.pop("_meta")
    dff = result.pop("depth_from_focus", None)
    print(
        f"{meta['stacks']} stacks from {meta['data']} on {meta['device']} "
        f"({meta['threads']} threads); SSIM/PSNR vs ground truth, data_range 1.0"
    )
    print(f"  {'method':<10} {'SSIM':>7} {'PSNR dB':>8} {'ms/stack':>9}")
    for name, r in sorted(result.items(), key=lambda kv: -kv[1]["psnr"]):
        print(f"  {name:<10} {r['ssim']:7.4f} {r['psnr']:8.2f} {r['ms']:9.1f}")
    if dff:
        conf = dff["rmse_um_confident"]
        line = f"  depth from focus: RMSE {dff['rmse_um']:.0f} um over all pixels"
        if conf is not None:
            line += (
                f", {conf:.0f} um over the {100 * dff['confident_fraction']:.0f} % "
                "it is confident about"
            )
        print(line)
    return 0


def cmd_eval_depth(args: argparse.Namespace) -> int:
    """Score depth estimators against simulated ground truth (retina, instrument, edges)."""
    from micro_perception.training.depth_eval import evaluate_depth

    result = evaluate_depth(
        args.data,
        args.methods,
        args.input,
        args.limit,
        progress=not args.json,
        weights=args.weights,
        seg_weights=args.seg_weights or "default",
        edge_weights=_edge_weights(args),
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    meta = result.pop("_meta")
    print(f"{meta['frames']} frames from {meta['data']}, input: {meta['input']}; RMSE in um")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    print(
        f"  {'method':<8} {'retina':>8} {'instr.':>8} {'edges':>8} {'interior':>9} "
        f"{'AbsRel':>7} {'cover':>6} {'ms':>7}"
    )
    for name, r in result.items():
        print(
            f"  {name:<8} {fmt(r['rmse_retina_um'], '8.0f')} "
            f"{fmt(r['rmse_instrument_um'], '8.0f')} {fmt(r['rmse_boundary_um'], '8.0f')} "
            f"{fmt(r['rmse_interior_um'], '9.0f')} {fmt(r['absrel_from_retina'], '7.3f')} "
            f"{fmt(r['coverage'], '6.2f')} {fmt(r['ms'], '7.1f')}"
        )
    return 0


def _read_rgb_file(path: str):
    import cv2
    import numpy as np

    from micro_perception.errors import InputError

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path} is not a readable image")
    return np.ascontiguousarray(img[..., ::-1])


def _read_calibrated(args: argparse.Namespace, need_right: bool):
    """(left, right or None, StereoPair or None) from image files and calibration YAML."""
    from micro_perception.camera import StereoPair, load_camera_yaml
    from micro_perception.errors import InputError

    left = _read_rgb_file(args.left)
    cams = [load_camera_yaml(p) for p in args.camera_info]
    if (cams[0].width, cams[0].height) != (left.shape[1], left.shape[0]):
        raise InputError(
            f"{args.left} is {left.shape[1]}x{left.shape[0]}, but {args.camera_info[0]} says "
            f"{cams[0].width}x{cams[0].height}"
        )
    if not need_right:
        return left, None, None
    if args.right is None or len(cams) != 2:
        raise InputError("this needs RIGHT and two --camera-info files (left, right)")
    right = _read_rgb_file(args.right)
    if right.shape != left.shape:
        raise InputError(f"{args.left} is {left.shape[:2]} but {args.right} is {right.shape[:2]}")
    return left, right, StereoPair(cams[0], cams[1])


def _edge_weights(args: argparse.Namespace):
    from micro_perception.depth.pipeline import model_file_setting

    return model_file_setting(args.edge_weights)


def _uncertainty(args: argparse.Namespace):
    from micro_perception.depth.pipeline import model_file_setting

    return model_file_setting(getattr(args, "uncertainty", None))


def _pipeline(args: argparse.Namespace, estimator: str):
    from micro_perception.depth.pipeline import DepthPipeline

    return DepthPipeline(
        _pipeline_config(args, estimator=estimator),
        depth_weights=getattr(args, "weights", None),
        seg_weights=args.seg_weights or "default",
        device=args.device,
        edge_weights=_edge_weights(args),
        uncertainty=_uncertainty(args),
    )


def cmd_depth(args: argparse.Namespace) -> int:
    """Metric depth of the left image from image files and ROS calibration YAML files."""
    import cv2
    import numpy as np
    import torch

    from micro_perception.errors import InputError
    from micro_perception.sim.preview import depth_colour

    if args.method == "net" and args.right is None:
        from micro_perception.depth.network import load_depth_net

        left, _, _ = _read_calibrated(args, need_right=False)
        if not args.weights:
            raise InputError("--method net needs --weights (a depth network weights file)")
        net = load_depth_net(args.weights)
        with torch.inference_mode():
            image = torch.from_numpy(left).permute(2, 0, 1).float().div(255)[None]
            depth = net(image)[0][0, 0].numpy()
    else:
        left, right, pair = _read_calibrated(args, need_right=True)
        depth = _pipeline(args, args.method)(left, right, pair).depth
    depth = depth.astype(np.float32)
    if args.out.endswith(".npy"):
        np.save(args.out, depth, allow_pickle=False)
    elif args.out.endswith((".tif", ".tiff")):
        if not cv2.imwrite(args.out, depth):
            raise InputError(f"could not write {args.out}")
    else:
        raise InputError(f"--out must end in .npy or .tiff, got {args.out}")
    if args.png:
        cv2.imwrite(args.png, depth_colour(depth)[..., ::-1])
    known = np.isfinite(depth)
    print(
        f"{args.method} depth of {args.left} -> {args.out} (float32 m; "
        f"{100 * known.mean():.0f} % known"
        + (f", median {np.median(depth[known]) * 1e3:.2f} mm)" if known.any() else ")")
    )
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    """The instrument tip and its distance to the retina from one stereo pair of image files."""
    import cv2
    import numpy as np

    left, right, pair = _read_calibrated(args, need_right=True)
    pipe = _pipeline(args, "combined")
    res = pipe(left, right, pair)
    m = res.measurement
    out = {
        "tip_pixel": None if m.tip_px is None or not m.ok else [float(v) for v in m.tip_px],
        "tip_xyz_m": None if m.tip_xyz is None or not m.ok else [float(v) for v in m.tip_xyz],
        "distance_normal_m": float(m.distance_normal) if m.ok else None,
        "distance_axis_m": float(m.distance_axial) if m.ok else None,
        # The distance's calibrated standard deviation (pipe.uncertainty), null without one.
        "distance_sigma_m": float(m.sigma) if np.isfinite(m.sigma) else None,
        "alert": bool(m.ok and m.distance(args.mode) < args.alert_distance),
        "reason": m.reason or None,
        "method": m.method or None,
        "kind": m.kind if m.ok else None,
        "tilt_deg": m.tilt_deg if m.ok and m.axis is not None else None,
        "notes": m.notes,
        "retina_fit_residual_m": float(m.retina.residual) if m.retina else None,
        "retina_radius_m": float(m.retina.radius) if m.retina else None,
        "masks": pipe.mask_source,
        "ms": {k: round(v, 1) for k, v in res.ms.items()},
    }
    if args.overlay:
        from micro_perception.overlay import measurement_overlay

        cv2.imwrite(args.overlay, measurement_overlay(left, res, pair, args.mode)[..., ::-1])
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if not m.ok:
        print(f"distance unknown: {m.reason}")
        return 0
    print(
        f"tip at pixel ({m.tip_px[0]:.1f}, {m.tip_px[1]:.1f}), "
        f"xyz {np.round(m.tip_xyz * 1e3, 3).tolist()} mm ({m.method})"
    )
    sigma = f" (sigma {m.sigma * 1e6:.0f} um, {m.kind})" if np.isfinite(m.sigma) else ""
    print(
        f"gap to the retina: {m.distance_normal * 1e3:.3f} mm along its normal{sigma}, "
        f"{m.distance_axial * 1e3:.3f} mm along the optical axis; "
        f"alert {'ON' if out['alert'] else 'off'} (threshold {args.alert_distance * 1e3:.2f} mm)"
    )
    print(
        f"retina sphere radius {m.retina.radius * 1e3:.2f} mm, fit residual "
        f"{m.retina.residual * 1e6:.0f} um; masks: {pipe.mask_source}"
    )
    return 0


def cmd_eval_distance(args: argparse.Namespace) -> int:
    """Score the instrument-to-retina distance and the alert against simulated ground truth."""
    from pathlib import Path

    from micro_perception.depth.pipeline import DepthPipeline
    from micro_perception.training.distance_eval import evaluate_distance

    pipe = DepthPipeline(
        _pipeline_config(args),
        seg_weights=args.seg_weights or "default",
        device=args.device,
        edge_weights=_edge_weights(args),
        uncertainty=_uncertainty(args),
    )
    result = evaluate_distance(
        args.data,
        pipe,
        args.input,
        args.oracle_masks,
        args.mode,
        args.alert_distance,
        args.limit,
        progress=not args.json,
        known_instrument=args.known_instrument,
    )
    frames = result.pop("_frames")
    if args.frames:
        Path(args.frames).write_text(json.dumps(frames, indent=1))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    meta = result["_meta"]

    def f(v, spec=".0f"):
        return "-" if v is None else format(v, spec)

    print(
        f"{meta['frames']} frames ({meta['in_range']} with the tip 0.05-3 mm above the retina) "
        f"from {meta['data']}; input {meta['input']}, masks {meta['masks']}, gap {meta['mode']}"
    )
    print(
        f"  all      MAE {f(result['mae_um'])} um {_ci(result['mae_ci95_um'], digits=0)}  "
        f"p95 {f(result['p95_um'])} um {_ci(result['p95_ci95_um'], digits=0)}"
    )
    for name, r in result["by_range"].items():
        print(
            f"  {name:<10}MAE {f(r['mae_um'])} um {_ci(r['mae_ci95_um'], digits=0)}  "
            f"p95 {f(r['p95_um'])} um  (n={r['n']})"
        )
    for name, r in result["by_instrument"].items():
        print(
            f"  {name:<11}MAE {f(r['mae_um'])} um  p95 {f(r['p95_um'])} um  (n={r['n']}, tip "
            f"found {r['tip_detect']:.3f})"
        )
    c = result["alert_counts"]
    print(
        f"  alert at {meta['alert_distance_m'] * 1e3:.2f} mm: missed {c['missed']} of "
        f"{c['close']} {_ci(result['miss_ci95'], 100, ' %')}, false alarms "
        f"{c['false_alarms']} of {c['not_close']} {_ci(result['false_alarm_ci95'], 100, ' %')}"
        "; 95 % intervals in brackets"
    )
    print(
        f"  miss {f(result['miss'], '.3f')}, "
        f"false alarm {f(result['false_alarm'], '.3f')}; tip detected "
        f"{f(result['tip_detect'], '.3f')}; tip error {f(result['tip_error_um'])} um; "
        f"{f(result['ms'], '.0f')} ms/frame"
    )
    curve = ", ".join(
        f"+{um} um: {f(r['miss'], '.3f')} / {f(r['false_alarm'], '.3f')}"
        for um, r in result["alert_margins"].items()
    )
    print(
        f"  alert with a guard band (miss / false alarm): {curve}; no miss from "
        f"+{f(result['margin_for_no_miss_um'], '.0f')} um"
    )
    cov = result["uncertainty"]
    if cov.get("n"):
        print(
            f"  sigma ({meta['uncertainty']}): median {cov['sigma_median_um']:.0f} um; the truth "
            f"within 1 / 2 / 3 sigma on {cov['within_1_sigma']:.1%} / "
            f"{cov['within_2_sigma']:.1%} / {cov['within_3_sigma']:.1%} of {cov['n']} frames"
        )
        curve = ", ".join(
            f"+{k} sigma (mean {r['mean_margin_um']:.0f} um): {f(r['miss'], '.3f')} / "
            f"{f(r['false_alarm'], '.3f')}"
            for k, r in result["alert_sigma_margins"].items()
        )
        print(f"  alert with each frame's sigma as guard band (miss / false alarm): {curve}")
    return 0


def _ci(interval, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    """A 95 % interval as "[lo, hi]unit", or "" when there is none."""
    if interval is None:
        return ""
    lo, hi = (v * scale for v in interval)
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]{unit}"


def cmd_eval_compare(args: argparse.Namespace) -> int:
    """Compare two `eval distance --frames` runs frame by frame: is the new one better?"""
    from micro_perception.training.distance_eval import compare_frames, load_frames

    out = compare_frames(load_frames(args.base), load_frames(args.new), args.alert_distance)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def um(v):
        return "-" if v is None else f"{v:.1f}"

    print(
        f"{out['frames']} frames in both ({out['only_in_base']} only in {args.base}, "
        f"{out['only_in_new']} only in {args.new}); {out['paired']} in range measured by both"
    )
    print(
        f"  MAE {um(out['base_mae_um'])} -> {um(out['new_mae_um'])} um: "
        f"{um(out['mae_diff_um'])} um, 95 % {_ci(out['mae_diff_ci95_um'], unit=' um')} (paired): "
        f"{out['verdict']}"
    )
    print(
        f"  p95 {um(out['base_p95_um'])} -> {um(out['new_p95_um'])} um, difference "
        f"{_ci(out['p95_diff_ci95_um'])}"
    )
    print(
        f"  measured by one only: base {out['measured_by_base_only']}, "
        f"new {out['measured_by_new_only']}"
    )
    for kind, r in out["by_instrument"].items():
        print(
            f"  {kind:<11}MAE {um(r['base_mae_um'])} -> {um(r['new_mae_um'])} um "
            f"{_ci(r['mae_diff_ci95_um'])} (n={r['n']})"
        )
    for side in ("base", "new"):
        a = out["alert"][side]
        print(
            f"  alert, {side:<4}: missed {a['missed']} of {a['close']} "
            f"{_ci(a['miss_ci95'], 100, ' %')}, false alarms {a['false_alarms']} of "
            f"{a['not_close']} {_ci(a['false_alarm_ci95'], 100, ' %')}"
        )
    print(f"  alert right now, wrong before: {', '.join(out['alert_fixed']) or 'none'}")
    print(f"  alert wrong now, right before: {', '.join(out['alert_broken']) or 'none'}")
    for title, rows in (
        ("improved most", out["most_improved"]),
        ("worsened most", out["most_worsened"]),
    ):
        for r in rows:
            print(
                f"  {title}: {r['frame']} {r['instrument']} at {r['true_um']:.0f} um, error "
                f"{r['base_error_um']:+.0f} -> {r['new_error_um']:+.0f} um"
            )
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    """Fuse a focal stack of image files into one all-in-focus image."""
    from pathlib import Path

    import cv2
    import numpy as np

    from micro_perception.errors import InputError
    from micro_perception.fusion.fuser import Fuser
    from micro_perception.sim.dataset import IMAGE_SUFFIXES

    paths = []
    for item in args.slices:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(p)
    if len(paths) < 2:
        raise InputError(f"a focal stack needs at least 2 slices, got {len(paths)}")
    images = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(f"{p} is not a readable image")
        if img.ndim == 3:
            img = img[..., 2::-1]  # BGR(A) -> RGB
        if images and (img.shape != images[0].shape or img.dtype != images[0].dtype):
            raise InputError(
                f"{p} is {img.shape[1]}x{img.shape[0]} {img.dtype}, but "
                f"{paths[0]} is {images[0].shape[1]}x{images[0].shape[0]} "
                f"{images[0].dtype}: all slices must match"
            )
        images.append(img)
    stack = np.stack(images)
    fuser = Fuser(args.method, args.device, args.weights)
    fused = fuser(stack)
    if not cv2.imwrite(args.out, fused[..., ::-1] if fused.ndim == 3 else fused):
        raise InputError(f"could not write {args.out}")
    print(
        f"fused {len(paths)} slices ({stack.shape[2]}x{stack.shape[1]}, {stack.dtype}) "
        f"with {args.method} on {fuser.device} -> {args.out}"
    )
    if args.depth_out:
        if not args.focus or len(args.focus) != len(paths):
            raise InputError(
                f"--depth-out needs --focus with one distance per slice ({len(paths)})"
            )
        depth = fuser.focus_depth(stack, np.asarray(args.focus), args.min_confidence)
        np.save(args.depth_out, depth, allow_pickle=False)
        print(
            f"depth from focus -> {args.depth_out} (float32, units of --focus, NaN where "
            f"confidence < {args.min_confidence})"
        )
    return 0


def _add_training_args(
    p: argparse.ArgumentParser,
    data_help: str,
    val_help: str,
    batch: int,
    lr: float,
    size: int,
    workers: int,
) -> None:
    """The options every ``train`` subcommand shares (read back by ``_training_kwargs``)."""
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--val", help=val_help)
    p.add_argument("--out", required=True, help="weights file of the best network")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--size", type=int, default=size, help="training crop size, px")
    p.add_argument("--workers", type=int, default=workers)
    _add_run_args(p)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """How a training runs, for every ``train`` subcommand."""
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", help="TensorBoard folder (default: beside --out)")
    p.add_argument("--resume", help="checkpoint to continue from (OUT.ckpt)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds: after the first epoch, fit --epochs and the schedule to this time",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="micro-perception",
        description="Stereo surgical-microscope perception: tools around the ROS 2 nodes.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help=cmd_info.__doc__)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("selftest", help=cmd_selftest.__doc__)
    _add_transport_args(p, frames=30, size=(480, 640))
    p.set_defaults(func=cmd_selftest)
    p = sub.add_parser("simulate", help=cmd_simulate.__doc__)
    p.add_argument("--out", required=True, help="dataset folder (created; resumes a partial run)")
    p.add_argument("--samples", type=int, required=True, help="focal stacks to render")
    p.add_argument("--seed", type=int, default=0, help="base seed of the dataset")
    p.add_argument(
        "--split",
        default="train",
        choices=["train", "val", "test"],
        help="splits draw disjoint scene seeds",
    )
    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--slices", type=int, default=8, help="focal slices per eye")
    p.add_argument("--workers", type=int, default=1, help="rendering processes")
    p.add_argument("--jpeg-quality", type=int, default=0, help="0: no JPEG artefacts")
    p.add_argument("--no-noise", action="store_true", help="no sensor noise")
    p.add_argument("--preview", help="also write a PNG montage of the first sample here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("export", help=cmd_export.__doc__)
    p.add_argument("--model", required=True, choices=["fusion", "depth", "segmentation"])
    p.add_argument("--format", required=True, choices=["onnx", "exported-program", "tensorrt"])
    p.add_argument("--out", required=True)
    p.add_argument("--weights", help="weights file (default: the shipped one)")
    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--slices", type=int, default=8, help="fusion: slices per stack")
    p.add_argument(
        "--dynamic", action="store_true", help="height, width (and slices) vary at run time"
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="tensorrt")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help=cmd_bench.__doc__)
    p.add_argument(
        "--size",
        nargs=2,
        type=int,
        action="append",
        metavar=("H", "W"),
        help="input size (repeatable; default 512x512 and 1080x1920)",
    )
    p.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    p.add_argument("--parts", default=",".join(BENCH_PARTS), help=f"of {list(BENCH_PARTS)}")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--runtimes",
        help="backend:precision list (torch, compile, tensorrt; fp32, fp16); the first one runs "
        "the stages (default: torch:fp32 on the CPU; on CUDA also fp16, compile and tensorrt)",
    )
    p.add_argument("--networks", default="fusion,depth,segmentation")
    p.add_argument("--slices", type=int, default=8, help="focal slices per stack")
    p.add_argument("--depth-weights", help="depth network weights (default: shipped, or random)")
    p.add_argument("--e2e-seconds", type=float, default=20.0, help="end-to-end window")
    p.add_argument("--sweep-rate", type=float, default=2.0, help="sim sweeps per second")
    p.add_argument(
        "--one-process",
        action="store_true",
        help="end to end with fusion and depth in one process (pipeline_process)",
    )
    p.add_argument("--transport-frames", type=int, default=40)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-sim", help=cmd_bench_sim.__doc__)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_sim)
    p = sub.add_parser("make-bag", help=cmd_make_bag.__doc__)
    p.add_argument("--out", required=True, help="bag folder to create")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    p.add_argument(
        "--distro",
        default="kilted",
        choices=["kilted", "jazzy", "humble"],
        help="message definitions to write: kilted and jazzy agree; humble's Range differs",
    )
    p.add_argument("--namespace", default="/microscope")
    p.add_argument("--start-time", type=float, help="first stamp, s since the epoch (now)")
    p.add_argument("--distance-mode", default="normal", choices=["normal", "axial"])
    _add_sequence_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_make_bag)
    train = sub.add_parser("train", help="train a network").add_subparsers(
        dest="net", required=True
    )
    p = train.add_parser("fusion", help=cmd_train_fusion.__doc__)
    _add_training_args(
        p, "training focal stacks (dataset folder)", "validation focal stacks", 8, 2e-3, 128, 2
    )
    p.add_argument("--crops-per-stack", type=int, default=4)
    p.add_argument("--vgg-weights", help="local torchvision vgg16 state dict: perceptual loss")
    p.add_argument("--perceptual-weight", type=float, default=0.05)
    p.add_argument("--kernel", type=int, default=5, help="per-pixel kernel size (odd)")
    p.add_argument(
        "--kernel-mode",
        default="affine",
        choices=["convex", "affine"],
        help="convex: smoothing only; affine: may also sharpen residual defocus",
    )
    p.set_defaults(func=cmd_train_fusion)
    p = train.add_parser("depth", help=cmd_train_depth.__doc__)
    _add_training_args(
        p,
        "training frames (dataset folder)",
        "validation frames with ground-truth depth",
        batch=4,
        lr=1e-3,
        size=256,
        workers=0,
    )
    p.add_argument("--supervision", default="gt", choices=["gt", "stereo", "mixed"])
    p.add_argument(
        "--input",
        default="aif",
        choices=["aif", "fused"],
        help="left image: ground-truth all-in-focus, or the fusion network's output",
    )
    p.add_argument("--crops-per-frame", type=int, default=2)
    p.add_argument("--imagenet-weights", help="local torchvision resnet18 state dict")
    p.set_defaults(func=cmd_train_depth)
    p = train.add_parser("segment", help=cmd_train_segment.__doc__)
    _add_training_args(
        p,
        "training frames with instrument masks",
        "validation frames with instrument masks",
        batch=8,
        lr=3e-3,
        size=192,
        workers=0,
    )
    p.add_argument(
        "--input",
        default="fused",
        choices=["aif", "fused"],
        help="images: ground-truth all-in-focus, or the fusion network's output",
    )
    p.add_argument("--crops-per-frame", type=int, default=1)
    p.add_argument("--init", help="weights to start from (fine-tuning)")
    p.add_argument(
        "--bright-weight",
        type=float,
        default=1.0,
        help="loss weight of bright background pixels (a light pipe's glow), hard negatives",
    )
    p.add_argument(
        "--bright-crops", type=float, default=0.0, help="share of crops centred on them"
    )
    p.add_argument(
        "--tip-crops",
        type=float,
        default=0.0,
        help="share of crops centred near the instrument's tip, where the distance is read",
    )
    p.add_argument(
        "--edge-weight",
        type=float,
        default=1.0,
        help="loss weight of pixels near the true outline, where the distance is read",
    )
    p.add_argument("--edge-band", type=int, default=2, help="px either side of the outline")
    p.add_argument(
        "--tip-weight",
        type=float,
        default=1.0,
        help="loss weight of pixels near the true working end, where the mask must stop",
    )
    p.add_argument("--tip-radius", type=int, default=24, help="px around the working end")
    p.add_argument(
        "--widths",
        type=int,
        nargs="+",
        help="channels per scale, full resolution first (default: the shipped network's "
        "8 16 24 32 48; with --init, those of the weights)",
    )
    p.set_defaults(func=cmd_train_segment)
    p = train.add_parser("edges", help=cmd_train_edges.__doc__)
    p.add_argument("--data", required=True, nargs="+", help="simulated sets (dataset folders)")
    p.add_argument("--out", required=True, help="weights file of the best refiner")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=1024, help="edges per step")
    p.add_argument("--lr", type=float, default=3e-3)
    _add_run_args(p)
    p.add_argument(
        "--val-every", type=int, default=10, help="every Nth frame of each set validates"
    )
    p.add_argument("--seg-weights", help="segmentation weights (default: the shipped ones)")
    p.add_argument("--seg-flips", type=int, default=2, choices=[1, 2, 4])
    p.add_argument("--input", default="fused", choices=["aif", "fused"])
    p.add_argument("--limit", type=int, help="frames per set")
    p.add_argument("--cache", help="folder keeping each set's edges (fusing is most of the time)")
    p.add_argument("--hidden", type=int, default=64, help="units per hidden layer")
    p.add_argument(
        "--max-shift", type=float, default=1.5, help="px: a larger correction is clipped"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_edges)
    p = train.add_parser("uncertainty", help=cmd_train_uncertainty.__doc__)
    p.add_argument(
        "--frames",
        required=True,
        nargs="+",
        help="`eval distance --frames` files of simulated sets not used for anything else",
    )
    p.add_argument("--out", required=True, help="distance uncertainty file (JSON)")
    p.add_argument(
        "--quantile",
        type=float,
        default=0.95,
        help="sigma is this quantile of a kind's absolute errors over the Gaussian's",
    )
    p.add_argument(
        "--min-frames",
        type=int,
        default=20,
        help="a kind with fewer frames takes its end's sigma, else all frames'",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train_uncertainty)
    ev = sub.add_parser("eval", help="evaluate against ground truth").add_subparsers(
        dest="net", required=True
    )
    p = ev.add_parser("fusion", help=cmd_eval_fusion.__doc__)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["net", "sml", "laplacian", "guided"],
        choices=["net", "sml", "laplacian", "guided"],
    )
    p.add_argument("--weights", help="fusion weights (default: the shipped models/fusion.pt)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, help="score only the first N stacks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_fusion)
    p = ev.add_parser("depth", help=cmd_eval_depth.__doc__)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["combined", "stereo", "dff"],
        choices=["combined", "net", "stereo", "dff"],
    )
    p.add_argument("--seg-weights", help="segmentation weights (default: the shipped ones)")
    _add_edge_weights_arg(p)
    p.add_argument("--weights", help="depth network weights (for method net)")
    p.add_argument(
        "--input",
        default="fused",
        choices=["fused", "aif"],
        help="the pair the estimators see: fusion-network output or ground truth",
    )
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_depth)
    p = ev.add_parser("distance", help=cmd_eval_distance.__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--input", default="fused", choices=["fused", "aif"])
    p.add_argument(
        "--oracle-masks",
        action="store_true",
        help="use the true instrument masks: the geometry's own error",
    )
    p.add_argument("--seg-weights", help="segmentation weights (default: the shipped ones)")
    _add_edge_weights_arg(p)
    _add_uncertainty_arg(p)
    _add_pipeline_args(p)
    p.add_argument(
        "--known-instrument",
        action="store_true",
        help="tell the geometry each frame's instrument, as a robot that knows its mounted tool "
        "would: --symmetric-jaws for the forceps' frames, --jaw-reach for the forceps' and "
        "scissors'",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="normal", choices=["normal", "axial"])
    p.add_argument("--alert-distance", type=float, default=0.5e-3, help="m")
    p.add_argument("--limit", type=int)
    p.add_argument("--frames", help="also write every frame's result to this JSON file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_distance)
    p = ev.add_parser("compare", help=cmd_eval_compare.__doc__)
    p.add_argument("base", help="frames file of the reference run (`eval distance --frames`)")
    p.add_argument("new", help="frames file of the run to judge, on the same data")
    p.add_argument("--alert-distance", type=float, default=0.5e-3, help="m")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_compare)
    p = ev.add_parser("segment", help=cmd_eval_segment.__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", help="segmentation weights (default: the shipped ones)")
    p.add_argument("--input", default="fused", choices=["fused", "aif"])
    p.add_argument("--limit", type=int, help="images (both eyes count)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_segment)
    p = ev.add_parser("hover", help=cmd_eval_hover.__doc__)
    p.add_argument("--frames", type=int, default=300, help="distances to collect")
    p.add_argument("--warmup", type=int, default=5, help="first distances left out")
    p.add_argument("--gap", type=float, default=0.3e-3, help="hover gap, m")
    p.add_argument("--instrument", default="needle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--sweep-rate", type=float, default=1.0, help="sweeps per second")
    p.add_argument("--frame-noise", type=float, default=1.5, help="grey levels (std)")
    p.add_argument("--device", default="auto")
    _add_pipeline_args(p)
    p.add_argument("--timeout", type=float, default=1800.0, help="s")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_hover)
    p = sub.add_parser("depth", help=cmd_depth.__doc__)
    p.add_argument("left", help="left (rectified) image")
    p.add_argument("right", nargs="?", help="right (rectified) image (all methods but a lone net)")
    p.add_argument(
        "--camera-info",
        nargs="+",
        required=True,
        help="LEFT.yaml [RIGHT.yaml] in ROS camera calibration format",
    )
    p.add_argument("--out", required=True, help="DEPTH.npy or DEPTH.tiff (float32, metres)")
    p.add_argument("--method", default="combined", choices=["combined", "stereo", "net"])
    p.add_argument("--weights", help="depth network weights (for --method net)")
    p.add_argument("--seg-weights", help="segmentation weights (default: the shipped ones)")
    _add_edge_weights_arg(p)
    _add_pipeline_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--png", help="also write a colour map here")
    p.set_defaults(func=cmd_depth)
    p = sub.add_parser("measure", help=cmd_measure.__doc__)
    p.add_argument("left", help="left (rectified) image")
    p.add_argument("right", help="right (rectified) image")
    p.add_argument(
        "--camera-info", nargs=2, required=True, help="LEFT.yaml RIGHT.yaml (ROS calibration)"
    )
    p.add_argument("--seg-weights", help="segmentation weights (default: the shipped ones)")
    _add_edge_weights_arg(p)
    _add_uncertainty_arg(p)
    _add_pipeline_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--mode", default="normal", choices=["normal", "axial"])
    p.add_argument("--alert-distance", type=float, default=0.5e-3, help="m")
    p.add_argument("--overlay", help="also write a PNG with the mask, tip and distance")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_measure)
    p = sub.add_parser("fuse", help=cmd_fuse.__doc__)
    p.add_argument("slices", nargs="+", help="slice images, or a folder of them (sorted)")
    p.add_argument("--out", required=True, help="output image (same bit depth as the input)")
    p.add_argument("--method", default="net", choices=["net", "sml", "laplacian", "guided"])
    p.add_argument("--weights", help="fusion weights (default: the shipped models/fusion.pt)")
    p.add_argument("--device", default="auto")
    p.add_argument("--depth-out", help="also write depth from focus (.npy) here")
    p.add_argument("--focus", nargs="+", type=float, help="focal distance of each slice")
    p.add_argument("--min-confidence", type=float, default=0.5)
    p.set_defaults(func=cmd_fuse)
    p = sub.add_parser("soak", help=cmd_soak.__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--sweep-rate", type=float, default=2.0, help="sweeps per second")
    p.add_argument("--device", default="auto")
    p.add_argument("--window", type=float, default=60.0, help="seconds at start and end")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before the start")
    p.add_argument("--max-growth", type=float, default=5.0, help="RSS growth allowed, %%")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("config", help=cmd_config.__doc__)
    p.add_argument("--out", default="-", help="file to write ('-': standard output)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("run", help=cmd_run.__doc__)
    p.add_argument(
        "--params", help="ROS parameter file (default: the installed config/micro_perception.yaml)"
    )
    p.add_argument("--sim", action="store_true", help="also run the virtual microscope")
    p.add_argument("--namespace", default="microscope")
    p.add_argument("--no-fusion", action="store_true", help="depth_node reads image_raw directly")
    p.add_argument("--use-sim-time", action="store_true", help="follow /clock (a bag replay)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("replay", help=cmd_replay.__doc__)
    p.add_argument("bag", help="rosbag2 folder (or .mcap / .db3 file)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--loop", action="store_true", help="play again from the start, forever")
    p.add_argument("--clock", action="store_true", help="publish /clock with the bag's time")
    p.add_argument("--topics", nargs="+", help="play only these topics")
    p.add_argument("--delay", type=float, default=0.5, help="seconds to wait before playing")
    p.add_argument(
        "--wait-for-subscribers",
        type=int,
        default=0,
        help="then wait (up to 30 s) until every played topic has this many subscribers",
    )
    p.add_argument("--json", action="store_true", help="print what was published")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    p.add_argument("--out", default="demo_out", help="folder for the demo's files")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the input bag")
    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--rate", type=float, default=0.5, help="replay speed")
    p.add_argument("--device", default="auto")
    p.add_argument("--instrument", default="needle")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from micro_perception.errors import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"micro-perception {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
