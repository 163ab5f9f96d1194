"""Checkpoint formats on tiny models: official, Hugging Face and ours load the same weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from model.checkpoints import infer_config, load_checkpoint, save_checkpoint
from model.configs import get_config
from model.hf import hf_to_official
from model.modeling import ChineseCLIP, build_model
from runtime.errors import CheckpointError, ConfigError
from tests.conftest import official_kwargs, tiny_config
from tests.hf_reference import save_as_hf
from tests.official import official_clip

IDS = torch.tensor([[101, 2769, 4263, 1266, 776, 102], [101, 3173, 1921, 102, 0, 0]])


def _model(family: str) -> ChineseCLIP:
    torch.manual_seed(0)
    return build_model(tiny_config(family)).eval()


def _embed(model: ChineseCLIP) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.config.vision.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(IDS)


def _save_official(model: ChineseCLIP, path: Path, *, half: bool = False) -> Path:
    """As the official trainer writes them: DDP ``module.`` keys and a BERT pooler."""
    state = {
        f"module.{k}": (v.half() if half and v.is_floating_point() else v)
        for k, v in model.state_dict().items()
    }
    hidden = model.config.text.hidden_size
    state["module.bert.pooler.dense.weight"] = torch.zeros(hidden, hidden)
    state["module.bert.pooler.dense.bias"] = torch.zeros(hidden)
    torch.save({"epoch": 7, "step": 700, "name": "muge_finetune", "state_dict": state}, path)
    return path


def test_official_format_loads_with_inferred_architecture(family: str, tmp_path: Path) -> None:
    model = _model(family)
    loaded = load_checkpoint(_save_official(model, tmp_path / "clip_cn_tiny.pt"))
    assert loaded.format == "official"
    assert loaded.metadata == {"epoch": 7, "step": 700, "name": "muge_finetune"}
    assert loaded.config.same_architecture(model.config)
    for a, b in zip(_embed(model), _embed(loaded.model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fp16_official_weights_load_as_float32(tmp_path: Path) -> None:
    model = _model("vit")
    loaded = load_checkpoint(_save_official(model, tmp_path / "half.pt", half=True))
    assert loaded.model.text_projection.dtype == torch.float32
    for a, b in zip(_embed(model), _embed(loaded.model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)


def test_our_format_round_trip_carries_its_config(family: str, tmp_path: Path) -> None:
    model = _model(family)
    path = save_checkpoint(model, tmp_path / "ours.pt", epoch=2, step=20)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "cnclip-checkpoint" and raw["model_config"]["name"] == f"tiny-{family}"
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    loaded = load_checkpoint(path)
    assert loaded.format == "cnclip" and loaded.config == model.config
    assert loaded.metadata["epoch"] == 2 and loaded.metadata["step"] == 20
    for a, b in zip(_embed(model), _embed(loaded.model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_our_checkpoint_loads_strictly_into_the_official_code(family: str, tmp_path: Path) -> None:
    official_clip()
    from cn_clip.clip.model import CLIP

    model = _model(family)
    path = save_checkpoint(model, tmp_path / "ours.pt")
    official = CLIP(**official_kwargs(family)).eval()
    # What cn_clip.clip.utils.create_model does with a checkpoint.
    official.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    size = model.config.vision.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(official.encode_image(images), dim=-1)
        torch.testing.assert_close(model.encode_image(images), expected, rtol=0, atol=1e-6)


def test_three_formats_of_the_same_weights_embed_identically(tmp_path: Path) -> None:
    model = _model("vit")
    official = load_checkpoint(_save_official(model, tmp_path / "official.pt"))
    ours = load_checkpoint(save_checkpoint(model, tmp_path / "ours.pt"))
    hf = load_checkpoint(save_as_hf(model, tmp_path / "hf"))
    assert hf.format == "huggingface" and (tmp_path / "hf" / "model.safetensors").is_file()
    reference = _embed(official.model)
    for other in (ours, hf):
        for a, b in zip(reference, _embed(other.model), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_hf_pytorch_model_bin_is_read_too(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = _model("vit")
    directory = save_as_hf(model, tmp_path / "hf")
    weights = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(weights, directory / "pytorch_model.bin")
    for a, b in zip(_embed(model), _embed(load_checkpoint(directory).model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_hf_mapping_packs_qkv() -> None:
    model = _model("vit")
    sd = model.state_dict()
    hf = {
        "vision_model.encoder.layers.0.self_attn.q_proj.weight": sd[
            "visual.transformer.resblocks.0.attn.in_proj_weight"
        ][:128],
        "vision_model.encoder.layers.0.self_attn.k_proj.weight": sd[
            "visual.transformer.resblocks.0.attn.in_proj_weight"
        ][128:256],
        "vision_model.encoder.layers.0.self_attn.v_proj.weight": sd[
            "visual.transformer.resblocks.0.attn.in_proj_weight"
        ][256:],
        "text_model.pooler.dense.weight": torch.zeros(1),
        "text_model.embeddings.position_ids": torch.zeros(1),
    }
    out = hf_to_official(hf)
    assert list(out) == ["visual.transformer.resblocks.0.attn.in_proj_weight"]
    torch.testing.assert_close(
        out["visual.transformer.resblocks.0.attn.in_proj_weight"],
        sd["visual.transformer.resblocks.0.attn.in_proj_weight"],
    )


# ------------------------------------------------------------------ --arch


@pytest.mark.parametrize("name", ["RN50", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14"])
def test_architecture_is_inferred_from_shapes(name: str) -> None:
    with torch.device("meta"):
        state = ChineseCLIP(get_config(name)).state_dict()
    assert infer_config(state) == get_config(name)


def test_arch_that_agrees_is_accepted_and_one_that_does_not_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with torch.device("meta"):
        state = ChineseCLIP(get_config("RN50")).state_dict()
    real = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}
    path = tmp_path / "clip_cn_rn50.pt"
    torch.save({"epoch": 1, "step": 1, "name": "x", "state_dict": real}, path)
    assert load_checkpoint(path, "RN50").config.name == "RN50"
    with pytest.raises(CheckpointError, match=r"clip_cn_rn50.pt: holds RN50 weights, not ViT-B-16"):
        load_checkpoint(path, "ViT-B-16")
    with pytest.raises(ConfigError, match="unknown architecture"):
        load_checkpoint(path, "ViT-Z-99")
    ours = save_checkpoint(_model("vit"), tmp_path / "ours.pt")
    with pytest.raises(CheckpointError, match="holds a custom architecture, not RN50"):
        load_checkpoint(ours, "RN50")


# ------------------------------------------------------------------ bad files


def test_missing_weights_are_named(tmp_path: Path) -> None:
    state = _model("resnet").state_dict()
    del state["visual.layer4.0.conv1.weight"]
    torch.save({"state_dict": state}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"m.pt: missing 1 weight .*layer4.0.conv1.weight"):
        load_checkpoint(tmp_path / "m.pt")


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    state = _model("vit").state_dict()
    state["visual.ln_post.weight"] = torch.ones(129)
    torch.save({"state_dict": state}, tmp_path / "s.pt")
    with pytest.raises(
        CheckpointError, match=r"visual.ln_post.weight is \[129\] in the file, .* expects \[128\]"
    ):
        load_checkpoint(tmp_path / "s.pt")


def test_integer_weights_where_floats_belong(tmp_path: Path) -> None:
    state = _model("vit").state_dict()
    state["visual.proj"] = torch.zeros(state["visual.proj"].shape, dtype=torch.int64)
    torch.save({"state_dict": state}, tmp_path / "i.pt")
    with pytest.raises(
        CheckpointError, match=r"visual.proj holds int64 values, .* expects float32"
    ):
        load_checkpoint(tmp_path / "i.pt")


def test_unexpected_weights_are_named(tmp_path: Path) -> None:
    state = _model("vit").state_dict()
    state["visual.extra_head.weight"] = torch.ones(3)
    torch.save({"state_dict": state}, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match="1 unexpected weight .*visual.extra_head.weight"):
        load_checkpoint(tmp_path / "u.pt")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"hello world", "not a file written by torch.save"),
    ],
)
def test_garbage_files_give_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    good = save_checkpoint(_model("vit"), tmp_path / "good.pt")
    bad = tmp_path / "cut.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(bad)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    state = _model("vit").state_dict()
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1)}, tmp_path / "ns.pt")
    with pytest.raises(CheckpointError, match="argparse.Namespace.*refusing to unpickle"):
        load_checkpoint(tmp_path / "ns.pt")


def test_not_a_clip_checkpoint(tmp_path: Path) -> None:
    torch.save({"state_dict": {"fc.weight": torch.ones(2, 2)}}, tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match="not a Chinese CLIP checkpoint"):
        load_checkpoint(tmp_path / "r.pt")
    torch.save([1, 2, 3], tmp_path / "l.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "l.pt")


def test_paths_that_are_not_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="without config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model bundle"):
        load_checkpoint(tmp_path)


def test_hf_directory_problems(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not a Chinese CLIP .*config"):
        load_checkpoint(tmp_path)
    directory = save_as_hf(_model("vit"), tmp_path / "hf")
    (directory / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        load_checkpoint(directory)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(_model("vit"), tmp_path / "ours.pt", extra={"format_version": 99})
    with pytest.raises(CheckpointError, match="version 99 is newer"):
        load_checkpoint(path)


def test_a_failed_save_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model("vit")
    path = save_checkpoint(model, tmp_path / "ours.pt", step=1)
    before = path.read_bytes()

    def exploding_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ours.pt"]
