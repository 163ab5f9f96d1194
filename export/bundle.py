"""``cnclip export``: a checkpoint to a verified model bundle, written atomically.

The towers are exported to a temporary directory beside the target, run
against PyTorch on real photos and sentences (:mod:`export.verify`), and only
when they pass is the directory renamed into place with a manifest that
records the measured parity. A failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from export.onnx_export import (
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    TEXT_INPUT,
    TEXT_OUTPUT,
    export_image,
    export_text,
    quantize_int8,
)
from export.samples import builtin_pictures, builtin_sentences
from export.verify import check_parity, measure_parity, verification_set
from runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, file_sha256
from runtime.errors import ConfigError, DataError
from runtime.images import PreprocessConfig
from runtime.sessions import open_session
from runtime.tokenizer import ChineseTokenizer
from trainer.configs import find_architecture
from trainer.data.records import replace_directory
from trainer.model import ChineseCLIP

PRECISIONS = ("fp32", "int8")


def verification_inputs(
    data_dir: Path | None,
) -> tuple[list[str], list[Path] | list[Image.Image], str]:
    """Sentences and pictures to verify on, and what they are.

    With ``data_dir``: real sentences (``coco-cn-captions.txt``) and photos
    (``coco-photos/*.jpg``); without: the set that ships with cnclip
    (:mod:`export.samples`).
    """
    if data_dir is None:
        return builtin_sentences(), builtin_pictures(), "built-in sentences and drawings"
    captions_path = data_dir / "coco-cn-captions.txt"
    photos = sorted((data_dir / "coco-photos").glob("*.jpg"))
    if not captions_path.is_file() or not photos:
        raise DataError(
            f"{data_dir}: verification needs coco-cn-captions.txt and coco-photos/*.jpg "
            "(give the folder with --verify-data)"
        )
    lines = captions_path.read_text(encoding="utf-8").splitlines()
    captions = [line.split("\t", 1)[-1].strip() for line in lines if line.strip()]
    return captions, photos, f"{len(photos)} photos and the sentences of {data_dir}"


def _tower_entry(
    path: Path, input_name: str, output_name: str, precision: str, *dynamic: str
) -> dict[str, Any]:
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "input": input_name,
        "output": output_name,
        "precision": precision,
        "dynamic_axes": {input_name: ["batch", *dynamic]},
    }


def _manifest(
    model: ChineseCLIP,
    tokenizer: ChineseTokenizer,
    precision: str,
    files: dict[str, Path],
    source: Path | None,
    parity: dict[str, Any],
) -> dict[str, Any]:
    config = model.config
    image = PreprocessConfig(image_size=config.vision.image_size)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": find_architecture(config),
        "model_config": config.to_dict(),
        "embed_dim": config.embed_dim,
        "context_length": tokenizer.context_length,
        "image": {
            "size": image.image_size,
            "resize": "bicubic-squash",  # the whole image to N x N, as the official code
            "mean": list(image.mean),
            "std": list(image.std),
        },
        "tokenizer": {"vocab": "vocab.txt", "vocab_sha256": tokenizer.vocab_sha256},
        "logit_scale": float(model.logit_scale.detach().exp()),
        "precision": precision,
        "towers": {
            "text": _tower_entry(files["text"], TEXT_INPUT, TEXT_OUTPUT, precision, "sequence"),
            "image": _tower_entry(files["image"], IMAGE_INPUT, IMAGE_OUTPUT, precision),
        },
        "source": {
            "checkpoint": None if source is None else source.name,
            "sha256": None if source is None or not source.is_file() else file_sha256(source),
        },
        "parity": parity,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def export_bundle(
    model: ChineseCLIP,
    out: str | Path,
    *,
    precision: str = "fp32",
    verify_data: str | Path | None = None,
    source: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export, verify and write a bundle; returns its manifest.

    Raises:
        VerificationError: the graphs miss the precision's parity thresholds.
        ConfigError: an unknown precision, or ``out`` exists (without ``overwrite``).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    target = Path(out)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists; choose another --out or pass --overwrite")
    captions, photos, verified_on = verification_inputs(
        None if verify_data is None else Path(verify_data)
    )
    model = model.float().eval().cpu()
    tokenizer = ChineseTokenizer(context_length=model.config.context_length)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        files = {"text": staging / "text.onnx", "image": staging / "image.onnx"}
        export_text(model, files["text"])
        export_image(model, files["image"])
        if precision == "int8":
            for name, path in files.items():
                fp32 = path.with_name(f"{name}.fp32.onnx")
                os.replace(path, fp32)
                quantize_int8(fp32, path)
                fp32.unlink()
        shutil.copyfile(tokenizer.vocab_path, staging / "vocab.txt")
        sessions = {
            "text": open_session(files["text"], TEXT_INPUT, TEXT_OUTPUT, "onnxruntime"),
            "image": open_session(files["image"], IMAGE_INPUT, IMAGE_OUTPUT, "onnxruntime"),
        }
        image_config = PreprocessConfig(image_size=model.config.vision.image_size)
        data = verification_set(captions, photos, tokenizer, image_config)
        parity: dict[str, Any] = dict(
            measure_parity(model, sessions["text"], sessions["image"], data)
        )
        check_parity(parity, precision)
        parity["verified_on"] = verified_on
        manifest = _manifest(
            model, tokenizer, precision, files, None if source is None else Path(source), parity
        )
        (staging / MANIFEST).write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
