"""focal_fusion_node and depth_node in one process: the fused images pass between them as arrays
(``micro_perception.ros.intra_process``), not through DDS or shared memory.

    ros2 launch micro_perception micro_perception.launch.py one_process:=true
    ros2 run micro_perception pipeline_process --ros-args -r __ns:=/microscope \\
        --params-file config/micro_perception.yaml

Each node keeps its name, parameters (a parameter file's ``focal_fusion_node`` and
``depth_node`` sections) and topics, so rviz, bags and other nodes see the same graph as with
two processes. Each spins on an executor and thread of its own (``runner.spin_each``). With
its newest-pair worker, depth_node takes the fused images on the fusion node's thread, without
waking its executor at all (a 1080p image in about 0.3 ms). The networks share one torch thread
pool (``threads: 0`` leaves it at torch's default).
"""

from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException

from micro_perception.errors import InputError
from micro_perception.ros.chain import FUSED
from micro_perception.ros.runner import spin_each


def main(args=None) -> None:
    try:
        with rclpy.init(args=args):
            nodes, executors = [], []
            try:
                _run(nodes, executors)
            finally:
                for ex in executors:
                    ex.shutdown(timeout_sec=1.0)
                for node in reversed(nodes):
                    node.destroy_node()  # stops the worker threads before the context goes
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


def _run(nodes: list, executors: list) -> None:
    from micro_perception.ros.depth_node import DepthNode
    from micro_perception.ros.focal_fusion_node import FocalFusionNode

    try:
        # Fusion first: its publishers exist when the depth node looks for them.
        nodes.append(FocalFusionNode())
        nodes.append(DepthNode(cli_args=FUSED))
    except InputError as exc:
        rclpy.logging.get_logger("pipeline_process").fatal(f"cannot start: {exc}")
        raise SystemExit(1) from None
    started, threads = spin_each(nodes)
    executors.extend(started)
    nodes[-1].get_logger().info(
        "focal_fusion_node and depth_node in one process: fused images pass as arrays"
    )
    while rclpy.ok() and all(t.is_alive() for t in threads):
        threads[0].join(timeout=0.2)


if __name__ == "__main__":
    main()
