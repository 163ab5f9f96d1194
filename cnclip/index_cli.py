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
  cnclip index drop-version indexes/shop v0001
  cnclip index info indexes/shop
  cnclip index build --bundle bundles/vit-b-16 --catalog items.jsonl --work-dir work \\
      --out milvus://127.0.0.1:19530/shop --partition-key shop_id
  cnclip index info milvus://127.0.0.1:19530/shop
  cnclip index embed --bundle bundles/vit-b-16 --catalog items.jsonl --out work --ray \\
      --actors 2

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


def _corpus(args: argparse.Namespace, work: Path, *, titles: bool = True) -> Any:
    """The catalog or precomputed embeddings named on the command line, as a Corpus
    (with its titles' embeddings for the relevance calibration when ``titles``)."""
    from index.build import Corpus, read_records, title_vectors

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
            titles=titles,
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
    items = [records.get(i, {}) for i in ids]
    encoded = None
    if titles and args.items:
        from runtime.bundle import load_bundle

        encoded = title_vectors(load_bundle(args.bundle, threads=args.threads), items)
    return Corpus(vectors, ids, items, encoded)


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


def _work_dir(args: argparse.Namespace, location: str, name: str) -> Path:
    """Where a catalog's embeddings are kept: --work-dir, or inside a FAISS root."""
    from index.backend import is_milvus

    if args.work_dir:
        return Path(args.work_dir)
    if is_milvus(location) and args.catalog:
        raise CnClipError("embedding a catalog for Milvus: give --work-dir DIR for the embeddings")
    return Path(location) / name


def _cmd_build(args: argparse.Namespace) -> int:
    import index
    from index.backend import is_milvus

    model, dim = _bundle_facts(args.bundle)
    milvus = is_milvus(args.out)
    corpus = _corpus(args, _work_dir(args, args.out, ".embeddings"))
    if corpus.vectors.shape[1] != dim:
        raise CnClipError(
            f"the embeddings have {corpus.vectors.shape[1]} dimensions, the bundle {dim}"
        )
    options: dict[str, Any] = {"model": model, "target": args.target, "progress": not args.quiet}
    if milvus:
        if args.factory or args.profile:
            raise CnClipError(
                "--factory and --profile are for FAISS directories; on Milvus choose the "
                "index with --milvus-index and --milvus-params"
            )
        options.update(
            texts=_texts(args),
            index_type=args.milvus_index,
            params=_json_object(args.milvus_params, "--milvus-params"),
            partition_key=args.partition_key,
            gpus=True if args.milvus_gpus else None,
        )
    else:
        if args.milvus_index or args.milvus_params or args.partition_key or args.milvus_gpus:
            raise CnClipError(
                "--milvus-index, --milvus-params, --partition-key and --milvus-gpus are for "
                "milvus:// locations"
            )
        options.update(texts=_texts(args), factory=args.factory, profile=args.profile or "quality")
    if args.lexicon:
        from index.lexical import read_lexicon

        options["lexicon"] = read_lexicon(args.lexicon)
    version = index.build_index(args.out, corpus, **options)
    if not args.quiet:
        print(f"wrote {version} ({len(corpus.ids):,} items); {args.out} serves it", file=sys.stderr)
    return 0


def _refuse(options: dict[str, Any], why: str) -> None:
    """Refuse the options given (not None) that do not apply to this run."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise CnClipError(f"{', '.join(given)}: {why}")


def _cmd_embed(args: argparse.Namespace) -> int:
    import dataclasses

    from index.embed import CATALOG_FETCH
    from sources.catalog import read_catalog

    catalog = Path(args.catalog)
    items = read_catalog(catalog)
    fetch = dataclasses.replace(CATALOG_FETCH, allow_private=args.allow_private_urls)
    common: dict[str, Any] = {
        "base_dir": catalog.parent,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "progress": not args.quiet,
        "fetch": fetch,
    }
    if args.ray is not None:
        from index.ray_embed import embed_catalog_ray

        _refuse(
            {"--workers": args.workers, "--threads": args.threads},
            "for one machine; on Ray give --actors and --cpus-per-actor",
        )

        result = embed_catalog_ray(
            args.bundle,
            items,
            args.out,
            address=args.ray,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.gpus_per_actor,
            backend=args.backend,
            **common,
        )
    else:
        ray_only = {
            "--actors": args.actors,
            "--cpus-per-actor": args.cpus_per_actor,
            "--gpus-per-actor": args.gpus_per_actor or None,
            "--backend": args.backend,
        }
        _refuse(ray_only, "for --ray; without it one machine embeds")
        from index.embed import embed_catalog
        from runtime.bundle import load_bundle

        bundle = load_bundle(args.bundle, threads=args.threads)
        result = embed_catalog(bundle, items, args.out, workers=args.workers, **common)
    if not args.quiet:
        out = Path(args.out)
        print(
            f"{out}: {len(result.ids):,} images embedded ({out / 'embeddings.npy'}, "
            f"{out / 'ids.txt'}), {len(result.rejects):,} rejects ({out / 'rejects.jsonl'}); "
            f"index them with: cnclip index build --bundle {args.bundle} --catalog "
            f"{args.catalog} --work-dir {out} --out INDEX",
            file=sys.stderr,
        )
    return 0


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CnClipError(f"{option}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CnClipError(f"{option}: give a JSON object, such as '{{\"nlist\": 1024}}'")
    return value


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.bundle:
        return _cross_precision(args)
    import numpy as np

    import index

    queries = None if not args.queries else np.load(args.queries)
    loaded = index.load(args.dir)
    try:
        reports = loaded.evaluate(queries=queries, target=args.target)
    finally:
        loaded.close()
    for version in reports:
        for point in version.report["points"]:
            print(json.dumps(point, ensure_ascii=False))
        chosen = version.chosen
        knobs = ("nprobe", "ef_search", "k_factor", "ef", "search_list", "itopk_size")
        speed = f" at {chosen.get('qps', 0):,.0f} queries/s"
        if version.report.get("speedup"):
            speed += f" ({version.report['speedup']:.1f}x exact search)"
        print(
            f"{version.where}: smallest setting reaching R@10 >= {args.target}: "
            f"{ {k: v for k, v in chosen.items() if k in knobs} } "
            f"R@1 {chosen.get('R@1', 0):.3f} R@10 {chosen.get('R@10', 0):.3f}"
            + (f" R@100 {chosen['R@100']:.3f}" if "R@100" in chosen else "")
            + speed,
            file=sys.stderr,
        )
    return 0


def _cross_precision(args: argparse.Namespace) -> int:
    from index.backend import is_milvus
    from index.recall import CROSS_REPORT, cross_precision, read_queries
    from runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle, threads=args.threads)
    reference = None if not args.reference else load_bundle(args.reference, threads=args.threads)
    texts = None if not args.texts else read_queries(args.texts)
    for root in [args.dir]:
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
        if not is_milvus(root):
            lines.append(f"  written to {Path(report['index']) / CROSS_REPORT}")
        print("\n".join(lines), file=sys.stderr)
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    import index
    from index.backend import is_milvus

    model, _ = _bundle_facts(args.bundle)
    corpus = _corpus(args, _work_dir(args, args.dir, ".embeddings-add"), titles=False)
    loaded = index.load(args.dir)
    try:
        options = {"target": args.target, "progress": not args.quiet}
        if not is_milvus(args.dir):
            options["make_current"] = not args.no_switch
        version = loaded.add(corpus, model=model, **options)
    finally:
        loaded.close()
    print(f"added {len(corpus.ids):,} items to {args.dir} ({version})", file=sys.stderr)
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    import index
    from index.backend import is_milvus

    ids = list(args.id or [])
    if args.ids_file:
        lines = Path(args.ids_file).read_text(encoding="utf-8").splitlines()
        ids += [line.strip() for line in lines if line.strip()]
    if not ids:
        raise CnClipError("give the ids to remove with --id or --ids-file")
    loaded = index.load(args.dir)
    try:
        options: dict[str, Any] = {}
        if not is_milvus(args.dir):
            options = {"target": args.target, "make_current": not args.no_switch}
        version = loaded.remove(ids, missing_ok=args.missing_ok, **options)
    finally:
        loaded.close()
    print(f"removed {len(ids):,} items from {args.dir} ({version})", file=sys.stderr)
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from index.backend import is_milvus
    from index.update import compact

    if is_milvus(args.dir):
        raise CnClipError(
            "Milvus compacts deleted items away by itself; to rebuild with other parameters, "
            "cnclip index build a new version"
        )
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
    import index

    index.switch(args.dir, args.version)
    print(f"{args.dir}: current version is now {args.version}", file=sys.stderr)
    return 0


def _cmd_drop_version(args: argparse.Namespace) -> int:
    import index

    index.drop_version(args.dir, args.version)
    print(f"{args.dir}: dropped {args.version}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import index

    loaded = index.load(args.dir)
    try:
        for version in loaded.versions():
            print(version.describe())
    finally:
        loaded.close()
    return 0


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
        help="build, evaluate and change catalog indexes (FAISS directories or Milvus)",
        description="Catalog images (or precomputed embeddings) into index versions (FAISS "
        "directories, or Milvus collections behind an alias) "
        "with measured recall.",
        epilog=INDEX_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = index.add_subparsers(dest="index_command", metavar="COMMAND", required=True)

    build = commands.add_parser("build", help="embed a catalog and write a new index version")
    _source_arguments(build)
    build.add_argument(
        "--out",
        required=True,
        help="the index root (versions go inside), or milvus://HOST:PORT/NAME (an alias)",
    )
    build.add_argument("--factory", help="a FAISS factory string instead of the automatic choice")
    build.add_argument(
        "--profile",
        choices=["quality", "lean"],
        help="FAISS: quality (default; about 600 bytes per 512-d vector) or lean (< 80 bytes)",
    )
    build.add_argument("--text-corpus", help="jsonl of {id, text}: a text index for image search")
    build.add_argument(
        "--lexicon",
        help="words the lexical index must keep whole (brands, series), one a line "
        "(jieba's user-dictionary format); model codes such as SB-1024 are kept anyway",
    )
    build.add_argument(
        "--milvus-index",
        metavar="TYPE",
        help="Milvus: FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW, HNSW_SQ, DISKANN, GPU_IVF_PQ, "
        "GPU_CAGRA ... (default: chosen by size among those the server builds)",
    )
    build.add_argument(
        "--milvus-params", metavar="JSON", help="Milvus: build parameters, e.g. '{\"nlist\": 1024}'"
    )
    build.add_argument(
        "--partition-key",
        metavar="ATTRIBUTE",
        help="Milvus: an attribute of every item (a shop id) to partition by, for many tenants",
    )
    build.add_argument(
        "--milvus-gpus",
        action="store_true",
        help="Milvus: the server has GPUs (GPU indexes), where its version does not say so",
    )
    _common(build, switchable=False)
    build.set_defaults(handler=_cmd_build)

    embed = commands.add_parser(
        "embed",
        help="embed a catalog's images into a resumable work directory (one machine or Ray)",
        description="Embed a catalog's images into DIR (shards, ids.txt, embeddings.npy, "
        "rejects.jsonl); a restarted run skips finished shards. Without --ray one machine "
        "embeds; with it a Ray cluster does (decoding in tasks, encoding in an actor pool). "
        "cnclip index build --catalog ... --work-dir DIR then builds without encoding again.",
    )
    embed.add_argument("--bundle", required=True, help="the model bundle (cnclip export)")
    embed.add_argument("--catalog", required=True, help="jsonl catalog: id, image, title, ...")
    embed.add_argument("--out", required=True, metavar="DIR", help="the work directory")
    embed.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="embed on Ray: alone, a local cluster for the run; 'auto' or ray://HOST:10001 "
        "joins one (needs cnclip[distributed])",
    )
    embed.add_argument(
        "--actors", type=int, help="Ray: encoder actors (default: a GPU or 2 CPUs each)"
    )
    embed.add_argument("--cpus-per-actor", type=float, help="Ray: CPUs an actor asks for (<= 1)")
    embed.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="Ray: GPUs an actor asks for (0)"
    )
    embed.add_argument(
        "--backend",
        help="Ray: the actors' bundle backend (onnxruntime; onnxruntime-cuda with GPUs)",
    )
    embed.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    embed.add_argument(
        "--shard-size", type=int, help="items per shard (8192; a resumed run keeps its own)"
    )
    embed.add_argument("--workers", type=int, help="one machine: image decoding threads")
    embed.add_argument("--threads", type=int, help="one machine: ONNX Runtime threads")
    embed.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch image URLs on private or loopback addresses too (an internal image host)",
    )
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    embed.set_defaults(handler=_cmd_embed)

    evaluate = commands.add_parser(
        "eval",
        help="measure recall against exact search and tune, or of another bundle's queries",
    )
    evaluate.add_argument("dir", help="an index root or version, or milvus://HOST:PORT/NAME")
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

    add = commands.add_parser(
        "add", help="add items (FAISS: a new version; Milvus: upserted in place)"
    )
    add.add_argument("dir", help="the index root, or milvus://HOST:PORT/NAME")
    _source_arguments(add)
    _common(add)
    add.set_defaults(handler=_cmd_add)

    remove = commands.add_parser(
        "remove", help="remove items (FAISS: a new version; Milvus: deleted in place)"
    )
    remove.add_argument("dir", help="the index root, or milvus://HOST:PORT/NAME")
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
    switch.add_argument("dir", help="the index root, or milvus://HOST:PORT/NAME")
    switch.add_argument("version", help="a version name, such as v0002 (or shop_v0002)")
    switch.set_defaults(handler=_cmd_switch)

    drop = commands.add_parser("drop-version", help="delete a version not being served")
    drop.add_argument("dir", help="the index root, or milvus://HOST:PORT/NAME")
    drop.add_argument("version", help="a version name, such as v0001 (or shop_v0001)")
    drop.set_defaults(handler=_cmd_drop_version)

    info = commands.add_parser("info", help="list versions with their counts and recall")
    info.add_argument("dir", help="the index root, or milvus://HOST:PORT/NAME")
    info.set_defaults(handler=_cmd_info)
