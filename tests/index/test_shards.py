"""Sharded indexes: split by id, searched in parallel, merged like one index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import index
from index.build import Corpus, build_version
from index.evaluate import exact_search
from index.shards import ShardedIndex, add_sharded, build_sharded, remove_sharded, shard_of
from index.synthetic import clip_like_split
from runtime.errors import DataError
from runtime.identity import ModelRef


def _corpus(n: int) -> tuple[Corpus, np.ndarray]:
    base, queries = clip_like_split(n, 50, 32, seed=7)
    ids = [f"sku-{i}" for i in range(n)]
    items = [{"category": "鞋" if i % 5 == 0 else "包"} for i in range(n)]
    return Corpus(base, ids, items), queries


def test_shards_answer_like_one_exact_index(tmp_path: Path) -> None:
    corpus, queries = _corpus(3000)
    build_sharded(tmp_path / "s", corpus, 3, model=ModelRef(bundle_sha256="a" * 64), progress=False)
    sharded = index.load(tmp_path / "s")
    assert isinstance(sharded, ShardedIndex) and sharded.count == 3000
    sizes = [s.count for s in sharded.shards]
    assert sum(sizes) == 3000 and min(sizes) > 800
    assert all(
        shard_of(i, 3) == n
        for n, s in enumerate(sharded.shards)
        for i in s.store.rows_of(["sku-1", "sku-2", "sku-3"])
    )
    result = sharded.search(queries, 10, with_metadata=True)
    _, truth = exact_search(corpus.vectors, queries, 10)
    assert result.ids == [[corpus.ids[r] for r in row] for row in truth]
    assert np.all(np.diff(result.scores, axis=1) <= 1e-6)
    assert result.items is not None and result.items[0][0]["id"] == result.ids[0][0]
    shoes = sharded.search(queries[:5], 20, filter={"category": "鞋"}, with_metadata=True)
    assert shoes.items is not None
    assert all(len(row) == 20 and {m["category"] for m in row} == {"鞋"} for row in shoes.items)
    single = build_version(tmp_path / "one", corpus, progress=False)
    assert index.load(single).search(queries, 10).ids == result.ids
    sharded.close()


def test_adds_and_removals_are_routed_and_checked_first(tmp_path: Path) -> None:
    corpus, queries = _corpus(2000)
    root = tmp_path / "s"
    build_sharded(root, corpus, 2, progress=False)
    extra = Corpus(queries[:10], [f"new-{i}" for i in range(10)], [{"category": "帽"}] * 10)
    add_sharded(root, extra, progress=False)
    assert index.load(root).search(queries[:10], 1).ids == [[f"new-{i}"] for i in range(10)]
    with pytest.raises(DataError, match="already in the index"):
        add_sharded(root, extra, progress=False)
    before = [s.directory.name for s in ShardedIndex(root).shards]
    with pytest.raises(DataError, match="not in the index"):
        remove_sharded(root, ["new-1", "no-such"])
    assert [s.directory.name for s in ShardedIndex(root).shards] == before  # nothing changed
    remove_sharded(root, ["new-1", "new-2"])
    found = index.load(root).search(queries[:3], 5)
    assert not {"new-1", "new-2"} & {i for row in found.ids for i in row}
    assert index.load(root).count == 2008
    with pytest.raises(DataError, match="empty"):
        build_sharded(tmp_path / "t", Corpus(queries[:2], ["a", "b"]), 8)


def test_cli_builds_lists_evaluates_and_changes_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from cnclip.cli import main
    from export.bundle import export_bundle
    from model.modeling import build_model
    from tests.conftest import data_root, tiny_config

    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    export_bundle(build_model(tiny_config("resnet")), bundle, verify_data=data_root())
    corpus, _ = _corpus(1200)
    np.save(tmp_path / "x.npy", corpus.vectors)
    (tmp_path / "ids.txt").write_text("\n".join(corpus.ids) + "\n", encoding="utf-8")
    out = tmp_path / "idx"
    embeddings = ["--embeddings", str(tmp_path / "x.npy"), "--ids", str(tmp_path / "ids.txt")]
    build = ["index", "build", "--bundle", str(bundle), "--out", str(out), "--shards", "3"]
    assert main([*build, *embeddings, "-q"]) == 0
    assert index.load(out).count == 1200
    capsys.readouterr()
    assert main(["index", "info", str(out)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("* v0001") == 3 and "shard-002:" in listing
    assert main(["index", "eval", str(out), "-q"]) == 0
    assert len(list(out.glob("shard-*/v0001/eval.json"))) == 3
    assert main(["index", "remove", str(out), "--id", "sku-5", "-q"]) == 0
    assert index.load(out).count == 1199
    assert main(["index", "remove", str(out), "--id", "nope", "-q"]) == 2


def test_a_shard_set_written_before_format_fields_still_loads(tmp_path: Path) -> None:
    corpus, _ = _corpus(600)
    model = ModelRef(model_id="a" * 64, bundle_id="b" * 64)
    build_sharded(tmp_path / "s", corpus, 2, model=model, progress=False)
    (tmp_path / "s" / "shards.json").write_text(
        '{"shards": 2, "hash": "crc32(id) % shards"}\n', encoding="utf-8"
    )
    sharded = index.load(tmp_path / "s")
    assert isinstance(sharded, ShardedIndex) and sharded.count == 600
    assert sharded.model == model == index.index_model(tmp_path / "s")
    sharded.close()
    with pytest.raises(DataError, match="already in the index"):
        index.add(tmp_path / "s", Corpus(corpus.vectors[:2], corpus.ids[:2]), model=model)
