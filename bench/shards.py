"""Do in-process shards speed up search on one host? One index against N shards.

Run from the repository root (about 6 minutes on 2 cores at the defaults)::

    .venv/bin/python bench/shards.py                  # 200,000 x 512, 4 shards
    .venv/bin/python bench/shards.py --n 400000 --shards 8

The same CLIP-like vectors (index/synthetic.py) are built once as one index and once
split by id into ``--shards`` indexes, each through ``index.build.build_version`` (the
automatic choice and tuning of ``cnclip index build``; the shards get the same kind of
index as the whole, with their lists sized for them). The shards are searched the way
an in-process sharded index would: every shard on a thread pool (FAISS releases the
GIL), their top 10 merged by score. Both are measured in this process, side by side, on
the same held-out queries: R@10 against exact search, and queries/s for single queries
(what a REST request sends) and for a batch of 1,000. Writes ``bench/results/shards.md``.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from index.build import Corpus, build_version  # noqa: E402
from index.evaluate import exact_search, recall_at  # noqa: E402
from index.search import CatalogIndex, load  # noqa: E402
from index.synthetic import clip_like_split  # noqa: E402


def _merged(
    pool: ThreadPoolExecutor, shards: list[CatalogIndex], queries: np.ndarray, k: int
) -> list[list[str]]:
    """Every shard searched at once, the best ``k`` of their answers by score."""
    results = list(pool.map(lambda shard: shard.search(queries, k), shards))
    out = []
    for q in range(len(queries)):
        hits = [(float(r.scores[q, j]), r.ids[q][j]) for r in results for j in range(len(r.ids[q]))]
        hits.sort(key=lambda hit: -hit[0])
        out.append([item for _, item in hits[:k]])
    return out


def _qps(search: Any, queries: np.ndarray, single: bool) -> float:
    start = time.perf_counter()
    if single:
        for row in queries:
            search(row[None, :])
    else:
        search(queries)
    return len(queries) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args(argv)
    base, queries = clip_like_split(args.n, args.queries, args.dim, seed=0)
    _, truth = exact_search(base, queries, 10)
    ids = [f"item-{i}" for i in range(args.n)]
    position = {item: i for i, item in enumerate(ids)}
    work = Path(tempfile.mkdtemp(prefix="cnclip-shards-bench-"))

    one = load(build_version(work / "one", Corpus(base, ids), progress=False))
    owner = np.array([zlib.crc32(i.encode()) % args.shards for i in ids])
    shards = []
    for shard in range(args.shards):
        rows = np.flatnonzero(owner == shard)
        part = Corpus(base[rows], [ids[r] for r in rows])
        # The same kind of index as the whole one, its lists sized for the shard (the
        # automatic choice would search a small shard exactly, which is not the question).
        nlist = max(1, int(4 * np.sqrt(len(rows))))
        factory = re.sub(r"^IVF\d+", f"IVF{nlist}", one.manifest.factory)
        version = build_version(work / f"shard-{shard}", part, factory=factory, progress=False)
        shards.append(load(version))
    pool = ThreadPoolExecutor(args.shards)

    def search_one(q: np.ndarray) -> list[list[str]]:
        return one.search(q, 10).ids

    def search_shards(q: np.ndarray) -> list[list[str]]:
        return _merged(pool, shards, q, 10)

    rows_out = []
    for name, search, factory in (
        ("one index", search_one, one.manifest.factory),
        (f"{args.shards} shards", search_shards, shards[0].manifest.factory),
    ):
        found = search(queries)
        recall = recall_at(np.array([[position[i] for i in row] for row in found]), truth)
        search(queries[:50])  # warm
        single = _qps(search, queries, single=True)
        batch = _qps(search, queries, single=False)
        rows_out.append((name, factory, recall["R@10"], single, batch))
        print(name, factory, recall, f"{single:,.0f} single q/s", f"{batch:,.0f} batch q/s")

    lines = [
        f"# In-process shards on one host: {args.n:,} x {args.dim}, one index against "
        f"{args.shards} shards",
        "",
        f"- command: `.venv/bin/python bench/shards.py --n {args.n} --shards {args.shards}`",
        f"- machine: {describe()}, faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads",
        f"- date: {datetime.date.today().isoformat()}",
        f"- {args.queries:,} held-out queries; each index tuned to R@10 0.95 by `cnclip index "
        "build`'s code; the shards get the whole index's kind of index, lists sized for each",
        "",
        "| layout | factory | R@10 | single queries/s | batch of 1,000 queries/s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, factory, r10, single, batch in rows_out:
        lines.append(f"| {name} | `{factory}` | {r10:.3f} | {single:,.0f} | {batch:,.0f} |")
    ratio_single = rows_out[1][3] / rows_out[0][3]
    ratio_batch = rows_out[1][4] / rows_out[0][4]
    lines += [
        "",
        f"Shards against one index: {ratio_single:.2f}x on single queries, "
        f"{ratio_batch:.2f}x on the batch.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "results" / "shards.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
