"""Shared test setup: every run gets its own DDS domain, kept on this host, and leaves no process.

Set before rclpy creates any participant, so the whole session is isolated from other ROS 2
graphs on the machine (a developer's live robot, a parallel CI run).
"""

import json
import os
import subprocess
import sys

import pytest

# Per-run domain: 1..101 are valid for Fast DDS on Linux; 0 (the default) is left to humans.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 101)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)

from micro_perception.resources import use_large_image_transport

use_large_image_transport()


def child_pids() -> list[int]:
    """Processes whose parent is this test process."""
    me, children = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            children.append(int(entry))
    return children


@pytest.fixture(autouse=True, scope="session")
def no_process_left_behind():
    yield
    left = child_pids()
    assert not left, f"tests left processes running: {left}"


@pytest.fixture
def ros_context():
    """An initialised rclpy context of its own, shut down after the test."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.shutdown(context=context)


def _run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "micro_perception.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="session")
def run_cli():
    """Run ``micro-perception <args>`` in its own process; fails the test on a non-zero exit
    unless ``check=False``."""
    return _run_cli


@pytest.fixture(scope="session")
def simulate():
    """``simulate(out, *extra, samples=3, seed=5, size=(48, 64), slices=3, check=True)``:
    ``micro-perception simulate --json`` of a small dataset; returns the finished process."""

    def run(out, *extra, samples=3, seed=5, size=(48, 64), slices=3, check=True):
        return _run_cli(
            "simulate",
            "--out",
            out,
            "--samples",
            samples,
            "--seed",
            seed,
            "--size",
            *size,
            "--slices",
            slices,
            "--json",
            *extra,
            check=check,
        )

    return run


@pytest.fixture
def cli_json():
    """Run ``micro-perception <args> --json`` in its own process; return the parsed report."""

    def run(*args: str) -> dict:
        return json.loads(_run_cli(*args, "--json").stdout)

    return run


@pytest.fixture
def spin(ros_context):
    """``spin(*nodes)`` starts each node on an executor and thread of its own (as separate
    components of a robot would run); all are shut down and destroyed after the test."""
    from ros_helpers import Spinner

    spinner = Spinner(ros_context)
    yield spinner
    spinner.stop()


@pytest.fixture(scope="session")
def sequence_cache(tmp_path_factory):
    """One cache of rendered virtual-microscope sequences for the whole run."""
    return tmp_path_factory.mktemp("sequences")
