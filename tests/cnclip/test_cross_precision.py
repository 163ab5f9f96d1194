"""The production split, as a user runs it: an index built with a checkpoint's fp32 bundle,
served by ``cnclip serve`` with the int8 bundle of the same checkpoint; a bundle of another
checkpoint is refused with one line; the cost of int8 queries measured by
``cnclip index eval --bundle``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch

from cnclip.cli import main
from model.checkpoints import save_checkpoint
from model.modeling import build_model
from runtime.bundle_manifest import BundleManifest
from tests.conftest import tiny_config
from tests.service.conftest import cnclip_serve, photos, queries


def _export(checkpoint: Path, out: Path, precision: str, data_dir: Path) -> None:
    args = ["export", "--model", str(checkpoint), "--out", str(out), "--precision", precision]
    assert main([*args, "--verify-data", str(data_dir), "-q"]) == 0


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """Bundles of two checkpoints, and an index built with the first one's fp32 bundle."""
    work = tmp_path_factory.mktemp("split")
    paths: dict[str, Path] = {}
    for seed, name in ((0, "shop"), (1, "other")):
        torch.manual_seed(seed)
        paths[f"{name}.pt"] = save_checkpoint(build_model(tiny_config("vit")), work / f"{name}.pt")
    _export(paths["shop.pt"], work / "fp32", "fp32", data_dir)
    _export(paths["shop.pt"], work / "fp32-again", "fp32", data_dir)
    _export(paths["shop.pt"], work / "int8", "int8", data_dir)
    _export(paths["other.pt"], work / "other", "fp32", data_dir)
    catalog = work / "items.jsonl"
    lines = [
        json.dumps({"id": f"p{i}", "image": str(p), "title": queries()[i % len(queries())]})
        for i, p in enumerate(photos()[:10])
    ]
    catalog.write_text("\n".join(lines) + "\n", encoding="utf-8")
    build = ["index", "build", "--bundle", str(work / "fp32"), "--catalog", str(catalog)]
    assert main([*build, "--out", str(work / "index"), "-q"]) == 0
    paths.update({name: work / name for name in ("fp32", "fp32-again", "int8", "other", "index")})
    paths["work"] = work
    return paths


def test_re_exporting_a_checkpoint_gives_the_same_identities(split: dict[str, Path]) -> None:
    first, again = BundleManifest.read(split["fp32"]), BundleManifest.read(split["fp32-again"])
    assert first.model_id == again.model_id and first.bundle_id == again.bundle_id
    int8 = BundleManifest.read(split["int8"])
    assert int8.model_id == first.model_id and int8.bundle_id != first.bundle_id


def test_the_int8_bundle_serves_the_index_of_the_fp32_bundle(split: dict[str, Path]) -> None:
    args = ["--bundle", str(split["int8"]), "--index", str(split["index"]), "--threads", "1"]
    with cnclip_serve([*args, "--log-level", "warning"]) as (url, server):
        ready = httpx.get(url + "/readyz")
        int8 = BundleManifest.read(split["int8"])
        assert ready.json()["model_id"] == int8.model_id
        assert ready.json()["bundle_id"] == int8.bundle_id
        info = httpx.get(url + "/v1/catalog").json()
        assert info["model_id"] == int8.model_id
        assert info["bundle_id"] == BundleManifest.read(split["fp32"]).bundle_id
        answer = httpx.post(url + "/v1/search/text", json={"query": queries()[0], "top_k": 3})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 3
    stderr = server.stderr.read() if server.stderr else ""
    assert "same model, another bundle" in stderr and "int8 bundle" in stderr


def test_a_bundle_of_another_checkpoint_is_refused_with_one_line(
    split: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--bundle", str(split["other"]), "--index", str(split["index"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vectors of different models" in err
    catalog = split["work"] / "items.jsonl"
    add = ["index", "add", str(split["index"]), "--catalog", str(catalog), "-q"]
    assert (
        main([*add, "--bundle", str(split["other"]), "--work-dir", str(split["work"] / "w")]) == 2
    )
    assert "vectors of different models" in capsys.readouterr().err


def test_index_eval_measures_the_recall_of_int8_queries(
    split: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    texts = split["work"] / "queries.txt"
    texts.write_text("\n".join(queries()) + "\n", encoding="utf-8")
    command = ["index", "eval", str(split["index"]), "--bundle", str(split["int8"])]
    command += ["--reference", str(split["fp32"]), "--texts", str(texts)]
    assert main(command) == 0
    printed = capsys.readouterr()
    assert "precision 10-recall@10" in printed.err and "total" in printed.err
    version = split["index"] / "v0001"
    report = json.loads((version / "cross-precision.json").read_text("utf-8"))
    assert report["queries"] == len(queries()) and report["factory"] == "IDMap2,Flat"
    # A flat index is exact: it adds nothing to what the int8 queries cost.
    assert report["ann"]["10-recall@10"] == 1.0 and report["reference"]["ann"]["R@1"] == 1.0
    assert report["total"] == report["precision"]
    assert 0.5 <= report["precision"]["10-recall@10"] <= 1.0
    assert 0.99 <= report["query_cosine"]["min"] <= 1.0
    assert report["bundle"]["precision"] == "int8" and report["notes"]
    # Without a reference only the index's own part is measured; titles are the queries.
    assert main(["index", "eval", str(split["index"]), "--bundle", str(split["int8"])]) == 0
    report = json.loads((version / "cross-precision.json").read_text("utf-8"))
    assert report["query_source"] == "item titles" and "precision" not in report
