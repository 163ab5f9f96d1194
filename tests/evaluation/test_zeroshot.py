"""Zero-shot classification on real CIFAR-10 test images: the metrics against an
independent computation, label files, the confusion picture, and the trainer's own
validation figure reproduced by the evaluation on the same checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from evaluation.compare import ModelSpec, RunOptions, run_zeroshot
from evaluation.models import open_model
from evaluation.plot import render_confusion
from evaluation.zeroshot import evaluate_zeroshot, load_zeroshot_data
from runtime.bundle import load_bundle
from runtime.errors import ConfigError, DataError
from runtime.retrieval import class_embeddings
from runtime.templates import CAPTION_TEMPLATES, PROMPT_TEMPLATES, load_templates
from tests.evaluation.conftest import cifar_images

PER_CLASS = 12


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder of the first 12 CIFAR-10 test images of each class."""
    root = tmp_path_factory.mktemp("cifar") / "test"
    for folder, name, data in cifar_images(PER_CLASS):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(data)
    return root


def test_metrics_match_an_independent_computation(
    tiny_bundle: Path, cifar_subset: Path, data_dir: Path
) -> None:
    data = load_zeroshot_data(cifar_subset, data_dir / "cifar10" / "labels_zh.tsv")
    assert data.class_names[:3] == ["飞机", "汽车", "鸟"] and len(data.labels) == 120
    run = evaluate_zeroshot(open_model(tiny_bundle), data, PROMPT_TEMPLATES, progress=False)

    bundle = load_bundle(tiny_bundle)
    prompts = [t.replace("{}", n) for n in data.class_names for t in PROMPT_TEMPLATES]
    classes = class_embeddings(bundle.encode_texts(prompts).reshape(10, len(PROMPT_TEMPLATES), -1))
    images = bundle.encode_images([data.read(i) for i in range(len(data.labels))])
    logits = 100 * images @ classes.T
    labels = np.asarray(data.labels)
    ranked = np.argsort(-logits, axis=1, kind="stable")
    assert run.metrics["top1"] == pytest.approx(100 * (ranked[:, 0] == labels).mean(), abs=1e-6)
    top5 = (ranked[:, :5] == labels[:, None]).any(axis=1).mean()
    assert run.metrics["top5"] == pytest.approx(100 * top5, abs=1e-6)
    per_class = [100 * (ranked[labels == c, 0] == c).mean() for c in range(10)]
    assert run.per_class == pytest.approx(per_class)
    assert run.metrics["mean_per_class"] == pytest.approx(np.mean(per_class))
    assert run.confusion.sum() == 120 and (run.confusion.sum(axis=1) == PER_CLASS).all()
    assert np.trace(run.confusion) == round(run.metrics["top1"] * 120 / 100)
    worst = run.confused[0]
    assert worst.count == max(run.confusion[t, p] for t in range(10) for p in range(10) if t != p)


def test_label_cn_txt_and_tsv_give_the_same_names(
    cifar_subset: Path, data_dir: Path, tmp_path: Path
) -> None:
    tsv = data_dir / "cifar10" / "labels_zh.tsv"
    names = dict(line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines())
    txt = tmp_path / "label_cn.txt"
    txt.write_text("\n".join(names[folder] for folder in sorted(names)) + "\n", encoding="utf-8")
    assert (
        load_zeroshot_data(cifar_subset, txt).class_names
        == load_zeroshot_data(cifar_subset, tsv).class_names
    )
    txt.write_text("飞机\n汽车\n", encoding="utf-8")
    with pytest.raises(DataError, match="2 class names for 10 class folders"):
        load_zeroshot_data(cifar_subset, txt)
    with pytest.raises(DataError):
        load_zeroshot_data(tmp_path / "nowhere", tsv)


def test_an_unreadable_image_is_left_out(tiny_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    for folder, name, data in cifar_images(2)[:4]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(data)
    (root / "airplane" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    data = load_zeroshot_data(root)
    run = evaluate_zeroshot(open_model(tiny_bundle), data, ["一张{}的照片"], progress=False)
    assert run.counts["images"] == 5 and run.counts["images_used"] == 4
    assert [key for key, _ in run.failed_images] == ["airplane/broken.jpg"]


def test_templates_by_name_or_file(tmp_path: Path) -> None:
    assert load_templates("prompts") == list(PROMPT_TEMPLATES)
    assert load_templates("captions") == list(CAPTION_TEMPLATES)
    path = tmp_path / "t.txt"
    path.write_text("\ufeff一张{}的照片\n\n{}的特写\n", encoding="utf-8")
    assert load_templates(path) == ["一张{}的照片", "{}的特写"]
    path.write_text("没有占位符\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="has no"):
        load_templates(path)
    with pytest.raises(ConfigError, match="neither a file nor a built-in set"):
        load_templates("nonsense")


def test_the_confusion_picture(tmp_path: Path) -> None:
    matrix = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 6]])
    png = render_confusion(
        matrix, ["飞机", "汽车", "鸟"], tmp_path / "c.png", folders=["a", "b", "c"]
    )
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 120 and image.height > 120
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels.min(axis=(0, 1)) < 100).any()  # dark cells were drawn
    big = np.eye(300, dtype=np.int64) * 3 + 1  # ImageNet-sized: no labels, still drawn
    with Image.open(render_confusion(big, [str(i) for i in range(300)], tmp_path / "b.png")) as im:
        assert im.width >= 300


def test_the_evaluation_reproduces_the_trainers_validation(
    tmp_path: Path, cifar_subset: Path, data_dir: Path
) -> None:
    """A short run of a tiny model on CIFAR-10 validates zero-shot on ``cifar_subset`` at the
    end of its stage; evaluating its stage checkpoint must give the very same figures."""
    labels = str(data_dir / "cifar10" / "labels_zh.tsv")
    run_dir = tmp_path / "run"
    tree = {
        "run_dir": str(run_dir),
        "seed": 0,
        "torch_threads": 1,
        "model": {
            "config": {
                "name": "eval-test",
                "embed_dim": 32,
                "vision": {
                    "kind": "vit",
                    "image_size": 32,
                    "width": 64,
                    "layers": 1,
                    "patch_size": 8,
                },
                "text": {"hidden_size": 64, "layers": 1, "heads": 1, "intermediate_size": 128},
            }
        },
        "data": {
            "kind": "imagefolder",
            "path": str(data_dir / "cifar10" / "test.tar.gz"),
            "class_names": labels,
            "workers": 1,
        },
        "stages": [{"name": "only", "lr": 1e-3, "batch_size": 32, "steps": 25, "warmup": 5}],
        "loss": {"multi_positive": True},
        "validation": {
            "task": "zeroshot",
            "batch_size": 32,
            "data": {"kind": "imagefolder", "path": str(cifar_subset), "class_names": labels},
        },
        "log_every": 5,
    }
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "cnclip", "train", "--config", str(config), "-q"],
        check=True,
        timeout=600,
    )
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    recorded = [x for x in map(json.loads, lines) if x["kind"] == "val"][-1]
    report = run_zeroshot(
        [ModelSpec(str(run_dir / "checkpoints" / "only.pt"))],
        cifar_subset,
        out_dir=tmp_path / "eval",
        labels=labels,
        templates=CAPTION_TEMPLATES,  # what the trainer validates with
        options=RunOptions(text_batch=32, image_batch=32, progress=False),
    )
    got = report["models"][0]["metrics"]
    for key in ("top1", "top5", "mean_per_class"):
        assert got[key] == pytest.approx(recorded[key], abs=1e-9), key
    assert (tmp_path / "eval" / "only.pt" / "confusion.png").is_file()
    assert (
        json.loads((tmp_path / "eval" / "zeroshot.json").read_text())["models"][0]["metrics"] == got
    )
