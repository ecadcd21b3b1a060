"""The fusion stage of ``make demo``: the live virtual microscope and focal_fusion_node, each in
its own process, and fusion_check_node here scoring every fused image against ground truth."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor

from micro_perception.ros.fusion_check_node import FusionCheckNode
from micro_perception.ros.processes import start_node, stop_process


def run_fusion_demo(
    out: Path,
    method: str,
    seconds: float = 15.0,
    size: int = 512,
    namespace: str = "/microscope",
    startup_timeout: float = 90.0,
) -> dict:
    sim = start_node(
        "sim_microscope_node",
        namespace,
        {"width": size, "height": size, "sweep_rate": 1.0, "period": 10.0},
    )
    fusion = start_node(
        "focal_fusion_node",
        namespace,
        {"method": method, "reliability": "reliable", "slices_per_stack": 8},
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    checker = FusionCheckNode(context=context, namespace=namespace)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(checker)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while checker.report()["stacks"] == 0:
            for name, proc in (("sim_microscope_node", sim), ("focal_fusion_node", fusion)):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no fused image within {startup_timeout:.0f} s")
            time.sleep(0.1)
        time.sleep(seconds)
        report = checker.report()
        if checker.last_pair is not None:
            import cv2

            fused, truth = checker.last_pair
            diff = np.clip(np.abs(fused.astype(int) - truth.astype(int)) * 4, 0, 255)
            montage = np.concatenate([fused, truth, diff.astype(np.uint8)], axis=1)
            cv2.imwrite(str(out / "fusion.png"), montage[..., ::-1])
            report["montage"] = str(out / "fusion.png")
        report["method"] = method
        return report
    finally:
        stop_process(fusion)
        stop_process(sim)
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=5.0)
        checker.destroy_node()
        rclpy.shutdown(context=context)
