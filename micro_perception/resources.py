"""Where the package's installed files (config/, launch/, models/) are.

A colcon install puts them under ``share/micro_perception`` (found through the ament index); an
editable pip install finds them in the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "micro_perception"
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def share_dir() -> Path:
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return _SOURCE_ROOT
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (LookupError, OSError, ValueError):  # not in the index, or no AMENT_PREFIX_PATH
        return _SOURCE_ROOT


def config_file(name: str) -> Path:
    path = share_dir() / "config" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall micro_perception")
    return path


def shipped_model(name: str) -> Path | None:
    """``models/NAME`` as installed, or None where it is not shipped."""
    path = share_dir() / "models" / name
    return path if path.is_file() else None


def use_large_image_transport() -> str:
    """Point Fast DDS at the package's large-image profile unless the user chose one already."""
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        if os.environ.get(var):
            return os.environ[var]
    path = str(config_file("fastdds_large_images.xml"))
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = path
    return path
