"""TensorRT engines for the two towers: build once per GPU model, cache, run.

A TensorRT engine (a serialized "plan") is compiled from a tower's ONNX graph for
one GPU model and one TensorRT version, and only loads where both match. This
module therefore:

- builds an engine from ``text.onnx`` or ``image.onnx`` with one optimization
  profile (:class:`Profile`: the smallest, the tuned-for and the largest input
  shape it accepts) and, in fp16, keeps the numerically sensitive layers in fp32:
  LayerNorm (``NORMALIZATION``), the attention ``SOFTMAX``, every ``REDUCE``, and
  the final L2 normalization (the square feeding the last reduction and the
  layers from that reduction to the output). That is TensorRT 10's weakly typed
  mode; TensorRT 11 and later are strongly typed: they build the precision that
  the ONNX graph itself declares, so an fp16 engine there needs an fp16 graph;
- caches engines under ``<cache>/<onnx sha256[:16]>/<gpu>_trt<version>/<name>.plan``
  (:func:`cached_engine`), built under a file lock so that concurrent processes
  never build the same engine twice at once, and written atomically so that a
  crash never leaves half an engine behind;
- runs an engine behind the :class:`~runtime.sessions.EncoderSession` protocol
  (:class:`TensorRTSession`), with PyTorch for device memory and the CUDA stream.

``tensorrt`` and ``torch`` are imported inside the functions that need them, never
when this module is imported: the serving install without a GPU imports it freely.
A missing package, a missing GPU or bad settings raise
:class:`~runtime.errors.ConfigError`; an ONNX file or engine that TensorRT cannot
use raises :class:`~runtime.sessions.SessionError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import re
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.errors import ConfigError
from runtime.files import write_atomically as _atomic_write
from runtime.sessions import SessionError

log = logging.getLogger(__name__)

TEXT_INPUT = "input_ids"
IMAGE_INPUT = "pixel_values"

_INSTALL_HINT = (
    "backend tensorrt needs the tensorrt package (TensorRT 10) and an NVIDIA GPU: "
    "pip install 'cnclip[gpu]'"
)


# ---------------------------------------------------------------- availability


def tensorrt_available() -> bool:
    """Whether ``import tensorrt`` works here."""
    try:
        importlib.import_module("tensorrt")
    except (ImportError, OSError):
        return False
    return True


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a ConfigError that says how to install it."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise ConfigError(f"{_INSTALL_HINT} ({exc})") from exc


def _require_cuda(device: int) -> Any:
    """The ``torch`` module, with ``device`` checked to be a visible CUDA device."""
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(
            f"backend tensorrt needs PyTorch with CUDA for device memory ({exc})"
        ) from exc
    if not torch.cuda.is_available():
        raise ConfigError(f"{_INSTALL_HINT}; PyTorch sees no CUDA GPU here")
    count = torch.cuda.device_count()
    if not 0 <= device < count:
        raise ConfigError(f"CUDA device {device} does not exist ({count} visible)")
    return torch


# ---------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """One optimization profile: the input shapes an engine accepts (min..max), tuned for opt."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.input:
            raise ConfigError("a TensorRT profile needs the input name")
        if not len(self.min) == len(self.opt) == len(self.max) >= 1:
            raise ConfigError(
                f"profile of {self.input!r}: min {self.min}, opt {self.opt} and max {self.max} "
                "must have the same number of dimensions"
            )
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= mid <= hi:
                raise ConfigError(
                    f"profile of {self.input!r}: need 1 <= min <= opt <= max in every "
                    f"dimension, got min {self.min}, opt {self.opt}, max {self.max}"
                )

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether an input of ``shape`` lies within min..max in every dimension."""
        if len(shape) != len(self.min):
            return False
        return all(lo <= int(s) <= hi for s, lo, hi in zip(shape, self.min, self.max, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for a manifest."""
        return {
            "input": self.input,
            "min": list(self.min),
            "opt": list(self.opt),
            "max": list(self.max),
        }


def _clamp(value: int, hi: int) -> int:
    return max(1, min(int(value), int(hi)))


def text_profile(
    context_length: int, max_batch: int = 256, opt_batch: int = 64, opt_sequence: int = 16
) -> Profile:
    """``input_ids`` [batch, sequence]: batch 1..max_batch, sequence 1..context_length."""
    return Profile(
        TEXT_INPUT,
        min=(1, 1),
        opt=(_clamp(opt_batch, max_batch), _clamp(opt_sequence, context_length)),
        max=(int(max_batch), int(context_length)),
    )


def image_profile(image_size: int, max_batch: int = 256, opt_batch: int = 64) -> Profile:
    """``pixel_values`` [batch, 3, S, S]: batch 1..max_batch at the one image size S."""
    size = int(image_size)
    return Profile(
        IMAGE_INPUT,
        min=(1, 3, size, size),
        opt=(_clamp(opt_batch, max_batch), 3, size, size),
        max=(int(max_batch), 3, size, size),
    )


# ---------------------------------------------------------------- engine keys and cache


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9.]+", "-", text.strip().lower()).strip("-.")
    return slug[:64] or "unknown"


def engine_key(gpu_name: str, trt_version: str) -> str:
    """Filesystem-safe name of a (GPU model, TensorRT version) pair.

    ``engine_key("NVIDIA H100 80GB HBM3", "10.9.0.34") == "nvidia-h100-80gb-hbm3_trt10.9.0.34"``
    """
    return f"{_slug(gpu_name)}_trt{_slug(trt_version)}"


def current_engine_key(device: int = 0) -> str:
    """:func:`engine_key` of CUDA ``device`` and the installed TensorRT."""
    torch = _require_cuda(device)
    trt = require_tensorrt()
    return engine_key(str(torch.cuda.get_device_name(device)), str(trt.__version__))


def default_cache_dir() -> Path:
    """``$CNCLIP_CACHE_DIR/engines`` when that is set, else ``~/.cache/cnclip/engines``."""
    root = os.environ.get("CNCLIP_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "engines"
    return Path.home() / ".cache" / "cnclip" / "engines"


_SHA256 = re.compile(r"[0-9a-fA-F]{16,64}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def cached_engine(
    onnx_path: Path,
    onnx_sha256: str,
    profile: Profile,
    cache_dir: Path,
    name: str,
    *,
    fp16: bool = True,
    device: int = 0,
) -> Path:
    """The engine of ``onnx_path`` for CUDA ``device``, built on first use and cached.

    The path is ``cache_dir / onnx_sha256[:16] / current_engine_key(device) / f"{name}.plan"``.
    Beside it, ``{name}.json`` records the profile and precision it was built with (a
    different request rebuilds it) and ``{name}.lock`` serializes builds across processes.
    """
    if not _SHA256.fullmatch(onnx_sha256):
        raise ConfigError(f"not a sha256 hex digest: {onnx_sha256!r}")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"engine name {name!r} must be letters, digits, '_', '.', '-'")
    key = current_engine_key(device)
    directory = Path(cache_dir) / onnx_sha256[:16].lower() / key
    plan = directory / f"{name}.plan"
    meta = directory / f"{name}.json"
    wanted = {
        "onnx_sha256": onnx_sha256.lower(),
        "engine_key": key,
        "profile": profile.to_dict(),
        "fp16": bool(fp16),
    }
    if _is_current(plan, meta, wanted):
        return plan
    directory.mkdir(parents=True, exist_ok=True)
    with _file_lock(directory / f"{name}.lock"):
        if _is_current(plan, meta, wanted):  # another process built it while we waited
            return plan
        log.info("building TensorRT engine %s from %s", plan, onnx_path)
        build_engine(Path(onnx_path), plan, profile, fp16=fp16, device=device)
        _atomic_write(meta, json.dumps(wanted, indent=2, sort_keys=True).encode("utf-8"))
    return plan


def _is_current(plan: Path, meta: Path, wanted: dict[str, Any]) -> bool:
    if not plan.is_file():
        return False
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in wanted.items())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, held for the ``with`` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- TensorRT logging

_LOGGER_LOCK = threading.Lock()
_TRT_LOGGER: Any = None


def _trt_logger(trt: Any) -> Any:
    """One process-wide TensorRT logger (TensorRT expects a single one) that forwards to
    :mod:`logging` and remembers the recent errors, to put them into exception messages."""
    global _TRT_LOGGER
    with _LOGGER_LOCK:
        if _TRT_LOGGER is None:
            _TRT_LOGGER = _make_logger(trt)
        return _TRT_LOGGER


def _make_logger(trt: Any) -> Any:
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
    }

    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.count = 0
            self.errors: deque[tuple[int, str]] = deque(maxlen=32)

        def log(self, level: Any, msg: str) -> None:
            try:
                py_level = levels.get(level)
                if py_level is None:  # VERBOSE
                    return
                if py_level >= logging.ERROR:
                    self.count += 1
                    self.errors.append((self.count, str(msg)))
                log.log(py_level, "TensorRT: %s", msg)
            except Exception:  # pragma: no cover - never raise into TensorRT
                pass

        def errors_since(self, mark: int) -> list[str]:
            return [msg for n, msg in list(self.errors) if n > mark]

    return _Logger()


def _details(messages: Sequence[str]) -> str:
    return "".join(f"\n  {m}" for m in messages)


# ---------------------------------------------------------------- building


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    profile: Profile,
    *,
    fp16: bool = True,
    workspace_bytes: int = 4 << 30,
    device: int | None = None,
) -> None:
    """Compile ``onnx_path`` into a TensorRT engine at ``plan_path`` (written atomically).

    ``fp16`` enables half precision with LayerNorm, softmax, reductions and the final
    L2 normalization kept in fp32 (TensorRT 10); on a strongly typed TensorRT (11+) the
    graph's own types decide, and ``fp16`` asks that the graph have fp16 parts.
    ``device`` builds for that CUDA device (default: the current one).
    """
    trt = require_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise SessionError(f"{onnx_path}: no such ONNX file")
    if workspace_bytes <= 0:
        raise ConfigError(f"workspace_bytes must be positive, got {workspace_bytes}")
    with _on_device(device):
        plan = _build(trt, onnx_path, profile, fp16=fp16, workspace_bytes=workspace_bytes)
    _atomic_write(plan_path, memoryview(plan))


@contextlib.contextmanager
def _on_device(device: int | None) -> Iterator[None]:
    if device is None:
        yield
        return
    torch = _require_cuda(device)
    with torch.cuda.device(device):
        yield


def _build(trt: Any, onnx_path: Path, profile: Profile, *, fp16: bool, workspace_bytes: int) -> Any:
    logger = _trt_logger(trt)
    mark = logger.count
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no driver or no GPU: the binding raises on a null builder
        raise ConfigError(f"{_INSTALL_HINT}; TensorRT could not start ({exc})") from exc
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SessionError(
            f"{onnx_path}: TensorRT cannot parse this ONNX graph:"
            f"{_details(problems or logger.errors_since(mark))}"
        )
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if profile.input not in inputs:
        raise SessionError(f"{onnx_path}: has no input {profile.input!r} (it has {sorted(inputs)})")
    rank = len(inputs[profile.input].shape)
    if rank != len(profile.min):
        raise ConfigError(
            f"profile of {profile.input!r} has {len(profile.min)} dimensions, "
            f"the graph's input has {rank}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if _strongly_typed(trt):
        if fp16 and not _has_half(trt, network):
            raise ConfigError(
                f"TensorRT {trt.__version__} builds the precision the ONNX graph declares, and "
                f"{onnx_path.name} has no fp16 parts: build from an fp16 bundle, or with fp16 off"
            )
    else:
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if _keep_fp32(trt, network):
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    shapes = builder.create_optimization_profile()
    shapes.set_shape(profile.input, profile.min, profile.opt, profile.max)
    if config.add_optimization_profile(shapes) < 0:
        raise ConfigError(f"TensorRT rejects the profile {profile.to_dict()}")

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SessionError(
            f"{onnx_path}: TensorRT could not build an engine:{_details(logger.errors_since(mark))}"
        )
    return plan


def _network_flags(trt: Any) -> int:
    """0 on TensorRT 10+ (explicit batch is the only mode); EXPLICIT_BATCH before that."""
    major = int(str(trt.__version__).split(".")[0])
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if major < 10 and flag is not None:
        return 1 << int(flag)
    return 0


def _strongly_typed(trt: Any) -> bool:
    """TensorRT 11 removed the weak-typing flags: the graph's types are the precision."""
    flags = trt.BuilderFlag
    return not (hasattr(flags, "FP16") and hasattr(flags, "OBEY_PRECISION_CONSTRAINTS"))


def _float_types(trt: Any) -> set[Any]:
    names = ("float32", "float16", "bfloat16")
    return {getattr(trt, n) for n in names if hasattr(trt, n)}


def _layers(network: Any) -> list[Any]:
    return [network.get_layer(i) for i in range(network.num_layers)]


def _outputs(layer: Any) -> list[Any]:
    return [layer.get_output(j) for j in range(layer.num_outputs)]


def _has_half(trt: Any, network: Any) -> bool:
    return any(t.dtype == trt.float16 for layer in _layers(network) for t in _outputs(layer))


def _is_float_layer(layer: Any, floats: set[Any]) -> bool:
    """Whether all outputs of ``layer`` are floating execution tensors (not shapes, not ints)."""
    outputs = _outputs(layer)
    return bool(outputs) and all(
        t.dtype in floats and not getattr(t, "is_shape_tensor", False) for t in outputs
    )


def _keep_fp32(trt: Any, network: Any) -> int:
    """Pin the numerically sensitive layers to fp32; returns how many were pinned."""
    layer_type = trt.LayerType
    floats = _float_types(trt)
    layers = _layers(network)
    sensitive = {
        getattr(layer_type, n)
        for n in ("NORMALIZATION", "SOFTMAX", "REDUCE")
        if hasattr(layer_type, n)
    }
    chosen = {i for i, layer in enumerate(layers) if layer.type in sensitive}
    chosen |= _l2_tail(trt, network, layers, floats)
    untouched = {
        getattr(layer_type, n)
        for n in ("CONSTANT", "SHAPE", "CAST", "IDENTITY")
        if hasattr(layer_type, n)
    }
    pinned = 0
    with warnings.catch_warnings():
        # TensorRT 10.12+ marks per-layer precision as deprecated (strong typing replaces it).
        warnings.simplefilter("ignore", DeprecationWarning)
        for i in sorted(chosen):
            layer = layers[i]
            if layer.type in untouched or not _is_float_layer(layer, floats):
                continue
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    log.debug("kept %d of %d TensorRT layers in fp32", pinned, len(layers))
    return pinned


def _l2_tail(trt: Any, network: Any, layers: list[Any], floats: set[Any]) -> set[int]:
    """Layers of the final L2 normalization ``x / max(||x||, eps)``.

    The ONNX parser turns ReduceL2 into ``x * x`` (ELEMENTWISE), a sum (REDUCE) and a
    square root (UNARY). The tail is every layer after the last floating REDUCE that
    feeds a network output, plus that square; it is given up (empty) when the last
    reduction does not feed the output or when the tail would hold a matrix multiply or
    a convolution, i.e. when the graph does not end in a normalization.
    """
    layer_type = trt.LayerType
    reduces = [
        i
        for i, layer in enumerate(layers)
        if layer.type == layer_type.REDUCE and _is_float_layer(layer, floats)
    ]
    if not reduces:
        return set()
    last = reduces[-1]
    producer: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for tensor in _outputs(layer):
            producer[tensor.name] = i
    heavy = {
        getattr(layer_type, n)
        for n in ("MATRIX_MULTIPLY", "CONVOLUTION", "DECONVOLUTION")
        if hasattr(layer_type, n)
    }
    tail: set[int] = set()
    feeds_output = False
    stack = [
        producer[t.name]
        for t in (network.get_output(k) for k in range(network.num_outputs))
        if t.name in producer
    ]
    while stack:
        i = stack.pop()
        if i == last:
            feeds_output = True
        if i <= last or i in tail:
            continue
        if layers[i].type in heavy:
            return set()
        tail.add(i)
        for k in range(layers[i].num_inputs):
            tensor = layers[i].get_input(k)
            if tensor is not None and tensor.name in producer:
                stack.append(producer[tensor.name])
    if not feeds_output:
        return set()
    source = layers[last].get_input(0)
    if source is not None and source.name in producer:
        square = producer[source.name]
        if layers[square].type in (layer_type.ELEMENTWISE, layer_type.UNARY):
            tail.add(square)
    return tail


# ---------------------------------------------------------------- running


def _torch_dtype(trt: Any, torch: Any, dtype: Any) -> Any:
    pairs = (
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("int64", torch.int64),
        ("int32", torch.int32),
        ("int8", torch.int8),
        ("uint8", torch.uint8),
        ("bool", torch.bool),
    )
    table = {getattr(trt, name): value for name, value in pairs if hasattr(trt, name)}
    if dtype not in table:
        raise SessionError(f"TensorRT tensor type {dtype} has no PyTorch equivalent here")
    return table[dtype]


def _numpy_dtype(torch: Any, dtype: Any) -> Any:
    """The host dtype to stage an input in before it is copied to the device."""
    table = {
        torch.float32: np.float32,
        torch.float16: np.float16,
        torch.int64: np.int64,
        torch.int32: np.int32,
        torch.int8: np.int8,
        torch.uint8: np.uint8,
        torch.bool: np.bool_,
    }
    return table.get(dtype, np.float32)  # bfloat16: staged as float32, cast on the device


class TensorRTSession:
    """A TensorRT engine as an :class:`~runtime.sessions.EncoderSession` on one CUDA device.

    Batches larger than the engine's profile are split into chunks of its largest batch;
    any other dimension outside the profile is a ConfigError. ``run`` may be called from
    several threads (they take turns on the one execution context).
    """

    def __init__(self, plan_path: Path, input_name: str, output_name: str, device: int = 0):
        trt = require_tensorrt()
        torch = _require_cuda(device)
        path = Path(plan_path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SessionError(f"{path}: cannot read the TensorRT engine ({exc})") from exc
        self._path = path
        self._torch = torch
        self._device = torch.device("cuda", device)
        self._input = input_name
        self._output = output_name
        self._lock = threading.Lock()
        logger = _trt_logger(trt)
        mark = logger.count
        with torch.cuda.device(self._device):
            self._stream = torch.cuda.Stream(device=self._device)
            self._runtime = trt.Runtime(logger)
            problems: list[str] = []
            try:
                engine = self._runtime.deserialize_cuda_engine(data)
            except Exception as exc:  # some versions raise instead of returning None
                engine, problems = None, [str(exc)]
            if engine is None:
                raise SessionError(
                    f"{path}: TensorRT {trt.__version__} cannot load this engine; an engine "
                    "only loads with the TensorRT version and GPU model it was built for, "
                    f"so rebuild it here{_details(logger.errors_since(mark) + problems)}"
                )
            self._engine = engine
            modes = {
                engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i))
                for i in range(engine.num_io_tensors)
            }
            if modes.get(input_name) != trt.TensorIOMode.INPUT:
                raise SessionError(f"{path}: has no input {input_name!r} (it has {sorted(modes)})")
            if modes.get(output_name) != trt.TensorIOMode.OUTPUT:
                raise SessionError(
                    f"{path}: has no output {output_name!r} (it has {sorted(modes)})"
                )
            self._context = engine.create_execution_context()
            if self._context is None:
                raise SessionError(
                    f"{path}: TensorRT could not create an execution context "
                    f"(out of GPU memory?){_details(logger.errors_since(mark))}"
                )
        lo, _, hi = engine.get_tensor_profile_shape(input_name, 0)
        self._min = tuple(int(v) for v in lo)
        self._max = tuple(int(v) for v in hi)
        self._in_dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(input_name))
        self._out_dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(output_name))
        self._host_dtype = _numpy_dtype(torch, self._in_dtype)
        self._integer_input = not self._in_dtype.is_floating_point
        self._dim = int(tuple(engine.get_tensor_shape(output_name))[-1])

    @property
    def min_shape(self) -> tuple[int, ...]:
        """The smallest input shape of the engine's profile."""
        return self._min

    @property
    def max_shape(self) -> tuple[int, ...]:
        """The largest input shape of the engine's profile (larger batches are chunked)."""
        return self._max

    def run(self, inputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """``[n, d]`` float32 rows of the engine's output for the ``n`` inputs."""
        array = np.asarray(inputs)
        self._check(array)
        n = int(array.shape[0])
        if n == 0:
            return np.zeros((0, max(self._dim, 0)), dtype=np.float32)
        step = self._max[0]
        if n % step and n % step < self._min[0]:
            raise ConfigError(
                f"batch of {n} leaves a last chunk of {n % step}, below this engine's "
                f"smallest batch {self._min[0]}"
            )
        parts = [self._run_chunk(array[start : start + step]) for start in range(0, n, step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _check(self, array: npt.NDArray[Any]) -> None:
        shape = tuple(int(s) for s in array.shape)
        if len(shape) != len(self._min):
            raise ConfigError(
                f"{self._input} must have {len(self._min)} dimensions "
                f"(between {self._min} and {self._max}), got shape {shape}"
            )
        if array.dtype.kind not in "biuf" or (self._integer_input and array.dtype.kind == "f"):
            raise ConfigError(f"{self._input} of dtype {array.dtype} does not fit this engine")
        for axis in range(1, len(shape)):
            lo, hi = self._min[axis], self._max[axis]
            if not lo <= shape[axis] <= hi:
                raise ConfigError(
                    f"{self._input} has {shape[axis]} in dimension {axis}; this TensorRT engine "
                    f"accepts {lo}..{hi} there (shapes {self._min} to {self._max})"
                )
        if 0 < shape[0] < self._min[0]:
            raise ConfigError(
                f"batch of {shape[0]} is below this engine's smallest batch {self._min[0]}"
            )

    def _run_chunk(self, chunk: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        torch = self._torch
        host = np.ascontiguousarray(chunk, dtype=self._host_dtype)
        if not host.flags.writeable:  # torch.from_numpy warns on read-only arrays
            host = host.copy()
        with self._lock, torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            x = torch.from_numpy(host).to(self._device, dtype=self._in_dtype)
            context = self._context
            if not context.set_input_shape(self._input, tuple(x.shape)):
                raise RuntimeError(f"{self._path}: TensorRT rejected input shape {tuple(x.shape)}")
            shape = tuple(int(v) for v in context.get_tensor_shape(self._output))
            if any(v < 0 for v in shape):
                raise RuntimeError(f"{self._path}: unresolved output shape {shape}")
            out = torch.empty(shape, dtype=self._out_dtype, device=self._device)
            context.set_tensor_address(self._input, int(x.data_ptr()))
            context.set_tensor_address(self._output, int(out.data_ptr()))
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{self._path}: TensorRT failed to run the engine")
            self._stream.synchronize()
            result = out.to(torch.float32).cpu().numpy()
        return np.ascontiguousarray(result.reshape(result.shape[0], -1), dtype=np.float32)
