"""The inference runtime on the CPU: configuration, engine cache keys, the cache itself, and
every fallback that can happen without a GPU."""

import pytest
import torch

from micro_perception.errors import InputError
from micro_perception.inference import (
    Runtime,
    RuntimeConfig,
    engine_key,
    load_or_build,
    weights_digest,
)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"expected (B, 3, H, W), got {tuple(x.shape)}")
        return self.conv(x), x.mean()


@pytest.mark.parametrize(
    "kwargs",
    [{"backend": "onnx"}, {"precision": "int8"}, {"device": "tpu"}, {"threads": -1}],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        RuntimeConfig(**kwargs)


def test_engine_key_depends_on_everything_a_program_depends_on():
    torch.manual_seed(0)
    net = Tiny()
    d = weights_digest(net)
    versions = {"torch": "2", "torch_tensorrt": "2.9", "tensorrt": "10"}
    base = engine_key(d, [(1, 3, 8, 8)], "fp16", "H100", versions)
    assert base == engine_key(d, [(1, 3, 8, 8)], "fp16", "H100", dict(versions))
    others = [
        engine_key(d, [(1, 3, 8, 16)], "fp16", "H100", versions),
        engine_key(d, [(1, 3, 8, 8)], "fp32", "H100", versions),
        engine_key(d, [(1, 3, 8, 8)], "fp16", "Orin", versions),
        engine_key(d, [(1, 3, 8, 8)], "fp16", "H100", {**versions, "tensorrt": "10.1"}),
    ]
    with torch.no_grad():
        net.conv.weight[0, 0, 0, 0] += 1e-6
    others.append(engine_key(weights_digest(net), [(1, 3, 8, 8)], "fp16", "H100", versions))
    assert len({base, *others}) == 6


def test_cache_compiles_once_and_loads_on_the_next_start(tmp_path):
    built, warnings = [], []

    def build():
        built.append(1)
        return "program"

    def save(program, path):
        path.write_text(program)

    def load(path):
        return path.read_text() + " (cached)"

    path = tmp_path / "cache" / "fusion-abc.ep"
    assert load_or_build(path, build, save, load, warnings.append) == ("program", "built")
    assert load_or_build(path, build, save, load, warnings.append) == (
        "program (cached)",
        "loaded",
    )
    assert len(built) == 1 and not warnings
    assert sorted(p.name for p in path.parent.iterdir()) == ["fusion-abc.ep"]  # no temp left

    def broken(path):
        raise RuntimeError("truncated")

    assert load_or_build(path, build, save, broken, warnings.append)[1] == "built"
    assert len(built) == 2 and "does not load" in warnings[0]


def test_unwritable_cache_costs_a_compile_not_the_node(tmp_path):
    warnings = []

    def save(program, path):
        raise PermissionError("read-only file system")

    program, how = load_or_build(
        tmp_path / "x.ep", lambda: "p", save, lambda p: None, warnings.append
    )
    assert (program, how) == ("p", "built")
    assert "cannot save" in warnings[0]
    assert not list(tmp_path.iterdir())


def test_cpu_runtime_matches_eager_and_says_what_it_could_not_do():
    torch.manual_seed(0)
    net = Tiny()
    x = torch.rand(1, 3, 8, 8)
    want = net(x)[0].detach()
    warnings = []
    rt = Runtime(
        net,
        "tiny",
        RuntimeConfig(backend="tensorrt", precision="fp16", device="cpu"),
        warnings.append,
    )
    assert rt.describe() == {
        "backend": "torch",
        "device": "cpu",
        "precision": "fp32",
        "threads": torch.get_num_threads(),
    }
    assert any("tensorrt needs CUDA" in w for w in warnings)
    assert any("fp16 needs CUDA" in w for w in warnings)
    out, mean = rt(x)
    assert mean.dtype == torch.float32 and mean.dim() == 0
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want)
    # Errors in the input are the caller's: not hidden behind a fallback.
    with pytest.raises(ValueError, match="expected"):
        rt(torch.rand(3, 8, 8))


def test_the_torch_backend_folds_batch_norms_and_lays_out_channels_last_where_asked():
    """The segmentation network's norms, with statistics of their own, folded into the
    convolutions before them: the same logits, no norm left to run, the caller's network as
    it was. It asks for channels-last on the CPU; a network that does not ask keeps NCHW."""
    from micro_perception.depth.segmentation import SegNet

    torch.manual_seed(0)
    net = SegNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.rand(1, 3, 48, 40)
    with torch.no_grad():
        want = net(x)
    rt = Runtime(net, "segmentation", RuntimeConfig(backend="torch", device="cpu"))
    torch.testing.assert_close(rt(x), want, rtol=1e-4, atol=1e-4)
    norms = [type(m) for m in rt._net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms == []
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 18
    first = rt._net.down[0][0].weight
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    tiny = Runtime(Tiny(), "tiny", RuntimeConfig(backend="torch", device="cpu"))
    assert tiny._net.conv.weight.is_contiguous()


def test_failing_engine_falls_back_to_torch_once_and_keeps_answering():
    torch.manual_seed(0)
    net = Tiny()
    x = torch.rand(1, 3, 8, 8)
    want = net(x)[0].detach()
    warnings = []
    rt = Runtime(net, "tiny", RuntimeConfig(backend="torch", device="cpu"), warnings.append)

    def engine(*inputs):
        raise RuntimeError("[TensorRT] engine execution failed")

    # A program in the cache for this shape that fails when run, as a broken engine would.
    rt.backend = "tensorrt"
    rt._programs[(tuple(x.shape),)] = engine
    torch.testing.assert_close(rt(x)[0], want)
    assert rt.backend == "torch" and rt.engine == {"engine": "failed"}
    assert len(warnings) == 1 and "TensorRT failed" in warnings[0]
    torch.testing.assert_close(rt(x)[0], want)
    assert len(warnings) == 1


def test_a_cpu_failure_has_no_fallback_and_is_raised():
    class Broken(Tiny):
        def forward(self, x):
            raise RuntimeError("out of memory")

    rt = Runtime(Broken(), "broken", RuntimeConfig(device="cpu"))
    with pytest.raises(RuntimeError, match="out of memory"):
        rt(torch.rand(1, 3, 8, 8))


def test_out_of_memory_on_the_accelerator_falls_back_to_the_cpu_once():
    """A real torch.cuda.OutOfMemoryError from the network while it runs on an accelerator. This
    machine has no GPU, so the accelerator is torch's meta device; the fallback is the same."""

    class Hungry(Tiny):
        def forward(self, x):
            if x.device.type != "cpu":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return super().forward(x)

    torch.manual_seed(0)
    net = Hungry()
    x = torch.rand(1, 3, 8, 8)
    want = Tiny.forward(net, x)[0].detach()
    warnings = []
    rt = Runtime(net, "hungry", RuntimeConfig(backend="torch", device="cpu"), warnings.append)
    rt.device = torch.device("meta")  # the inputs go there; meta holds no weights to move
    out = rt(x)[0]
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, want)
    assert rt.describe()["device"] == "cpu"
    assert len(warnings) == 1 and "META failed (OutOfMemoryError" in warnings[0]
    rt(x)
    assert len(warnings) == 1
