"""The body of every node's ``main()``: init, spin, and a quiet end on Ctrl-C or shutdown; and
several nodes of one process spun side by side (``spin_each``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
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


def spin_each(nodes: list[Node], context=None) -> tuple[list, list[threading.Thread]]:
    """Each node on an executor and daemon thread of its own, started: (executors, threads).
    Nodes of one process run side by side this way (pipeline_process, ``micro-perception
    run``, the in-process chain): rclpy's multi-threaded executor took 6 ms to hand an
    in-process image pair over, against 1.5 ms this way."""
    executors, threads = [], []
    for node in nodes:
        ex = SingleThreadedExecutor(context=context)
        ex.add_node(node)
        executors.append(ex)
        threads.append(threading.Thread(target=_spin, args=(ex,), daemon=True))
        threads[-1].start()
    return executors, threads


def _spin(executor) -> None:
    with contextlib.suppress(ExternalShutdownException, RCLError):  # Ctrl-C shuts it down
        executor.spin()
