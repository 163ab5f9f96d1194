"""The model class on tiny configs of each family, and its parity with the official code."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model.modeling import ChineseCLIP, build_model
from tests.conftest import official_kwargs, tiny_config
from tests.official import official_clip

IDS = torch.tensor(
    [
        [101, 2769, 4263, 1266, 776, 102, 0, 0],
        [101, 3173, 1921, 102, 0, 0, 0, 0],
        [101, 102, 0, 0, 0, 0, 0, 0],
    ]
)


def _model(family: str, seed: int = 0) -> ChineseCLIP:
    torch.manual_seed(seed)
    return build_model(tiny_config(family)).eval()


def _images(family: str, n: int = 3, seed: int = 1) -> torch.Tensor:
    size = tiny_config(family).vision.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_features_are_normalized_with_the_right_shape(family: str) -> None:
    model = _model(family)
    with torch.no_grad():
        img = model.encode_image(_images(family))
        txt = model.encode_text(IDS)
        raw = model.encode_image(_images(family), normalize=False)
    assert img.shape == (3, 32) and txt.shape == (3, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    assert model.logit_scale.item() == pytest.approx(2.6593, abs=1e-3)  # ln(1 / 0.07)


def test_padding_length_does_not_change_text_features(family: str) -> None:
    model = _model(family)
    padded = torch.cat([IDS, torch.zeros(3, 44, dtype=torch.long)], dim=1)  # to 52
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(IDS), model.encode_text(padded))


def test_attention_goes_through_sdpa(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = F.scaled_dot_product_attention

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = _model(family)
    with torch.no_grad():
        model.encode_text(IDS)
        assert calls == 2  # two BERT layers
        model.encode_image(_images(family))
    assert calls == (4 if family == "vit" else 3)  # two ViT blocks, or the attention pool


def _step(model: ChineseCLIP, family: str) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(123)  # the same dropout masks in both runs
    img, txt, scale = model(_images(family), IDS)
    loss = (scale * img @ txt.T).logsumexp(dim=1).mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tower", ["image", "text"])
def test_gradient_checkpointing_per_tower_keeps_gradients(
    family: str, tower: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _model(family)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(**{tower: True})
    import torch.utils.checkpoint as tuc

    used: list[str] = []
    real = tuc.checkpoint

    def spy(fn: object, *args: object, **kwargs: object) -> object:
        used.append(type(fn).__name__)
        return real(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("model.modeling_vision.checkpoint", spy)
    monkeypatch.setattr("model.modeling_text.checkpoint", spy)
    expected = _step(plain, family)
    got = _step(ckpt, family)
    assert used, "checkpointing was switched on but not used"
    assert all(name == ("BertLayer" if tower == "text" else used[0]) for name in used)
    if tower == "image":
        assert used[0] in ("ResidualAttentionBlock", "Bottleneck")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
    # BatchNorm statistics are updated once per step, not again during recomputation.
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_checkpointing_is_off_in_eval_and_no_grad(family: str) -> None:
    model = _model(family)
    model.set_grad_checkpointing(image=True, text=True)
    with torch.no_grad():
        out = model.encode_image(_images(family))
    assert out.shape == (3, 32)


def test_same_numbers_as_the_official_model(family: str) -> None:
    """Tiny shapes, official CLIP with seeded weights, loaded into ours by key."""
    official_clip()  # installs the torchvision stub, then imports cn_clip
    from cn_clip.clip.model import CLIP

    torch.manual_seed(0)
    official = CLIP(**official_kwargs(family)).eval()
    with torch.no_grad():
        for name, param in official.named_parameters():
            if "bn" in name or "downsample.1" in name:
                param.add_(torch.rand_like(param) * 0.5)  # undo bn3's zero init
    ours = ChineseCLIP(tiny_config(family)).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    images = _images(family)
    with torch.no_grad():
        expected_img = F.normalize(official.encode_image(images), dim=-1)
        expected_txt = F.normalize(official.encode_text(IDS), dim=-1)
        torch.testing.assert_close(ours.encode_image(images), expected_img, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.encode_text(IDS), expected_txt, rtol=0, atol=1e-6)


def test_patch_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config("vit"))
    model.visual.patch_dropout = 0.5
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model.encode_image(images), model.encode_image(images)
    assert torch.equal(a, b)  # eval: every patch, deterministic
    seen: list[int] = []
    block = model.visual.transformer.resblocks[0]
    handle = block.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    model.train()
    model.encode_image(images)
    handle.remove()
    assert seen == [1 + 16 // 2]  # the class token plus half of the 4x4 patches
