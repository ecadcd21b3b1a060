"""End-to-end check of the ROS 2 transport: pattern publisher -> DDS -> synchroniser -> arrays.

The publisher runs as its own process (as a camera driver would) unless asked otherwise; the
checker runs here. Used by ``micro-perception selftest`` and, until the pipeline exists,
``micro-perception demo``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from micro_perception.ros.processes import start_node, stop_process
from micro_perception.ros.stereo_check_node import StereoCheckNode
from micro_perception.ros.stereo_pattern_node import StereoPatternNode


@dataclass
class TransportCheckConfig:
    width: int = 1920
    height: int = 1080
    encoding: str = "rgb8"
    frames: int = 60
    rate: float = 10.0
    reliability: str = "best_effort"  # of the checker's subscriptions; the publisher is reliable
    namespace: str = "/microscope"
    separate_process: bool = True
    settle_s: float = 2.0  # how long to wait for late pairs after the last one was sent
    transport: str = "auto"  # the checker's image_transport: auto, shm or raw


def _pattern_overrides(cfg: TransportCheckConfig) -> dict:
    return {
        "width": cfg.width,
        "height": cfg.height,
        "encoding": cfg.encoding,
        "rate": float(cfg.rate),
        "frames": cfg.frames,
        "wait_for_subscribers": 1,
    }


def run_transport_check(cfg: TransportCheckConfig) -> dict:
    """Send ``cfg.frames`` pattern pairs and return what arrived (see StereoCheckNode.report)."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    context = rclpy.Context()
    rclpy.init(context=context)
    proc = None
    nodes = []
    executor = SingleThreadedExecutor(context=context)
    spin_thread = None
    try:
        checker = StereoCheckNode(
            context=context,
            namespace=cfg.namespace,
            parameter_overrides=[
                Parameter("reliability", value=cfg.reliability),
                Parameter("image_transport", value=cfg.transport),
            ],
        )
        nodes.append(checker)
        executor.add_node(checker)
        if cfg.separate_process:
            proc = start_node("stereo_pattern_node", cfg.namespace, _pattern_overrides(cfg))
        else:
            overrides = [Parameter(k, value=v) for k, v in _pattern_overrides(cfg).items()]
            publisher = StereoPatternNode(
                context=context, namespace=cfg.namespace, parameter_overrides=overrides
            )
            nodes.append(publisher)
            executor.add_node(publisher)
        spin_thread = threading.Thread(target=executor.spin, daemon=True)
        spin_thread.start()

        started = time.monotonic()
        startup_deadline = started + 30.0  # process start and DDS discovery
        last_progress, last_pairs = time.monotonic(), -1
        while True:
            time.sleep(0.05)
            report = checker.report()
            if report["pairs"] != last_pairs:
                last_pairs, last_progress = report["pairs"], time.monotonic()
            if report["pairs"] + report["bad_input"] >= cfg.frames:
                break
            if proc is not None and proc.poll() not in (None, 0):
                raise RuntimeError(f"the pattern publisher exited with status {proc.returncode}")
            if last_pairs <= 0 and time.monotonic() > startup_deadline:
                break
            stalled = time.monotonic() - last_progress > cfg.settle_s + 2.0 / cfg.rate
            if last_pairs > 0 and stalled:
                break
        report = checker.report()
        report["sent"] = cfg.frames
        report["transport"] = {
            side: dict(inp.received)
            for side, inp in zip(("left", "right"), checker.inputs, strict=True)
        }
        report["seconds"] = time.monotonic() - started
        return report
    finally:
        if proc is not None:
            stop_process(proc)
        executor.shutdown(timeout_sec=2.0)
        if spin_thread is not None:
            spin_thread.join(timeout=5.0)
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)
