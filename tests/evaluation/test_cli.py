"""``cnclip eval``: the comparison of a checkpoint with its exported bundles, and clear
one-line errors (exit 2) for what a user can get wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cnclip.cli import main
from runtime.identity import ModelRef
from tests.evaluation.conftest import cifar_images


def test_retrieval_compares_a_checkpoint_with_its_bundles(
    tiny_checkpoint: Path, mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["eval", "retrieval", "--model", str(tiny_checkpoint), "--export", "fp32,int8"]
    args += ["--data", str(mixed), "--split", "valid", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| tiny.pt | fp32 | torch-cpu |" in table and "MR vs tiny.pt" in table
    report = json.loads((out / "retrieval-valid.json").read_text(encoding="utf-8"))
    labels = [m["model"]["label"] for m in report["models"]]
    assert labels == ["tiny.pt", "tiny-fp32", "tiny-int8"]
    assert [m["model"]["precision"] for m in report["models"]] == ["fp32", "fp32", "int8"]
    reference, fp32 = (m["metrics"] for m in report["models"][:2])
    assert abs(reference["mean_recall"] - fp32["mean_recall"]) < 100 / 14
    for label in labels:
        assert (out / label / "valid_predictions.jsonl").is_file()
        assert (out / label / "valid_predictions_tr.jsonl").is_file()
    markdown = (out / "retrieval-valid.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Retrieval on mixed") and "tiny-int8" in markdown


def test_zeroshot_from_an_archive_with_labels(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tarfile

    archive = tmp_path / "small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for folder, name, data in cifar_images(3):
            path = tmp_path / "tree" / "test" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        tar.add(tmp_path / "tree" / "test", arcname="test")
    out = tmp_path / "zs"
    args = ["eval", "zeroshot", "--model", str(tiny_checkpoint), "--label", "随机权重"]
    args += ["--data", str(archive), "--labels", str(data_dir / "cifar10" / "labels_zh.tsv")]
    args += ["--templates", "captions", "--out", str(out), "--no-progress", "-q"]
    assert main(args) == 0
    assert capsys.readouterr().out == ""
    report = json.loads((out / "zeroshot.json").read_text(encoding="utf-8"))
    row = report["models"][0]
    assert row["model"]["label"] == "随机权重" and report["templates"] == 8
    assert row["counts"]["images"] == 30 and len(row["confusion_matrix"]) == 10
    assert (out / "model" / "confusion.png").is_file()  # a label without ASCII: folder "model"
    assert "Most confused pairs" in (out / "zeroshot.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "{missing}"], "not a directory"),
        (["--data", "{muge}", "--split", "test"], "no images for split 'test'"),
        (["--data", "{muge}", "--export", "fp64"], "--export takes fp32, fp16 and int8"),
        (["--data", "{muge}", "--label", "a", "--label", "b"], "2 --label for 1 --model"),
        (["--data", "{muge}", "--batch-size", "0"], "--batch-size must be a positive"),
        (["--data", "{muge}", "--nprobe", "0"], "--nprobe must be a positive"),
        (["--data", "{muge}", "--index", "{muge}", "--export", "int8"], "--index with --export"),
        (["--data", "{muge}", "--index", "{muge}"], "neither an index version nor an index root"),
    ],
)
def test_retrieval_errors_are_one_line(
    tiny_checkpoint: Path,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    paths = {"{missing}": str(tmp_path / "nowhere"), "{muge}": str(data_dir / "muge-sample")}
    args = ["eval", "retrieval", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    assert main([*args, *(paths.get(a, a) for a in extra), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnclip: error:") and message in err and "Traceback" not in err


def test_model_errors_are_one_line(
    tiny_bundle: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    muge = str(data_dir / "muge-sample")
    base = ["eval", "retrieval", "--data", muge, "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--model", str(tmp_path / "none.pt")]) == 2
    assert "no such model" in capsys.readouterr().err
    assert main([*base, "--model", str(tiny_bundle), "--export", "int8"]) == 2
    assert "needs the first --model to be a checkpoint" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main([*base, "--model", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt" in capsys.readouterr().err
    zs = ["eval", "zeroshot", "--model", str(tiny_bundle), "--out", str(tmp_path / "z")]
    zs += ["--data", str(data_dir / "cifar10" / "test.tar.gz"), "--no-progress"]
    assert main([*zs, "--templates", str(tmp_path / "none.txt")]) == 2
    assert "neither a file nor a built-in set" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "z").exists()  # nothing written


def test_no_half_written_results_when_a_run_fails(
    tiny_bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    args = ["eval", "retrieval", "--model", str(tiny_bundle), "--data"]
    assert main([*args, str(data_dir / "muge-sample"), "--out", str(out), "--no-progress"]) == 0
    before = (out / "retrieval-valid.json").read_bytes()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "valid_imgs.tsv").write_text("1\tnot-base64!!\n", encoding="utf-8")
    (broken / "valid_texts.jsonl").write_text('{"text_id": 1, "text": "x", "image_ids": [1]}\n')
    assert main([*args, str(broken), "--out", str(out), "--no-progress"]) == 2
    assert (out / "retrieval-valid.json").read_bytes() == before
    assert not [p for p in os.listdir(out) if p.startswith(".")]


def test_an_index_of_another_bundle_is_refused_before_any_work(
    tiny_bundle: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from index.build import Corpus, build_version

    vectors = np.eye(8, 32, dtype=np.float32)
    corpus = Corpus(vectors, [str(i) for i in range(8)], [{} for _ in range(8)])
    version = build_version(
        tmp_path / "idx",
        corpus,
        model=ModelRef(model_id="0" * 64, bundle_id="1" * 64),
        factory="Flat",
        progress=False,
    )
    args = ["eval", "retrieval", "--model", str(tiny_bundle), "--index", str(version)]
    args += ["--data", str(data_dir / "muge-sample"), "--out", str(tmp_path / "o")]
    assert main([*args, "--no-progress"]) == 2
    assert "built with model 000000000000" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_is_checked_against_the_index_by_its_model_id(
    tiny_checkpoint: Path,
    tiny_bundle: Path,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from evaluation.models import open_model
    from evaluation.retrieval import load_retrieval_data
    from index.build import Corpus, build_version
    from runtime.bundle import load_bundle

    # The checkpoint's model id is the one its bundle carries.
    bundle = load_bundle(tiny_bundle)
    assert open_model(tiny_checkpoint).identity.model_id == bundle.identity.model_id  # type: ignore[attr-defined]
    data = load_retrieval_data(data_dir / "muge-sample", "valid")
    vectors = bundle.encode_images([data.read(i) for i in range(len(data.image_ids))])
    ids = list(data.image_ids)
    data.close()
    base = ["eval", "retrieval", "--model", str(tiny_checkpoint), "--no-progress"]
    base += ["--data", str(data_dir / "muge-sample"), "--direction", "t2i"]
    ours = build_version(
        tmp_path / "ours", Corpus(vectors, ids), model=bundle.identity, factory="Flat",
        progress=False,
    )  # fmt: skip
    assert main([*base, "--index", str(ours), "--out", str(tmp_path / "a")]) == 0
    assert "cannot check" not in capsys.readouterr().err
    other = ModelRef(model_id="0" * 64, bundle_id="1" * 64)
    theirs = build_version(
        tmp_path / "theirs", Corpus(vectors, ids), model=other, factory="Flat", progress=False
    )
    assert main([*base, "--index", str(theirs), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "built with model 000000000000" in err and len(err.splitlines()) == 1
