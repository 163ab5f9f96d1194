"""``cnclip index``: build, evaluate, change and switch catalog index versions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runtime.errors import CnClipError

INDEX_EPILOG = """\
examples:
  cnclip index build --bundle bundles/vit-b-16 --catalog items.jsonl --out indexes/shop
  cnclip index build --bundle bundles/vit-b-16 --embeddings X.npy --ids ids.txt \\
      --items items.jsonl --out indexes/shop --profile lean
  cnclip index eval indexes/shop
  cnclip index eval indexes/shop --bundle bundles/vit-b-16-int8 --reference bundles/vit-b-16
  cnclip index add indexes/shop --bundle bundles/vit-b-16 --catalog new-items.jsonl
  cnclip index remove indexes/shop --ids-file sold-out.txt
  cnclip index compact indexes/shop
  cnclip index switch indexes/shop v0002
  cnclip index info indexes/shop

A catalog is jsonl, one item per line: {"id": str, "image": path-or-URL, "title": str,
...attributes}; relative image paths are relative to the catalog's folder; integer ids
are taken as their decimal text; image URLs are fetched with the service's SSRF guard
(--allow-private-urls for an internal image host). A text
corpus (--text-corpus) is jsonl of {"id": str, "text": str, ...}.
"""


def _bundle_facts(path: str) -> tuple[Any, int]:
    """What an index records of the bundle, and its embedding size, without opening it."""
    from runtime.bundle_manifest import BundleManifest, bundle_ref

    return bundle_ref(path), BundleManifest.read(path).embed_dim


def _corpus(args: argparse.Namespace, work: Path) -> Any:
    """The catalog or precomputed embeddings named on the command line, as a Corpus."""
    from index.build import Corpus, read_records

    progress = not args.quiet
    if args.catalog:
        from index.build import catalog_corpus
        from runtime.bundle import load_bundle

        bundle = load_bundle(args.bundle, threads=args.threads)
        corpus, embedded = catalog_corpus(
            bundle,
            args.catalog,
            work,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=progress,
            allow_private_urls=args.allow_private_urls,
        )
        if embedded.rejects:
            print(
                f"{len(embedded.rejects)} images could not be used; see {work / 'rejects.jsonl'}",
                file=sys.stderr,
            )
        return corpus
    if not (args.embeddings and args.ids):
        raise CnClipError("give --catalog, or --embeddings with --ids")
    from index.embed import load_embeddings

    vectors, ids = load_embeddings(Path(args.embeddings), Path(args.ids))
    records = read_records(Path(args.items)) if args.items else {}
    return Corpus(vectors, ids, [records.get(i, {}) for i in ids])


def _texts(args: argparse.Namespace) -> Any:
    if not args.text_corpus:
        return None
    from index.build import Corpus, read_records
    from index.embed import embed_texts
    from runtime.bundle import load_bundle

    records = read_records(Path(args.text_corpus), text_key="text")
    ids = list(records)
    texts = [str(records[i].pop("text")) for i in ids]
    bundle = load_bundle(args.bundle, threads=args.threads)
    vectors = embed_texts(bundle, texts, progress=not args.quiet)
    items = [{**records[i], "title": text} for i, text in zip(ids, texts, strict=True)]
    return Corpus(vectors, ids, items)


def _cmd_build(args: argparse.Namespace) -> int:
    from index.build import build_version

    model, dim = _bundle_facts(args.bundle)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out / ".embeddings"
    corpus = _corpus(args, work)
    if corpus.vectors.shape[1] != dim:
        raise CnClipError(
            f"the embeddings have {corpus.vectors.shape[1]} dimensions, the bundle {dim}"
        )
    options: dict[str, Any] = {
        "model": model,
        "factory": args.factory,
        "profile": args.profile,
        "target": args.target,
        "progress": not args.quiet,
    }
    if args.shards > 1:
        from index.shards import build_sharded

        if args.text_corpus:
            raise CnClipError("--text-corpus is not sharded; build it as its own index")
        build_sharded(out, corpus, args.shards, **options)
        if not args.quiet:
            print(f"wrote {args.shards} shards of {len(corpus.ids):,} items to {out}")
        return 0
    version = build_version(out, corpus, texts=_texts(args), **options)
    if not args.quiet:
        print(
            f"wrote {version} ({len(corpus.ids):,} items); {out}/CURRENT names it", file=sys.stderr
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.bundle:
        return _cross_precision(args)
    import numpy as np

    from index.recall import evaluate_index

    queries = None if not args.queries else np.load(args.queries)
    for version in evaluate_index(args.dir, queries=queries, target=args.target):
        for point in version.report["points"]:
            print(json.dumps(point, ensure_ascii=False))
        chosen = version.chosen
        print(
            f"{version.directory}: smallest setting reaching R@10 >= {args.target}: "
            f"{ {k: v for k, v in chosen.items() if k in ('nprobe', 'ef_search', 'k_factor')} } "
            f"R@1 {chosen.get('R@1', 0):.3f} R@10 {chosen.get('R@10', 0):.3f} "
            f"R@100 {chosen.get('R@100', 0):.3f} at {chosen.get('qps', 0):,.0f} queries/s "
            f"({version.report.get('speedup', 1):.1f}x exact search)",
            file=sys.stderr,
        )
    return 0


def _cross_precision(args: argparse.Namespace) -> int:
    from index.recall import CROSS_REPORT, cross_precision, read_queries
    from index.shards import shard_roots
    from runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle, threads=args.threads)
    reference = None if not args.reference else load_bundle(args.reference, threads=args.threads)
    texts = None if not args.texts else read_queries(args.texts)
    for root in shard_roots(args.dir):
        report = cross_precision(root, bundle, reference=reference, texts=texts)
        print(json.dumps(report, ensure_ascii=False))
        lines = [f"{root}: {report['queries']} {report['query_source']} queries, top {report['k']}"]
        for note in report["notes"]:
            lines.append(f"  note: {note}")
        rows = [("ann", "the index vs exact search, both on this bundle's queries")]
        if reference is not None:
            rows += [
                ("precision", "exact search: this bundle's queries vs the reference's"),
                ("total", "the index on this bundle's queries vs exact on the reference's"),
            ]
        for key, what in rows:
            got = report[key]
            lines.append(
                f"  {key:9s} 10-recall@10 {got.get('10-recall@10', 0):.4f}  "
                f"R@1 {got.get('R@1', 0):.4f}  ({what})"
            )
        if reference is not None:
            ref = report["reference"]["ann"]
            lines.append(
                f"  reference 10-recall@10 {ref.get('10-recall@10', 0):.4f}  "
                f"R@1 {ref.get('R@1', 0):.4f}  (the index on the reference's own queries); "
                f"query cosine min {report['query_cosine']['min']:.5f}"
            )
        lines.append(f"  written to {Path(report['index']) / CROSS_REPORT}")
        print("\n".join(lines), file=sys.stderr)
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    import index

    model, _ = _bundle_facts(args.bundle)
    work = Path(args.work_dir) if args.work_dir else Path(args.dir) / ".embeddings-add"
    corpus = _corpus(args, work)
    options = {
        "model": model,
        "target": args.target,
        "progress": not args.quiet,
        "make_current": not args.no_switch,
    }
    index.add(args.dir, corpus, **options)
    print(f"added {len(corpus.ids):,} items to {args.dir}", file=sys.stderr)
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    import index

    ids = list(args.id or [])
    if args.ids_file:
        lines = Path(args.ids_file).read_text(encoding="utf-8").splitlines()
        ids += [line.strip() for line in lines if line.strip()]
    if not ids:
        raise CnClipError("give the ids to remove with --id or --ids-file")
    options = {
        "missing_ok": args.missing_ok,
        "target": args.target,
        "make_current": not args.no_switch,
    }
    index.remove(args.dir, ids, **options)
    print(f"removed {len(ids):,} items from {args.dir}", file=sys.stderr)
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from index.update import compact

    version = compact(
        args.dir,
        factory=args.factory,
        profile=args.profile,
        target=args.target,
        progress=not args.quiet,
        make_current=not args.no_switch,
    )
    print(f"wrote {version}, rebuilt from the live items", file=sys.stderr)
    return 0


def _cmd_switch(args: argparse.Namespace) -> int:
    from index.versions import switch

    switch(Path(args.dir), args.version)
    print(f"{args.dir}: current version is now {args.version}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from index.shards import shard_roots

    roots = shard_roots(args.dir)
    for root in roots:
        if len(roots) > 1:
            print(f"{root.name}:")
        _info_one(root)
    return 0


def _info_one(root: Path) -> None:
    from index.versions import IndexManifest, current_name, versions

    names = versions(root) or [root.name]
    current = current_name(root)
    for name in names:
        version = root / name if versions(root) else root
        manifest = IndexManifest.read(version)
        mark = "*" if name == current else " "
        print(
            f"{mark} {name}: {manifest.count:,} items ({manifest.deleted:,} deleted), "
            f"{manifest.factory}, search {dict(manifest.search) or 'exact'}, "
            f"R@10 {manifest.chosen.get('R@10', 1.0):.3f}, {manifest.bytes_per_vector} B/vector, "
            f"{manifest.model.describe()}, {manifest.created}"
        )


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="the model bundle (cnclip export)")
    parser.add_argument("--catalog", help="jsonl catalog: id, image, title, attributes")
    parser.add_argument("--embeddings", metavar="X.npy", help="precomputed [n, d] embeddings")
    parser.add_argument("--ids", metavar="IDS.txt", help="one item id per line, for --embeddings")
    parser.add_argument("--items", metavar="ITEMS.jsonl", help="metadata for --embeddings")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--workers", type=int, help="image decoding threads (default: cores)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: cores)")
    parser.add_argument(
        "--work-dir", help="where embedding shards are kept, so a restarted run resumes"
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch image URLs on private or loopback addresses too (an internal image host)",
    )


def _common(parser: argparse.ArgumentParser, switchable: bool = True) -> None:
    parser.add_argument(
        "--target", type=float, default=0.95, help="recall@10 to tune for (default 0.95)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    if switchable:
        parser.add_argument(
            "--no-switch", action="store_true", help="write the version, keep CURRENT as it is"
        )


def add_index_commands(sub: Any) -> None:
    index = sub.add_parser(
        "index",
        help="build, evaluate and change FAISS catalog indexes",
        description="Catalog images (or precomputed embeddings) into FAISS index versions "
        "with measured recall.",
        epilog=INDEX_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = index.add_subparsers(dest="index_command", metavar="COMMAND", required=True)

    build = commands.add_parser("build", help="embed a catalog and write a new index version")
    _source_arguments(build)
    build.add_argument("--out", required=True, help="the index root (versions go inside)")
    build.add_argument("--factory", help="a FAISS factory string instead of the automatic choice")
    build.add_argument(
        "--profile",
        choices=["quality", "lean"],
        default="quality",
        help="quality (default; about 600 bytes per 512-d vector) or lean (< 80 bytes)",
    )
    build.add_argument("--text-corpus", help="jsonl of {id, text}: a text index for image search")
    build.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split the catalog by id into N indexes searched in parallel (default 1)",
    )
    _common(build, switchable=False)
    build.set_defaults(handler=_cmd_build)

    evaluate = commands.add_parser(
        "eval",
        help="measure recall against exact search and tune, or of another bundle's queries",
    )
    evaluate.add_argument("dir", help="an index root or version")
    evaluate.add_argument("--queries", help="[n, d] .npy of held-out queries (default: sampled)")
    evaluate.add_argument(
        "--bundle",
        help="measure the recall of text queries embedded by this bundle (cross-precision)",
    )
    evaluate.add_argument(
        "--reference",
        help="with --bundle: a bundle of the same model whose queries are the truth "
        "(typically the one that built the index)",
    )
    evaluate.add_argument(
        "--texts", help="with --bundle: queries, one per line (default: the items' titles)"
    )
    evaluate.add_argument("--threads", type=int, help="ONNX Runtime threads (default: cores)")
    _common(evaluate, switchable=False)
    evaluate.set_defaults(handler=_cmd_eval)

    add = commands.add_parser("add", help="a new version with more items")
    add.add_argument("dir", help="the index root")
    _source_arguments(add)
    _common(add)
    add.set_defaults(handler=_cmd_add)

    remove = commands.add_parser("remove", help="a new version without some items")
    remove.add_argument("dir", help="the index root")
    remove.add_argument("--id", action="append", help="an item id (repeatable)")
    remove.add_argument("--ids-file", help="one item id per line")
    remove.add_argument("--missing-ok", action="store_true", help="ignore ids not in the index")
    _common(remove)
    remove.set_defaults(handler=_cmd_remove)

    compact = commands.add_parser("compact", help="rebuild from the live items")
    compact.add_argument("dir", help="the index root")
    compact.add_argument("--factory", help="a new factory string (default: keep)")
    compact.add_argument("--profile", choices=["quality", "lean"], help="choose again")
    _common(compact)
    compact.set_defaults(handler=_cmd_compact)

    switch = commands.add_parser("switch", help="make another version current")
    switch.add_argument("dir", help="the index root")
    switch.add_argument("version", help="a version name, such as v0002")
    switch.set_defaults(handler=_cmd_switch)

    info = commands.add_parser("info", help="list versions with their counts and recall")
    info.add_argument("dir", help="the index root")
    info.set_defaults(handler=_cmd_info)
