"""TensorRT engines: profiles, cache keys and locking everywhere; engines on a GPU.

The pure-Python parts (profiles, engine keys, the cache directory, the build-once
cache with its lock, the errors when TensorRT is missing) run on any machine. The
engine tests build a tiny model's towers into engines and compare them with PyTorch;
they run only where the ``tensorrt`` package imports and PyTorch sees a CUDA GPU.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

import runtime.tensorrt as rt
from runtime.errors import ConfigError
from runtime.sessions import SessionError
from runtime.tensorrt import (
    Profile,
    TensorRTSession,
    build_engine,
    cached_engine,
    current_engine_key,
    default_cache_dir,
    engine_key,
    image_profile,
    require_tensorrt,
    tensorrt_available,
    text_profile,
)
from tests.conftest import ROOT

SHA = "0123456789abcdef" * 4
SAFE = re.compile(r"[a-z0-9._-]+")


# ---------------------------------------------------------------- profiles


def test_text_profile_covers_batch_and_sequence() -> None:
    profile = text_profile(52)
    assert profile == Profile("input_ids", min=(1, 1), opt=(64, 16), max=(256, 52))
    assert profile.accepts((1, 1)) and profile.accepts((256, 52)) and profile.accepts((3, 7))
    assert not profile.accepts((3, 53))
    assert not profile.accepts((257, 10))
    assert not profile.accepts((0, 10))
    assert not profile.accepts((3,))
    assert not profile.accepts((3, 10, 1))


def test_image_profile_fixes_the_image_size() -> None:
    profile = image_profile(224, max_batch=32, opt_batch=8)
    assert profile.input == "pixel_values"
    assert profile.min == (1, 3, 224, 224)
    assert profile.opt == (8, 3, 224, 224)
    assert profile.max == (32, 3, 224, 224)
    assert profile.accepts((5, 3, 224, 224))
    assert not profile.accepts((5, 3, 225, 225))
    assert not profile.accepts((5, 1, 224, 224))
    assert not profile.accepts((33, 3, 224, 224))


def test_optimum_is_clamped_into_the_range() -> None:
    assert text_profile(8, max_batch=4).opt == (4, 8)
    assert image_profile(32, max_batch=2).opt == (2, 3, 32, 32)


@pytest.mark.parametrize(
    ("low", "mid", "high"),
    [
        ((2, 4), (1, 4), (8, 4)),  # opt below min
        ((1, 4), (9, 4), (8, 4)),  # opt above max
        ((0, 4), (1, 4), (8, 4)),  # zero
        ((1, 4), (1, 4, 1), (8, 4)),  # ranks differ
        ((), (), ()),  # no dimensions
    ],
)
def test_inconsistent_profiles_are_config_errors(
    low: tuple[int, ...], mid: tuple[int, ...], high: tuple[int, ...]
) -> None:
    with pytest.raises(ConfigError):
        Profile("x", min=low, opt=mid, max=high)


def test_profile_helpers_refuse_impossible_sizes() -> None:
    with pytest.raises(ConfigError):
        text_profile(0)
    with pytest.raises(ConfigError):
        image_profile(224, max_batch=0)


def test_profile_to_dict_is_json_ready() -> None:
    profile = text_profile(52, max_batch=128, opt_batch=32, opt_sequence=20)
    data = json.loads(json.dumps(profile.to_dict()))
    assert data == {"input": "input_ids", "min": [1, 1], "opt": [32, 20], "max": [128, 52]}
    assert Profile(data["input"], *(tuple(data[k]) for k in ("min", "opt", "max"))) == profile


# ---------------------------------------------------------------- keys and cache paths


def test_engine_key_is_a_readable_slug() -> None:
    assert engine_key("NVIDIA H100 80GB HBM3", "10.9.0.34") == "nvidia-h100-80gb-hbm3_trt10.9.0.34"


@pytest.mark.parametrize(
    ("gpu", "version"),
    [
        ("NVIDIA GeForce RTX 4090", "10.0.1.6"),
        ("Tesla T4/../../etc", "10.3.0"),
        ("..", ".."),
        ("", ""),
        ("NVIDIA A100-SXM4-80GB (MIG 1g.10gb)", "10.13.0.35+cuda12"),
        ("ＮＶＩＤＩＡ 显卡", "10.9"),
    ],
)
def test_engine_keys_are_safe_path_components(gpu: str, version: str, tmp_path: Path) -> None:
    key = engine_key(gpu, version)
    assert SAFE.fullmatch(key), key
    assert key not in (".", "..") and "/" not in key and len(key) <= 140
    (tmp_path / key).mkdir()  # one directory, directly under tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [key]


def test_engine_keys_differ_by_gpu_and_version() -> None:
    gpus = ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA L4"]
    versions = ["10.0.1.6", "10.9.0.34", "10.13.0.35"]
    keys = {engine_key(g, v) for g in gpus for v in versions}
    assert len(keys) == len(gpus) * len(versions)


def test_default_cache_dir_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CNCLIP_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "engines"
    monkeypatch.delenv("CNCLIP_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "cnclip" / "engines"


# ---------------------------------------------------------------- without TensorRT


def test_importing_the_module_loads_neither_tensorrt_nor_torch() -> None:
    code = "import sys, runtime.tensorrt\nprint(sorted({'tensorrt', 'torch'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_missing_tensorrt_is_a_config_error_that_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    assert tensorrt_available() is False
    with pytest.raises(ConfigError, match=r"pip install 'cnclip\[gpu\]'"):
        require_tensorrt()
    onnx = tmp_path / "text.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(ConfigError, match="tensorrt"):
        build_engine(onnx, tmp_path / "text.plan", text_profile(52))
    with pytest.raises(ConfigError):
        TensorRTSession(tmp_path / "text.plan", "input_ids", "text_embeds")
    with pytest.raises(ConfigError):
        current_engine_key()
    with pytest.raises(ConfigError):
        cached_engine(onnx, SHA, text_profile(52), tmp_path, "text")
    assert not (tmp_path / "text.plan").exists()


def test_tensorrt_available_agrees_with_require() -> None:
    if tensorrt_available():
        assert require_tensorrt().__name__ == "tensorrt"
    else:
        with pytest.raises(ConfigError):
            require_tensorrt()


@pytest.mark.parametrize(
    ("sha", "name"),
    [("not-a-digest", "text"), ("abc", "text"), (SHA, "../text"), (SHA, ""), (SHA, "a/b")],
)
def test_cached_engine_refuses_unsafe_names(sha: str, name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        cached_engine(tmp_path / "x.onnx", sha, text_profile(52), tmp_path, name)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the cache, with a fake build


class FakeBuilds:
    """Stands in for build_engine: writes a marker plan slowly and counts the builds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(
        self,
        onnx_path: Path,
        plan_path: Path,
        profile: Profile,
        *,
        fp16: bool = True,
        workspace_bytes: int = 4 << 30,
        device: int | None = None,
    ) -> None:
        with self._lock:
            self.calls.append({"plan": plan_path, "profile": profile, "fp16": fp16})
        time.sleep(self.delay)
        rt._atomic_write(plan_path, f"plan of {onnx_path.name} fp16={fp16}".encode())


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBuilds:
    builds = FakeBuilds(delay=0.3)
    monkeypatch.setattr(rt, "current_engine_key", lambda device=0: f"fake-gpu-{device}_trt10.9")
    monkeypatch.setattr(rt, "build_engine", builds)
    return builds


def test_cached_engine_builds_once_and_lays_out_the_cache(fake: FakeBuilds, tmp_path: Path) -> None:
    onnx = tmp_path / "image.onnx"
    profile = image_profile(224, max_batch=16)
    plan = cached_engine(onnx, SHA.upper(), profile, tmp_path / "cache", "image")
    assert plan == tmp_path / "cache" / SHA[:16] / "fake-gpu-0_trt10.9" / "image.plan"
    assert plan.read_bytes() == b"plan of image.onnx fp16=True"
    assert len(fake.calls) == 1
    again = cached_engine(onnx, SHA, profile, tmp_path / "cache", "image")
    assert again == plan and len(fake.calls) == 1
    meta = json.loads((plan.parent / "image.json").read_text(encoding="utf-8"))
    assert meta["profile"] == profile.to_dict() and meta["fp16"] is True
    # nothing half-written is left behind: the plan, its record and the lock file
    assert sorted(p.name for p in plan.parent.iterdir()) == [
        "image.json",
        "image.lock",
        "image.plan",
    ]


def test_cached_engine_rebuilds_for_another_profile_or_precision(
    fake: FakeBuilds, tmp_path: Path
) -> None:
    onnx = tmp_path / "text.onnx"
    first = cached_engine(onnx, SHA, text_profile(52, max_batch=64), tmp_path, "text")
    second = cached_engine(onnx, SHA, text_profile(52, max_batch=128), tmp_path, "text")
    third = cached_engine(onnx, SHA, text_profile(52, max_batch=128), tmp_path, "text", fp16=False)
    assert first == second == third
    assert [c["profile"].max for c in fake.calls] == [(64, 52), (128, 52), (128, 52)]
    assert [c["fp16"] for c in fake.calls] == [True, True, False]
    assert third.read_bytes() == b"plan of text.onnx fp16=False"


def test_cached_engine_rebuilds_a_plan_without_its_record(fake: FakeBuilds, tmp_path: Path) -> None:
    onnx = tmp_path / "text.onnx"
    plan = cached_engine(onnx, SHA, text_profile(52), tmp_path, "text")
    (plan.parent / "text.json").unlink()
    assert cached_engine(onnx, SHA, text_profile(52), tmp_path, "text") == plan
    assert len(fake.calls) == 2


def test_concurrent_callers_build_the_engine_once(fake: FakeBuilds, tmp_path: Path) -> None:
    onnx = tmp_path / "text.onnx"
    profile = text_profile(52)
    with ThreadPoolExecutor(max_workers=6) as pool:
        plans = list(
            pool.map(lambda _: cached_engine(onnx, SHA, profile, tmp_path, "text"), range(6))
        )
    assert len(set(plans)) == 1
    assert len(fake.calls) == 1


def test_concurrent_processes_build_the_engine_once(tmp_path: Path) -> None:
    """Separate processes share the lock file: one builds, the others wait and reuse it."""
    log = tmp_path / "builds.log"
    code = f"""
import time, sys
from pathlib import Path
import runtime.tensorrt as rt

def fake_build(onnx_path, plan_path, profile, *, fp16=True, workspace_bytes=0, device=None):
    with open({str(log)!r}, "a") as handle:
        handle.write("build\\n")
    time.sleep(0.5)
    rt._atomic_write(plan_path, b"plan")

rt.current_engine_key = lambda device=0: "fake-gpu_trt10.9"
rt.build_engine = fake_build
plan = rt.cached_engine(Path("text.onnx"), {SHA!r}, rt.text_profile(52), Path({str(tmp_path)!r}),
                        "text")
print(plan)
"""
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outputs)) == 1 and Path(outputs[0]).read_bytes() == b"plan"
    assert log.read_text().count("build") == 1


def test_a_failed_build_leaves_nothing_and_releases_the_lock(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise SessionError("cannot parse")

    monkeypatch.setattr(rt, "current_engine_key", lambda device=0: "fake-gpu_trt10.9")
    monkeypatch.setattr(rt, "build_engine", broken)
    for _ in range(2):  # the second attempt is not blocked by the first one's lock
        with pytest.raises(SessionError):
            cached_engine(tmp_path / "text.onnx", SHA, text_profile(52), tmp_path, "text")
    directory = tmp_path / SHA[:16] / "fake-gpu_trt10.9"
    assert [p.name for p in directory.iterdir()] == ["text.lock"]


def test_atomic_write_leaves_no_temporary_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "engine.plan"
    target.write_bytes(b"old engine")
    with pytest.raises(TypeError):
        rt._atomic_write(target, 12345)  # not a buffer
    assert target.read_bytes() == b"old engine"
    assert [p.name for p in tmp_path.iterdir()] == ["engine.plan"]


# ---------------------------------------------------------------- fp32 layer selection


class FakeTensor:
    def __init__(self, name: str, dtype: str = "float32", shape: bool = False) -> None:
        self.name, self.dtype, self.is_shape_tensor = name, dtype, shape


class FakeLayer:
    """The parts of a TensorRT ILayer that the precision pass reads and writes."""

    def __init__(self, kind: str, inputs: list[FakeTensor | None], outputs: list[FakeTensor]):
        self.type, self._inputs, self._outputs = kind, inputs, outputs
        self.precision: str | None = None
        self.output_types: dict[int, str] = {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index: int) -> FakeTensor | None:
        return self._inputs[index]

    def get_output(self, index: int) -> FakeTensor:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class FakeNetwork:
    def __init__(self, layers: dict[str, FakeLayer], outputs: list[FakeTensor]) -> None:
        self.names, self._layers, self._outputs = list(layers), list(layers.values()), outputs

    num_layers = property(lambda self: len(self._layers))
    num_outputs = property(lambda self: len(self._outputs))

    def get_layer(self, index: int) -> FakeLayer:
        return self._layers[index]

    def get_output(self, index: int) -> FakeTensor:
        return self._outputs[index]

    def pinned(self) -> set[str]:
        return {n for n, layer in zip(self.names, self._layers, strict=True) if layer.precision}


KINDS = (
    "NORMALIZATION SOFTMAX REDUCE MATRIX_MULTIPLY CONVOLUTION DECONVOLUTION ELEMENTWISE UNARY "
    "ACTIVATION CONSTANT SHAPE CAST IDENTITY SLICE"
)
FAKE_TRT = type(
    "FakeTensorRT",
    (),
    {
        "LayerType": type("LayerType", (), {k: k for k in KINDS.split()}),
        "float32": "float32",
        "float16": "float16",
        "int32": "int32",
    },
)


def _normalized_tower(extra_after_reduce: str | None = None) -> FakeNetwork:
    """What the ONNX parser makes of ``LayerNorm, softmax, ..., x / clip(ReduceL2(x))``."""
    names = ("a", "b", "d", "p", "s", "r", "q", "k", "e", "out", "m")
    t = {n: FakeTensor(n) for n in names}
    t["c"] = FakeTensor("c", "int32", shape=True)
    t["sh"] = FakeTensor("sh", "int32", shape=True)
    layers = {
        "norm": FakeLayer("NORMALIZATION", [t["a"]], [t["b"]]),
        "softmax": FakeLayer("SOFTMAX", [t["b"]], [t["d"]]),
        "int_reduce": FakeLayer("REDUCE", [t["sh"]], [t["c"]]),
        "proj": FakeLayer("MATRIX_MULTIPLY", [t["d"], None], [t["p"]]),
        "square": FakeLayer("ELEMENTWISE", [t["p"], t["p"]], [t["s"]]),
        "sum": FakeLayer("REDUCE", [t["s"]], [t["r"]]),
        "sqrt": FakeLayer("UNARY", [t["r"]], [t["q"]]),
        "eps": FakeLayer("CONSTANT", [], [FakeTensor("eps")]),
        "clip": FakeLayer("ACTIVATION", [t["q"]], [t["k"]]),
        "shape": FakeLayer("SHAPE", [t["p"]], [FakeTensor("shp", "int32", shape=True)]),
        "expand": FakeLayer("SLICE", [t["k"], None], [t["e"]]),
        "div": FakeLayer("ELEMENTWISE", [t["p"], t["e"]], [t["out"]]),
    }
    if extra_after_reduce:  # a heavy layer between the last reduction and the output
        layers["div"] = FakeLayer("ELEMENTWISE", [t["p"], t["e"]], [t["m"]])
        layers["late"] = FakeLayer(extra_after_reduce, [t["m"]], [t["out"]])
    return FakeNetwork(layers, [t["out"]])


def test_sensitive_layers_and_the_final_normalization_stay_fp32() -> None:
    network = _normalized_tower()
    assert rt._keep_fp32(FAKE_TRT, network) == 8
    assert network.pinned() == {
        "norm", "softmax", "square", "sum", "sqrt", "clip", "expand", "div"
    }  # fmt: skip
    for layer in network._layers:
        if layer.precision:
            assert layer.precision == "float32" and layer.output_types == {0: "float32"}


def test_no_tail_when_the_graph_does_not_end_in_a_normalization() -> None:
    network = _normalized_tower(extra_after_reduce="MATRIX_MULTIPLY")
    rt._keep_fp32(FAKE_TRT, network)
    assert network.pinned() == {"norm", "softmax", "sum"}


# ---------------------------------------------------------------- engines (GPU only)


def _gpu_ready() -> bool:
    return tensorrt_available() and torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _gpu_ready(), reason="needs the tensorrt package and a CUDA GPU")

TEXTS = ["红色的杯子", "一群人围坐在桌边吃饭", "踢足球的人", "生日蛋糕", "海边的日落和帆船"]
TINY_MAX_BATCH = 8


def _weakly_typed() -> bool:
    """TensorRT 10 (fp16 by builder flag) rather than strongly typed 11+."""
    return hasattr(require_tensorrt().BuilderFlag, "FP16")


def _cosines(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots = (a64 * b64).sum(axis=1)
    result: npt.NDArray[np.float64] = dots / (
        np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    )
    return result


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    from export.onnx_export import export_image, export_text
    from model.modeling import build_model
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = build_model(tiny_config("vit")).eval()
    directory = tmp_path_factory.mktemp("towers")
    export_text(model, directory / "text.onnx")
    export_image(model, directory / "image.onnx")
    return model, directory / "text.onnx", directory / "image.onnx"


@pytest.fixture(scope="module")
def engines(
    towers: tuple[Any, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, bool], Path]:
    model, text_onnx, image_onnx = towers
    directory = tmp_path_factory.mktemp("engines")
    built: dict[tuple[str, bool], Path] = {}

    def get(tower: str, fp16: bool) -> Path:
        if fp16 and not _weakly_typed():
            pytest.skip("strongly typed TensorRT builds fp16 only from an fp16 graph")
        if (tower, fp16) not in built:
            plan = directory / f"{tower}-{'fp16' if fp16 else 'fp32'}.plan"
            if tower == "text":
                profile = text_profile(
                    model.config.text.context_length, max_batch=TINY_MAX_BATCH, opt_batch=4
                )
                build_engine(text_onnx, plan, profile, fp16=fp16, workspace_bytes=1 << 30)
            else:
                profile = image_profile(
                    model.config.vision.image_size, max_batch=TINY_MAX_BATCH, opt_batch=4
                )
                build_engine(image_onnx, plan, profile, fp16=fp16, workspace_bytes=1 << 30)
            built[(tower, fp16)] = plan
        return built[(tower, fp16)]

    return get


def _pixels(model: Any, n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    size = model.config.vision.image_size
    generator = torch.Generator().manual_seed(seed)
    pixels: npt.NDArray[np.float32] = torch.randn(n, 3, size, size, generator=generator).numpy()
    return pixels


@needs_gpu
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("pad_to", ["longest", "max"])
def test_text_engine_matches_pytorch(
    towers: tuple[Any, Path, Path],
    engines: Callable[[str, bool], Path],
    fp16: bool,
    pad_to: Any,
) -> None:
    from runtime.tokenizer import default_tokenizer

    model = towers[0]
    ids = default_tokenizer()(TEXTS, pad_to=pad_to).ids
    with torch.no_grad():
        expected = model.encode_text(torch.from_numpy(ids)).numpy()
    session = TensorRTSession(engines("text", fp16), "input_ids", "text_embeds")
    got = session.run(ids)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert _cosines(got, expected).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=2e-3)


@needs_gpu
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_image_engine_matches_pytorch(
    towers: tuple[Any, Path, Path], engines: Callable[[str, bool], Path], fp16: bool
) -> None:
    model = towers[0]
    pixels = _pixels(model, 5)
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(pixels)).numpy()
    got = TensorRTSession(engines("image", fp16), "pixel_values", "image_embeds").run(pixels)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert _cosines(got, expected).min() >= 0.999


@needs_gpu
def test_batches_beyond_the_profile_are_chunked(
    towers: tuple[Any, Path, Path], engines: Callable[[str, bool], Path]
) -> None:
    model = towers[0]
    pixels = _pixels(model, 2 * TINY_MAX_BATCH + 3, seed=1)
    session = TensorRTSession(engines("image", False), "pixel_values", "image_embeds")
    assert session.max_shape[0] == TINY_MAX_BATCH
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(pixels)).numpy()
    got = session.run(pixels)
    assert got.shape == expected.shape
    assert _cosines(got, expected).min() >= 0.999
    assert session.run(pixels[:0]).shape == (0, expected.shape[1])


@needs_gpu
def test_shapes_outside_the_profile_are_config_errors(
    engines: Callable[[str, bool], Path],
) -> None:
    session = TensorRTSession(engines("text", False), "input_ids", "text_embeds")
    too_long = np.ones((2, 53), dtype=np.int64)
    with pytest.raises(ConfigError, match=r"1\.\.52"):
        session.run(too_long)
    with pytest.raises(ConfigError):
        session.run(np.ones((2,), dtype=np.int64))
    with pytest.raises(ConfigError):
        session.run(np.ones((2, 5), dtype=np.float32))  # ids must be integers


@needs_gpu
def test_runs_from_several_threads_agree(
    towers: tuple[Any, Path, Path], engines: Callable[[str, bool], Path]
) -> None:
    model = towers[0]
    session = TensorRTSession(engines("image", False), "pixel_values", "image_embeds")
    batches = [_pixels(model, 1 + i % 5, seed=i) for i in range(12)]
    alone = [session.run(b) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(session.run, batches))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@needs_gpu
def test_unloadable_engines_are_session_errors(
    engines: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.plan"
    garbage.write_bytes(b"this is not a TensorRT engine" * 10)
    with pytest.raises(SessionError, match="garbage.plan"):
        TensorRTSession(garbage, "input_ids", "text_embeds")
    with pytest.raises(SessionError, match="no input"):
        TensorRTSession(engines("text", False), "pixel_values", "text_embeds")
    with pytest.raises(SessionError, match="no output"):
        TensorRTSession(engines("text", False), "input_ids", "image_embeds")


@needs_gpu
def test_unparsable_onnx_is_a_session_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07not really protobuf")
    with pytest.raises(SessionError, match="broken.onnx"):
        build_engine(broken, tmp_path / "broken.plan", text_profile(52))
    assert not (tmp_path / "broken.plan").exists()


@needs_gpu
def test_cached_engine_on_the_gpu(towers: tuple[Any, Path, Path], tmp_path: Path) -> None:
    model, _, image_onnx = towers
    profile = image_profile(model.config.vision.image_size, max_batch=4, opt_batch=2)
    plan = cached_engine(image_onnx, SHA, profile, tmp_path, "image", fp16=False)
    assert plan == tmp_path / SHA[:16] / current_engine_key() / "image.plan"
    built_at = plan.stat().st_mtime_ns
    assert cached_engine(image_onnx, SHA, profile, tmp_path, "image", fp16=False) == plan
    assert plan.stat().st_mtime_ns == built_at
    pixels = _pixels(model, 3)
    with torch.no_grad():
        expected = model.encode_image(torch.from_numpy(pixels)).numpy()
    got = TensorRTSession(plan, "pixel_values", "image_embeds").run(pixels)
    assert _cosines(got, expected).min() >= 0.999
