"""The inference runtime: where and how every network runs (no ROS).

One :class:`Runtime` wraps one network for the nodes, the CLIs, the evaluation and the
benchmark alike:

* ``backend``: ``tensorrt`` compiles the network with Torch-TensorRT (dynamo IR, the static
  input shape of the first call), saves the compiled program in ``engine_cache_dir`` under a key
  made of the weights, the input shapes, the precision, the GPU and the library versions, and
  loads it from there on the next start instead of compiling again. ``torch`` runs eager PyTorch
  in inference mode (channels-last and fp16 autocast on CUDA), optionally through
  ``torch.compile``. ``auto`` takes tensorrt where CUDA and torch_tensorrt are present, else
  torch.
* Anything that fails on the way (the import, the compile, loading a cached program, an engine
  or a CUDA out-of-memory at run time) is reported once through ``warn`` and the next backend
  takes over: tensorrt -> torch on the same device -> torch on the CPU. Errors in the input
  (wrong shape) are not hidden: they propagate.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import inspect
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from micro_perception.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "tensorrt", "torch")
PRECISIONS = ("fp32", "fp16")
CACHE_ENV = "MICRO_PERCEPTION_ENGINE_CACHE"

log = logging.getLogger("micro_perception.inference")


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "device cuda was asked for, but torch sees no CUDA device (use device auto or cpu)"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or str(
        Path.home() / ".cache" / "micro_perception" / "engines"
    )


def node_threads() -> int:
    """CPU threads for the torch work of a node in its own process when not set: half the
    cores this process may use, at least one. The fusion and depth nodes share the machine, and
    two torch pools sized for every core fight over them (on 2 cores the depth node's
    segmentation took 990 ms a frame that way, 460 ms with one thread each; README)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(1, cores // 2)


@dataclass(frozen=True)
class RuntimeConfig:
    backend: str = "auto"
    precision: str = "fp32"
    device: str = "auto"
    engine_cache_dir: str = ""  # empty: $MICRO_PERCEPTION_ENGINE_CACHE or ~/.cache/...
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default
    torch_compile: bool = False  # torch backend through torch.compile

    def __post_init__(self):
        for field, value, allowed in (
            ("backend", self.backend, BACKENDS),
            ("precision", self.precision, PRECISIONS),
        ):
            if value not in allowed:
                raise InputError(f"{field} must be one of {list(allowed)}, got {value!r}")
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise InputError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.threads < 0:
            raise InputError(f"threads must be >= 0 (0: torch's default), got {self.threads}")

    @property
    def cache_dir(self) -> Path:
        return Path(self.engine_cache_dir or default_cache_dir()).expanduser()

    def to_dict(self) -> dict:
        return asdict(self)


def library_versions() -> dict:
    """torch, torch_tensorrt and tensorrt versions (None where absent)."""
    out = {"torch": torch.__version__, "torch_tensorrt": None, "tensorrt": None}
    for name in ("torch_tensorrt", "tensorrt"):
        with contextlib.suppress(Exception):  # absent or broken: either way not usable
            out[name] = importlib.import_module(name).__version__
    return out


def weights_digest(net: torch.nn.Module) -> str:
    """SHA-256 of the network's state (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def engine_key(
    digest: str, shapes, precision: str, device_name: str, versions: dict | None = None
) -> str:
    """What a compiled program depends on, hashed: a change in any of it compiles anew."""
    versions = versions if versions is not None else library_versions()
    text = repr(
        (digest, [tuple(s) for s in shapes], precision, device_name, sorted(versions.items()))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_or_build(path: Path, build: Callable, save: Callable, load: Callable, warn: Callable):
    """The cached program at ``path`` if it loads, else ``build()`` saved there (atomically).
    Returns (program, "loaded" | "built")."""
    if path.is_file():
        try:
            return load(path), "loaded"
        except Exception as exc:  # stale or truncated: rebuild rather than stop
            warn(f"cached engine {path} does not load ({exc}); compiling it again")
    program = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}" + path.suffix)
    try:
        save(program, tmp)
        os.replace(tmp, path)
    except Exception as exc:  # a read-only cache costs a compile per start, not the node
        warn(f"cannot save the engine to {path} ({exc}); it will be compiled again next start")
        tmp.unlink(missing_ok=True)
    return program, "built"


def fold_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode network in which every BatchNorm2d that directly follows a
    Conv2d in an nn.Sequential is folded into that convolution's weights and bias: the same
    outputs to float rounding, without a pass over the activations for each norm."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()
    for seq in net.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = seq._modules[a], seq._modules[b]
            if (
                isinstance(conv, torch.nn.Conv2d)
                and isinstance(bn, torch.nn.BatchNorm2d)
                and bn.track_running_stats
            ):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = torch.nn.Identity()
    return net


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float(o) for o in out)
    return out


def _is_device_failure(exc: BaseException) -> bool:
    """Errors of the device or engine (worth a fallback), not of the caller's input."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        k in text for k in ("CUDA", "cuDNN", "CUBLAS", "TensorRT", "out of memory")
    )


class Runtime:
    """``runtime(*tensors)`` -> the network's outputs in float32, on the runtime's device."""

    def __init__(
        self,
        net: torch.nn.Module,
        name: str,
        cfg: RuntimeConfig | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.cfg = cfg = cfg or RuntimeConfig()
        self.name = name
        self.warn = warn or log.warning
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        self.precision = cfg.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            self.warn(f"{name}: fp16 needs CUDA; running fp32 on {self.device}")
            self.precision = "fp32"
        self._net = net.eval()
        self._digest = None
        self._programs: dict[tuple, Callable] = {}
        self.engine: dict = {}  # how the TensorRT program was obtained, for diagnostics
        self.backend = self._resolve(cfg.backend)
        self._place()

    # -- choosing ----------------------------------------------------------------------------
    def _resolve(self, asked: str) -> str:
        if asked == "torch":
            return "torch"
        if self.device.type != "cuda":
            if asked == "tensorrt":
                self.warn(f"{self.name}: backend tensorrt needs CUDA; using torch on the CPU")
            return "torch"
        try:
            importlib.import_module("torch_tensorrt")
        except Exception as exc:
            if asked == "tensorrt":
                self.warn(f"{self.name}: torch_tensorrt cannot be imported ({exc}); using torch")
            return "torch"
        return "tensorrt"

    def _place(self) -> None:
        if self.backend == "torch":
            # TensorRT folds the norms itself and hashes the weights as loaded.
            self._net = fold_batchnorm(self._net)
        self._net = self._net.to(self.device)
        # Channels-last on the CPU only where the network says it pays: the segmentation
        # network's convolutions run faster so, the fusion network's a third slower.
        self._channels_last = self.device.type == "cuda" or bool(
            getattr(self._net, "channels_last_on_cpu", False)
        )
        if self._channels_last:
            self._net = self._net.to(memory_format=torch.channels_last)
        self._eager = self._net
        if self.backend == "torch" and self.cfg.torch_compile:
            try:
                self._eager = torch.compile(self._net, dynamic=False)
            except Exception as exc:
                self.warn(f"{self.name}: torch.compile failed ({exc}); running eager")

    def describe(self) -> dict:
        d = {
            "backend": self.backend,
            "device": str(self.device),
            "precision": self.precision,
            "threads": torch.get_num_threads(),  # the process's torch pool, CPU work
        }
        if self.cfg.torch_compile and self.backend == "torch":
            d["torch_compile"] = True
        return {**d, **self.engine}

    # -- running -----------------------------------------------------------------------------
    def __call__(self, *given: torch.Tensor):
        inputs = tuple(t.to(self.device) for t in given)
        while True:
            try:
                with torch.inference_mode():
                    if self.backend == "tensorrt":
                        return _to_float(self._tensorrt(inputs)(*self._cast(inputs)))
                    return self._torch(inputs)
            except Exception as exc:
                if not (self.backend == "tensorrt" or _is_device_failure(exc)):
                    raise
                if not self._fall_back(exc):
                    raise
                # From the caller's tensors: a device that failed may not give its copies back.
                inputs = tuple(t.to(self.device) for t in given)

    def _cast(self, inputs):
        half = self.precision == "fp16"
        return tuple(t.half() if half and t.is_floating_point() else t for t in inputs)

    def _torch(self, inputs):
        if self._channels_last:
            inputs = tuple(
                t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                for t in inputs
            )
        if self.precision != "fp16":
            return _to_float(self._eager(*inputs))
        with torch.autocast(self.device.type, dtype=torch.float16):
            return _to_float(self._eager(*inputs))

    def _fall_back(self, exc: BaseException) -> bool:
        """Move to the next backend; False when there is none left."""
        if self.backend == "tensorrt":
            self.warn(f"{self.name}: TensorRT failed ({exc}); falling back to torch on CUDA")
            self.backend, self.engine = "torch", {"engine": "failed"}
        elif self.device.type != "cpu":
            was = self.device.type
            self.warn(
                f"{self.name}: {was.upper()} failed ({type(exc).__name__}: {exc}); falling back "
                "to torch on the CPU"
            )
            self.device, self.precision = torch.device("cpu"), "fp32"
            if was == "cuda":
                torch.cuda.empty_cache()
        else:
            return False
        self._programs.clear()
        self._place()
        return True

    def warmup(self, *inputs: torch.Tensor, runs: int = 2) -> None:
        """Compile or load the program for these shapes and run it, before the first frame."""
        for _ in range(runs):
            self(*inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- TensorRT ----------------------------------------------------------------------------
    def _tensorrt(self, inputs) -> Callable:
        shapes = tuple(tuple(t.shape) for t in inputs)
        program = self._programs.get(shapes)
        if program is not None:
            return program
        trt = importlib.import_module("torch_tensorrt")
        if self._digest is None:
            self._digest = weights_digest(self._net)
        key = engine_key(
            self._digest, shapes, self.precision, torch.cuda.get_device_name(self.device)
        )
        path = self.cfg.cache_dir / f"{self.name}-{key}.ep"
        examples = list(self._cast(inputs))

        def build():
            # A copy: the eager network stays fp32 for a fallback.
            net = copy.deepcopy(self._net).to(memory_format=torch.contiguous_format)
            kwargs = {"ir": "dynamo", "inputs": examples}
            if self.precision == "fp16":
                net, kwargs["enabled_precisions"] = net.half(), {torch.float16}
            return trt.compile(net, **kwargs)

        def save(program, tmp):
            params = inspect.signature(trt.save).parameters
            arg = "arg_inputs" if "arg_inputs" in params else "inputs"
            trt.save(program, str(tmp), **{arg: examples})

        def load(p):
            return torch.export.load(str(p)).module()

        program, how = load_or_build(path, build, save, load, self.warn)
        self.engine = {"engine": how, "engine_path": str(path)}
        self._programs[shapes] = program
        return program
