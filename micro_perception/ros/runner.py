"""The body of every node's ``main()``: init, spin, and a quiet end on Ctrl-C or shutdown."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def log_report(node: Node) -> None:
    """An ``on_exit`` for nodes with a ``report()``: their final figures in the log."""
    node.get_logger().info(f"report: {node.report()}")


def spin_node(
    make_node: Callable[[], Node], args=None, on_exit: Callable[[Node], None] | None = None
) -> None:
    try:
        with rclpy.init(args=args):
            node = make_node()
            try:
                rclpy.spin(node)
            finally:
                if on_exit is not None:
                    on_exit(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
