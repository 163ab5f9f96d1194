"""``cnclip eval retrieval`` and ``cnclip eval zeroshot``: the paper's tables on any model."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from runtime.errors import CnClipError

RETRIEVAL_EPILOG = """\
examples:
  cnclip eval retrieval --model clip_cn_vit-b-16.pt --data datasets/MUGE --split valid \\
      --direction t2i
  cnclip eval retrieval --model clip_cn_vit-b-16.pt --export fp32,fp16,int8 \\
      --data datasets/Flickr30k-CN --split test --out eval/flickr-test
  cnclip eval retrieval --model bundles/vit-b-16-int8 --data datasets/MUGE --split valid \\
      --index indexes/muge-valid

The split is read from DATA/{split}_texts.jsonl and DATA/{split}_imgs.tsv (or the
LMDB in DATA/lmdb/{split}). OUT gets retrieval-{split}.json and .md and, per model, the
official prediction files {split}_predictions.jsonl (text to image) and
{split}_predictions_tr.jsonl (image to text).
"""

ZEROSHOT_EPILOG = """\
examples:
  cnclip eval zeroshot --model clip_cn_vit-b-16.pt --data datasets/cifar-100/test \\
      --labels datasets/cifar-100/label_cn.txt
  cnclip eval zeroshot --model runs/cifar10-tiny/best.pt --data test.tar.gz \\
      --labels labels_zh.tsv --templates captions --export fp32,int8

DATA is an ImageFolder tree or .tar(.gz) archive: DATA/<class folder>/<image>. --labels
is a label_cn.txt (one Chinese name per line, class folders in sorted order) or a
folder<TAB>name .tsv. OUT gets zeroshot.json and .md and, per model, confusion.png.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    from model.configs import ARCHITECTURES
    from runtime.sessions import BACKENDS

    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="CKPT|BUNDLE",
        help="a checkpoint (official .pt, ours, Hugging Face directory) or a bundle "
        "directory; repeat to compare models side by side (the first is the reference)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        help="the name of each --model in the report, in order (default: its file name "
        "and precision)",
    )
    parser.add_argument(
        "--export",
        metavar="PRECISIONS",
        help="also export the first --model (a checkpoint) to bundles of these precisions "
        "(comma-separated: fp32,fp16,int8) under OUT/bundles and evaluate them too",
    )
    parser.add_argument("--out", help="where results go (default: eval/<data>-<task>)")
    parser.add_argument("--arch", choices=list(ARCHITECTURES), help="checked against checkpoints")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="onnxruntime", help="for bundles (default CPU)"
    )
    parser.add_argument("--threads", type=int, help="ONNX Runtime CPU threads for bundles")
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N (checkpoints and GPU backends)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--text-batch-size", type=int, default=128, help="texts per batch (128)")
    parser.add_argument("--workers", type=int, help="image decoding threads (default: cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")


SEARCH_EPILOG = """\
examples:
  cnclip eval search --index demo-work/index --bundle demo-work/bundle \\
      --queries demo-work/catalog/judged.jsonl
  cnclip eval search --index indexes/shop --bundle bundles/vit-b-16 --queries judged.jsonl \\
      --modes vector,hybrid --min-relevance 0.4 --out eval/shop-search
"""


def add_eval_commands(sub: Any) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="evaluate checkpoints and bundles: retrieval recall, zero-shot accuracy",
        description="Reproduce the paper's retrieval and zero-shot tables on any model.",
    )
    commands = evaluate.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    retrieval = commands.add_parser(
        "retrieval",
        help="R@1/5/10 and mean recall, text to image and image to text (official format)",
        description="Embed a split of an official-format dataset and report recall as the "
        "official evaluation scripts compute it.",
        epilog=RETRIEVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(retrieval)
    retrieval.add_argument("--data", required=True, help="the dataset folder (e.g. datasets/MUGE)")
    retrieval.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    retrieval.add_argument(
        "--direction", choices=["t2i", "i2t", "both"], default="both", help="(default both)"
    )
    retrieval.add_argument(
        "--index", help="search text to image in this index version (ids = image ids)"
    )
    retrieval.add_argument("--nprobe", type=int, help="IVF lists to visit with --index")
    retrieval.set_defaults(handler=run_retrieval_command)

    zeroshot = commands.add_parser(
        "zeroshot",
        help="top-1/top-5 accuracy and mean per-class recall on an ImageFolder set",
        description="Zero-shot classification with Chinese class names and prompt ensembling.",
        epilog=ZEROSHOT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(zeroshot)
    zeroshot.add_argument("--data", required=True, help="ImageFolder folder or .tar(.gz)")
    zeroshot.add_argument("--labels", help="label_cn.txt or folder<TAB>name .tsv")
    zeroshot.add_argument(
        "--templates",
        default="prompts",
        help="a file of templates, one per line with {} for the class name, or a built-in "
        "set: prompts (12, the default) or captions (8, what the trainer validates with)",
    )
    zeroshot.add_argument("--confused", type=int, default=10, help="most confused pairs (10)")
    zeroshot.set_defaults(handler=run_zeroshot_command)

    search = commands.add_parser(
        "search",
        help="product search quality on judged queries: nDCG@10, R@10, MRR per mode and kind",
        description="Run judged queries through the service's search pipeline in each mode "
        "(vector, lexical, hybrid) and report nDCG@10, R@10, MRR, what the relevance "
        "threshold keeps and drops, negation checks and latency, side by side.",
        epilog=SEARCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("--index", required=True, help="an index root, version or milvus://")
    search.add_argument("--bundle", required=True, help="the bundle that embeds the queries")
    search.add_argument(
        "--queries", required=True, help='jsonl of {"query", "relevant": [ids], "kind"}'
    )
    search.add_argument(
        "--modes", default="vector,lexical,hybrid", help="comma-separated (all three)"
    )
    search.add_argument(
        "--min-relevance",
        type=float,
        default=None,
        help="the relevance threshold (default: the service's, CNCLIP_SEARCH__MIN_RELEVANCE)",
    )
    search.add_argument(
        "--no-understand",
        action="store_true",
        help="leave negation and attribute words as words (compares the modes alone)",
    )
    search.add_argument("--threads", type=int, help="ONNX Runtime threads")
    search.add_argument("--out", help="where the report goes (eval/search)")
    search.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    search.set_defaults(handler=run_search_command)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise CnClipError(f"{name} must be a positive integer, not {value}")


def _specs(args: argparse.Namespace, out: Path) -> list[Any]:
    from evaluation.compare import ModelSpec

    if len(args.label) > len(args.model):
        raise CnClipError(f"{len(args.label)} --label for {len(args.model)} --model")
    options = _backend_options(args)
    specs = [
        ModelSpec(
            path,
            label=args.label[i] if i < len(args.label) else None,
            arch=args.arch,
            backend_options=options,
            device=args.device,
        )
        for i, path in enumerate(args.model)
    ]
    for path in _export(args, out):
        specs.append(ModelSpec(str(path), backend_options=options))
    return specs


def _backend_options(args: argparse.Namespace) -> Any:
    from runtime.devices import parse_device
    from runtime.sessions import BackendOptions

    device = parse_device(args.device).gpu
    return BackendOptions(backend=args.backend, threads=args.threads, device=device)


def _export(args: argparse.Namespace, out: Path) -> list[Path]:
    """Bundles of the first model at the --export precisions (written under OUT/bundles)."""
    if not args.export:
        return []
    from export.bundle import PRECISIONS, export_precisions

    precisions = [p.strip() for p in args.export.split(",") if p.strip()]
    if not precisions or not set(precisions) <= set(PRECISIONS):
        raise CnClipError(f"--export takes fp32, fp16 and int8, not {args.export!r}")
    source = Path(args.model[0])
    if not source.exists():
        raise CnClipError(f"{source}: no such model")
    from runtime.bundle_manifest import is_bundle

    if is_bundle(source):
        raise CnClipError("--export needs the first --model to be a checkpoint, not a bundle")
    return export_precisions(
        source,
        precisions,
        out / "bundles",
        arch=args.arch,
        verify_data=os.environ.get("CNCLIP_DATA_DIR"),
        say=lambda line: print(f"cnclip: {line}", file=sys.stderr),
    )


def _options(args: argparse.Namespace) -> Any:
    from evaluation.compare import RunOptions

    for name in ("batch_size", "text_batch_size", "workers", "threads"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    return RunOptions(
        text_batch=args.text_batch_size,
        image_batch=args.batch_size,
        workers=args.workers,
        progress=False if args.no_progress else None,
        command=shlex.join(["cnclip", *sys.argv[1:]]) if sys.argv[1:2] == ["eval"] else "",
    )


def _finish(report: dict[str, Any], out: Path, stem: str, quiet: bool) -> int:
    from evaluation.report import markdown

    if not quiet:
        print(markdown(report))
    print(f"cnclip: wrote {out / (stem + '.json')} and {out / (stem + '.md')}", file=sys.stderr)
    return 0


def run_retrieval_command(args: argparse.Namespace) -> int:
    from evaluation.compare import run_retrieval

    options = _options(args)
    _positive("--nprobe", args.nprobe)
    out = Path(args.out or Path("eval") / f"{Path(args.data).name}-{args.split}")
    directions = ["t2i", "i2t"] if args.direction == "both" else [args.direction]
    if not Path(args.data).is_dir():
        raise CnClipError(f"--data {args.data}: not a directory")
    if args.index and args.export:
        raise CnClipError(
            "--index with --export: an index holds the vectors of the bundle that built it, "
            "not of freshly exported ones; evaluate the exports without --index"
        )
    report = run_retrieval(
        _specs(args, out),
        args.data,
        args.split,
        out_dir=out,
        directions=directions,
        index=args.index,
        nprobe=args.nprobe,
        options=options,
    )
    return _finish(report, out, f"retrieval-{args.split}", args.quiet)


def run_zeroshot_command(args: argparse.Namespace) -> int:
    from evaluation.compare import run_zeroshot
    from runtime.templates import load_templates

    options = _options(args)
    _positive("--confused", args.confused)
    templates = load_templates(args.templates)
    if not Path(args.data).exists():
        raise CnClipError(f"--data {args.data}: no such folder or archive")
    name = Path(args.data).name.split(".")[0]
    out = Path(args.out or Path("eval") / f"{name}-zeroshot")
    report = run_zeroshot(
        _specs(args, out),
        args.data,
        out_dir=out,
        labels=args.labels,
        templates=templates,
        templates_from=args.templates,
        confused_pairs=args.confused,
        options=options,
    )
    return _finish(report, out, "zeroshot", args.quiet)


def run_search_command(args: argparse.Namespace) -> int:
    import json

    import index
    from evaluation.search import evaluate_search, read_judged, search_table
    from index.hybrid import DEFAULT_MIN_RELEVANCE
    from runtime.bundle import load_bundle
    from runtime.files import write_atomically

    threshold = DEFAULT_MIN_RELEVANCE if args.min_relevance is None else args.min_relevance
    if not 0.0 <= threshold <= 1.0:
        raise CnClipError(f"--min-relevance must be in [0, 1], not {threshold}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    queries = read_judged(args.queries)
    bundle = load_bundle(args.bundle, threads=args.threads)
    loaded = index.load(args.index)
    try:
        index.check_bundle(args.index, args.bundle)
        report = evaluate_search(
            loaded,
            bundle,
            queries,
            modes=modes,
            min_relevance=threshold,
            understand=not args.no_understand,
        )
    finally:
        loaded.close()
    out = Path(args.out or Path("eval") / "search")
    out.mkdir(parents=True, exist_ok=True)
    table = search_table(report)
    write_atomically(
        out / "search.json", (json.dumps(report, ensure_ascii=False, indent=2) + "\n").encode()
    )
    write_atomically(out / "search.md", table.encode("utf-8"))
    if not args.quiet:
        print(table)
    print(f"cnclip: wrote {out / 'search.json'} and {out / 'search.md'}", file=sys.stderr)
    return 0
