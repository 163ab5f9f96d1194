"""The two towers as ONNX graphs with dynamic batch (and, for text, dynamic length).

Each tower is a small module around :class:`model.modeling.ChineseCLIP` that
returns L2-normalized embeddings, so the graph's output is what the index and
the service use. The text tower computes its attention mask from the ids
(``ids != 0``) inside the graph: nothing about the sequence length or the
mask is baked in, which the verification checks on every length up to 52.

From the fp32 graphs come the other precisions: fp16 (:func:`convert_fp16`,
with LayerNorm, softmax, reductions and the final normalization kept in
fp32), int8 (:func:`quantize_int8`, dynamic quantization for CPU serving);
and, for the PyTorch backend of GPU machines without TensorRT, the same
towers as ``torch.export`` programs (:func:`export_programs`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from model.modeling import ChineseCLIP

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
    consolidate_external_data(path)


def external_data(path: Path) -> Path | None:
    """The weights file beside a graph stored with external data, if it has one."""
    data = path.with_name(path.name + ".data")
    return data if data.is_file() else None


def consolidate_external_data(path: Path) -> None:
    """Keep a graph in at most two files: ``X.onnx`` and, past protobuf's 2 GB, ``X.onnx.data``.

    The exporter writes a model over 2 GB (ViT-H's image tower in fp32) as one file per
    weight; those are gathered into ``X.onnx.data``, which the manifest hashes too.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    locations = {
        entry.value
        for init in graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    if not locations or locations == {path.name + ".data"}:
        return
    model = onnx.load(str(path))  # reads the weights from beside it
    for location in locations:
        (path.parent / location).unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def export_text(model: ChineseCLIP, path: Path) -> None:
    example = torch.tensor([[101, 2769, 4263, 102, 0], [101, 4510, 1045, 6760, 102]])
    _export(TextTower(model), example, path, (TEXT_INPUT, TEXT_OUTPUT), {0: "batch", 1: "sequence"})


def export_image(model: ChineseCLIP, path: Path) -> None:
    size = model.config.vision.image_size
    example = torch.zeros(2, 3, size, size)
    _export(ImageTower(model), example, path, (IMAGE_INPUT, IMAGE_OUTPUT), {0: "batch"})


# Ops computed in fp32 inside an fp16 graph: LayerNorm and softmax (large sums of
# small terms), reductions and the square roots of variances and norms.
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceSum", "ReduceMean", "Pow", "Sqrt")


def _after_norm(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that consume the final ``ReduceL2`` (the clamp and the division)."""
    reached = {out for node in graph.node if node.op_type == "ReduceL2" for out in node.output}
    names = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(name in reached for name in node.input):
            names.append(node.name)
            reached.update(node.output)
    return names


def _over_2gb(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() > 2_000_000_000
    except Exception:  # protobuf refuses to size a message past its limit
        return True


def convert_fp16(source: Path, target: Path) -> None:
    """Weights and activations in fp16; inputs, outputs and the sensitive ops in fp32.

    The graph keeps its float32 input and output, so every backend feeds and reads
    it the same way as the fp32 graph.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    half = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(FP32_OPS),
        node_block_list=_after_norm(model.graph),
    )
    onnx.save_model(
        half,
        str(target),
        save_as_external_data=_over_2gb(half),
        all_tensors_to_one_file=True,
        location=target.name + ".data",
    )


def export_programs(model: ChineseCLIP, text_path: Path, image_path: Path) -> None:
    """Both towers as ``torch.export`` programs (``.pt2``), dynamic like the ONNX graphs.

    :class:`runtime.torch_session.TorchSession` loads them without this package.
    """
    from torch.export import Dim, export, save

    batch = Dim("batch", min=1, max=1 << 16)
    sequence = Dim("sequence", min=1, max=model.config.context_length)
    ids = torch.tensor([[101, 2769, 4263, 102, 0], [101, 4510, 1045, 6760, 102]])
    size = model.config.vision.image_size
    towers: list[tuple[nn.Module, torch.Tensor, dict[int, object], Path]] = [
        (TextTower(model), ids, {0: batch, 1: sequence}, text_path),
        (ImageTower(model), torch.zeros(2, 3, size, size), {0: batch}, image_path),
    ]
    for module, example, axes, path in towers:
        module.eval()
        name = TEXT_INPUT if path == text_path else IMAGE_INPUT
        with torch.no_grad():
            program = export(module, (example,), dynamic_shapes={name: axes})
        save(program, str(path))
    model.eval()


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
