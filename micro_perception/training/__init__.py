"""Offline training and evaluation of the package's networks (no ROS)."""
