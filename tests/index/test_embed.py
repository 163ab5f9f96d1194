"""Catalog reading, resumable catalog embedding through a real bundle, precomputed embeddings."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from index.embed import (
    CATALOG_FETCH,
    EmbeddedCatalog,
    _prefetch,
    embed_catalog,
    embed_texts,
    load_embeddings,
)
from runtime.bundle import Bundle, load_bundle
from runtime.errors import DataError
from runtime.images import PreprocessConfig
from sources.catalog import CatalogItem
from tests.conftest import data_root
from tests.index.conftest import BAD, CountingEncoder, photos

SHARD = 4


def run(
    bundle: CountingEncoder | Bundle, catalog: tuple[Path, list[CatalogItem]], work: Path
) -> EmbeddedCatalog:
    path, items = catalog
    return embed_catalog(
        bundle, items, work, base_dir=path.parent, batch_size=3, shard_size=SHARD, progress=False
    )


def resolved(item: CatalogItem, base: Path) -> Path:
    if item.image.startswith("file://"):
        return Path(item.image.removeprefix("file://"))
    return base / item.image


# --------------------------------------------------------------------------- catalog


def test_read_catalog_keeps_fields(catalog: tuple[Path, list[CatalogItem]]) -> None:
    _, items = catalog
    assert len(items) == 16
    first = items[0]
    assert first.id == "p0" and first.image.startswith("imgs/")
    assert first.title == "照片 p0" and first.attributes == {"shop": 7}


# --------------------------------------------------------------------------- embedding


def test_embeddings_equal_the_bundle_and_bad_images_are_rejects(
    bundle: Bundle, catalog: tuple[Path, list[CatalogItem]], tmp_path: Path
) -> None:
    path, items = catalog
    work = tmp_path / "work"
    result = run(bundle, catalog, work)
    assert result.ids == [item.id for item in items if item.id not in BAD]
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (13, result.dim)
    assert result.dim == bundle.embed_dim == 32
    by_id = {item.id: item for item in items}
    for row, item_id in enumerate(result.ids):
        expected = bundle.encode_images([resolved(by_id[item_id], path.parent)])[0]
        np.testing.assert_allclose(result.vectors[row], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)

    logged = [json.loads(line) for line in (work / "rejects.jsonl").read_text("utf-8").splitlines()]
    assert logged == result.rejects
    assert [r["id"] for r in logged] == ["missing", "truncated", "text"]
    errors = {r["id"]: r["error"] for r in logged}
    assert "missing.jpg" in errors["missing"] and "No such file" in errors["missing"]
    assert "truncated" in errors["truncated"]
    assert "not an image" in errors["text"]
    assert logged[0]["image"] == "imgs/missing.jpg"

    # The joined files are precomputed-embeddings input as they stand.
    vectors, ids = load_embeddings(work / "embeddings.npy", work / "ids.txt")
    assert ids == result.ids
    np.testing.assert_allclose(vectors, result.vectors, atol=1e-6)


def test_too_large_images_are_rejects(
    bundle: Bundle, catalog: tuple[Path, list[CatalogItem]], tmp_path: Path
) -> None:
    small = PreprocessConfig(
        image_size=bundle.preprocess_config.image_size,
        mean=bundle.preprocess_config.mean,
        std=bundle.preprocess_config.std,
        max_pixels=10_000,
    )
    encoder = CountingEncoder(bundle, small)
    result = run(encoder, catalog, tmp_path / "work")
    assert result.ids == [] and result.vectors.shape == (0, 32) and encoder.images == 0
    assert len(result.rejects) == 16
    photo_errors = [r["error"] for r in result.rejects if r["id"] not in BAD]
    assert len(photo_errors) == 13 and all("over the limit" in e for e in photo_errors)


def shard_files(work: Path, index: int) -> list[Path]:
    return [work / f"shard-{index:05d}{suffix}" for suffix in (".npy", ".ids.txt", ".done.json")]


def test_resume_embeds_only_incomplete_shards(
    bundle: Bundle, catalog: tuple[Path, list[CatalogItem]], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    first = CountingEncoder(bundle)
    run(first, catalog, work)
    assert first.images == 13
    assert all(p.is_file() for i in range(4) for p in shard_files(work, i))

    # A crash while the last shard was being written: none of its files are there.
    for file in shard_files(work, 3):
        file.unlink()
    # A crash before the second shard's marker was written: its data counts for nothing.
    (work / "shard-00001.done.json").unlink()
    second = CountingEncoder(bundle)
    resumed = run(second, catalog, work)
    assert second.images == 4 + 2  # shard 3: 4 photos; shard 1: 2 photos and 2 bad images

    fresh = run(bundle, catalog, tmp_path / "fresh")
    assert resumed.ids == fresh.ids
    np.testing.assert_allclose(resumed.vectors, fresh.vectors, atol=1e-6)
    assert resumed.rejects == fresh.rejects
    lines = (work / "rejects.jsonl").read_text("utf-8").splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(BAD)  # no duplicates

    # Everything done: nothing is encoded again, rejects are not retried.
    third = CountingEncoder(bundle)
    again = run(third, catalog, work)
    assert third.images == 0 and again.ids == fresh.ids and again.rejects == fresh.rejects
    np.testing.assert_array_equal(again.vectors, resumed.vectors)


def test_damaged_shard_is_embedded_again(
    bundle: Bundle, catalog: tuple[Path, list[CatalogItem]], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    reference = run(bundle, catalog, work)
    npy = work / "shard-00002.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # a torn write
    encoder = CountingEncoder(bundle)
    result = run(encoder, catalog, work)
    assert encoder.images == 4
    np.testing.assert_allclose(result.vectors, reference.vectors, atol=1e-6)


def test_work_dir_of_another_bundle_is_refused(
    bundle: Bundle, bundle_dir: Path, catalog: tuple[Path, list[CatalogItem]], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    run(bundle, catalog, work)
    other_dir = tmp_path / "other-bundle"
    shutil.copytree(bundle_dir, other_dir)
    manifest = json.loads((other_dir / "manifest.json").read_text("utf-8"))
    manifest["source"] = {"checkpoint": "another.pt", "sha256": None}
    (other_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    other = load_bundle(other_dir)
    assert other.bundle_id != bundle.bundle_id
    with pytest.raises(DataError, match="another model bundle"):
        run(other, catalog, work)


def test_work_dir_of_another_catalog_is_refused(
    bundle: Bundle, catalog: tuple[Path, list[CatalogItem]], tmp_path: Path
) -> None:
    path, items = catalog
    work = tmp_path / "work"
    run(bundle, catalog, work)
    with pytest.raises(DataError, match="another catalog"):
        run(bundle, (path, items[:-1]), work)
    with pytest.raises(DataError, match="shard_size"):
        embed_catalog(bundle, items, work, base_dir=path.parent, shard_size=8, progress=False)
    # Not given, the shard size is the one the directory was started with.
    encoder = CountingEncoder(bundle)
    again = embed_catalog(encoder, items, work, base_dir=path.parent, progress=False)
    assert encoder.images == 0 and len(again.ids) == 13


def test_duplicate_ids_given_directly_are_refused(
    bundle: Bundle, catalog: tuple[Path, list[CatalogItem]], tmp_path: Path
) -> None:
    path, items = catalog
    with pytest.raises(DataError, match="items 0 and 16 have the same id 'p0'"):
        run(bundle, (path, [*items, items[0]]), tmp_path / "work")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def photo_server() -> Iterator[str]:
    """A local HTTP server of the photo folder."""
    handler = functools.partial(QuietHandler, directory=str(data_root() / "coco-photos"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_images_are_downloaded(bundle: Bundle, photo_server: str, tmp_path: Path) -> None:
    shot = photos()[0]
    items = [
        CatalogItem("web", f"{photo_server}/{shot.name}"),
        CatalogItem("gone", f"{photo_server}/no-such-photo.jpg"),
        CatalogItem("ftp", "ftp://example.invalid/a.jpg"),
    ]
    # The service's fetcher, SSRF guard on: a loopback image server is refused ...
    guarded = embed_catalog(bundle, items, tmp_path / "guarded", base_dir=tmp_path, progress=False)
    assert guarded.ids == [] and all("loopback" in r["error"] for r in guarded.rejects[:2])
    # ... unless private hosts are allowed, as for an image host inside the network.
    fetch = dataclasses.replace(CATALOG_FETCH, allow_private=True)
    result = embed_catalog(
        bundle, items, tmp_path / "work", base_dir=tmp_path, progress=False, fetch=fetch
    )
    assert result.ids == ["web"]
    np.testing.assert_allclose(result.vectors[0], bundle.encode_images([shot])[0], atol=1e-5)
    errors = {r["id"]: r["error"] for r in result.rejects}
    assert "404" in errors["gone"] and "unsupported URL scheme 'ftp'" in errors["ftp"]


def test_prefetch_keeps_a_bounded_window() -> None:
    """At most ``depth`` items are submitted ahead of the consumer, and order is kept."""
    lock = threading.Lock()
    started: list[int] = []

    def load(item: CatalogItem) -> str:
        with lock:
            started.append(int(item.id))
        return item.id

    items = [CatalogItem(str(i), "x.jpg") for i in range(100)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for position, (item, result) in enumerate(_prefetch(pool, items, load, depth=6)):
            assert item.id == result == str(position)
            with lock:
                assert max(started) < position + 6


def test_progress_false_prints_nothing(
    bundle: Bundle,
    catalog: tuple[Path, list[CatalogItem]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(bundle, catalog, tmp_path / "work")
    embed_texts(bundle, ["红色的杯子"], progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_embed_texts_equals_the_bundle(bundle: Bundle) -> None:
    texts = ["红色的杯子", "一只猫", "踢足球的人在草地上奔跑", "蛋糕", "蓝色的T恤", "狗"]
    vectors = embed_texts(bundle, texts, batch_size=4, progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == (6, 32)
    for row, text in enumerate(texts):
        np.testing.assert_allclose(vectors[row], bundle.encode_texts([text])[0], atol=1e-5)
    assert embed_texts(bundle, [], progress=False).shape == (0, 32)


# --------------------------------------------------------------------------- precomputed


def save(tmp_path: Path, array: npt.NDArray[np.generic], ids: list[str]) -> tuple[Path, Path]:
    npy, ids_txt = tmp_path / "x.npy", tmp_path / "ids.txt"
    np.save(npy, array)
    ids_txt.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return npy, ids_txt


def test_load_embeddings_normalizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((5, 8)) * 3.0  # float64, not unit
    vectors, ids = load_embeddings(*save(tmp_path, raw, ["a", "b", "c", "d", "商品"]))
    assert ids == ["a", "b", "c", "d", "商品"] and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, raw / np.linalg.norm(raw, axis=1, keepdims=True), 1e-6)


@pytest.mark.parametrize(
    ("array", "ids", "problem"),
    [
        (np.ones(4), ["a"], "expected a \\[n, d\\] array"),
        (np.ones((2, 4), dtype=np.int32), ["a", "b"], "expected float vectors"),
        (np.ones((2, 4)), ["a"], "1 ids for the 2 rows"),
        (np.ones((3, 4)), ["a", "b", "a"], "ids.txt:3: duplicate id 'a', first at line 1"),
        (np.ones((2, 4)), ["a", ""], "ids.txt:2: empty id"),
        (np.array([[1.0, 0.0], [np.nan, 1.0]]), ["a", "b"], "row 1 \\(id 'b'\\) holds NaN"),
        (np.array([[1.0, np.inf], [1.0, 0.0]]), ["a", "b"], "row 0 \\(id 'a'\\) holds NaN"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), ["a", "b"], "row 1 \\(id 'b'\\) is all zeros"),
    ],
)
def test_load_embeddings_refuses(
    tmp_path: Path, array: npt.NDArray[np.generic], ids: list[str], problem: str
) -> None:
    with pytest.raises(DataError, match=problem):
        load_embeddings(*save(tmp_path, array, ids))


def test_load_embeddings_unreadable(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    (tmp_path / "ids.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a readable .npy"):
        load_embeddings(tmp_path / "x.npy", tmp_path / "ids.txt")
