"""Model and bundle identities of exported bundles: what is the same model, what is the same
bundle, and that bundles written before model ids still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.bundle import export_bundle
from model.identity import model_id
from model.modeling import build_model
from runtime.bundle import load_bundle
from runtime.bundle_manifest import BundleManifest, bundle_ref
from runtime.identity import ModelMismatchError, check_serves
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("identity")
    torch.manual_seed(0)
    model = build_model(tiny_config("vit")).eval()
    torch.manual_seed(1)
    other = build_model(tiny_config("vit")).eval()
    paths = {
        "fp32": work / "fp32",
        "again": work / "fp32-again",
        "int8": work / "int8",
        "fp16": work / "fp16",
        "other": work / "other",
    }
    export_bundle(model, paths["fp32"])
    export_bundle(model, paths["again"])  # a re-export of the same weights
    export_bundle(model, paths["int8"], precision="int8")
    export_bundle(model, paths["fp16"], precision="fp16")
    export_bundle(other, paths["other"])
    return paths


def test_every_precision_of_one_checkpoint_is_one_model(exported: dict[str, Path]) -> None:
    manifests = {name: BundleManifest.read(path) for name, path in exported.items()}
    ids = {name: m.model_id for name, m in manifests.items()}
    assert ids["fp32"] is not None and len(ids["fp32"]) == 64
    assert ids["fp32"] == ids["again"] == ids["int8"] == ids["fp16"] != ids["other"]
    bundles = {name: m.bundle_id for name, m in manifests.items()}
    assert len({bundles["fp32"], bundles["int8"], bundles["fp16"], bundles["other"]}) == 4


def test_a_re_export_is_the_same_bundle(exported: dict[str, Path]) -> None:
    first, again = BundleManifest.read(exported["fp32"]), BundleManifest.read(exported["again"])
    assert first.bundle_id == again.bundle_id
    # What differs between the two files is what the bundle id leaves out.
    a = json.loads((exported["fp32"] / "manifest.json").read_text("utf-8"))
    b = json.loads((exported["again"] / "manifest.json").read_text("utf-8"))
    assert {k for k in a if a[k] != b[k]} <= {"created", "parity"}
    assert load_bundle(exported["fp32"]).bundle_id == first.bundle_id


def test_the_model_id_is_the_weights_and_the_architecture() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config("vit")).eval()
    image = {"size": 32, "resize": "bicubic-squash", "mean": [0.5] * 3, "std": [0.5] * 3}
    base = model_id(model, vocab_sha256="v", image=image)
    assert model_id(model, vocab_sha256="v", image=image) == base
    assert model_id(model, vocab_sha256="w", image=image) != base
    with torch.no_grad():
        model.logit_scale.add_(1e-3)
    assert model_id(model, vocab_sha256="v", image=image) != base


def test_bundles_of_one_model_serve_each_other_and_others_are_refused(
    exported: dict[str, Path],
) -> None:
    fp32, int8, other = (bundle_ref(exported[n]) for n in ("fp32", "int8", "other"))
    note = check_serves(fp32, int8, "idx")
    assert note is not None and "fp32 bundle" in note and "int8 bundle" in note
    with pytest.raises(ModelMismatchError, match="vectors of different models"):
        check_serves(fp32, other, "idx")


def test_a_format_one_bundle_still_loads(exported: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(exported["fp32"], old)
    manifest = json.loads((old / "manifest.json").read_text("utf-8"))
    del manifest["model_id"]
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    bundle = load_bundle(old)
    assert bundle.identity.model_id is None and bundle.identity.bundle_sha256 is not None
    assert bundle.encode_texts(["红色的杯子"]).shape == (1, 32)
