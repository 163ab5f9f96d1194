"""The one check of a bundle against an index, and the manifest helpers it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.errors import CnClipError
from runtime.identity import ModelMismatchError, ModelRef, check_serves, same_bundle
from runtime.manifests import content_sha256, read_json, write_json

FP32 = ModelRef(
    model_id="a" * 64,
    bundle_id="1" * 64,
    bundle_sha256="f" * 64,
    precision="fp32",
    parity={"text_min_cosine": 0.99999, "image_min_cosine": 0.99998},
)
INT8 = ModelRef(
    model_id="a" * 64,
    bundle_id="2" * 64,
    bundle_sha256="e" * 64,
    precision="int8",
    parity={"text_min_cosine": 0.9991, "image_min_cosine": 0.9987},
)


def test_the_same_bundle_serves_silently() -> None:
    assert check_serves(FP32, FP32, "idx") is None


def test_another_precision_of_the_same_model_serves_with_both_parities_named() -> None:
    note = check_serves(FP32, INT8, "idx")
    assert note is not None and note.startswith("idx: built with model aaaaaaaaaaaa")
    assert "fp32 bundle 111111111111" in note and "int8 bundle 222222222222" in note
    assert "text_min_cosine 0.99999" in note and "image_min_cosine 0.99870" in note


def test_another_model_is_refused_with_one_line_saying_what_to_do() -> None:
    other = ModelRef(model_id="b" * 64, bundle_id="3" * 64, precision="fp32")
    with pytest.raises(ModelMismatchError) as info:
        check_serves(FP32, other, "idx")
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, CnClipError)
    assert "built with model aaaaaaaaaaaa" in message and "model bbbbbbbbbbbb" in message
    assert "rebuild the index with this one (cnclip index build --bundle)" in message


def test_format_one_artifacts_are_compared_by_the_manifest_file() -> None:
    legacy_index = ModelRef(bundle_sha256="f" * 64)
    assert check_serves(legacy_index, FP32, "idx") is None  # the bundle that built it
    with pytest.raises(ModelMismatchError, match="predates model ids"):
        check_serves(legacy_index, INT8, "idx")
    legacy_bundle = ModelRef(bundle_sha256="f" * 64, precision="fp32")
    assert check_serves(FP32, legacy_bundle, "idx") is None
    assert same_bundle(FP32, legacy_bundle) and not same_bundle(FP32, INT8)


def test_an_index_recording_no_model_is_served_with_a_note() -> None:
    note = check_serves(ModelRef(), INT8, "idx")
    assert note is not None and "records no model" in note


def test_model_refs_round_trip_through_json() -> None:
    for ref in (FP32, ModelRef(), ModelRef(bundle_sha256="f" * 64)):
        assert ModelRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    assert ModelRef.from_dict(None) == ModelRef()


def test_content_sha256_ignores_key_order_and_the_excluded_keys() -> None:
    a = {"x": 1, "created": "today", "nested": {"parity": {"c": 0.9}, "y": [1, 2]}}
    b = {"nested": {"y": [1, 2], "parity": {"c": 0.1}}, "x": 1, "created": "tomorrow"}
    assert content_sha256(a, exclude=("created", "parity")) == content_sha256(
        b, exclude=("created", "parity")
    )
    assert content_sha256(a) != content_sha256(b)
    assert content_sha256({"x": 2}) != content_sha256({"x": 1})


def test_manifest_files_are_checked_in_one_place(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"

    def read(**options: object) -> dict[str, object]:
        return read_json(
            path,
            format="cnclip-thing",
            version=2,
            error=CnClipError,
            what="thing",
            fix="write it again",
            **options,  # type: ignore[arg-type]
        )

    with pytest.raises(CnClipError, match="no manifest.json; not a thing"):
        read()
    write_json(path, {"format": "cnclip-thing", "format_version": 2, "n": 1})
    assert read()["n"] == 1 and not list(tmp_path.glob(".*.tmp"))
    write_json(path, {"format": "cnclip-thing", "format_version": 3})
    with pytest.raises(CnClipError, match="format version 3 is newer .* upgrade cnclip"):
        read()
    write_json(path, {"format": "cnclip-other", "format_version": 1})
    with pytest.raises(CnClipError, match="not a cnclip-thing manifest"):
        read()
    path.write_text("{half", encoding="utf-8")
    with pytest.raises(CnClipError, match="unreadable .* write it again"):
        read()
