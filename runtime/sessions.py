"""Encoder sessions: one small protocol that every inference backend satisfies.

An :class:`EncoderSession` runs one tower: one input array in, one float32
``[n, d]`` array of L2-normalized rows out. :func:`open_session` picks the
backend by name; a backend that is not installed is a clear ConfigError, not
an ImportError deep in a stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from runtime.errors import CnClipError, ConfigError

BACKENDS = ("onnxruntime",)


class EncoderSession(Protocol):
    """One tower behind any backend."""

    def run(self, inputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]: ...


class SessionError(CnClipError):
    """A tower file that the backend cannot load."""


class OnnxRuntimeSession:
    """ONNX Runtime on the CPU; ``threads`` caps the intra-op threads (default: all cores)."""

    def __init__(self, path: Path, input_name: str, output_name: str, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the serve extra installs it
            raise ConfigError(
                "backend onnxruntime is not installed: pip install 'cnclip[serve]'"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise SessionError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
        names = [i.name for i in self._session.get_inputs()]
        if input_name not in names:
            raise SessionError(f"{path}: has no input {input_name!r} (it has {names})")
        self._input = input_name
        self._output = output_name

    def run(self, inputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        (out,) = self._session.run([self._output], {self._input: inputs})
        return np.asarray(out, dtype=np.float32)


def open_session(
    path: Path, input_name: str, output_name: str, backend: str, threads: int | None = None
) -> EncoderSession:
    """An :class:`EncoderSession` for ``path`` on ``backend`` (see ``BACKENDS``)."""
    if backend == "onnxruntime":
        return OnnxRuntimeSession(path, input_name, output_name, threads)
    raise ConfigError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
