"""The perception pipeline on a robot: focal_fusion_node -> depth_node, with the package's
parameter file.

    ros2 launch micro_perception micro_perception.launch.py
    ros2 launch micro_perception micro_perception.launch.py device:=cuda rviz:=true
    ros2 launch micro_perception micro_perception.launch.py one_process:=true

The microscope's driver publishes left|right/image_raw, left|right/camera_info and focus
(sensor_msgs/JointState) in the namespace. With enable_fusion:=false, depth_node reads
image_raw directly (a microscope without a focus sweep). With one_process:=true, fusion and
depth run in one process (pipeline_process) and the fused images pass between them as arrays,
without DDS or shared memory; the graph looks the same from outside. Set use_sim_time:=true
when a bag is played with --clock.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import AndSubstitution, LaunchConfiguration, NotSubstitution
from launch_ros.actions import Node

FUSED = [
    ("left/image", "left/fused/image"),
    ("right/image", "right/fused/image"),
    ("left/camera_info", "left/fused/camera_info"),
    ("right/camera_info", "right/fused/camera_info"),
]
RAW = [("left/image", "left/image_raw"), ("right/image", "right/image_raw")]


def arguments(share):
    return {
        "namespace": ("microscope", "namespace of the microscope's topics"),
        "use_sim_time": ("false", "follow /clock (a bag played with --clock)"),
        "params_file": (
            os.path.join(share, "config", "micro_perception.yaml"),
            "ROS parameter file of the nodes",
        ),
        "backend": ("auto", "inference backend: auto, tensorrt or torch"),
        "device": ("auto", "where networks run: auto, cuda or cpu"),
        "enable_fusion": ("true", "false: depth_node reads image_raw directly"),
        "one_process": (
            "false",
            "true: focal_fusion_node and depth_node in one process, fused images as arrays",
        ),
        "rviz": ("false", "start rviz2 with the package's configuration"),
    }


def pipeline(share, cfg):
    """The nodes every launch file of the package starts (sim.launch.py adds the microscope)."""
    common = [
        cfg["params_file"],
        {"use_sim_time": cfg["use_sim_time"], "backend": cfg["backend"], "device": cfg["device"]},
    ]
    profile = os.environ.get(
        "FASTDDS_DEFAULT_PROFILES_FILE",
        os.path.join(share, "config", "fastdds_large_images.xml"),
    )
    two = IfCondition(AndSubstitution(cfg["enable_fusion"], NotSubstitution(cfg["one_process"])))
    one = IfCondition(AndSubstitution(cfg["enable_fusion"], cfg["one_process"]))
    fusion_off = UnlessCondition(cfg["enable_fusion"])
    return [
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
        Node(
            package="micro_perception",
            executable="focal_fusion_node",
            namespace=cfg["namespace"],
            parameters=common,
            condition=two,
            output="screen",
        ),
        Node(
            package="micro_perception",
            executable="depth_node",
            namespace=cfg["namespace"],
            parameters=common,
            remappings=FUSED,
            condition=two,
            output="screen",
        ),
        # No name: it would rename both nodes. Their remappings are their own (pipeline_process).
        Node(
            package="micro_perception",
            executable="pipeline_process",
            namespace=cfg["namespace"],
            parameters=common,
            condition=one,
            output="screen",
        ),
        Node(
            package="micro_perception",
            executable="depth_node",
            namespace=cfg["namespace"],
            parameters=common,
            remappings=RAW,
            condition=fusion_off,
            output="screen",
        ),
        Node(
            package="rviz2",
            executable="rviz2",
            arguments=["-d", os.path.join(share, "config", "micro_perception.rviz")],
            parameters=[{"use_sim_time": cfg["use_sim_time"]}],
            condition=IfCondition(cfg["rviz"]),
            output="screen",
        ),
    ]


def generate_launch_description():
    share = get_package_share_directory("micro_perception")
    args = arguments(share)
    cfg = {name: LaunchConfiguration(name) for name in args}
    return LaunchDescription(
        [
            *[
                DeclareLaunchArgument(n, default_value=d, description=t)
                for n, (d, t) in args.items()
            ],
            *pipeline(share, cfg),
        ]
    )
