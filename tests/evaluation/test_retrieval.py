"""Retrieval evaluation on official-format data: the readers, the official scripts' scores
on our prediction files, LMDB input, unreadable and missing images, and an index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cn_clip.eval import evaluation as official_t2i
from cn_clip.eval import evaluation_tr as official_i2t

from evaluation.models import open_model
from evaluation.retrieval import (
    evaluate_retrieval,
    load_retrieval_data,
    official_eval_text,
    write_predictions,
)
from runtime.bundle import load_bundle
from runtime.errors import DataError
from tests.evaluation.conftest import encode_png_bytes, write_official


def _official_tr_reference(jsonl: Path, out: Path) -> Path:
    """What the official transform_ir_annotation_to_tr.py writes for ``jsonl``."""
    images: dict[int, list[int]] = {}
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for image_id in row["image_ids"]:
            images.setdefault(image_id, []).append(row["text_id"])
    out.write_text(
        "".join(json.dumps({"image_id": i, "text_ids": t}) + "\n" for i, t in images.items())
    )
    return out


def test_reads_the_muge_sample(data_dir: Path) -> None:
    data = load_retrieval_data(data_dir / "muge-sample", "valid")
    assert len(data.image_ids) == 8
    assert data.image_ids == sorted(data.image_ids, key=lambda i: i.encode())  # LMDB key order
    assert data.text_ids == [248816, 248931]
    assert data.texts == ["圣诞 抱枕", "32不粘锅"]
    assert data.relevant == [["286314", "141999", "183846"], ["349934", "941660"]]
    assert data.read(data.image_ids.index("286314"))[:2] == b"\xff\xd8"  # a JPEG
    with pytest.raises(DataError, match="no images for split 'test'"):
        load_retrieval_data(data_dir / "muge-sample", "test")


def test_the_official_scripts_score_our_prediction_files_as_we_do(
    tiny_bundle: Path, mixed: Path, tmp_path: Path
) -> None:
    model = open_model(tiny_bundle)
    run = evaluate_retrieval(model, load_retrieval_data(mixed, "valid"), progress=False)
    t2i_file, i2t_file = write_predictions(run, tmp_path, "valid")
    mean, r1, r5, r10 = official_t2i.compute_score(str(mixed / "valid_texts.jsonl"), str(t2i_file))
    ours = run.metrics["t2i"]
    assert (ours["r1"], ours["r5"], ours["r10"]) == pytest.approx((r1, r5, r10))
    assert ours["mean_recall"] == pytest.approx(mean)
    reference = _official_tr_reference(mixed / "valid_texts.jsonl", tmp_path / "tr.jsonl")
    mean, r1, r5, r10 = official_i2t.compute_score(str(reference), str(i2t_file))
    ours = run.metrics["i2t"]
    assert (ours["r1"], ours["r5"], ours["r10"], ours["mean_recall"]) == pytest.approx(
        (r1, r5, r10, mean)
    )
    assert run.metrics["mean_recall"] == pytest.approx(
        (run.metrics["t2i"]["mean_recall"] + run.metrics["i2t"]["mean_recall"]) / 2
    )
    assert run.counts["images"] == 32 and run.counts["texts"] == 14


def test_predictions_are_the_official_ranking_of_the_embeddings(
    tiny_bundle: Path, mixed: Path, tmp_path: Path
) -> None:
    data = load_retrieval_data(mixed, "valid")
    run = evaluate_retrieval(open_model(tiny_bundle), data, progress=False)
    bundle = load_bundle(tiny_bundle)
    images = bundle.encode_images([data.read(i) for i in range(len(data.image_ids))])
    texts = bundle.encode_texts([official_eval_text(t) for t in data.texts])
    for text_id, vector in zip(data.text_ids, texts, strict=True):
        scored = [(i, float(s)) for i, s in zip(data.image_ids, images @ vector, strict=True)]
        expected = [i for i, _ in sorted(scored, key=lambda x: x[1], reverse=True)[:10]]
        assert run.t2i[text_id] == expected
    for image_id, vector in zip(data.image_ids, images, strict=True):
        scored = [(t, float(s)) for t, s in zip(data.text_ids, texts @ vector, strict=True)]
        assert run.i2t[image_id] == [
            t for t, _ in sorted(scored, key=lambda x: x[1], reverse=True)[:10]
        ]


def test_lmdb_input_gives_the_same_results(tiny_bundle: Path, mixed: Path, tmp_path: Path) -> None:
    from sources.official import build_lmdb, close_lmdb

    model = open_model(tiny_bundle)
    from_tsv = evaluate_retrieval(model, load_retrieval_data(mixed, "valid"), progress=False)
    dataset = tmp_path / "ds"
    build_lmdb(mixed, "valid", dataset / "lmdb", progress=False)
    shutil.copy(mixed / "valid_texts.jsonl", dataset)  # the official evaluation reads this
    data = load_retrieval_data(dataset, "valid")
    from_lmdb = evaluate_retrieval(model, data, progress=False)
    data.close()
    assert from_lmdb.metrics == from_tsv.metrics
    assert from_lmdb.t2i == from_tsv.t2i and from_lmdb.i2t == from_tsv.i2t
    (dataset / "valid_texts.jsonl").unlink()  # texts from the LMDB's pairs instead
    data = load_retrieval_data(dataset, "valid")
    from_pairs = evaluate_retrieval(model, data, progress=False)
    data.close()
    close_lmdb(dataset / "lmdb" / "valid")
    assert from_pairs.metrics == from_tsv.metrics


def test_unreadable_and_missing_images_are_counted_not_fatal(
    tiny_bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    photos = sorted((data_dir / "coco-photos").glob("*.jpg"))
    images = [(str(10 + k), p.read_bytes()) for k, p in enumerate(photos)]
    images.append(("90", b"this is not an image"))  # valid base64, not an image
    images.append(("91", encode_png_bytes((255, 0, 0))))
    texts: list[tuple[int, str, list[int | str]]] = [
        (1, "踢足球的人", [10, 11]),
        (2, "生日蛋糕", [90]),  # only the unreadable image
        (3, "一只猫", [99]),  # only a missing image
        (4, "红色", [91, 99]),
        *[(5 + k, f"第{k}张照片", [12 + k]) for k in range(8)],
    ]
    directory = write_official(tmp_path / "broken", "valid", images, texts)
    data = load_retrieval_data(directory, "valid")
    run = evaluate_retrieval(open_model(tiny_bundle), data, progress=False)
    assert run.counts["images"] == 16 and run.counts["images_used"] == 15
    assert run.counts["images_unreadable"] == 1
    assert run.counts["texts_without_usable_images"] == 2
    assert [i for i, _ in run.failed_images] == ["90"]
    assert "90" not in run.i2t and "90" not in {i for ids in run.t2i.values() for i in ids}
    assert set(run.t2i) == {t for t, _, _ in texts}  # every text is a query
    t2i_file, i2t_file = write_predictions(run, tmp_path / "out", "valid")
    _, r1, r5, r10 = official_t2i.compute_score(str(directory / "valid_texts.jsonl"), str(t2i_file))
    ours = run.metrics["t2i"]
    assert (ours["r1"], ours["r5"], ours["r10"]) == pytest.approx((r1, r5, r10))  # same misses
    assert run.metrics["t2i"]["r10"] <= 100 * 10 / 12
    # Image to text: the annotated images that could be used (90 and 99 cannot).
    inverted = {row["image_id"] for row in map(json.loads, i2t_file.read_text().splitlines())}
    assert inverted == {int(i) for i, _ in images if i != "90"}


def test_one_direction_and_the_paper_mean(tiny_bundle: Path, data_dir: Path) -> None:
    data = load_retrieval_data(data_dir / "muge-sample", "valid")
    run = evaluate_retrieval(open_model(tiny_bundle), data, directions=["t2i"], progress=False)
    assert set(run.metrics) == {"t2i", "mean_recall"}
    assert run.metrics["mean_recall"] == run.metrics["t2i"]["mean_recall"]
    assert run.i2t == {} and all(len(ids) == 8 for ids in run.t2i.values())


def test_the_checkpoint_and_its_fp32_bundle_agree(
    tiny_checkpoint: Path, tiny_bundle: Path, mixed: Path
) -> None:
    data = load_retrieval_data(mixed, "valid")
    checkpoint = open_model(tiny_checkpoint)
    bundle = open_model(tiny_bundle)
    assert checkpoint.info.kind == "checkpoint" and bundle.info.kind == "bundle"
    ids = checkpoint.tokenizer([official_eval_text(t) for t in data.texts], pad_to="longest").ids
    cosine = (checkpoint.encode_token_ids(ids) * bundle.encode_token_ids(ids)).sum(axis=1)
    assert cosine.min() > 0.9999
    a = evaluate_retrieval(checkpoint, data, progress=False)
    b = evaluate_retrieval(bundle, data, progress=False)
    one_query = 100 / 14 + 1e-9
    for direction in ("t2i", "i2t"):
        for key in ("r1", "r5", "r10"):
            assert abs(a.metrics[direction][key] - b.metrics[direction][key]) <= one_query


def test_text_to_image_through_an_index(tiny_bundle: Path, mixed: Path, tmp_path: Path) -> None:
    import index
    from index.build import Corpus, build_version

    data = load_retrieval_data(mixed, "valid")
    model = open_model(tiny_bundle)
    exact = evaluate_retrieval(model, data, directions=["t2i"], progress=False)
    bundle = load_bundle(tiny_bundle)
    vectors = bundle.encode_images([data.read(i) for i in range(len(data.image_ids))])
    corpus = Corpus(vectors, list(data.image_ids), [{} for _ in data.image_ids])
    version = build_version(
        tmp_path / "idx", corpus, model=bundle.identity, factory="Flat", progress=False
    )
    searched = evaluate_retrieval(
        model, data, directions=["t2i"], index=index.load(version), progress=False
    )
    assert searched.metrics == exact.metrics
    assert "embed_images" not in searched.seconds  # the index holds the images already
    with pytest.raises(Exception, match="t2i"):
        evaluate_retrieval(model, data, directions=["i2t"], index=index.load(version))


def test_prediction_ids_are_written_as_in_the_official_files(
    tiny_bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    run = evaluate_retrieval(
        open_model(tiny_bundle),
        load_retrieval_data(data_dir / "muge-sample", "valid"),
        progress=False,
    )
    t2i_file, i2t_file = write_predictions(run, tmp_path, "valid")
    assert (
        t2i_file.name == "valid_predictions.jsonl" and i2t_file.name == "valid_predictions_tr.jsonl"
    )
    rows = [json.loads(line) for line in t2i_file.read_text().splitlines()]
    assert [r["text_id"] for r in rows] == [248816, 248931]
    assert all(isinstance(i, int) for r in rows for i in r["image_ids"])
    assert all(len(set(r["image_ids"])) == len(r["image_ids"]) == 8 for r in rows)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    assert np.isfinite(run.metrics["mean_recall"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_checkpoint_on_the_gpu_agrees_with_the_cpu(tiny_checkpoint: Path, mixed: Path) -> None:
    data = load_retrieval_data(mixed, "valid")
    cpu = evaluate_retrieval(open_model(tiny_checkpoint), data, progress=False)
    gpu = evaluate_retrieval(open_model(tiny_checkpoint, device="cuda"), data, progress=False)
    for direction in ("t2i", "i2t"):
        for key in ("r1", "r5", "r10"):
            assert abs(cpu.metrics[direction][key] - gpu.metrics[direction][key]) <= 100 / 14 + 1e-9
