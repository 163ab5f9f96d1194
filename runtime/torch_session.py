"""PyTorch sessions: a bundle's ``torch.export`` programs on a CUDA GPU (fp16) or the CPU.

For GPU machines without TensorRT. ``cnclip export --torch`` writes each tower
as a ``.pt2`` program next to its ONNX graph; this module loads it with
nothing but torch (imported when a session opens, never at import time).

On a GPU the weights are stored in fp16 and the program runs under
``torch.autocast``, which computes LayerNorm, softmax and norms in fp32: the
same numerically safe split as the fp16 ONNX graphs. Outputs are returned as
float32 rows, renormalized in fp32.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.errors import ConfigError

DTYPES = ("float32", "float16", "bfloat16")


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(
            "the torch backends need PyTorch (a CUDA build for torch-cuda): pip install torch"
        ) from exc
    return torch


class TorchSession:
    """One tower's ``.pt2`` program on ``device`` ("cuda", "cuda:1", "cpu") in ``dtype``."""

    def __init__(
        self,
        path: Path,
        input_name: str,
        output_name: str,
        *,
        device: str = "cuda",
        dtype: str = "float16",
    ) -> None:
        from runtime.sessions import SessionError

        torch = _require_torch()
        if dtype not in DTYPES:
            raise ConfigError(f"torch dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                "backend torch-cuda needs an NVIDIA GPU and a CUDA build of PyTorch; "
                f"this PyTorch ({torch.__version__}) sees no GPU"
            )
        self._torch = torch
        self._device = torch.device(device)
        self._dtype = getattr(torch, dtype)
        self._input = input_name
        self._output = output_name
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises many types for foreign or broken archives
            raise SessionError(f"{path}: PyTorch cannot load this program ({exc})") from exc
        if self._device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self._device)
        module = _without_metadata_asserts(program.module())
        self._module = module.to(self._device, self._dtype) if dtype != "float32" else module
        self._lock = threading.Lock()

    def run(self, inputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        torch = self._torch
        tensor = torch.from_numpy(np.ascontiguousarray(inputs)).to(self._device)
        if tensor.is_floating_point():
            tensor = tensor.to(self._dtype)
        autocast = self._dtype != torch.float32
        # An exported module is not meant to be entered by several threads at once.
        with self._lock, torch.inference_mode():
            with torch.autocast(self._device.type, dtype=self._dtype, enabled=autocast):
                out = self._module(tensor)
            out = out.float()
            out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return np.asarray(out.cpu().numpy(), dtype=np.float32)


def _without_metadata_asserts(module: Any) -> Any:
    """Drop the dtype/device assertions ``torch.export`` records, so the program may run
    in another dtype (fp16 weights) and under autocast; shapes are still checked."""
    import torch

    graph = module.graph
    for node in list(graph.nodes):
        if node.target is torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)
    graph.lint()
    module.recompile()
    return module
