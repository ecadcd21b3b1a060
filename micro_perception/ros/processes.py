"""Starting package nodes as processes of their own (as a robot's launch would) and stopping
them cleanly: used by the demo and the transport check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def start_node(
    module: str,
    namespace: str,
    params: dict,
    log_level: str = "warn",
    env: dict | None = None,
    remaps: list[str] | None = None,
) -> subprocess.Popen:
    """``python -m micro_perception.ros.<module>`` with parameters, a namespace and ROS
    arguments such as remappings (``["-r", "from:=to", ...]``)."""
    args = [
        sys.executable,
        "-m",
        f"micro_perception.ros.{module}",
        "--ros-args",
        "-r",
        f"__ns:={namespace}",
        "--log-level",
        log_level,
    ]
    args += list(remaps or [])
    for name, value in params.items():
        args += ["-p", f"{name}:={value}"]
    return subprocess.Popen(args, env={**os.environ, **(env or {})}, start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGINT (a node's Ctrl-C), then SIGKILL if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
