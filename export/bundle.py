"""``cnclip export``: a checkpoint to a verified model bundle, written atomically.

The towers are exported to a temporary directory beside the target, run
against PyTorch on real photos and sentences (:mod:`export.verify`), and only
when they pass is the directory renamed into place with a manifest that
records the measured parity. A failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from export.onnx_export import (
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    TEXT_INPUT,
    TEXT_OUTPUT,
    convert_fp16,
    export_image,
    export_programs,
    export_text,
    external_data,
    quantize_int8,
)
from export.samples import builtin_pictures, builtin_sentences
from export.verify import VerificationSet, check_parity, measure_parity, verification_set
from model.configs import find_architecture
from model.identity import model_id
from model.modeling import ChineseCLIP
from runtime.bundle_manifest import BundleManifest, FileRef, ImageSpec, TowerSpec
from runtime.errors import ConfigError, DataError
from runtime.files import file_sha256, replace_directory, staging_directory
from runtime.images import PreprocessConfig
from runtime.sessions import BackendOptions, EncoderSession, open_session
from runtime.tokenizer import ChineseTokenizer

PRECISIONS = ("fp32", "fp16", "int8")


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
) -> TowerSpec:
    data = external_data(path)  # weights past protobuf's 2 GB live beside the graph
    return TowerSpec(
        file=path.name,
        sha256=file_sha256(path),
        input=input_name,
        output=output_name,
        precision=precision,
        dynamic_axes={input_name: ["batch", *dynamic]},
        external_data=None if data is None else FileRef(data.name, file_sha256(data)),
    )


def _manifest(
    model: ChineseCLIP,
    tokenizer: ChineseTokenizer,
    precision: str,
    files: dict[str, Path],
    source: Path | None,
    parity: dict[str, Any],
) -> BundleManifest:
    config = model.config
    preprocess = PreprocessConfig(image_size=config.vision.image_size)
    image = ImageSpec(size=preprocess.image_size, mean=preprocess.mean, std=preprocess.std)
    return BundleManifest(
        model_id=model_id(model, vocab_sha256=tokenizer.vocab_sha256, image=image.to_dict()),
        architecture=find_architecture(config),
        model_config=config.to_dict(),
        embed_dim=config.embed_dim,
        context_length=tokenizer.context_length,
        image=image,
        vocab=FileRef("vocab.txt", tokenizer.vocab_sha256),
        logit_scale=float(model.logit_scale.detach().exp()),
        precision=precision,
        towers={
            "text": _tower_entry(files["text"], TEXT_INPUT, TEXT_OUTPUT, precision, "sequence"),
            "image": _tower_entry(files["image"], IMAGE_INPUT, IMAGE_OUTPUT, precision),
        },
        source={
            "checkpoint": None if source is None else source.name,
            "sha256": None if source is None or not source.is_file() else file_sha256(source),
        },
        parity=parity,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def _sessions(
    files: dict[str, Path], options: BackendOptions, profiles: dict[str, Any] | None = None
) -> dict[str, EncoderSession]:
    names = {"text": (TEXT_INPUT, TEXT_OUTPUT), "image": (IMAGE_INPUT, IMAGE_OUTPUT)}
    return {
        name: open_session(path, *names[name], options, (profiles or {}).get(name))
        for name, path in files.items()
    }


def _verified(
    model: ChineseCLIP,
    sessions: dict[str, EncoderSession],
    data: VerificationSet,
    precision: str,
    what: str,
) -> dict[str, Any]:
    parity: dict[str, Any] = dict(measure_parity(model, sessions["text"], sessions["image"], data))
    check_parity(parity, precision, what)
    return parity


def _torch_programs(
    model: ChineseCLIP, staging: Path, data: VerificationSet, verified_on: str
) -> dict[str, Any]:
    """``text.pt2`` and ``image.pt2``, verified in fp32 on the CPU."""
    import torch

    files = {"text": staging / "text.pt2", "image": staging / "image.pt2"}
    export_programs(model, files["text"], files["image"])
    sessions = _sessions(files, BackendOptions(backend="torch-cpu"))
    parity = _verified(model, sessions, data, "fp32", "PyTorch program")
    parity["verified_on"] = verified_on
    parity["verified_with"] = "PyTorch fp32 on the CPU"
    return {
        "torch_version": torch.__version__,
        "towers": {
            name: {"file": path.name, "sha256": file_sha256(path)} for name, path in files.items()
        },
        "parity": parity,
    }


def _tensorrt_engines(
    model: ChineseCLIP,
    onnx_files: dict[str, Path],
    staging: Path,
    data: VerificationSet,
    device: int,
) -> dict[str, Any]:
    """fp16 engines for this GPU model and TensorRT version, verified on this GPU."""
    from runtime.tensorrt import build_engine, current_engine_key, image_profile, text_profile

    key = current_engine_key(device)
    profiles = {
        "text": text_profile(model.config.context_length),
        "image": image_profile(model.config.vision.image_size),
    }
    folder = staging / "engines" / key
    folder.mkdir(parents=True)
    files = {name: folder / f"{name}.plan" for name in onnx_files}
    for name, source in onnx_files.items():
        build_engine(source, files[name], profiles[name], fp16=True)
    sessions = _sessions(files, BackendOptions(backend="tensorrt", device=device), profiles)
    parity = _verified(model, sessions, data, "fp16", "TensorRT engine")
    parity["verified_with"] = f"TensorRT on GPU {device}"
    return {
        "key": key,
        "precision": "fp16",
        "towers": {
            name: {
                "file": str(path.relative_to(staging)),
                "sha256": file_sha256(path),
                "profile": profiles[name].to_dict(),
            }
            for name, path in files.items()
        },
        "parity": parity,
    }


def export_bundle(
    model: ChineseCLIP,
    out: str | Path,
    *,
    precision: str = "fp32",
    verify_data: str | Path | None = None,
    source: str | Path | None = None,
    overwrite: bool = False,
    torch_programs: bool = False,
    tensorrt: bool = False,
    device: int = 0,
) -> BundleManifest:
    """Export, verify and write a bundle; returns its manifest.

    ``precision`` is that of the ONNX towers (fp32, fp16 or int8).
    ``torch_programs`` adds the ``torch.export`` programs the torch-cuda backend
    runs; ``tensorrt`` adds fp16 TensorRT engines for the GPU ``device`` (needs
    TensorRT and that GPU here). Every file is verified against PyTorch before
    the bundle is written.

    Raises:
        VerificationError: a tower misses its precision's parity thresholds.
        ConfigError: an unknown precision, ``out`` exists (without ``overwrite``),
            or TensorRT was asked for on a machine without it.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    target = Path(out)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists; choose another --out or pass --overwrite")
    if tensorrt:
        from runtime.tensorrt import current_engine_key

        current_engine_key(device)  # no TensorRT or no GPU: say so before any work
    captions, photos, verified_on = verification_inputs(
        None if verify_data is None else Path(verify_data)
    )
    model = model.float().eval().cpu()
    tokenizer = ChineseTokenizer(context_length=model.config.context_length)
    image_config = PreprocessConfig(image_size=model.config.vision.image_size)
    data = verification_set(captions, photos, tokenizer, image_config)
    staging = staging_directory(target.parent, f".{target.name}.")
    try:
        files = {"text": staging / "text.onnx", "image": staging / "image.onnx"}
        fp32 = (
            files
            if precision == "fp32"
            else {name: staging / f"{name}.fp32.onnx" for name in files}
        )
        export_text(model, fp32["text"])
        export_image(model, fp32["image"])
        for name, path in files.items():
            if precision == "fp16":
                convert_fp16(fp32[name], path)
            elif precision == "int8":
                quantize_int8(fp32[name], path)
        shutil.copyfile(tokenizer.vocab_path, staging / "vocab.txt")
        parity = _verified(
            model, _sessions(files, BackendOptions()), data, precision, f"{precision} ONNX graph"
        )
        parity["verified_on"] = verified_on
        parity["verified_with"] = "onnxruntime on the CPU"
        manifest = _manifest(
            model, tokenizer, precision, files, None if source is None else Path(source), parity
        )
        if torch_programs:
            manifest = manifest.replace(torch=_torch_programs(model, staging, data, verified_on))
        if tensorrt:
            engines = (_tensorrt_engines(model, fp32, staging, data, device),)
            manifest = manifest.replace(engines=engines)
        for path in fp32.values():
            if path not in files.values():
                path.unlink()
                path.with_name(path.name + ".data").unlink(missing_ok=True)
        manifest.write(staging)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def export_precisions(
    checkpoint: str | Path,
    precisions: Sequence[str],
    out_dir: str | Path,
    *,
    arch: str | None = None,
    verify_data: str | Path | None = None,
    say: Callable[[str], None] | None = None,
) -> list[Path]:
    """Bundles of ``checkpoint`` at each of ``precisions``, written (over older ones) as
    ``out_dir/<checkpoint stem>-<precision>``: what ``cnclip eval --export fp32,fp16,int8``
    compares with the checkpoint itself. Returns their paths, in the order given.

    Raises:
        ConfigError: an unknown precision, or ``checkpoint`` is a bundle.
        CheckpointError: a missing or unreadable checkpoint.
    """
    from model.checkpoints import load_checkpoint
    from runtime.bundle_manifest import is_bundle

    wanted = list(dict.fromkeys(p.strip() for p in precisions if p.strip()))
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown or not wanted:
        raise ConfigError(f"export takes {', '.join(PRECISIONS)}, not {','.join(precisions)!r}")
    source = Path(checkpoint)
    if is_bundle(source):
        raise ConfigError(f"{source}: a bundle; exporting needs a checkpoint")
    model = load_checkpoint(source, arch).model
    written = []
    for precision in wanted:
        target = Path(out_dir) / f"{source.stem}-{precision}"
        if say is not None:
            say(f"exporting {source} to {precision} ({target}) ...")
        export_bundle(
            model,
            target,
            precision=precision,
            verify_data=verify_data,
            source=source,
            overwrite=True,
        )
        written.append(target)
    return written
