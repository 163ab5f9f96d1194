"""The two towers as ONNX graphs with dynamic batch (and, for text, dynamic length).

Each tower is a small module around :class:`trainer.model.ChineseCLIP` that
returns L2-normalized embeddings, so the graph's output is what the index and
the service use. The text tower computes its attention mask from the ids
(``ids != 0``) inside the graph: nothing about the sequence length or the
mask is baked in, which the verification checks on every length up to 52.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from trainer.model import ChineseCLIP

TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"
IMAGE_INPUT, IMAGE_OUTPUT = "pixel_values", "image_embeds"
OPSET = 17


class TextTower(nn.Module):
    """input_ids [batch, sequence] int64 (0 = padding) -> [batch, d] unit rows."""

    def __init__(self, model: ChineseCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


class ImageTower(nn.Module):
    """pixel_values [batch, 3, N, N] float32 (preprocessed) -> [batch, d] unit rows."""

    def __init__(self, model: ChineseCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


def _export(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    names: tuple[str, str],
    axes: dict[int, str],
) -> None:
    # A fresh wrapper is in training mode, and the exporter restores that mode on
    # the whole tree afterwards: keep everything in eval mode, before and after.
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes={names[0]: axes, names[1]: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    module.eval()


def export_text(model: ChineseCLIP, path: Path) -> None:
    example = torch.tensor([[101, 2769, 4263, 102, 0], [101, 4510, 1045, 6760, 102]])
    _export(TextTower(model), example, path, (TEXT_INPUT, TEXT_OUTPUT), {0: "batch", 1: "sequence"})


def export_image(model: ChineseCLIP, path: Path) -> None:
    size = model.config.vision.image_size
    example = torch.zeros(2, 3, size, size)
    _export(ImageTower(model), example, path, (IMAGE_INPUT, IMAGE_OUTPUT), {0: "batch"})


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the matrix multiplications (weights int8, CPU serving)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer advises "pre-processing" on the root logger for every call; the
    # graphs are already optimised by the exporter, so keep that advice out of the CLI.
    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    finally:
        root.removeFilter(advice)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()
