"""ROS 2 package metadata and the install layout a robot relies on."""

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "micro_perception"


def test_package_xml_is_format_3_ament_python_with_every_runtime_dependency():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("export/build_type") == "ament_python"
    assert root.findtext("buildtool_depend") == "ament_python"
    version = distribution(PACKAGE).version
    assert root.findtext("version") == version
    deps = {e.text for e in root.findall("exec_depend")} | {e.text for e in root.findall("depend")}
    needed = {
        "rclpy",
        "sensor_msgs",
        "std_msgs",
        "geometry_msgs",
        "stereo_msgs",
        "visualization_msgs",
        "diagnostic_msgs",
        "message_filters",
        "cv_bridge",
        "python3-numpy",
        "python3-opencv",
    }
    assert needed <= deps, f"package.xml lacks {sorted(needed - deps)}"
    for tag in ("description", "maintainer", "license"):
        assert root.findtext(tag).strip()


def test_every_node_module_has_a_console_script_with_main():
    scripts = {
        ep.name: ep for ep in distribution(PACKAGE).entry_points if ep.group == "console_scripts"
    }
    assert scripts["micro-perception"].value == "micro_perception.cli:main"
    node_files = sorted(p.stem for p in (ROOT / PACKAGE / "ros").glob("*_node.py"))
    assert node_files, "no node modules found"
    for stem in node_files:
        assert stem in scripts, f"{stem} has no console_script"
        assert scripts[stem].value == f"micro_perception.ros.{stem}:main"
        assert callable(scripts[stem].load())


def test_colcon_build_gives_the_layout_a_robot_relies_on(tmp_path):
    """colcon build (colcon-common-extensions from PyPI) in a fresh workspace, then the package
    found through the ament index after sourcing the workspace, as on a robot."""
    colcon = Path(sys.executable).parent / "colcon"
    assert colcon.exists(), "colcon-common-extensions is a test dependency"
    src = tmp_path / "src" / PACKAGE
    skip = (".venv", ".git", "build", "install", "log", "demo_out", "*.egg-info", ".whl*")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*skip))
    done = subprocess.run(
        [str(colcon), "build", "--base-paths", "src", "--event-handlers", "console_direct-"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    prefix = tmp_path / "install" / PACKAGE
    lib = prefix / "lib" / PACKAGE
    for exe in (
        "micro-perception",
        "sim_microscope_node",
        "focal_fusion_node",
        "depth_node",
        "stereo_pattern_node",
        "stereo_check_node",
    ):
        assert os.access(lib / exe, os.X_OK), f"{exe} is not installed under lib/{PACKAGE}"
    share = prefix / "share" / PACKAGE
    for f in (
        "package.xml",
        "launch/micro_perception.launch.py",
        "launch/sim.launch.py",
        "config/micro_perception.yaml",
        "config/micro_perception.rviz",
        "config/fastdds_large_images.xml",
        "models/fusion.pt",
        "models/segmentation.pt",
    ):
        assert (share / f).is_file(), f"share/{PACKAGE}/{f} is missing"
    assert (prefix / "share/ament_index/resource_index/packages" / PACKAGE).is_file()

    site = next((prefix / "lib").glob("python3*/site-packages"))
    probe = (
        "import micro_perception.resources as r; "
        "from ament_index_python.packages import get_package_share_directory as g; "
        "print(g('micro_perception')); print(r.share_dir()); print(r.__file__)"
    )
    out = subprocess.run(
        ["bash", "-c", f'source install/setup.bash && {sys.executable} -c "{probe}"'],
        env={k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    index_dir, share_dir, module = out.stdout.split()
    assert Path(index_dir) == share == Path(share_dir)
    assert Path(module).is_relative_to(site), "the installed copy was not the one imported"


@pytest.mark.parametrize("folder", ["launch", "config", "models", "test", "resource"])
def test_top_level_folders_exist(folder):
    assert (ROOT / folder).is_dir()


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="only meaningful inside the repository's own .venv (make test)",
)
def test_second_env_run_skips_the_install():
    out = subprocess.run(
        ["make", "-s", "env"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "is up to date" in out.stdout and "installing" not in out.stdout


def test_info_reports_the_ros_runtime(cli_json):
    info = cli_json("info")
    assert info["rmw"] == "rmw_fastrtps_cpp"
    assert info["stereo_sync"] in ("message_filters", "micro_perception.ros.sync")
    assert info["torch"].startswith("2.14.1")
