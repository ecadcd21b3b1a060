"""A robot-free session: the virtual stereo microscope, then the same pipeline as
micro_perception.launch.py (and its arguments).

    ros2 launch micro_perception sim.launch.py rviz:=true
    ros2 launch micro_perception sim.launch.py instrument:=forceps width:=1920 height:=1080
"""

import importlib.util
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("micro_perception")
    # The pipeline's arguments and nodes come from the launch file beside this one.
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "micro_perception.launch.py")
    spec = importlib.util.spec_from_file_location("micro_perception_launch", here)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)

    args = common.arguments(share)
    sim_args = {
        "instrument": ("needle", "needle, light_pipe, forceps, vitrector or scissors"),
        "width": ("512", "image width, px"),
        "height": ("512", "image height, px"),
    }
    cfg = {name: LaunchConfiguration(name) for name in {**args, **sim_args}}
    sim = Node(
        package="micro_perception",
        executable="sim_microscope_node",
        namespace=cfg["namespace"],
        parameters=[
            cfg["params_file"],
            {
                "use_sim_time": cfg["use_sim_time"],
                "instrument": cfg["instrument"],
                "width": cfg["width"],
                "height": cfg["height"],
            },
        ],
        output="screen",
    )
    return LaunchDescription(
        [
            *[
                DeclareLaunchArgument(n, default_value=d, description=t)
                for n, (d, t) in {**args, **sim_args}.items()
            ],
            sim,
            *common.pipeline(share, cfg),
        ]
    )
