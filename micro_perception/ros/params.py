"""Declared, described and validated ROS parameters for every node.

A node lists its tunables as :class:`ParamSpec` rows. They are declared with their defaults and
descriptions (visible in ``ros2 param describe``), checked once at start (a bad value stops the
node with a message naming the parameter and the fix) and on every change (rejected with the
reason; the node keeps the old value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

from micro_perception.errors import InputError


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    read_only: bool = False  # only settable at start (e.g. topic names, image size)

    def check(self, value) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        if isinstance(self.default, bool) != isinstance(value, bool) or (
            isinstance(self.default, str) != isinstance(value, str)
        ):
            return f"{self.name} must be {type(self.default).__name__}, got {value!r}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:  # NaN
                return f"{self.name} must be a number, got NaN"
            if self.min is not None and value < self.min:
                return f"{self.name} must be >= {self.min}, got {value}"
            if self.max is not None and value > self.max:
                return f"{self.name} must be <= {self.max}, got {value}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {list(self.choices)}, got {value!r}"
        return None

    def descriptor(self) -> ParameterDescriptor:
        desc = ParameterDescriptor(description=self.description, read_only=self.read_only)
        if self.choices is not None:
            desc.additional_constraints = f"one of {list(self.choices)}"
        both = self.min is not None and self.max is not None
        if both and isinstance(self.default, float):
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(self.min), to_value=float(self.max))
            ]
        elif both and isinstance(self.default, int) and not isinstance(self.default, bool):
            desc.integer_range = [IntegerRange(from_value=int(self.min), to_value=int(self.max))]
        return desc


class Parameters:
    """The current values of a node's parameters, kept up to date as they change."""

    def __init__(self, node, specs: list[ParamSpec]):
        self._specs = {s.name: s for s in specs}
        self._values: dict[str, Any] = {}
        self._listeners: list = []
        for spec in specs:
            try:
                node.declare_parameter(spec.name, spec.default, spec.descriptor())
                reason = spec.check(node.get_parameter(spec.name).value)
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                reason = f"{spec.name} was refused by rclpy ({exc})"
            if reason is not None:
                raise InputError(
                    f"parameter {reason}; fix it in the parameter file or with "
                    f"--ros-args -p {spec.name}:=<value> (default {spec.default!r})"
                )
            self._values[spec.name] = node.get_parameter(spec.name).value
        node.add_on_set_parameters_callback(self._on_set)
        node.add_post_set_parameters_callback(self._after_set)

    def _on_set(self, params) -> SetParametersResult:
        for p in params:
            spec = self._specs.get(p.name)
            if spec is None:
                continue  # e.g. use_sim_time, handled by rclpy
            reason = spec.check(p.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def on_change(self, callback) -> None:
        """``callback(names)`` after accepted changes, once the new values are readable here
        (rclpy runs post-set callbacks newest first, so a node's own would see the old ones)."""
        self._listeners.append(callback)

    def _after_set(self, params) -> None:
        names = set()
        for p in params:
            if p.name in self._specs:
                self._values[p.name] = p.value
                names.add(p.name)
        if names:
            for callback in self._listeners:
                callback(names)

    def __getitem__(self, name: str):
        return self._values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def qos_params(reliability: str, depth: int, what: str = "image subscription") -> list[ParamSpec]:
    """The two QoS parameters every image node declares: ``reliability`` and ``qos_depth``."""
    from micro_perception.ros.qos import RELIABILITY

    return [
        ParamSpec(
            "reliability",
            reliability,
            f"{what} reliability",
            choices=tuple(RELIABILITY),
            read_only=True,
        ),
        ParamSpec("qos_depth", depth, f"{what} history depth", 1, 1000, read_only=True),
    ]


def image_transport_param(what: str = "images") -> ParamSpec:
    """How a node takes its image topics (micro_perception.ros.shm_transport.ImageInput)."""
    return ParamSpec(
        "image_transport",
        "auto",
        f"{what}: auto (from the publisher itself when it runs in this process, else shared "
        "memory when offered on this host, else the topic), shm or raw",
        choices=("auto", "shm", "raw"),
        read_only=True,
    )


def runtime_params(what: str) -> list[ParamSpec]:
    """The inference runtime's parameters (micro_perception.inference), shared by every node
    that runs a network; all fixed at start."""
    from micro_perception.inference import BACKENDS, DEVICES, PRECISIONS

    return [
        ParamSpec(
            "backend", "auto", f"{what}: auto, tensorrt or torch", choices=BACKENDS, read_only=True
        ),
        ParamSpec(
            "precision", "fp32", f"{what}: fp32 or fp16 (CUDA)", choices=PRECISIONS, read_only=True
        ),
        ParamSpec("device", "auto", f"where {what} runs", choices=DEVICES, read_only=True),
        ParamSpec(
            "engine_cache_dir",
            "",
            "compiled TensorRT programs ('' = $MICRO_PERCEPTION_ENGINE_CACHE or "
            "~/.cache/micro_perception/engines)",
            read_only=True,
        ),
        ParamSpec(
            "threads",
            0,
            "CPU threads for torch (0 = half this machine's cores, at least 1, for a node in "
            "its own process: the fusion and depth nodes share them; torch's default where "
            "nodes share one process)",
            0,
            256,
            read_only=True,
        ),
        ParamSpec("torch_compile", False, "torch backend through torch.compile", read_only=True),
        ParamSpec(
            "input_width",
            0,
            "expected image width: networks are compiled and warmed up for it at start "
            "(0: at the first frame)",
            0,
            16384,
            read_only=True,
        ),
        ParamSpec(
            "input_height", 0, "expected image height (see input_width)", 0, 16384, read_only=True
        ),
    ]


# Whether this process hosts one node (its own executable, as `ros2 launch` starts it). torch's
# thread pool is per process: nodes in their own processes must split the cores between them,
# nodes sharing one process (`micro-perception run`, the in-process chain) share one pool.
_OWN_PROCESS = False


def node_has_own_process() -> None:
    """Called by a node's executable before it builds the node (runner.spin_node)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True


def runtime_config(p: Parameters):
    from micro_perception.inference import RuntimeConfig, node_threads

    threads = p["threads"] or (node_threads() if _OWN_PROCESS else 0)
    return RuntimeConfig(
        backend=p["backend"],
        precision=p["precision"],
        device=p["device"],
        engine_cache_dir=p["engine_cache_dir"],
        threads=threads,
        torch_compile=p["torch_compile"],
    )
