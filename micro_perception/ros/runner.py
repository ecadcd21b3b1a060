"""The body of every node's ``main()``: init, spin, and a quiet end on Ctrl-C or shutdown."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from micro_perception.errors import InputError


def log_report(node: Node) -> None:
    """An ``on_exit`` for nodes with a ``report()``: their final figures in the log."""
    node.get_logger().info(f"report: {node.report()}")


def spin_node(
    make_node: Callable[[], Node], args=None, on_exit: Callable[[Node], None] | None = None
) -> None:
    from micro_perception.ros.params import node_has_own_process

    node_has_own_process()
    try:
        with rclpy.init(args=args):
            try:
                node = make_node()
            except InputError as exc:
                # A bad parameter or weights file: one line naming it, no traceback.
                rclpy.logging.get_logger(getattr(make_node, "__name__", "node")).fatal(
                    f"cannot start: {exc}"
                )
                raise SystemExit(1) from None
            try:
                rclpy.spin(node)
            except RCLError:
                # A callback publishing while Ctrl-C shuts the context down; anything else is
                # a real error.
                if rclpy.ok():
                    raise
            finally:
                if on_exit is not None:
                    on_exit(node)
                node.destroy_node()  # stops worker threads before the context goes
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
