"""ament_python build of micro_perception.

On a robot, colcon runs this file against the ROS 2 distro's rclpy and messages (rosdep installs
what package.xml names). Without a distro, the ``ros`` extra brings ROS 2 from PyPI wheels.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "micro_perception"


def _files(pattern):
    return sorted(p for p in glob(pattern, recursive=True) if not p.endswith("/"))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*.py") + _files("launch/*.xml")),
        (
            f"share/{PACKAGE}/config",
            _files("config/*.yaml") + _files("config/*.rviz") + _files("config/*.xml"),
        ),
        (
            f"share/{PACKAGE}/models",
            _files("models/*.pt")
            + _files("models/*.safetensors")
            + _files("models/*.json")
            + _files("models/*.md"),
        ),
    ],
    python_requires=">=3.10",
    install_requires=[
        "setuptools",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pyyaml>=6",
        "tqdm>=4.66",
        "rosbags>=0.10",
        "scikit-image>=0.22",
        "kornia>=0.7",
        "tensorboard>=2.15",
    ],
    extras_require={
        # ROS 2 Kilted from PyPI wheels, for machines without a ROS 2 distro.
        "ros": [
            "ros-rclpy>=9.1,<10",
            "ros-rmw-fastrtps-cpp>=9.3,<10",
            "ros-sensor-msgs>=5.5,<6",
            "ros-std-msgs>=5.5,<6",
            "ros-geometry-msgs>=5.5,<6",
            "ros-stereo-msgs>=5.5,<6",
            "ros-visualization-msgs>=5.5,<6",
            "ros-diagnostic-msgs>=5.5,<6",
        ],
        "tensorrt": ["torch-tensorrt==2.14.*"],
        # micro-perception export --format onnx, and its check against ONNX Runtime.
        "export": ["onnx>=1.17", "onnxscript>=0.3", "onnxruntime>=1.20"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "colcon-common-extensions>=0.3",  # the colcon build test
            "mcap>=1.1",  # reading the demo's bags back with an independent reader
            "mcap-ros2-support>=0.5",
        ],
    },
    zip_safe=True,
    maintainer="micro_perception maintainers",
    maintainer_email="maintainers@users.noreply.r-seed-d3d28644.example",
    description=(
        "Stereo surgical-microscope perception for robotic ophthalmic surgery: focal-sweep "
        "fusion, depth and instrument-to-retina distance."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "micro-perception = micro_perception.cli:main",
            "stereo_pattern_node = micro_perception.ros.stereo_pattern_node:main",
            "stereo_check_node = micro_perception.ros.stereo_check_node:main",
            "sim_microscope_node = micro_perception.ros.sim_microscope_node:main",
            "focal_fusion_node = micro_perception.ros.focal_fusion_node:main",
            "fusion_check_node = micro_perception.ros.fusion_check_node:main",
            "depth_node = micro_perception.ros.depth_node:main",
            "pipeline_process = micro_perception.ros.pipeline_process:main",
        ],
    },
)
