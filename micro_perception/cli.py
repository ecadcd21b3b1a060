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
    )
    where = "in this process" if cfg.separate_process is False else "in its own process"
    if not args.json:
        print(
            f"sending {cfg.frames} {cfg.width}x{cfg.height} {cfg.encoding} stereo pairs at "
            f"{cfg.rate} Hz from stereo_pattern_node ({where}) to stereo_check_node over DDS "
            f"({cfg.reliability} subscriptions, ApproximateTimeSynchronizer); "
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
    """The main job; today the longest real path: camera-sized stereo pairs through DDS."""
    print(
        "micro_perception demo: stereo camera transport (pattern publisher -> DDS -> "
        "synchroniser -> numpy), the path every later stage stands on."
    )
    return _transport_check(args)


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
    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    _add_transport_args(p, frames=100, size=(1080, 1920))
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
