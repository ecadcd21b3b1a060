"""Bringup: the parameter file, ``micro-perception run`` as a process of its own, and
``pipeline_process`` (fusion and depth in one process) as ``ros2 launch`` starts it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Range

from micro_perception.ros.config import load_params, node_params, render_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_parameter_file_is_every_declared_parameter_at_its_default():
    path = ROOT / "config" / "micro_perception.yaml"
    assert path.read_text() == render_yaml(), "run: micro-perception config --out " + str(path)
    for node, specs in node_params().items():
        values = load_params(path, node, "microscope")
        assert set(values) == {s.name for s in specs}
        for spec in specs:
            assert spec.check(values[spec.name]) is None, spec.name
            assert values[spec.name] == spec.default and type(values[spec.name]) is type(
                spec.default
            ), spec.name


def test_more_specific_keys_win(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "/**": {"ros__parameters": {"device": "cpu", "threads": 1}},
                "/**/depth_node": {"ros__parameters": {"threads": 2}},
                "/robot/depth_node": {"ros__parameters": {"threads": 3}},
            }
        )
    )
    assert load_params(path, "depth_node", "robot") == {"device": "cpu", "threads": 3}
    assert load_params(path, "depth_node", "other") == {"device": "cpu", "threads": 2}
    assert load_params(path, "focal_fusion_node") == {"device": "cpu", "threads": 1}


def _ctrl_c(proc: subprocess.Popen):
    """SIGINT, as Ctrl-C; the exit status, or "killed" if it did not stop within 20 s."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed"


def test_run_starts_the_pipeline_in_one_process_and_stops_on_ctrl_c(
    ros_context, spin, tmp_path, sequence_cache
):
    params = yaml.safe_load((ROOT / "config" / "micro_perception.yaml").read_text())
    sim = params["/**/sim_microscope_node"]["ros__parameters"]
    sim.update(width=128, height=128, slices=3, poses=2, sweep_rate=2.0)
    sim["cache_dir"] = str(sequence_cache)
    params["/**/focal_fusion_node"]["ros__parameters"]["slices_per_stack"] = 3
    for node in ("focal_fusion_node", "depth_node"):
        params[f"/**/{node}"]["ros__parameters"]["device"] = "cpu"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "micro_perception.cli",
            "run",
            "--sim",
            "--params",
            str(path),
            "--namespace",
            "bringup",
        ],
        env=os.environ.copy(),
        start_new_session=True,
    )
    try:
        listener = Node("bringup_listener", context=ros_context, namespace="/bringup")
        got = []
        listener.create_subscription(Range, "instrument/retina_distance", got.append, 10)
        spin(listener)
        deadline = time.monotonic() + 90
        while len(got) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, f"run exited with {proc.returncode}"
        assert len(got) >= 2
        assert got[-1].header.frame_id == "microscope_left_optical_frame"
    finally:
        rc = _ctrl_c(proc)
    assert rc == 0


def test_pipeline_process_runs_fusion_and_depth_with_a_params_file_and_stops_on_ctrl_c(
    ros_context, spin, tmp_path, sequence_cache
):
    from micro_perception.ros.sim_microscope_node import SimMicroscopeNode

    # As ros2 launch passes it: one file, a section per node name, for the one process.
    params = yaml.safe_load((ROOT / "config" / "micro_perception.yaml").read_text())
    params["/**/focal_fusion_node"]["ros__parameters"].update(
        slices_per_stack=3, device="cpu", method="sml"
    )
    params["/**/depth_node"]["ros__parameters"].update(device="cpu", range_max=0.015)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    ns = "/onep"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "micro_perception.ros.pipeline_process", "--ros-args"),
            *("-r", f"__ns:={ns}", "--params-file", str(path), "--log-level", "warn"),
        ],
        env=os.environ.copy(),
        start_new_session=True,
    )
    try:
        sim = {"width": 128, "height": 128, "slices": 3, "poses": 2, "sweep_rate": 2.0}
        sim["cache_dir"] = str(sequence_cache)
        camera = SimMicroscopeNode(
            context=ros_context,
            namespace=ns,
            parameter_overrides=[Parameter(k, value=v) for k, v in sim.items()],
        )
        listener = Node("onep_listener", context=ros_context, namespace=ns)
        got, reports = [], {}
        listener.create_subscription(Range, "instrument/retina_distance", got.append, 10)

        def on_diagnostics(msg):
            for st in msg.status:
                reports[st.hardware_id] = {kv.key: kv.value for kv in st.values}

        listener.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        spin(camera, listener)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            # The camera's shared memory is taken once discovery has seen it (checked each s).
            fusion_via = reports.get("focal_fusion_node", {}).get("transport")
            if (
                len(got) >= 2
                and "transport" in reports.get("depth_node", {})
                and fusion_via == "shm"
            ):
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"pipeline_process exited with {proc.returncode}"
        assert len(got) >= 2 and got[-1].header.frame_id == "microscope_left_optical_frame"
        depth, fusion = reports["depth_node"], reports["focal_fusion_node"]
        # Each node took its own section of the file.
        assert got[-1].max_range == pytest.approx(0.015)  # a float32 field
        assert fusion["method"] == "sml"
        assert fusion["transport"] == "shm"  # the camera is another process
        assert depth["transport"] == "local"  # the fused images: arrays, in the process
    finally:
        rc = _ctrl_c(proc)
    assert rc == 0


def _launch_facts(path: Path):
    """(executables of package micro_perception, other packages' executables, share files) a
    launch file names."""
    import ast

    tree = ast.parse(path.read_text())
    ours, others, files = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Node":
            kw = {k.arg: k.value for k in node.keywords}
            pkg = kw["package"].value
            exe = kw["executable"].value
            (ours if pkg == "micro_perception" else others).add(exe)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "join":
            parts = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if parts and parts[0] in ("config", "launch", "models"):
                files.add("/".join(parts))
    return ours, others, files


def test_launch_files_name_installed_executables_and_files():
    import setuptools

    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        cwd = os.getcwd()
        os.chdir(ROOT)
        exec(compile((ROOT / "setup.py").read_text(), "setup.py", "exec"), {"__name__": "x"})
    finally:
        os.chdir(cwd)
        setuptools.setup = real
    scripts = {e.split("=")[0].strip() for e in captured["entry_points"]["console_scripts"]}
    installed = {f for _, fs in captured["data_files"] for f in fs}
    launch_files = sorted((ROOT / "launch").glob("*.launch.py"))
    assert {p.name for p in launch_files} >= {"micro_perception.launch.py", "sim.launch.py"}
    seen = set()
    for path in launch_files:
        ours, others, files = _launch_facts(path)
        assert ours <= scripts, f"{path.name} runs {ours - scripts}, not console_scripts"
        assert others <= {"rviz2"}, others
        for f in files:
            assert f in installed, f"{path.name} names {f}, which setup.py does not install"
        assert f"launch/{path.name}" in installed
        seen |= ours
    assert {"focal_fusion_node", "depth_node", "sim_microscope_node"} <= seen


def test_rviz_config_shows_the_pipeline_in_the_left_optical_frame():
    doc = yaml.safe_load((ROOT / "config" / "micro_perception.rviz").read_text())
    manager = doc["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "microscope_left_optical_frame"
    topics = {d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d}
    assert {
        "/microscope/left/image_raw",
        "/microscope/left/fused/image",
        "/microscope/depth/image",
        "/microscope/depth/points",
        "/microscope/instrument/markers",
    } <= topics


def test_node_refuses_bad_weights_with_one_line_naming_the_file(tmp_path):
    """Missing, truncated, not a weights dict, another network's: exit 1, the file named."""
    import torch

    shipped = ROOT / "models" / "segmentation.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(shipped.read_bytes()[:2000])
    not_weights = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_weights)
    cases = {
        tmp_path / "missing.pt": "not found",
        truncated: "cannot be read safely",
        not_weights: "is not a micro_perception weights file",
        ROOT / "models" / "fusion.pt": "holds 'fusion' weights, expected 'segmentation'",
    }
    for path, expected in cases.items():
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "micro_perception.ros.depth_node",
                "--ros-args",
                "-p",
                f"seg_weights:={path}",
                "-p",
                "device:=cpu",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 1, (path, out.stderr[-500:])
        fatal = [line for line in out.stderr.splitlines() if "FATAL" in line]
        assert len(fatal) == 1 and str(path) in fatal[0] and expected in fatal[0], out.stderr
        assert "Traceback" not in out.stderr
