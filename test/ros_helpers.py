"""Helpers the ROS tests share: spinning nodes on threads of their own, and waiting for a
condition with a failure that says what was awaited."""

import threading
import time

import pytest


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Spinner:
    """``spinner(*nodes)`` starts each node on an executor and thread of its own (as separate
    components of a robot would run); ``stop()`` shuts them down and destroys the nodes."""

    def __init__(self, context):
        self.context = context
        self.running = []

    def __call__(self, *nodes):
        from rclpy.executors import SingleThreadedExecutor

        for node in nodes:
            executor = SingleThreadedExecutor(context=self.context)
            executor.add_node(node)
            thread = threading.Thread(target=executor.spin, daemon=True)
            thread.start()
            self.running.append((executor, thread, node))

    def stop(self) -> None:
        for executor, thread, node in self.running:
            executor.shutdown(timeout_sec=2.0)
            thread.join(timeout=5.0)
            assert not thread.is_alive()
            node.destroy_node()
        self.running.clear()
