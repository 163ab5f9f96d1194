"""Training-time augmentation on real photos (COCO) and real small images (CIFAR-10)."""

from __future__ import annotations

import dataclasses
import math
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from runtime.errors import ConfigError
from runtime.images import PreprocessConfig, load_image, preprocess, to_rgb
from trainer.data.augment import (
    FILL,
    IMAGENET_POLICY,
    MAX_LEVEL,
    OPERATIONS,
    AugmentConfig,
    CropBox,
    TrainTransform,
    apply_op,
    auto_augment,
    auto_contrast,
    brightness,
    color,
    contrast,
    equalize,
    invert,
    op_parameter,
    posterize,
    random_pad_crop,
    random_resized_crop,
    rotate,
    sample_crop_box,
    sharpness,
    shear_x,
    shear_y,
    solarize,
    translate_x,
    translate_y,
)

PHOTO = "coco-photos/000000005082.jpg"  # 640 x 428


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def pixels(image: Image.Image) -> npt.NDArray[np.uint8]:
    return np.asarray(image)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> Image.Image:
    image = load_image(data_dir / PHOTO)
    assert image.mode == "RGB" and image.size == (640, 428)
    return image


@pytest.fixture(scope="module")
def small_photo(photo: Image.Image) -> Image.Image:
    """128 x 128 RGB: fast enough to run every operation on."""
    return photo.resize((128, 128), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def dull_photo(small_photo: Image.Image) -> Image.Image:
    """The photo with values squeezed into 60..187, so AutoContrast has work to do."""
    return small_photo.point(lambda v: 60 + v // 2)


@pytest.fixture(scope="module")
def cifar(data_dir: Path) -> list[Image.Image]:
    images: list[Image.Image] = []
    with tarfile.open(data_dir / "cifar10" / "test.tar.gz", "r:gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jpg"):
                stream = archive.extractfile(member)
                assert stream is not None
                images.append(load_image(stream.read(), name=member.name))
            if len(images) == 4:
                break
    assert all(image.size == (32, 32) for image in images)
    return images


@pytest.fixture(scope="module")
def odd_modes(small_photo: Image.Image) -> dict[str, Image.Image]:
    """The real photo in other modes: grey, with an alpha gradient, palette, CMYK."""
    rgba = small_photo.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, rgba.width, dtype=np.uint8), (rgba.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    return {
        "L": small_photo.convert("L"),
        "RGBA": rgba,
        "P": small_photo.convert("P"),
        "CMYK": small_photo.convert("CMYK"),
    }


# ---------------------------------------------------------------- the transform

FULL = AugmentConfig(scale=(0.5, 1.0), hflip=0.5, autoaugment=True, pad_crop=8)


def test_output_shape_dtype_and_range(
    photo: Image.Image, cifar: list[Image.Image], odd_modes: dict[str, Image.Image]
) -> None:
    config = PreprocessConfig()
    low = (0 - np.array(config.mean)) / np.array(config.std)
    high = (1 - np.array(config.mean)) / np.array(config.std)
    for augment in (AugmentConfig(), FULL):
        transform = TrainTransform(config, augment)
        for seed, image in enumerate([photo, *cifar, *odd_modes.values()]):
            out = transform(image, rng(seed))
            assert out.shape == (3, 224, 224) and out.dtype == np.float32
            assert out.flags.c_contiguous and np.isfinite(out).all()
            assert (out.min(axis=(1, 2)) >= low - 1e-5).all()
            assert (out.max(axis=(1, 2)) <= high + 1e-5).all()


def test_other_image_size(cifar: list[Image.Image]) -> None:
    out = TrainTransform(PreprocessConfig(image_size=336), FULL)(cifar[0], rng(0))
    assert out.shape == (3, 336, 336)


def test_same_seed_same_output_different_seed_different(photo: Image.Image) -> None:
    transform = TrainTransform(PreprocessConfig(), FULL)
    outputs = [transform(photo, rng(seed)) for seed in range(6)]
    for seed, out in enumerate(outputs):
        np.testing.assert_array_equal(transform(photo, rng(seed)), out)
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not np.array_equal(outputs[i], outputs[j]), (i, j)
    # The generator's state moves on: a second draw from it is another crop.
    generator = rng(0)
    first = transform(photo, generator)
    assert not np.array_equal(transform(photo, generator), first)


def test_identity_config_equals_eval_preprocessing(
    photo: Image.Image, cifar: list[Image.Image], odd_modes: dict[str, Image.Image]
) -> None:
    identity = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    square = photo.crop((100, 0, 528, 428))
    for config in (PreprocessConfig(), PreprocessConfig(image_size=32, background=(0, 0, 0))):
        transform = TrainTransform(config, identity)
        for seed, image in enumerate([square, *cifar, *odd_modes.values()]):
            expected = preprocess(image, config)
            np.testing.assert_array_equal(transform(image, rng(seed)), expected)
    # On a non-square image it is the centre square.
    out = TrainTransform(PreprocessConfig(), identity)(photo, rng(0))
    np.testing.assert_array_equal(out, preprocess(photo.crop((106, 0, 534, 428))))


def test_transform_is_crop_then_flip_then_normalise(photo: Image.Image) -> None:
    config = PreprocessConfig(image_size=96)
    augment = AugmentConfig(scale=(0.3, 0.6), hflip=1.0)
    out = TrainTransform(config, augment)(photo, rng(5))
    crop = random_resized_crop(photo, 96, augment.scale, augment.ratio, rng(5))
    expected = preprocess(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT), config)
    np.testing.assert_array_equal(out, expected)


def test_hflip_probability_one_flips_exactly(photo: Image.Image) -> None:
    config = PreprocessConfig()
    for base in (AugmentConfig(), AugmentConfig(scale=(0.2, 0.5), pad_crop=12)):
        plain = TrainTransform(config, base)
        flipping = TrainTransform(config, dataclasses.replace(base, hflip=1.0))
        for seed in range(3):
            flipped = flipping(photo, rng(seed))
            np.testing.assert_array_equal(flipped, plain(photo, rng(seed))[:, :, ::-1])


def test_hflip_probability_half_flips_some(photo: Image.Image) -> None:
    config = PreprocessConfig(image_size=64)
    identity = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    plain = TrainTransform(config, identity)(photo, rng(0))
    transform = TrainTransform(config, dataclasses.replace(identity, hflip=0.5))
    flips = [not np.array_equal(transform(photo, rng(seed)), plain) for seed in range(40)]
    assert 8 <= sum(flips) <= 32


def test_pad_crop_transform_keeps_output_size(cifar: list[Image.Image]) -> None:
    config = PreprocessConfig(image_size=32)
    transform = TrainTransform(config, AugmentConfig(scale=(1, 1), ratio=(1, 1), pad_crop=4))
    outputs = [transform(cifar[0], rng(seed)) for seed in range(8)]
    assert all(out.shape == (3, 32, 32) for out in outputs)
    assert len({out.tobytes() for out in outputs}) > 1


def test_transform_pickles(photo: Image.Image) -> None:
    transform = TrainTransform(PreprocessConfig(image_size=64), FULL)
    clone = pickle.loads(pickle.dumps(transform))
    assert clone == transform and hash(clone) == hash(transform)
    assert "TrainTransform" in repr(clone)
    np.testing.assert_array_equal(clone(photo, rng(3)), transform(photo, rng(3)))


def test_transform_rejects_wrong_argument_types() -> None:
    with pytest.raises(ConfigError, match="PreprocessConfig"):
        TrainTransform(AugmentConfig(), AugmentConfig())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="AugmentConfig"):
        TrainTransform(PreprocessConfig(), {"hflip": 0.5})  # type: ignore[arg-type]


# ---------------------------------------------------------------- random resized crop


@pytest.mark.parametrize(
    ("size", "scale", "ratio", "fallback"),
    [
        ((640, 428), (0.08, 1.0), (3 / 4, 4 / 3), CropBox(34, 0, 571, 428)),
        ((640, 480), (0.9, 1.0), (3 / 4, 4 / 3), CropBox(0, 0, 640, 480)),
        ((1000, 300), (0.3, 0.5), (0.5, 2.0), CropBox(200, 0, 600, 300)),
        ((300, 1000), (0.2, 0.2), (1.0, 1.0), None),
    ],
)
def test_crop_box_area_and_ratio_in_range(
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    fallback: CropBox | None,
) -> None:
    width, height = size
    fractions, aspects, corners, fallbacks = [], [], set(), 0
    for seed in range(300):
        box = sample_crop_box(width, height, scale, ratio, rng(seed))
        assert isinstance(box, CropBox)
        assert box.left >= 0 and box.top >= 0 and box.width >= 1 and box.height >= 1
        assert box.left + box.width <= width and box.top + box.height <= height
        if box == fallback:  # all 10 attempts missed (area outside scale is allowed)
            fallbacks += 1
            continue
        fractions.append(box.width * box.height / (width * height))
        aspects.append(box.width / box.height)
        corners.add((box.left, box.top))
    assert fallbacks < 150
    # Sides are rounded to whole pixels: allow for half a pixel on each.
    slack = 1.0 / min(width, height) + 1e-9
    assert scale[0] * (1 - 2 * slack) <= min(fractions)
    assert max(fractions) <= scale[1] * (1 + 2 * slack)
    assert ratio[0] * (1 - 2 * slack) <= min(aspects)
    assert max(aspects) <= ratio[1] * (1 + 2 * slack)
    assert len(corners) > 50  # placed at random
    if scale[0] < scale[1]:  # spread over the range, not stuck at one end
        span = scale[1] - scale[0]
        assert min(fractions) < scale[0] + span / 4 and max(fractions) > scale[1] - span / 4


def test_crop_box_is_deterministic() -> None:
    boxes = [sample_crop_box(640, 428, (0.08, 1.0), (0.75, 4 / 3), rng(7)) for _ in range(3)]
    assert boxes[0] == boxes[1] == boxes[2]
    assert boxes[0].as_pil() == (
        boxes[0].left,
        boxes[0].top,
        boxes[0].left + boxes[0].width,
        boxes[0].top + boxes[0].height,
    )


@pytest.mark.parametrize(
    ("size", "scale", "ratio", "expected"),
    [
        # Too wide for a square of 90% of the area: centre square.
        ((1000, 100), (0.9, 1.0), (1.0, 1.0), CropBox(450, 0, 100, 100)),
        # Too tall: the full width, height for the smallest ratio (100 / 0.75 = 133).
        ((100, 1000), (0.9, 1.0), (0.75, 4 / 3), CropBox(0, 433, 100, 133)),
        # Wider than the widest ratio: the full height, width for the largest (428 * 1.2).
        ((640, 428), (1.0, 1.0), (1.0, 1.2), CropBox(63, 0, 514, 428)),
        # The official setting on a 3:2 photo: a 90% box of ratio <= 4/3 is at
        # least 430 px high, so this is always the 4:3 centre crop.
        ((640, 428), (0.9, 1.0), (3 / 4, 4 / 3), CropBox(34, 0, 571, 428)),
        # The image's own ratio is in a very wide range, so a whole-image box
        # is (almost) never sampled: the fallback is the whole image.
        ((640, 428), (1.0, 1.0), (0.015, 150.0), CropBox(0, 0, 640, 428)),
        ((1, 1), (0.08, 1.0), (0.75, 4 / 3), CropBox(0, 0, 1, 1)),
        ((1, 50), (0.5, 1.0), (1.0, 2.0), CropBox(0, 24, 1, 1)),
    ],
)
def test_crop_box_fallback_for_impossible_requests(
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    expected: CropBox,
) -> None:
    for seed in range(5):
        assert sample_crop_box(*size, scale, ratio, rng(seed)) == expected


def test_random_resized_crop_crops_the_box_then_resizes_bicubic(photo: Image.Image) -> None:
    for seed in range(3):
        out = random_resized_crop(photo, 80, (0.1, 0.5), (0.5, 2.0), rng(seed))
        box = sample_crop_box(photo.width, photo.height, (0.1, 0.5), (0.5, 2.0), rng(seed))
        expected = photo.crop(box.as_pil()).resize((80, 80), Image.Resampling.BICUBIC)
        assert out.size == (80, 80) and out.mode == "RGB"
        np.testing.assert_array_equal(pixels(out), pixels(expected))


def test_crop_helpers_reject_bad_arguments(photo: Image.Image) -> None:
    with pytest.raises(ConfigError, match="scale"):
        sample_crop_box(10, 10, (0.5, 0.1), (1.0, 1.0), rng(0))
    with pytest.raises(ConfigError, match="ratio"):
        sample_crop_box(10, 10, (0.5, 1.0), (0.0, 1.0), rng(0))
    with pytest.raises(ValueError, match="no pixels"):
        sample_crop_box(0, 10, (0.5, 1.0), (1.0, 1.0), rng(0))
    with pytest.raises(ConfigError, match="size"):
        random_resized_crop(photo, 0, (0.5, 1.0), (1.0, 1.0), rng(0))
    with pytest.raises(ConfigError, match="pad"):
        random_pad_crop(photo, -1, rng(0))


# ---------------------------------------------------------------- pad and crop


def _windows(image: Image.Image, pad: int) -> list[bytes]:
    """Every crop of the reflect-padded image at the original size."""
    array = pixels(image)
    widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (array.ndim - 2)
    padded = np.pad(array, widths, mode="reflect")
    h, w = array.shape[:2]
    return [
        np.ascontiguousarray(padded[top : top + h, left : left + w]).tobytes()
        for top in range(2 * pad + 1)
        for left in range(2 * pad + 1)
    ]


def test_pad_crop_is_a_window_of_the_reflect_padded_image(cifar: list[Image.Image]) -> None:
    image = cifar[1]
    windows = _windows(image, 4)
    seen = set()
    for seed in range(30):
        out = random_pad_crop(image, 4, rng(seed))
        assert out.size == image.size and out.mode == "RGB"
        assert out.tobytes() in windows
        seen.add(out.tobytes())
    assert len(seen) > 10
    # The top-left window starts 4 px above and left of the image. Reflection
    # does not repeat the edge: row -1 (window row 3) is row 1 (window row 5).
    corner = np.frombuffer(windows[0], dtype=np.uint8).reshape(32, 32, 3)
    np.testing.assert_array_equal(corner[4:, 4:], pixels(image)[:28, :28])
    np.testing.assert_array_equal(corner[3], corner[5])


def test_pad_crop_keeps_size_and_mode(
    cifar: list[Image.Image], odd_modes: dict[str, Image.Image]
) -> None:
    assert random_pad_crop(cifar[0], 0, rng(0)) is cifar[0]
    big = random_pad_crop(cifar[0], 40, rng(0))  # wider than the image itself
    assert big.size == (32, 32)
    assert big.tobytes() in _windows(cifar[0], 40)
    for mode, image in odd_modes.items():
        out = random_pad_crop(image, 6, rng(1))
        assert out.size == image.size
        assert out.mode == (mode if mode in ("L", "RGBA") else "RGB")


# ---------------------------------------------------------------- AutoAugment operations

# Each operation with a strong parameter.
DIRECT: list[tuple[str, Callable[..., Image.Image], tuple[Any, ...]]] = [
    ("ShearX", shear_x, (0.3,)),
    ("ShearY", shear_y, (-0.3,)),
    ("TranslateX", translate_x, (0.4,)),
    ("TranslateY", translate_y, (-0.4,)),
    ("Rotate", rotate, (30.0,)),
    ("AutoContrast", auto_contrast, ()),
    ("Invert", invert, ()),
    ("Equalize", equalize, ()),
    ("Solarize", solarize, (64,)),
    ("Posterize", posterize, (4,)),
    ("Contrast", contrast, (1.9,)),
    ("Color", color, (0.1,)),
    ("Brightness", brightness, (1.9,)),
    ("Sharpness", sharpness, (1.9,)),
]


def test_every_operation_is_tested() -> None:
    assert {name for name, _, _ in DIRECT} == set(OPERATIONS)


@pytest.mark.parametrize(("name", "op", "args"), DIRECT, ids=[d[0] for d in DIRECT])
def test_operation_changes_a_real_photo(
    name: str,
    op: Callable[..., Image.Image],
    args: tuple[Any, ...],
    small_photo: Image.Image,
    dull_photo: Image.Image,
) -> None:
    for image in (small_photo, dull_photo):
        before = pixels(image).copy()
        out = op(image, *args)
        assert out.mode == "RGB" and out.size == image.size
        np.testing.assert_array_equal(pixels(image), before)  # input untouched
        if name == "AutoContrast" and image is small_photo:
            continue  # this photo already spans 0..255 in every channel
        changed = np.abs(pixels(out).astype(int) - before.astype(int))
        assert changed.mean() > 2.0, f"{name} barely changed the photo"


@pytest.mark.parametrize(("name", "op", "args"), DIRECT, ids=[d[0] for d in DIRECT])
def test_operation_accepts_any_mode(
    name: str,
    op: Callable[..., Image.Image],
    args: tuple[Any, ...],
    odd_modes: dict[str, Image.Image],
) -> None:
    for mode, image in odd_modes.items():
        out = op(image, *args)
        assert out.mode == "RGB" and out.size == image.size, (name, mode)
        reference = op(to_rgb(image), *args)
        np.testing.assert_array_equal(pixels(out), pixels(reference))


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_apply_op_at_the_highest_level_changes_the_photo(
    name: str, dull_photo: Image.Image, odd_modes: dict[str, Image.Image]
) -> None:
    for seed in range(2):
        out = apply_op(dull_photo, name, MAX_LEVEL, rng(seed))
        assert out.mode == "RGB" and out.size == dull_photo.size
        assert not np.array_equal(pixels(out), pixels(dull_photo)), name
    for image in odd_modes.values():
        assert apply_op(image, name, MAX_LEVEL, rng(0)).mode == "RGB"


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("ShearX", 0),
        ("ShearY", 0),
        ("TranslateX", 0),
        ("TranslateY", 0),
        ("Rotate", 0),
        ("Solarize", 0),
        ("Posterize", 0),
        ("Contrast", 5),
        ("Color", 5),
        ("Brightness", 5),
        ("Sharpness", 5),
    ],
)
def test_apply_op_neutral_level_leaves_the_photo_unchanged(
    name: str, level: int, small_photo: Image.Image
) -> None:
    out = apply_op(small_photo, name, level, rng(0))
    np.testing.assert_array_equal(pixels(out), pixels(small_photo))


def test_op_parameters_follow_the_paper_ranges() -> None:
    assert op_parameter("ShearX", 10) == pytest.approx(0.3)
    assert op_parameter("ShearY", 5) == pytest.approx(0.15)
    assert op_parameter("TranslateX", 10) == pytest.approx(150 / 331)
    assert op_parameter("Rotate", 10) == pytest.approx(30.0)
    assert op_parameter("Rotate", 3) == pytest.approx(9.0)
    assert [op_parameter("Solarize", level) for level in (0, 5, 10)] == [256, 128, 0]
    assert [op_parameter("Posterize", level) for level in (0, 5, 10)] == [8, 6, 4]
    for name in ("Contrast", "Color", "Brightness", "Sharpness"):
        assert op_parameter(name, 0) == pytest.approx(0.1)
        assert op_parameter(name, 10) == pytest.approx(1.9)
    with pytest.raises(ValueError, match="level"):
        op_parameter("Rotate", 11)
    with pytest.raises(KeyError):
        op_parameter("Cutout", 5)


def test_signed_operations_take_both_signs(small_photo: Image.Image) -> None:
    results = {apply_op(small_photo, "Rotate", 10, rng(seed)).tobytes() for seed in range(12)}
    assert results == {rotate(small_photo, 30).tobytes(), rotate(small_photo, -30).tobytes()}


def test_geometric_operations_fill_with_grey_and_move_the_right_way(
    small_photo: Image.Image,
) -> None:
    source = pixels(small_photo)
    moved = pixels(translate_x(small_photo, 0.25))  # 32 px to the right
    assert (moved[:, :32] == FILL).all()
    np.testing.assert_array_equal(moved[:, 32:], source[:, :96])
    moved = pixels(translate_y(small_photo, -0.25))  # 32 px up
    assert (moved[96:] == FILL).all()
    np.testing.assert_array_equal(moved[:96], source[32:])
    turned = pixels(rotate(small_photo, 30))
    assert (turned[0, 0] == FILL).all() and (turned[-1, -1] == FILL).all()
    # Shears keep the middle row (column) in place; 127 px has a middle one.
    # (Pillow's bilinear sampling rounds in fixed point: off by one at most.)
    odd = small_photo.crop((0, 0, 127, 127))
    sheared = pixels(shear_x(odd, 0.3))
    np.testing.assert_allclose(sheared[63], pixels(odd)[63], atol=1)
    # A positive factor takes row y from x + 0.3 * (y - 63): the top row moves
    # right (grey at its left end), the bottom row left.
    assert (sheared[0, 0] == FILL).all() and (sheared[-1, -1] == FILL).all()
    assert not (sheared[0, -1] == FILL).all()
    sheared = pixels(shear_y(odd, 0.3))
    np.testing.assert_allclose(sheared[:, 63], pixels(odd)[:, 63], atol=1)
    assert (sheared[0, 0] == FILL).all() and (sheared[-1, -1] == FILL).all()


def test_pixel_operations_do_what_they_say(small_photo: Image.Image) -> None:
    source = pixels(small_photo).astype(int)
    np.testing.assert_array_equal(pixels(invert(small_photo)), 255 - source)
    np.testing.assert_array_equal(pixels(posterize(small_photo, 4)), source & 0xF0)
    solarized = pixels(solarize(small_photo, 128)).astype(int)
    np.testing.assert_array_equal(solarized, np.where(source >= 128, 255 - source, source))
    np.testing.assert_array_equal(pixels(solarize(small_photo, 256)), source)
    np.testing.assert_array_equal(pixels(solarize(small_photo, 0)), 255 - source)
    grey = pixels(color(small_photo, 0.0)).astype(int)
    assert np.abs(grey - grey[:, :, :1]).max() <= 1
    stretched = pixels(auto_contrast(small_photo.point(lambda v: 60 + v // 2)))
    assert (stretched.min(axis=(0, 1)) == 0).all() and (stretched.max(axis=(0, 1)) == 255).all()


# ---------------------------------------------------------------- AutoAugment policy


def test_imagenet_policy_table() -> None:
    assert len(IMAGENET_POLICY) == 25
    used = set()
    for sub_policy in IMAGENET_POLICY:
        assert len(sub_policy) == 2
        for op in sub_policy:
            assert op.name in OPERATIONS
            assert 0.0 <= op.probability <= 1.0
            assert isinstance(op.level, int) and 0 <= op.level <= MAX_LEVEL
            used.add(op.name)
    assert used == {
        "Posterize",
        "Rotate",
        "Solarize",
        "AutoContrast",
        "Equalize",
        "Color",
        "Invert",
        "Contrast",
        "Sharpness",
        "ShearX",
    }
    assert IMAGENET_POLICY[0][0] == ("Posterize", 0.4, 8)
    assert IMAGENET_POLICY[0][1] == ("Rotate", 0.6, 9)


def test_auto_augment_is_deterministic_and_varied(
    small_photo: Image.Image, odd_modes: dict[str, Image.Image]
) -> None:
    outputs = []
    for seed in range(40):
        out = auto_augment(small_photo, rng(seed))
        assert out.mode == "RGB" and out.size == small_photo.size
        assert auto_augment(small_photo, rng(seed)).tobytes() == out.tobytes()
        outputs.append(out.tobytes())
    unchanged = sum(out == small_photo.tobytes() for out in outputs)
    assert 0 < unchanged < 20  # sometimes neither operation fires
    assert len(set(outputs)) > 15
    for image in odd_modes.values():
        assert auto_augment(image, rng(1)).mode == "RGB"


def test_auto_augment_changes_many_images_across_a_batch(cifar: list[Image.Image]) -> None:
    changed = 0
    for seed in range(20):
        image = cifar[seed % len(cifar)]
        changed += auto_augment(image, rng(seed)).tobytes() != image.tobytes()
    assert changed >= 10


# ---------------------------------------------------------------- configuration


def test_config_defaults_and_normalisation() -> None:
    config = AugmentConfig()
    assert config.scale == (0.9, 1.0) and config.ratio == (3 / 4, 4 / 3)
    assert config.hflip == 0.0 and config.autoaugment is False and config.pad_crop == 0
    listed = AugmentConfig(scale=[0.5, 1], ratio=[1, 2], hflip=1)  # type: ignore[arg-type]
    assert listed.scale == (0.5, 1.0) and listed.ratio == (1.0, 2.0)
    assert isinstance(listed.hflip, float)
    assert AugmentConfig(scale=(1, 1), ratio=(1, 1)).scale == (1.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (-0.1, 0.5)}, "scale"),
        ({"scale": (0.6, 0.5)}, "scale"),
        ({"scale": (0.5, 1.1)}, "scale"),
        ({"scale": (0.5,)}, "scale"),
        ({"scale": (0.5, 0.6, 0.7)}, "scale"),
        ({"scale": ("a", "b")}, "scale"),
        ({"scale": (math.nan, 1.0)}, "scale"),
        ({"scale": 0.5}, "scale"),
        ({"ratio": (0.0, 1.0)}, "ratio"),
        ({"ratio": (-1.0, 1.0)}, "ratio"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"ratio": (1.0, math.inf)}, "ratio"),
        ({"hflip": -0.1}, "hflip"),
        ({"hflip": 1.5}, "hflip"),
        ({"hflip": True}, "hflip"),
        ({"hflip": "0.5"}, "hflip"),
        ({"autoaugment": "yes"}, "autoaugment"),
        ({"autoaugment": 1}, "autoaugment"),
        ({"pad_crop": -1}, "pad_crop"),
        ({"pad_crop": 1.5}, "pad_crop"),
        ({"pad_crop": True}, "pad_crop"),
    ],
)
def test_bad_config_raises(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AugmentConfig(**kwargs)


def test_from_dict_round_trip_and_unknown_keys() -> None:
    config = AugmentConfig(scale=(0.5, 0.8), ratio=(0.9, 1.1), hflip=0.25, pad_crop=4)
    assert AugmentConfig.from_dict(config.to_dict()) == config
    assert AugmentConfig.from_dict({}) == AugmentConfig()
    assert AugmentConfig.from_dict({"autoaugment": True, "scale": [0.9, 1.0]}).autoaugment
    with pytest.raises(ConfigError) as info:
        AugmentConfig.from_dict({"hflip": 0.5, "auto_augment": True, "flip": 1})
    message = str(info.value)
    assert "auto_augment" in message and "flip" in message
    for valid in ("scale", "ratio", "hflip", "autoaugment", "pad_crop"):
        assert valid in message
    with pytest.raises(ConfigError, match="mapping"):
        AugmentConfig.from_dict([("hflip", 0.5)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hflip"):
        AugmentConfig.from_dict({"hflip": 2})
