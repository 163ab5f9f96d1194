"""Image decoding and Chinese CLIP preprocessing with numpy and Pillow only.

The official Chinese CLIP transform (``cn_clip`` 1.6.0, ``image_transform``) is
torchvision's ``Resize((N, N), BICUBIC)`` of the whole image (no crop, aspect
ratio not kept), ``convert("RGB")``, ``ToTensor()`` and ``Normalize(mean, std)``.
:func:`preprocess` reproduces it bit for bit for RGB images: the resize is the
same Pillow call torchvision makes (``img.resize((N, N), BICUBIC)``) and the
normalisation is a per-channel 256-entry float32 table computed with exactly
the float32 operations of ``ToTensor`` and ``Normalize``
(``((v / 255) - mean) / std``, each step rounded to float32).

Deliberate differences from the official pipeline (none of them affects RGB
images without transparency, i.e. ordinary JPEGs):

* EXIF orientation is applied (the official code ignores it, so photos taken
  in portrait arrive lying on their side).
* Images are converted to RGB *before* resizing. The official order resizes in
  the native mode, which makes Pillow fall back to nearest-neighbour for
  palette ("P") images; converting first gives them a real bicubic resize. For
  RGB and greyscale ("L") inputs both orders give identical results.
* Transparent pixels are composited onto a background colour (white by
  default, see :class:`PreprocessConfig`) instead of being dropped: the
  official ``convert("RGB")`` discards alpha and shows whatever colour hides
  under transparent pixels (often black), while e-commerce cut-outs are meant
  to be seen on white.
* 16-bit and 32-bit integer greyscale images ("I;16*", "I") are scaled from
  0..65535 to 0..255 (rounded); Pillow's own conversion clips them at 255, so a
  16-bit image would come out almost entirely white. Float images ("F") follow
  Pillow's convention that they share the 0..255 scale of "L": rounded and
  clipped, NaN as 0.

Other behaviour worth knowing:

* Multi-frame images (GIF, APNG, WebP, TIFF, MPO): the first frame is used.
* Decompression bombs: the pixel count (width x height) is checked against a
  limit (:data:`DEFAULT_MAX_PIXELS` unless configured) right after Pillow has
  read the header and before any pixel data is decoded. Pillow's own limit,
  ``PIL.Image.MAX_IMAGE_PIXELS``, is never changed here; it also applies:
  Pillow warns (``DecompressionBombWarning``) above it and refuses above twice
  it, and both cases are reported as :class:`ImageTooLargeError`. Pillow emits
  its warning before this module sees the image; with the default limits
  (64,000,000 here, about 89,478,485 in Pillow) every image that triggers it
  is refused anyway.
* Everything that cannot be decoded raises :class:`InvalidImageError` with a
  one-line message naming the source; Pillow's and the OS's exceptions never
  escape (they are chained as ``__cause__``).
* ICC colour profiles are not applied (neither does the official pipeline);
  CMYK is converted with Pillow's plain formula.

All functions are safe to call from several threads at once: the only shared
state is a cache of read-only normalisation tables. Pillow releases the GIL
while decoding and resizing, so a thread pool does speed up batches.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from runtime.errors import ConfigError, ImageTooLargeError, InvalidImageError

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_PIXELS",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "WHITE",
    "ImageSource",
    "PreprocessConfig",
    "load_and_preprocess",
    "load_image",
    "preprocess",
    "preprocess_batch",
    "to_rgb",
]

OPENAI_MEAN: Final[tuple[float, float, float]] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel (R, G, B) mean of the official normalisation, on the 0..1 scale."""

OPENAI_STD: Final[tuple[float, float, float]] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel (R, G, B) standard deviation of the official normalisation."""

DEFAULT_IMAGE_SIZE: Final[int] = 224
"""Input side length of the ViT-B/L models; ViT-L-14-336 uses 336."""

DEFAULT_MAX_PIXELS: Final[int] = 64_000_000
"""Default limit on width x height (an 8000 x 8000 photo; about 256 MB as RGBA)."""

WHITE: Final[tuple[int, int, int]] = (255, 255, 255)
"""Default background colour for transparent pixels."""

ImageSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
"""A path, the encoded file's bytes, or a binary file object (read from its start)."""

# EXIF orientation value -> the transposition that shows the image upright.
_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSITIONS: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Modes with an alpha band of their own; other modes may carry a colour key in
# info["transparency"] (P, L, RGB, I;16 ...).
_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "RGBa"})


# --------------------------------------------------------------------------- validation


def _check_positive_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")


def _float_triple(what: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be three numbers (R, G, B), got {value!r}") from None
    if len(items) != 3 or not all(math.isfinite(v) for v in items):
        raise ConfigError(f"{what} must be three finite numbers (R, G, B), got {value!r}")
    if positive and not all(v > 0 for v in items):
        raise ConfigError(f"{what} must be three positive numbers (R, G, B), got {value!r}")
    return (items[0], items[1], items[2])


def _colour(what: str, value: Any) -> tuple[int, int, int]:
    try:
        items = tuple(operator.index(v) for v in value if not isinstance(v, bool))
    except TypeError:
        items = ()
    if len(items) != 3 or not all(0 <= v <= 255 for v in items):
        raise ConfigError(f"{what} must be three integers in 0..255 (R, G, B), got {value!r}")
    return (items[0], items[1], items[2])


@dataclass(frozen=True)
class PreprocessConfig:
    """How to turn a decoded image into model input.

    Attributes:
        image_size: side N of the square model input, in pixels (224 for the
            ViT-B/L models, 336 for ViT-L-14-336).
        mean: per-channel (R, G, B) mean on the 0..1 scale.
        std: per-channel (R, G, B) standard deviation on the 0..1 scale (> 0).
        max_pixels: refuse images whose width x height exceeds this.
        background: (R, G, B) colour, each 0..255, that transparent pixels are
            composited onto.

    Raises:
        ConfigError: when a value is out of range or of the wrong type.
    """

    image_size: int = DEFAULT_IMAGE_SIZE
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    max_pixels: int = DEFAULT_MAX_PIXELS
    background: tuple[int, int, int] = WHITE

    def __post_init__(self) -> None:
        _check_positive_int("image_size", self.image_size)
        _check_positive_int("max_pixels", self.max_pixels)
        object.__setattr__(self, "mean", _float_triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _float_triple("std", self.std, positive=True))
        object.__setattr__(self, "background", _colour("background", self.background))


DEFAULT_CONFIG: Final = PreprocessConfig()
"""224 px, the official mean and std, the default pixel limit, white background."""


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode an image: the first frame, fully loaded, turned upright by its EXIF tag.

    The result keeps its native mode (use :func:`to_rgb` or :func:`preprocess`
    next). No file stays open afterwards when ``source`` is a path; a file
    object given by the caller is read from its start and left open.

    Args:
        source: a path, the encoded bytes, or a binary file object.
        max_pixels: refuse images with more than this many pixels
            (width x height); checked before the pixel data is decoded.
        name: how to call the source in error messages (default: the path, the
            file object's ``name``, or ``<bytes>``).

    Raises:
        ImageTooLargeError: the image has more pixels than ``max_pixels`` or
            than Pillow's ``PIL.Image.MAX_IMAGE_PIXELS``.
        InvalidImageError: the source cannot be read or is not a decodable
            image (unknown format, truncated, empty, zero-sized ...).
        TypeError: ``source`` is none of the accepted types.
    """
    _check_positive_int("max_pixels", max_pixels)
    if isinstance(source, bytes | bytearray | memoryview):
        label = name if name is not None else "<bytes>"
        if len(source) == 0:
            raise InvalidImageError(f"cannot decode image {label}: empty input (0 bytes)")
        return _decode(io.BytesIO(source), label, max_pixels)
    if isinstance(source, str | os.PathLike):
        label = name if name is not None else os.fsdecode(source)
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            reason = exc.strerror or _reason(exc)
            raise InvalidImageError(f"cannot read image file {label}: {reason}") from exc
        with stream:
            return _decode(stream, label, max_pixels)
    if hasattr(source, "read"):
        stream_name = getattr(source, "name", None)
        if name is not None:
            label = name
        elif isinstance(stream_name, str):
            label = stream_name
        else:
            label = "<stream>"
        return _decode(source, label, max_pixels)
    raise TypeError(
        f"image source must be a path, bytes or a binary file object, not {type(source).__name__}"
    )


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB.

    Transparent pixels (alpha band or ``info["transparency"]`` colour key) are
    composited onto ``background``. An RGB image without transparency is
    returned as it is (not copied). 16-bit greyscale is scaled to 8 bits, see
    the module documentation.

    Args:
        image: any Pillow image (loaded or not).
        background: (R, G, B) colour, each 0..255.

    Raises:
        InvalidImageError: the mode cannot be converted, or the image cannot be
            loaded (e.g. a lazily opened, truncated file).
        ConfigError: ``background`` is not three integers in 0..255.
    """
    background = _colour("background", background)
    try:
        return _to_rgb(image, background)
    except InvalidImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidImageError(
            f"cannot convert image (mode {image.mode}, {_dims(image.size)}) to RGB: {_reason(exc)}"
        ) from exc


def preprocess(
    image: Image.Image, config: PreprocessConfig = DEFAULT_CONFIG
) -> npt.NDArray[np.float32]:
    """Model input for one image: float32, C-contiguous, shape [3, N, N] (R, G, B planes).

    Converts to RGB (:func:`to_rgb`), resizes the whole image to N x N with
    Pillow's bicubic filter and normalises each channel to
    ``(value / 255 - mean) / std``. Identical to the official pipeline for RGB
    images. EXIF orientation is not looked at here: :func:`load_image` has
    already applied it.

    Args:
        image: a decoded image of any mode, e.g. from :func:`load_image`.
        config: size, normalisation and background (default
            :data:`DEFAULT_CONFIG`: 224 px, the official mean and std, white).

    Raises:
        InvalidImageError: the image is zero-sized or cannot be converted.
    """
    n = config.image_size
    out = np.empty((3, n, n), dtype=np.float32)
    _preprocess_into(image, config, out)
    return out


def preprocess_batch(
    images: Sequence[Image.Image], config: PreprocessConfig = DEFAULT_CONFIG
) -> npt.NDArray[np.float32]:
    """Model input for several images: float32, C-contiguous, shape [n, 3, N, N].

    ``result[i]`` equals ``preprocess(images[i], config)``; an empty sequence
    gives shape [0, 3, N, N].

    Raises:
        InvalidImageError: as :func:`preprocess`, for the first bad image.
    """
    n = config.image_size
    out = np.empty((len(images), 3, n, n), dtype=np.float32)
    for index, image in enumerate(images):
        _preprocess_into(image, config, out[index])
    return out


def load_and_preprocess(
    source: ImageSource,
    config: PreprocessConfig = DEFAULT_CONFIG,
    *,
    name: str | None = None,
) -> npt.NDArray[np.float32]:
    """:func:`load_image` then :func:`preprocess`: float32 [3, N, N].

    ``config.max_pixels`` is the pixel limit. Raises what those two raise.
    """
    image = load_image(source, max_pixels=config.max_pixels, name=name)
    return preprocess(image, config)


# --------------------------------------------------------------------------- decoding


@contextlib.contextmanager
def _decoding(label: str, reason: Callable[[Exception], str]) -> Iterator[None]:
    """Turn Pillow's and the OS's exceptions inside the block into ours."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"image {label} is too large to decode safely: {_reason(exc)}"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidImageError(f"cannot decode image {label}: {reason(exc)}") from exc


def _decode(stream: IO[bytes], label: str, max_pixels: int) -> Image.Image:
    # Register every plugin before opening: Pillow imports them lazily, and two
    # threads doing that at the same time can miss a format. A no-op once done.
    Image.init()
    with _decoding(label, _open_reason):
        image = Image.open(stream)
    _check_size(image.size, label, max_pixels)
    with _decoding(label, _reason):
        image.load()
    # A GIF's first frame may extend the canvas while loading.
    _check_size(image.size, label, max_pixels)
    return _apply_orientation(image)


def _check_size(size: tuple[int, int], label: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"cannot decode image {label}: it has no pixels ({width}x{height})")
    pixels = width * height
    limit, whose = max_pixels, ""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and pillow_limit < limit:
        # Pillow has already warned (DecompressionBombWarning); refuse as it advises.
        limit, whose = int(pillow_limit), " (Pillow's PIL.Image.MAX_IMAGE_PIXELS)"
    if pixels > limit:
        raise ImageTooLargeError(
            f"image {label} is {width}x{height} = {pixels} pixels, "
            f"over the limit of {limit} pixels{whose}"
        )


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG)
    except MemoryError:
        raise
    except Exception:
        # Broken EXIF data does not make the pixels unusable: show them as stored.
        return image
    if not isinstance(orientation, int) or orientation not in _TRANSPOSITIONS:
        return image
    return image.transpose(_TRANSPOSITIONS[orientation])


def _open_reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        # Pillow's message repeats the stream's repr, which says nothing useful.
        return "not an image, or a format Pillow cannot read"
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


def _dims(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# --------------------------------------------------------------------------- colour


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    image.load()
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = _high_depth_to_grey(image)
        mode = image.mode
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, (0, 0), rgba)
        return canvas
    if mode == "RGB":
        return image
    return image.convert("RGB")


def _high_depth_to_grey(image: Image.Image) -> Image.Image:
    """'I;16*', 'I' and 'F' images as 8-bit 'L' (or 'LA' for a colour key)."""
    values = np.asarray(image)
    grey: npt.NDArray[np.uint8]
    if image.mode == "F":
        clean = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        grey = np.rint(np.clip(clean, 0.0, 255.0)).astype(np.uint8)
    else:
        wide = np.clip(values.astype(np.int64), 0, 65535)
        # round(v * 255 / 65535) exactly: the fraction can never be one half.
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    key = image.info.get("transparency")
    if isinstance(key, int | float) and not isinstance(key, bool):
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1))  # "LA"
    return Image.fromarray(grey)  # "L"


# --------------------------------------------------------------------------- numbers


def _preprocess_into(
    image: Image.Image, config: PreprocessConfig, out: npt.NDArray[np.float32]
) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"cannot preprocess an image with no pixels ({width}x{height})")
    n = config.image_size
    rgb = to_rgb(image, config.background)
    try:
        resized = rgb.resize((n, n), Image.Resampling.BICUBIC)
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidImageError(
            f"cannot resize image ({_dims(image.size)}) to {n}x{n}: {_reason(exc)}"
        ) from exc
    pixels = np.asarray(resized)  # [N, N, 3] uint8
    table = _normalisation_table(config.mean, config.std)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])


@functools.lru_cache(maxsize=32)
def _normalisation_table(
    mean: tuple[float, float, float], std: tuple[float, float, float]
) -> npt.NDArray[np.float32]:
    """[3, 256] float32: ``table[c, v] == ((float32(v) / 255) - mean[c]) / std[c]``.

    The same float32 operations, in the same order, as torchvision's
    ``ToTensor`` (``.float().div(255)``) and ``Normalize``
    (``.sub_(mean).div_(std)`` with float32 mean and std), so the result is
    bit-identical. Read-only, shared between threads.
    """
    scaled = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    table: npt.NDArray[np.float32] = (scaled[None, :] - mean32) / std32
    table.setflags(write=False)
    return table
