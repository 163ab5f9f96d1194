"""Encoder sessions: one small protocol that every inference backend satisfies.

An :class:`EncoderSession` runs one tower: one input array in, one float32
``[n, d]`` array of L2-normalized rows out. :func:`open_session` picks the
backend by name (:data:`BACKENDS`); a backend that is not installed, or a GPU
backend on a machine without a GPU, is a clear :class:`ConfigError`, not an
ImportError deep in a stack or a silent fall-back to the CPU.

=====================  =====================================================
backend                runs
=====================  =====================================================
onnxruntime            the ONNX graph on the CPU (default; ``threads``)
onnxruntime-cuda       the ONNX graph with ONNX Runtime's CUDA provider
onnxruntime-tensorrt   the ONNX graph with ONNX Runtime's TensorRT provider
                       (fp16, engines cached in ``cache_dir``)
tensorrt               a native TensorRT fp16 engine (:mod:`runtime.tensorrt`)
torch-cuda             the ``torch.export`` program on a GPU in fp16
torch-cpu              the ``torch.export`` program on the CPU in fp32
=====================  =====================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from runtime.errors import CnClipError, ConfigError

BACKENDS = (
    "onnxruntime",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
    "tensorrt",
    "torch-cuda",
    "torch-cpu",
)
ONNX_BACKENDS = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt")
TORCH_BACKENDS = ("torch-cuda", "torch-cpu")


class EncoderSession(Protocol):
    """One tower behind any backend."""

    def run(self, inputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]: ...


class SessionError(CnClipError):
    """A tower file that the backend cannot load."""


@dataclass(frozen=True)
class BackendOptions:
    """How to run a bundle's towers.

    ``threads``: ONNX Runtime CPU intra-op threads (default: all cores).
    ``device``: the GPU index for every GPU backend. ``torch_dtype``: the
    torch-cuda compute type. ``cache_dir``: where TensorRT engines built on this
    machine are kept (default :func:`runtime.tensorrt.default_cache_dir`).
    """

    backend: str = "onnxruntime"
    threads: int | None = None
    device: int = 0
    torch_dtype: str = "float16"
    cache_dir: Path | None = None
    # Per-tower shape limits for TensorRT (filled in by the bundle loader).
    profiles: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; available: {', '.join(BACKENDS)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")
        if self.device < 0:
            raise ConfigError(f"device must be a GPU index (0, 1, ...), not {self.device}")


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - the serve extra installs it
        raise ConfigError(
            "backend onnxruntime is not installed: pip install 'cnclip[serve]'"
        ) from exc
    return ort


_PROVIDERS = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}


def _providers(options: BackendOptions, profile: Any) -> list[Any]:
    cpu: list[Any] = ["CPUExecutionProvider"]
    cuda: list[Any] = [("CUDAExecutionProvider", {"device_id": options.device})]
    if options.backend == "onnxruntime":
        return cpu
    if options.backend == "onnxruntime-cuda":
        return cuda + cpu
    from runtime.tensorrt import default_cache_dir

    cache = options.cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    trt: dict[str, Any] = {
        "device_id": options.device,
        "trt_fp16_enable": True,
        "trt_layer_norm_fp32_fallback": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }
    if profile is not None:
        for key, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
            trt[f"trt_profile_{key}_shapes"] = f"{profile.input}:{'x'.join(map(str, shape))}"
    return [("TensorrtExecutionProvider", trt), *cuda, *cpu]


class OnnxRuntimeSession:
    """An ONNX graph in ONNX Runtime, on the CPU or through its CUDA/TensorRT providers."""

    def __init__(
        self,
        path: Path,
        input_name: str,
        output_name: str,
        options: BackendOptions | None = None,
        profile: Any = None,
    ) -> None:
        options = options or BackendOptions()
        ort = _require_onnxruntime()
        wanted = _PROVIDERS[options.backend]
        available = ort.get_available_providers()
        if wanted not in available:
            raise ConfigError(
                f"backend {options.backend} needs ONNX Runtime's {wanted}, which this "
                f"onnxruntime {ort.__version__} lacks (it has {', '.join(available)}); "
                "install onnxruntime-gpu on a machine with an NVIDIA GPU: pip install 'cnclip[gpu]'"
            )
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads or (os.cpu_count() or 1)
        session_options.inter_op_num_threads = 1
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=_providers(options, profile)
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise SessionError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
        if wanted not in self._session.get_providers():
            # ORT falls back to the CPU when a GPU provider fails to start: say so instead.
            raise ConfigError(
                f"backend {options.backend}: ONNX Runtime could not start {wanted} "
                "(is a GPU visible, with the CUDA/TensorRT libraries it was built for?)"
            )
        names = [i.name for i in self._session.get_inputs()]
        if input_name not in names:
            raise SessionError(f"{path}: has no input {input_name!r} (it has {names})")
        self._input = input_name
        self._output = output_name

    def run(self, inputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        (out,) = self._session.run([self._output], {self._input: inputs})
        return np.asarray(out, dtype=np.float32)


def open_session(
    path: Path,
    input_name: str,
    output_name: str,
    options: BackendOptions | None = None,
    profile: Any = None,
) -> EncoderSession:
    """An :class:`EncoderSession` for the tower file ``path`` (ONNX graph, ``.pt2`` program
    or TensorRT plan, as the backend needs) on ``options.backend``."""
    options = options or BackendOptions()
    if options.backend in ONNX_BACKENDS:
        return OnnxRuntimeSession(path, input_name, output_name, options, profile)
    if options.backend in TORCH_BACKENDS:
        from runtime.torch_session import TorchSession

        cuda = options.backend == "torch-cuda"
        return TorchSession(
            path,
            input_name,
            output_name,
            device=f"cuda:{options.device}" if cuda else "cpu",
            dtype=options.torch_dtype if cuda else "float32",
        )
    from runtime.tensorrt import TensorRTSession

    return TensorRTSession(path, input_name, output_name, device=options.device)
