"""`cnclip data` conversions feeding `cnclip train`, in one process and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cnclip.cli import main
from model.checkpoints import load_checkpoint
from tests.conftest import ROOT, tiny_config


def _catalog(tmp_path: Path, data_dir: Path) -> Path:
    """The 14 COCO photos as an e-commerce style catalog, titled by their queries."""
    photos = data_dir / "coco-photos"
    titles: dict[str, str] = {}
    for line in (photos / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        query = json.loads(line)
        for name in query["relevant"]:
            titles.setdefault(name, query["query"])
    path = tmp_path / "items.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for name in sorted(p.name for p in photos.glob("*.jpg")):
            item = {"id": name[:-4], "image": str(photos / name), "title": titles.get(name, "照片")}
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path


def _run_config(tmp_path: Path, data: dict[str, Any], name: str, steps: int = 2) -> Path:
    tree = {
        "run_dir": str(tmp_path / name),
        "torch_threads": 1,
        "model": {"config": tiny_config("vit").to_dict()},
        "data": {**data, "workers": 1},
        "stages": [{"name": "s", "lr": 1e-4, "batch_size": 2, "steps": steps}],
        "log_every": 1,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    return path


def _train_lines(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [x for x in map(json.loads, lines) if x["kind"] == "train"]


def test_build_lmdb_then_train_on_it(tmp_path: Path, data_dir: Path) -> None:
    build = ["data", "build-lmdb", "--data-dir", str(data_dir / "muge-sample")]
    build += ["--splits", "valid", "--lmdb-dir", str(tmp_path / "lmdb"), "-q"]
    assert main(build) == 0
    assert (tmp_path / "lmdb" / "valid" / "pairs").is_dir()
    config = _run_config(tmp_path, {"kind": "lmdb", "path": str(tmp_path / "lmdb" / "valid")}, "r")
    assert main(["train", "--config", str(config), "-q"]) == 0
    assert len(_train_lines(tmp_path / "r")) == 2
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt").config.name == "tiny-vit"
    # Building again without --overwrite is refused and keeps the split.
    assert main(build) == 2
    assert (tmp_path / "lmdb" / "valid" / "pairs").is_dir()


def test_catalog_to_webdataset_then_train(tmp_path: Path, data_dir: Path) -> None:
    catalog = _catalog(tmp_path, data_dir)
    config = _run_config(tmp_path, {"kind": "catalog", "path": str(catalog)}, "from-catalog")
    assert main(["train", "--config", str(config), "-q"]) == 0
    assert (
        main(
            [
                "data",
                "to-wds",
                "--kind",
                "catalog",
                "--path",
                str(catalog),
                "--out",
                str(tmp_path / "wds"),
                "--samples-per-shard",
                "4",
                "-q",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "wds" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["num_samples"] == 14 and len(manifest["shards"]) == 4
    config = _run_config(tmp_path, {"kind": "wds", "path": str(tmp_path / "wds")}, "from-wds")
    assert (
        main(["train", "--config", str(config), "-q", "stages.s.steps=null", "stages.s.epochs=1"])
        == 0
    )
    assert len(_train_lines(tmp_path / "from-wds")) == 7  # 14 pairs / 2 per step


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _run_config(tmp_path, {"kind": "catalog", "path": str(tmp_path / "none.jsonl")}, "x")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnclip: error:") and "none.jsonl" in err and "\n" not in err
    assert main(["train", "--config", str(config), "stages.s.lr=-1"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_torchrun_two_ranks_train_and_only_rank_zero_writes(tmp_path: Path, data_dir: Path) -> None:
    catalog = _catalog(tmp_path, data_dir)
    config = _run_config(tmp_path, {"kind": "catalog", "path": str(catalog)}, "ddp", steps=3)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cnclip",
        "train",
        "--config",
        str(config),
        "stages.s.batch_size=4",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _train_lines(tmp_path / "ddp")
    assert [x["step"] for x in lines] == [1, 2, 3]  # written once, by rank 0
    assert "2 ranks x 1 x 2" in proc.stderr
    saved = yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["stages"][0]["batch_size"] == 4
