"""Focal-sweep fusion: focus measures, fusion methods and the focal buffer (no ROS)."""
