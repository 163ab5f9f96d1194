"""Training-time image augmentation with Pillow and numpy only (no torchvision).

:class:`TrainTransform` turns a decoded image into the same kind of model
input as :func:`runtime.images.preprocess` (float32 ``[3, N, N]``, normalised
with the same bit-exact table), after these random steps, in this order:

1. RGB conversion (:func:`runtime.images.to_rgb`: transparency on the
   configured background, white by default, exactly as at eval time);
2. optional reflect-pad-and-crop (:func:`random_pad_crop`), the classic
   small-image augmentation: pad every side by ``pad_crop`` pixels by
   reflection, crop back to the original size at a random offset;
3. random resized crop (:func:`random_resized_crop`): a box covering a random
   fraction of the area in ``scale`` with a log-uniform aspect ratio in
   ``ratio``, resized to N x N with Pillow's bicubic filter;
4. optional horizontal flip with probability ``hflip``;
5. optional AutoAugment (:func:`auto_augment`), the ImageNet policy of Cubuk
   et al. (2019), on the N x N image;
6. normalisation by :func:`runtime.images.preprocess` (the image is already
   N x N, so its resize is a copy).

The official Chinese-CLIP training (``use_augment``) builds timm's training transform:
a random resized crop with scale (0.9, 1.0), the default ratio (3/4, 4/3) and bicubic
interpolation, a horizontal flip with p = 0.5, then timm's "original" AutoAugment policy.
``AugmentConfig(scale=(0.9, 1.0), hflip=0.5, autoaugment=True)`` (the MUGE finetuning
recipe) takes the same steps with the same crop and flip, but it is **not** the same
transform; the differences, all in AutoAugment:

- uncovered pixels of shear, translate and rotate are grey (128, 128, 128) here, the
  mean pixel of the normalisation (122, 117, 104) in timm;
- those operations resample bilinearly here, bicubically in timm;
- solarize and posterize follow the paper here (level 0 leaves the image unchanged,
  level 10 is strongest: threshold 256..0, 8..4 bits); timm's "original" levels run the
  other way (threshold 0..256, 4..8 bits), as the TensorFlow code it copies does;
- translate moves by up to 150/331 of the side (101 px at 224) here, 0.45 of the
  shorter side (100 px) in timm;
- RGB conversion comes first here, after the crop and flip in the official code (the
  same pixels for RGB inputs).

Every random number comes from the ``numpy.random.Generator`` passed in, so the
same generator state gives the same output, which exact resumption of training
relies on. Nothing here keeps global state; the transform pickles, so it can be
sent to DataLoader workers.

AutoAugment magnitudes are levels 0..10 mapped linearly onto the ranges of the
paper (Cubuk et al. 2019, the table of operations): shear 0..0.3, translate
0..150/331 of the image side (the paper's 150 px on its 331 px images), rotate
0..30 degrees (these three with a random sign), solarize threshold 256..0,
posterize 8..4 bits (level 0 leaves the image unchanged and level 10 is the
strongest for both), and contrast, color, brightness and sharpness factors
0.1..1.9 (1.0, no change, at level 5). Geometric operations fill uncovered
pixels with grey (128, 128, 128).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageEnhance, ImageOps

from runtime.errors import ConfigError, InvalidImageError
from runtime.images import PreprocessConfig, preprocess, to_rgb

__all__ = [
    "FILL",
    "IMAGENET_POLICY",
    "MAX_LEVEL",
    "OPERATIONS",
    "AugmentConfig",
    "CropBox",
    "Operation",
    "PolicyOp",
    "TrainTransform",
    "apply_op",
    "auto_augment",
    "auto_contrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "invert",
    "op_parameter",
    "posterize",
    "random_pad_crop",
    "random_resized_crop",
    "rotate",
    "sample_crop_box",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
]

FILL: Final[tuple[int, int, int]] = (128, 128, 128)
"""Colour of the pixels that shear, translate and rotate uncover."""

MAX_LEVEL: Final[int] = 10
"""AutoAugment magnitudes are levels 0..MAX_LEVEL."""

_CROP_ATTEMPTS: Final[int] = 10
_GEOMETRIC_FILTER: Final = Image.Resampling.BILINEAR


# --------------------------------------------------------------------------- configuration


def _number_pair(what: str, value: Any) -> tuple[float, float]:
    try:
        items = tuple(float(v) for v in value if not isinstance(v, bool))
    except (TypeError, ValueError):
        items = ()
    if len(items) != 2 or not all(math.isfinite(v) for v in items):
        raise ConfigError(f"{what} must be two finite numbers (min, max), got {value!r}")
    return (items[0], items[1])


def _check_scale(value: Any) -> tuple[float, float]:
    low, high = _number_pair("scale", value)
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(
            f"scale must satisfy 0 < min <= max <= 1 (fractions of the image area), got {value!r}"
        )
    return (low, high)


def _check_ratio(value: Any) -> tuple[float, float]:
    low, high = _number_pair("ratio", value)
    if not 0.0 < low <= high:
        raise ConfigError(
            f"ratio must satisfy 0 < min <= max (width / height of the crop), got {value!r}"
        )
    return (low, high)


def _check_probability(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AugmentConfig:
    """Which random augmentations :class:`TrainTransform` applies.

    Attributes:
        scale: (min, max) fraction of the image area the random crop covers,
            0 < min <= max <= 1. With (1, 1) the crop is the whole image when
            ``ratio`` contains the image's aspect ratio (now and then a pixel
            narrower, from rounding the sampled ratio), else a centre crop to
            the nearest ratio in the range.
        ratio: (min, max) aspect ratio (width / height) of the crop, sampled
            log-uniformly; 0 < min <= max.
        hflip: probability of a horizontal flip. Off by default because
            captions may say left or right.
        autoaugment: apply the ImageNet AutoAugment policy.
        pad_crop: reflect-pad each side by this many pixels, then crop back to
            the original size at a random offset, before the resized crop
            (0: off).

    Raises:
        ConfigError: a value of the wrong type or out of range.
    """

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    autoaugment: bool = False
    pad_crop: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _check_scale(self.scale))
        object.__setattr__(self, "ratio", _check_ratio(self.ratio))
        object.__setattr__(self, "hflip", _check_probability("hflip", self.hflip))
        if not isinstance(self.autoaugment, bool):
            raise ConfigError(f"autoaugment must be true or false, got {self.autoaugment!r}")
        pad = self.pad_crop
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ConfigError(f"pad_crop must be an integer >= 0 (pixels), got {pad!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """Build from a mapping such as a YAML section; lists are accepted for pairs.

        Raises:
            ConfigError: ``data`` is not a mapping, has unknown keys (the
                message lists the valid ones) or holds a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"augmentation options must be a mapping, got {type(data).__name__}")
        valid = [field.name for field in fields(cls)]
        unknown = sorted(str(key) for key in data if key not in valid)
        if unknown:
            raise ConfigError(
                f"unknown augmentation option(s): {', '.join(unknown)}; "
                f"valid options are {', '.join(valid)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (pairs as lists) that :meth:`from_dict` reads back."""
        return {
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "hflip": self.hflip,
            "autoaugment": self.autoaugment,
            "pad_crop": self.pad_crop,
        }


# --------------------------------------------------------------------------- cropping


class CropBox(NamedTuple):
    """A crop rectangle in pixels: top-left corner and size."""

    left: int
    top: int
    width: int
    height: int

    def as_pil(self) -> tuple[int, int, int, int]:
        """(left, upper, right, lower), the box Pillow's ``crop`` takes."""
        return (self.left, self.top, self.left + self.width, self.top + self.height)


def sample_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> CropBox:
    """The box of a random resized crop of a ``width`` x ``height`` image.

    Up to 10 attempts: draw an area fraction uniformly from ``scale`` and an
    aspect ratio log-uniformly from ``ratio``; the first box that fits the
    image is placed uniformly at random. If none fits, the fallback is a
    centred crop of the whole image, narrowed to the nearest aspect ratio in
    ``ratio`` when the image's own lies outside it.

    Raises:
        ConfigError: ``scale`` or ``ratio`` out of range (see :class:`AugmentConfig`).
        ValueError: a non-positive image size.
    """
    if width < 1 or height < 1:
        raise ValueError(f"cannot crop an image with no pixels ({width}x{height})")
    scale = _check_scale(scale)
    ratio = _check_ratio(ratio)
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_CROP_ATTEMPTS):
        target = area * float(rng.uniform(scale[0], scale[1]))
        aspect = math.exp(float(rng.uniform(log_low, log_high)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return CropBox(left, top, w, h)
    own = width / height
    w, h = width, height
    if own < ratio[0]:
        h = min(height, max(1, round(width / ratio[0])))
    elif own > ratio[1]:
        w = min(width, max(1, round(height * ratio[1])))
    return CropBox((width - w) // 2, (height - h) // 2, w, h)


def random_resized_crop(
    image: Image.Image,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> Image.Image:
    """Crop a random box (:func:`sample_crop_box`) and resize it to ``size`` x ``size``, bicubic.

    The mode of ``image`` is kept; :class:`TrainTransform` passes RGB.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"crop size must be a positive integer, got {size!r}")
    box = sample_crop_box(image.width, image.height, scale, ratio, rng)
    crop = image.crop(box.as_pil())
    return crop.resize((size, size), Image.Resampling.BICUBIC)


def random_pad_crop(image: Image.Image, pad: int, rng: np.random.Generator) -> Image.Image:
    """Reflect-pad each side by ``pad`` pixels, crop back to the original size at a random offset.

    Reflection does not repeat the edge pixel (``abc`` pads to ``cb|abc|ba``);
    pads wider than the image reflect back and forth. The result has the size
    of ``image`` and its mode when that is "L", "RGB" or "RGBA" (other modes
    are converted to RGB first); ``pad == 0`` returns ``image`` itself.
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ConfigError(f"pad must be an integer >= 0 (pixels), got {pad!r}")
    if pad == 0:
        return image
    if image.mode not in ("L", "RGB", "RGBA"):
        image = to_rgb(image)
    pixels = np.asarray(image)
    widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (pixels.ndim - 2)
    padded = np.pad(pixels, widths, mode="reflect")
    left = int(rng.integers(0, 2 * pad + 1))
    top = int(rng.integers(0, 2 * pad + 1))
    window = padded[top : top + image.height, left : left + image.width]
    return Image.fromarray(np.ascontiguousarray(window))


# --------------------------------------------------------------------------- operations
# Each takes any Pillow image and returns an RGB one; the parameter is the
# physical one (shear factor, fraction, degrees, threshold, bits, factor).


def _rgb(image: Image.Image) -> Image.Image:
    return to_rgb(image)  # the image itself when it is RGB without transparency


def _affine(
    image: Image.Image, matrix: tuple[float, float, float, float, float, float]
) -> Image.Image:
    rgb = _rgb(image)
    return rgb.transform(
        rgb.size,
        Image.Transform.AFFINE,
        matrix,
        resample=_GEOMETRIC_FILTER,
        fillcolor=FILL,
    )


def shear_x(image: Image.Image, factor: float) -> Image.Image:
    """Shear horizontally about the middle row.

    Output pixel (x, y) shows input (x + factor * (y - height / 2), y).
    """
    centre = image.height / 2
    return _affine(image, (1.0, factor, -factor * centre, 0.0, 1.0, 0.0))


def shear_y(image: Image.Image, factor: float) -> Image.Image:
    """Shear vertically about the middle column.

    Output pixel (x, y) shows input (x, y + factor * (x - width / 2)).
    """
    centre = image.width / 2
    return _affine(image, (1.0, 0.0, 0.0, factor, 1.0, -factor * centre))


def translate_x(image: Image.Image, fraction: float) -> Image.Image:
    """Move the content right by ``fraction`` of the width (left when negative)."""
    return _affine(image, (1.0, 0.0, -fraction * image.width, 0.0, 1.0, 0.0))


def translate_y(image: Image.Image, fraction: float) -> Image.Image:
    """Move the content down by ``fraction`` of the height (up when negative)."""
    return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, -fraction * image.height))


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate counter-clockwise about the centre, keeping the size."""
    return _rgb(image).rotate(degrees, resample=_GEOMETRIC_FILTER, fillcolor=FILL)


def auto_contrast(image: Image.Image) -> Image.Image:
    """Stretch each channel so its darkest value becomes 0 and its lightest 255."""
    return ImageOps.autocontrast(_rgb(image))


def invert(image: Image.Image) -> Image.Image:
    """Every value v becomes 255 - v."""
    return ImageOps.invert(_rgb(image))


def equalize(image: Image.Image) -> Image.Image:
    """Equalise the histogram of each channel."""
    return ImageOps.equalize(_rgb(image))


def solarize(image: Image.Image, threshold: int) -> Image.Image:
    """Invert the values >= ``threshold`` (0: all of them, 256: none)."""
    return ImageOps.solarize(_rgb(image), threshold)


def posterize(image: Image.Image, bits: int) -> Image.Image:
    """Keep the ``bits`` (1..8) most significant bits of each value."""
    return ImageOps.posterize(_rgb(image), bits)


def contrast(image: Image.Image, factor: float) -> Image.Image:
    """Blend with the mean grey level: 0 is flat grey, 1 unchanged, above 1 more contrast."""
    return ImageEnhance.Contrast(_rgb(image)).enhance(factor)


def color(image: Image.Image, factor: float) -> Image.Image:
    """Blend with the greyscale image: 0 is grey, 1 unchanged, above 1 more saturated."""
    return ImageEnhance.Color(_rgb(image)).enhance(factor)


def brightness(image: Image.Image, factor: float) -> Image.Image:
    """Blend with black: 0 is black, 1 unchanged, above 1 brighter."""
    return ImageEnhance.Brightness(_rgb(image)).enhance(factor)


def sharpness(image: Image.Image, factor: float) -> Image.Image:
    """Blend with a smoothed image: 0 is blurred, 1 unchanged, above 1 sharper."""
    return ImageEnhance.Sharpness(_rgb(image)).enhance(factor)


@dataclass(frozen=True)
class Operation:
    """An operation and its parameter at level 0 and at :data:`MAX_LEVEL`."""

    apply: Callable[[Image.Image, float], Image.Image]
    at_zero: float = 0.0
    at_max: float = 0.0
    signed: bool = False  # a random sign is applied to the parameter
    integer: bool = False  # the parameter is rounded to an integer


def _no_parameter(
    op: Callable[[Image.Image], Image.Image],
) -> Callable[[Image.Image, float], Image.Image]:
    def apply(image: Image.Image, _: float) -> Image.Image:
        return op(image)

    return apply


def _int_parameter(
    op: Callable[[Image.Image, int], Image.Image],
) -> Callable[[Image.Image, float], Image.Image]:
    def apply(image: Image.Image, value: float) -> Image.Image:
        return op(image, int(value))

    return apply


_ENHANCE_LOW: Final = 0.1
_ENHANCE_HIGH: Final = 1.9

OPERATIONS: Final[Mapping[str, Operation]] = MappingProxyType(
    {
        "ShearX": Operation(shear_x, 0.0, 0.3, signed=True),
        "ShearY": Operation(shear_y, 0.0, 0.3, signed=True),
        "TranslateX": Operation(translate_x, 0.0, 150 / 331, signed=True),
        "TranslateY": Operation(translate_y, 0.0, 150 / 331, signed=True),
        "Rotate": Operation(rotate, 0.0, 30.0, signed=True),
        "AutoContrast": Operation(_no_parameter(auto_contrast)),
        "Invert": Operation(_no_parameter(invert)),
        "Equalize": Operation(_no_parameter(equalize)),
        "Solarize": Operation(_int_parameter(solarize), 256.0, 0.0, integer=True),
        "Posterize": Operation(_int_parameter(posterize), 8.0, 4.0, integer=True),
        "Contrast": Operation(contrast, _ENHANCE_LOW, _ENHANCE_HIGH),
        "Color": Operation(color, _ENHANCE_LOW, _ENHANCE_HIGH),
        "Brightness": Operation(brightness, _ENHANCE_LOW, _ENHANCE_HIGH),
        "Sharpness": Operation(sharpness, _ENHANCE_LOW, _ENHANCE_HIGH),
    }
)
"""The AutoAugment operations by the paper's names (read-only)."""


def op_parameter(name: str, level: float) -> float:
    """The parameter of operation ``name`` at magnitude ``level`` (0..10), before any sign.

    Raises:
        KeyError: an unknown operation name.
        ValueError: a level outside 0..10.
    """
    spec = OPERATIONS[name]
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"AutoAugment level must be in 0..{MAX_LEVEL}, got {level!r}")
    value = spec.at_zero + (spec.at_max - spec.at_zero) * level / MAX_LEVEL
    return float(round(value)) if spec.integer else value


def apply_op(image: Image.Image, name: str, level: float, rng: np.random.Generator) -> Image.Image:
    """Apply operation ``name`` at magnitude ``level``; signed ones get a random sign from ``rng``.

    The sign is drawn (one ``rng.random()``) only for the signed operations
    (shear, translate, rotate). Returns an RGB image.
    """
    spec = OPERATIONS[name]
    value = op_parameter(name, level)
    if spec.signed and rng.random() < 0.5:
        value = -value
    return spec.apply(image, value)


# --------------------------------------------------------------------------- AutoAugment


class PolicyOp(NamedTuple):
    """One operation of a sub-policy: its name, probability and magnitude level."""

    name: str
    probability: float
    level: int


def _sub(
    first: tuple[str, float, int], second: tuple[str, float, int]
) -> tuple[PolicyOp, PolicyOp]:
    return (PolicyOp(*first), PolicyOp(*second))


IMAGENET_POLICY: Final[tuple[tuple[PolicyOp, PolicyOp], ...]] = (
    _sub(("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    _sub(("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    _sub(("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    _sub(("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    _sub(("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    _sub(("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    _sub(("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    _sub(("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    _sub(("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    _sub(("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    _sub(("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    _sub(("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    _sub(("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    _sub(("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    _sub(("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    _sub(("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    _sub(("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    _sub(("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    _sub(("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    _sub(("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    _sub(("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    _sub(("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    _sub(("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    _sub(("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    _sub(("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)
"""The 25 sub-policies learned on ImageNet (Cubuk et al. 2019, appendix), as printed
there: some appear twice, which doubles their chance of being picked."""


def auto_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The ImageNet AutoAugment policy: one sub-policy picked uniformly, its two ops in order.

    Each operation is applied with its probability (one ``rng.random()`` per
    operation, plus a sign draw for the signed ones that are applied).
    Returns an RGB image of the same size.
    """
    image = _rgb(image)
    sub_policy = IMAGENET_POLICY[int(rng.integers(len(IMAGENET_POLICY)))]
    for op in sub_policy:
        if rng.random() < op.probability:
            image = apply_op(image, op.name, op.level, rng)
    return image


# --------------------------------------------------------------------------- transform


class TrainTransform:
    """Decoded image -> augmented model input, float32 ``[3, N, N]`` (see the module docs).

    ``transform(image, rng)``; all randomness comes from ``rng``. Picklable.
    With ``AugmentConfig(scale=(1, 1), ratio=(1, 1))`` (and nothing else) on a
    square image the output equals ``runtime.images.preprocess(image, preprocess)``
    exactly; on other images it is a centre square crop.
    """

    def __init__(self, preprocess: PreprocessConfig, augment: AugmentConfig) -> None:
        if not isinstance(preprocess, PreprocessConfig):
            raise ConfigError(f"preprocess must be a PreprocessConfig, got {preprocess!r}")
        if not isinstance(augment, AugmentConfig):
            raise ConfigError(f"augment must be an AugmentConfig, got {augment!r}")
        self.preprocess = preprocess
        self.augment = augment

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """Augment and normalise one image.

        Raises:
            InvalidImageError: the image has no pixels or cannot be converted to RGB.
        """
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"cannot augment an image with no pixels ({width}x{height})")
        config, augment = self.preprocess, self.augment
        rgb = to_rgb(image, config.background)
        rgb = random_pad_crop(rgb, augment.pad_crop, rng)
        out = random_resized_crop(rgb, config.image_size, augment.scale, augment.ratio, rng)
        if augment.hflip > 0 and rng.random() < augment.hflip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if augment.autoaugment:
            out = auto_augment(out, rng)
        return preprocess(out, config)

    def __repr__(self) -> str:
        return f"TrainTransform(preprocess={self.preprocess!r}, augment={self.augment!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrainTransform):
            return NotImplemented
        return (self.preprocess, self.augment) == (other.preprocess, other.augment)

    def __hash__(self) -> int:
        return hash((self.preprocess, self.augment))
