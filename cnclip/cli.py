"""``cnclip``: the one command-line entry point.

Each subcommand parses its arguments and calls a package function; packages
are imported inside the handlers so that light commands never load torch.
Errors a user can cause print one line (``cnclip: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.configs import ARCHITECTURES
from runtime.errors import CnClipError
from runtime.images import DEFAULT_MAX_PIXELS
from runtime.sessions import BACKENDS

EMBED_EPILOG = """\
examples:
  cnclip embed --model clip_cn_vit-b-16.pt --text 红色的杯子 蓝色的T恤 --out texts.npy
  cnclip embed --model clip_cn_rn50.pt --arch RN50 --images a.jpg b.png --out images.npy
  cnclip embed --model ./chinese-clip-vit-base-patch16 --text-file queries.txt --out q.npy

--model takes an official clip_cn_<arch>.pt, a Hugging Face ChineseCLIPModel
directory, a checkpoint written by cnclip, or a model bundle written by
cnclip export (ONNX Runtime on the CPU by default, no torch needed; --backend picks
a GPU backend). The output is a float32 [n, d] .npy of L2-normalized rows in input order.
"""


def _read_text_file(path: str) -> list[str]:
    """One text per line (UTF-8, a BOM allowed); '-' reads standard input."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise CnClipError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise CnClipError(f"{path}: is a directory, not a text file") from exc
    except OSError as exc:
        raise CnClipError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CnClipError(f"{path}: not UTF-8 text (invalid byte on line {line})") from exc
    lines = text.splitlines()
    if not lines:
        raise CnClipError(f"{path}: holds no texts (one text per line)")
    return lines


def _write_npy_atomically(array: Any, out: Path) -> None:
    """Write to a temporary file beside ``out`` and rename, so a failure leaves no half file."""
    import numpy as np

    from runtime.files import atomic_path

    with atomic_path(out) as tmp, tmp.open("wb") as handle:
        np.save(handle, array)


def _bundle_options(args: argparse.Namespace) -> Any:
    """--backend, --threads and --device as the bundle's backend options."""
    from runtime.devices import parse_device
    from runtime.sessions import BackendOptions

    backend = args.backend or "onnxruntime"
    device = parse_device(args.device)
    if device.kind != "cpu" and backend in ("onnxruntime", "torch-cpu"):
        raise CnClipError(
            f"--device {args.device} needs a GPU backend: --backend onnxruntime-cuda, "
            "onnxruntime-tensorrt, tensorrt or torch-cuda"
        )
    return BackendOptions(backend=backend, threads=args.threads, device=device.gpu)


def _cmd_embed(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise CnClipError(f"--out {out}: is a directory; give a file name such as {out}/x.npy")
    texts: list[str] | None = None
    if args.text is not None:
        texts = list(args.text)
    elif args.text_file is not None:
        texts = _read_text_file(args.text_file)
    else:
        # Catch a mistyped path before spending seconds loading the model.
        for image in args.images:
            if not Path(image).is_file():
                what = "is a directory" if Path(image).is_dir() else "no such file"
                raise CnClipError(f"image {image}: {what}")
    count = len(texts) if texts is not None else len(args.images)
    from evaluation.models import embed
    from runtime.bundle_manifest import is_bundle

    bundle = is_bundle(args.model)
    if not bundle and (args.backend is not None or args.threads is not None):
        raise CnClipError("--backend and --threads apply to model bundles, not checkpoints")
    vectors, name = embed(
        args.model,
        texts=texts,
        images=None if texts is not None else args.images,
        arch=args.arch,
        device=args.device,
        backend_options=_bundle_options(args) if bundle else None,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        progress=not args.quiet,
    )
    _write_npy_atomically(vectors, out)
    if not args.quiet:
        kind = "texts" if texts is not None else "images"
        print(
            f"wrote {count} x {vectors.shape[1]} float32 embeddings of {kind} ({name}) to {out}",
            file=sys.stderr,
        )
    return 0


def _cmd_build_lmdb(args: argparse.Namespace) -> int:
    from sources.official import build_lmdb

    summaries = build_lmdb(
        args.data_dir,
        args.splits,
        args.lmdb_dir,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if not args.quiet:
        for summary in summaries.values():
            skipped = {k: v for k, v in summary.skipped.items() if v}
            note = f"; skipped {skipped}" if skipped else ""
            print(
                f"{summary.split}: {summary.num_samples} pairs, {summary.num_images} images "
                f"-> {summary.path}{note}",
                file=sys.stderr,
            )
    return 0


def _source_records(source: Any) -> Any:
    """Every readable record of a source, in order; unreadable ones are logged and skipped."""
    from sources.records import IndexedSource

    if isinstance(source, IndexedSource):
        for index in range(len(source)):
            try:
                yield source.get(index)
            except CnClipError as exc:
                logging.getLogger("cnclip").warning("skipping pair %d: %s", index, exc)
    else:
        for shard in range(source.num_shards):
            yield from source.read_shard(shard)


def _cmd_to_wds(args: argparse.Namespace) -> int:
    from sources import open_source
    from sources.records import IndexedSource
    from sources.wds import write_wds

    options: dict[str, Any] = {}
    if args.kind == "official":
        options["split"] = args.split
    if args.class_names:
        options["class_names"] = args.class_names
    if args.root:
        options["root"] = args.root
    source = open_source(args.kind, args.path, **options)
    total = len(source) if isinstance(source, IndexedSource) else source.num_samples
    manifest = write_wds(
        _source_records(source),
        args.out,
        samples_per_shard=args.samples_per_shard,
        total=total,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(
            f"wrote {manifest['num_samples']} pairs in {len(manifest['shards'])} shards "
            f"to {args.out}",
            file=sys.stderr,
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from export.bundle import export_bundle
    from model.checkpoints import load_checkpoint

    loaded = load_checkpoint(args.model, args.arch)
    manifest = export_bundle(
        loaded.model,
        args.out,
        precision=args.precision,
        verify_data=args.verify_data,
        source=args.model,
        overwrite=args.overwrite,
        torch_programs=args.torch,
        tensorrt=args.tensorrt,
        device=args.device,
    )
    if not args.quiet:
        checked = [(f"{args.precision} ONNX", manifest.parity)]
        if manifest.torch is not None:
            checked.append(("PyTorch", manifest.torch["parity"]))
        checked += [(f"TensorRT {e['key']}", e["parity"]) for e in manifest.engines]
        print(
            f"wrote {args.precision} bundle of {manifest.architecture or 'a custom model'} "
            f"to {args.out} (model {str(manifest.model_id)[:12]}, bundle "
            f"{manifest.bundle_id[:12]}); min cosine against PyTorch:",
            file=sys.stderr,
        )
        for name, parity in checked:
            print(
                f"  {name}: text {parity['text_min_cosine']:.6f}, "
                f"image {parity['image_min_cosine']:.6f}",
                file=sys.stderr,
            )
    return 0


def _add_export_command(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="write a verified model bundle (ONNX towers + manifest) from a checkpoint",
        description="Export both towers to ONNX (dynamic batch; dynamic length for text), "
        "verify them against PyTorch on real photos and sentences, and write a bundle "
        "directory only when they match.",
    )
    export.add_argument("--model", required=True, help="checkpoint file or directory")
    export.add_argument("--arch", choices=list(ARCHITECTURES), help="checked against the file")
    export.add_argument("--out", required=True, help="the bundle directory to write")
    export.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="of the ONNX towers: fp32 (default), fp16 (GPUs; LayerNorm, softmax and norms "
        "stay fp32) or int8 (dynamic quantization for CPU serving)",
    )
    export.add_argument(
        "--torch",
        action="store_true",
        help="also write torch.export programs, for the torch-cuda backend (GPUs without TensorRT)",
    )
    export.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build fp16 TensorRT engines for this machine's GPU (needs TensorRT)",
    )
    export.add_argument(
        "--device", type=int, default=0, metavar="N", help="the GPU for --tensorrt (default 0)"
    )
    export.add_argument(
        "--verify-data",
        default=os.environ.get("CNCLIP_DATA_DIR"),
        help="folder with real photos (coco-photos/*.jpg) and sentences "
        "(coco-cn-captions.txt) to verify on (default: $CNCLIP_DATA_DIR; without it, "
        "the sentences and drawings that ship with cnclip)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    export.add_argument("-q", "--quiet", action="store_true", help="no summary")
    export.set_defaults(handler=_cmd_export)


def _add_data_commands(sub: Any) -> None:
    data = sub.add_parser(
        "data",
        help="convert training data: official tsv/jsonl to LMDB, any format to WebDataset",
        description="Convert training data between formats.",
    )
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    lmdb = commands.add_parser(
        "build-lmdb",
        help="official {split}_imgs.tsv + {split}_texts.jsonl -> the official LMDB layout",
        description="Write the official Chinese-CLIP LMDB layout ({lmdb_dir}/{split}/pairs "
        "and imgs), readable by the official training code. Splits are written to a "
        "temporary directory and renamed when complete.",
    )
    lmdb.add_argument("--data-dir", required=True, help="folder with the tsv and jsonl files")
    lmdb.add_argument("--splits", required=True, help="comma-separated, e.g. train,valid")
    lmdb.add_argument("--lmdb-dir", help="output folder (default: DATA_DIR/lmdb)")
    lmdb.add_argument("--overwrite", action="store_true", help="replace existing splits")
    lmdb.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    lmdb.set_defaults(handler=_cmd_build_lmdb)

    wds = commands.add_parser(
        "to-wds",
        help="any supported dataset -> WebDataset tar shards (.jpg + .txt)",
        description="Write WebDataset shards with a manifest.json, for datasets too big "
        "for random access. Unreadable pairs are skipped and reported.",
    )
    wds.add_argument(
        "--kind", required=True, choices=["official", "lmdb", "catalog", "imagefolder", "wds"]
    )
    wds.add_argument("--path", required=True, help="the dataset (folder, jsonl, archive)")
    wds.add_argument("--split", default="train", help="official format: the split")
    wds.add_argument("--class-names", help="imagefolder: TSV folder<TAB>name or names .txt")
    wds.add_argument("--root", help="catalog: folder that image paths are relative to")
    wds.add_argument("--out", required=True, help="output folder for the shards")
    wds.add_argument("--samples-per-shard", type=_positive_int, default=10000)
    wds.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    wds.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    wds.set_defaults(handler=_cmd_to_wds)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnclip",
        description="Chinese CLIP image-text retrieval: embed, train, export, index, serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    embed = sub.add_parser(
        "embed",
        help="write L2-normalized embeddings of texts or images to a .npy file",
        description="Embed texts or images with a Chinese CLIP checkpoint.",
        epilog=EMBED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument(
        "--model", required=True, help="checkpoint file or directory, or a model bundle"
    )
    embed.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        help="architecture; inferred from the file when omitted, checked against it when given",
    )
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", metavar="T", help="texts to embed")
    source.add_argument(
        "--text-file", metavar="F", help="UTF-8 file, one text per line ('-': stdin)"
    )
    source.add_argument("--images", nargs="+", metavar="P", help="image files to embed")
    embed.add_argument(
        "--out", required=True, metavar="X.npy", help="where to write [n, d] float32"
    )
    embed.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    embed.add_argument(
        "--backend",
        choices=BACKENDS,
        help="how a bundle runs (default onnxruntime: the CPU); see runtime/sessions.py",
    )
    embed.add_argument(
        "--threads", type=_positive_int, help="CPU threads for a bundle (default: all cores)"
    )
    embed.add_argument(
        "--batch-size", type=_positive_int, help="default 64 for texts, 16 for images"
    )
    embed.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS})",
    )
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    embed.set_defaults(handler=_cmd_embed)

    from trainer import cli as train_main

    train = sub.add_parser(
        "train",
        help="train or finetune a model from a YAML run config (stage 1 LiT, stage 2 both towers)",
        description=train_main.DESCRIPTION,
        epilog=train_main.TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_main.add_arguments(train)
    train.set_defaults(handler=train_main.run)
    _add_data_commands(sub)
    _add_export_command(sub)
    from cnclip.index_cli import add_index_commands

    add_index_commands(sub)
    from cnclip.serve_cli import add_serve_command

    add_serve_command(sub)
    from cnclip.eval_cli import add_eval_commands

    add_eval_commands(sub)
    from cnclip.demo_cli import add_demo_command

    add_demo_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cnclip`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="cnclip: %(levelname)s: %(message)s")
    try:
        status: int = args.handler(args)
    except CnClipError as exc:
        print(f"cnclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnclip: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
