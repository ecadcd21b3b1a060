"""The parameter file of the pipeline's nodes: written from their declared parameters, read back
for ``micro-perception run``.

``config/micro_perception.yaml`` is :func:`render_yaml` verbatim (a test keeps it so): every
parameter of every node, its default and a one-line comment with its range or choices. The
keys are ``/**/<node name>`` so the file applies in any namespace, as ``ros2 launch`` and
``ros2 run --params-file`` read it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from micro_perception.errors import InputError
from micro_perception.ros.params import ParamSpec

NODES = ("sim_microscope_node", "focal_fusion_node", "depth_node")


def node_params() -> dict[str, list[ParamSpec]]:
    from micro_perception.ros import depth_node, focal_fusion_node, sim_microscope_node

    return {
        "sim_microscope_node": sim_microscope_node.PARAMS,
        "focal_fusion_node": focal_fusion_node.PARAMS,
        "depth_node": depth_node.PARAMS,
    }


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        text = repr(v)
        if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 reads 5e-4 as a string
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"
        return text
    if isinstance(v, int):
        return str(v)
    return "''" if v == "" else yaml.safe_dump(v, default_style=None).splitlines()[0]


def _comment(spec: ParamSpec) -> str:
    extra = []
    if spec.choices is not None:
        extra.append("one of " + ", ".join(str(c) for c in spec.choices))
    elif spec.min is not None or spec.max is not None:
        extra.append(f"range {spec.min} .. {spec.max}")
    if spec.read_only:
        extra.append("fixed at start")
    return spec.description + (f" ({'; '.join(extra)})" if extra else "")


def render_yaml() -> str:
    lines = [
        "# micro_perception: every parameter of the pipeline's nodes, at its default.",
        "# Written by `micro-perception config` from the nodes' declarations; a test keeps it so.",
        "# Pass it to ros2 launch (params_file:=...), ros2 run --params-file, or",
        "# micro-perception run --params.",
    ]
    for node, specs in node_params().items():
        lines += ["", f"/**/{node}:", "  ros__parameters:"]
        for spec in specs:
            lines.append(f"    # {_comment(spec)}")
            lines.append(f"    {spec.name}: {_value(spec.default)}")
    return "\n".join(lines) + "\n"


def load_params(path: str | Path, node: str, namespace: str = "") -> dict:
    """The parameters a ROS params file gives ``node`` in ``namespace``: ``/**`` first, then
    ``/**/node``, ``node`` and ``/namespace/node`` (later keys win)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"parameter file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"parameter file {path} is not a mapping of node names")
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    out: dict = {}
    for key in ("/**", f"/**/{node}", node, f"/{node}", f"{ns}/{node}"):
        entry = doc.get(key)
        if entry is None:
            continue
        params = entry.get("ros__parameters") if isinstance(entry, dict) else None
        if not isinstance(params, dict):
            raise InputError(f"parameter file {path}: {key} has no ros__parameters mapping")
        out.update(params)
    return out
