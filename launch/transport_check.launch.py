"""Check stereo image transport on a robot: pattern publisher -> DDS -> synchroniser.

    ros2 launch micro_perception transport_check.launch.py width:=1920 height:=1080

stereo_check_node logs how many pairs arrived bit-exact and their latency when stopped (Ctrl-C).
Both nodes use the package's Fast DDS large-image profile unless one is already set.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("micro_perception")
    profile = os.environ.get(
        "FASTDDS_DEFAULT_PROFILES_FILE",
        os.path.join(share, "config", "fastdds_large_images.xml"),
    )
    args = {
        "namespace": ("microscope", "namespace of the camera topics"),
        "width": ("1920", "image width"),
        "height": ("1080", "image height"),
        "rate": ("30.0", "stereo pairs per second"),
        "reliability": ("best_effort", "QoS reliability of the checking subscriptions"),
    }
    cfg = {name: LaunchConfiguration(name) for name in args}
    return LaunchDescription(
        [
            *[
                DeclareLaunchArgument(n, default_value=d, description=t)
                for n, (d, t) in args.items()
            ],
            SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
            Node(
                package="micro_perception",
                executable="stereo_pattern_node",
                namespace=cfg["namespace"],
                parameters=[{"width": cfg["width"], "height": cfg["height"], "rate": cfg["rate"]}],
                output="screen",
            ),
            Node(
                package="micro_perception",
                executable="stereo_check_node",
                namespace=cfg["namespace"],
                parameters=[{"reliability": cfg["reliability"]}],
                output="screen",
            ),
        ]
    )
