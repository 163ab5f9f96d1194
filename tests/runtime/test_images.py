"""Image decoding and preprocessing against the official pipeline, on real photos.

The reference is the official Chinese CLIP transform written out with PIL and
torch (torchvision is not installed): ``img.resize((N, N), BICUBIC)`` as
torchvision's ``Resize`` calls it on PIL images, ``convert("RGB")``,
``ToTensor`` (``.float().div(255)``) and ``Normalize`` in float32.
"""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image

from runtime.errors import CnClipError, ConfigError, ImageTooLargeError, InvalidImageError
from runtime.images import (
    DEFAULT_MAX_PIXELS,
    OPENAI_MEAN,
    OPENAI_STD,
    PreprocessConfig,
    load_and_preprocess,
    load_image,
    preprocess,
    preprocess_batch,
    to_rgb,
)

ROOT = Path(__file__).resolve().parents[2]
SIZES = (224, 336)
TOLERANCE = 1e-6

F32Array = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- helpers


def official(image: Image.Image, size: int) -> F32Array:
    """cn_clip's image_transform: Resize((N, N), BICUBIC), RGB, ToTensor, Normalize."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
    tensor = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(OPENAI_MEAN, dtype=torch.float32)
    std = torch.tensor(OPENAI_STD, dtype=torch.float32)
    result: F32Array = ((tensor - mean[:, None, None]) / std[:, None, None]).numpy()
    return result


def normalised(rgb: tuple[int, int, int]) -> F32Array:
    """The normalised value of one 8-bit colour, per channel, as float32 [3]."""
    scaled = torch.tensor(rgb, dtype=torch.float32).div(255)
    mean = torch.tensor(OPENAI_MEAN, dtype=torch.float32)
    std = torch.tensor(OPENAI_STD, dtype=torch.float32)
    result: F32Array = ((scaled - mean) / std).numpy()
    return result


def photo_paths(data_dir: Path) -> list[Path]:
    paths = sorted((data_dir / "coco-photos").glob("*.jpg"))
    assert len(paths) == 14
    return paths


def muge_images(data_dir: Path) -> list[tuple[str, bytes]]:
    rows = []
    for line in (data_dir / "muge-sample" / "valid_imgs.tsv").read_text().splitlines():
        image_id, encoded = line.split("\t")
        rows.append((image_id, base64.urlsafe_b64decode(encoded)))
    assert len(rows) == 8
    return rows


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, an RGB IHDR for width x height and a 1-byte (broken) IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"x")


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> Image.Image:
    """A real 640x428 RGB photo, decoded."""
    with Image.open(data_dir / "coco-photos" / "000000005082.jpg") as image:
        image.load()
        return image.copy()


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("size", SIZES)
def test_parity_with_official_on_real_photos(data_dir: Path, size: int) -> None:
    config = PreprocessConfig(image_size=size)
    worst = 0.0
    for path in photo_paths(data_dir):
        ours = load_and_preprocess(path, config)
        assert ours.shape == (3, size, size)
        assert ours.dtype == np.float32
        assert ours.flags.c_contiguous
        with Image.open(path) as image:
            reference = official(image, size)
        worst = max(worst, float(np.abs(ours - reference).max()))
    assert worst <= TOLERANCE


@pytest.mark.parametrize("size", SIZES)
def test_parity_with_official_on_muge_and_pokemon(data_dir: Path, size: int) -> None:
    config = PreprocessConfig(image_size=size)
    sources = [(f"muge-{image_id}", data) for image_id, data in muge_images(data_dir)]
    pokemon = data_dir / "cn-clip-reference" / "pokemon.jpeg"
    sources.append((pokemon.name, pokemon.read_bytes()))
    worst = 0.0
    for name, data in sources:
        from_bytes = load_and_preprocess(data, config, name=name)
        from_stream = load_and_preprocess(io.BytesIO(data), config)
        np.testing.assert_array_equal(from_bytes, from_stream)
        reference = official(Image.open(io.BytesIO(data)), size)
        worst = max(worst, float(np.abs(from_bytes - reference).max()))
    assert worst <= TOLERANCE


def test_parity_is_not_vacuous(photo: Image.Image) -> None:
    """The reference does notice an off-by-one pixel value or a different filter."""
    ours = preprocess(photo)
    reference = official(photo, 224)
    shifted = np.asarray(photo).astype(np.int16)
    shifted = np.clip(shifted + 1, 0, 255).astype(np.uint8)
    assert np.abs(official(Image.fromarray(shifted), 224) - ours).max() > 1e-3
    bilinear = photo.resize((224, 224), Image.Resampling.BILINEAR)
    assert np.abs(official(bilinear, 224) - reference).max() > 1e-3


def test_grey_matches_official_order_and_stacked_rgb(photo: Image.Image) -> None:
    grey = photo.convert("L")
    ours = preprocess(grey)
    stacked = Image.merge("RGB", (grey, grey, grey))
    np.testing.assert_array_equal(ours, preprocess(stacked))
    # Official order (resize in "L", then convert): identical for greyscale.
    assert np.abs(ours - official(grey, 224)).max() <= TOLERANCE
    # Undo the per-channel normalisation: the three planes hold the same grey.
    mean = np.asarray(OPENAI_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(OPENAI_STD, dtype=np.float32)[:, None, None]
    levels = np.rint((ours * std + mean) * 255)
    assert (levels[0] == levels[1]).all() and (levels[1] == levels[2]).all()


def test_custom_normalisation(photo: Image.Image) -> None:
    config = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    ours = preprocess(photo, config)
    pixels = np.asarray(photo.resize((224, 224), Image.Resampling.BICUBIC))
    expected = (pixels.transpose(2, 0, 1).astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- EXIF


@pytest.mark.parametrize(("orientation", "turns"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(photo: Image.Image, orientation: int, turns: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo, "JPEG", quality=95, exif=exif.tobytes())
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # pixels as stored

    loaded = load_image(data)
    # np.rot90 turns counter-clockwise; 6 means "turn 90 degrees clockwise to view".
    upright = np.rot90(stored, k=turns)
    assert loaded.size == (upright.shape[1], upright.shape[0])
    np.testing.assert_array_equal(np.asarray(loaded), upright)
    np.testing.assert_array_equal(
        load_and_preprocess(data), preprocess(Image.fromarray(np.ascontiguousarray(upright)))
    )


def test_no_or_neutral_orientation_returns_the_decoded_file(photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 1
    for data in (encode(photo, "JPEG"), encode(photo, "JPEG", exif=exif.tobytes())):
        loaded = load_image(data)
        assert loaded.format == "JPEG"  # the decoded file itself, not a copy
        assert loaded.size == photo.size


# --------------------------------------------------------------------------- modes


def test_rgba_transparent_half_is_white(photo: Image.Image) -> None:
    width, height = photo.size
    alpha = np.full((height, width), 255, dtype=np.uint8)
    alpha[:, : width // 2] = 0
    rgba = photo.copy()
    rgba.putalpha(Image.fromarray(alpha))
    ours = load_and_preprocess(encode(rgba, "PNG"))

    white = normalised((255, 255, 255))
    left = ours[:, :, :100]
    assert np.array_equal(left, np.broadcast_to(white[:, None, None], left.shape))
    # The opaque half is the photo itself (far from the seam, where bicubic mixes).
    np.testing.assert_array_equal(ours[:, :, 124:], preprocess(photo)[:, :, 124:])

    black = preprocess(load_image(encode(rgba, "PNG")), PreprocessConfig(background=(0, 0, 0)))
    left = black[:, :, :100]
    assert np.array_equal(left, np.broadcast_to(normalised((0, 0, 0))[:, None, None], left.shape))


def test_semi_transparent_pixels_are_blended() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert np.asarray(to_rgb(rgba)).tolist() == [[[127, 127, 127]] * 4] * 4
    assert np.asarray(to_rgb(rgba, (0, 0, 0))).tolist() == [[[0, 0, 0]] * 4] * 4


def test_palette_with_transparency() -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    for x in range(4):
        for y in range(8):
            palette.putpixel((x, y), 0)
    for data in (encode(palette, "PNG", transparency=0), encode(palette, "GIF", transparency=0)):
        image = load_image(data)
        assert image.mode == "P"
        rgb = np.asarray(to_rgb(image))
        assert (rgb[:, :4] == 255).all()
        assert (rgb[:, 4:] == (200, 10, 20)).all()


def test_palette_without_transparency_is_resized_bicubic(photo: Image.Image) -> None:
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    ours = preprocess(load_image(encode(palette, "PNG")))
    # Converted first, then a real bicubic resize (the official order would
    # resize the palette indices with nearest-neighbour).
    expected = official(palette.convert("RGB"), 224)
    assert np.abs(ours - expected).max() <= TOLERANCE
    assert np.abs(ours - official(palette, 224)).max() > 0.1


def test_multi_frame_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    image = load_image(data)
    assert getattr(image, "n_frames", 1) == 2
    assert (np.asarray(to_rgb(image)) == (255, 0, 0)).all()


def test_multi_frame_tiff_from_path_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("L", (16, 16), value) for value in (10, 200)]
    path = tmp_path / "frames.tiff"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image = load_image(path)
    assert (np.asarray(to_rgb(image)) == 10).all()
    path.unlink()  # the file is not held open (matters on Windows; cheap to check)


def test_cmyk_jpeg(photo: Image.Image) -> None:
    data = encode(photo.convert("CMYK"), "JPEG", quality=95)
    image = load_image(data)
    assert image.mode == "CMYK"
    ours = preprocess(image)
    reference = preprocess(photo)
    # Lossy JPEG round trip: close, and certainly not inverted.
    assert np.abs(ours - reference).mean() < 0.05
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.99


def test_sixteen_bit_grey_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32768, 65535], [1000, 128, 65278, 40000]], dtype=np.uint16)
    image = load_image(encode(Image.fromarray(values), "PNG"))
    assert image.mode.startswith("I")
    rgb = np.asarray(to_rgb(image))
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert rgb[..., 0].tolist() == expected.tolist()
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_sixteen_bit_big_endian_and_32_bit_int() -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    big = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    wide = Image.fromarray(values.astype(np.int32))
    assert wide.mode == "I"
    for image in (big, wide):
        assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]


def test_sixteen_bit_colour_key_is_transparent() -> None:
    values = np.array([[0, 500, 65535]], dtype=np.uint16)
    image = load_image(encode(Image.fromarray(values), "PNG", transparency=500))
    assert np.asarray(to_rgb(image, (9, 9, 9)))[0].tolist() == [[0, 0, 0], [9, 9, 9], [255] * 3]


def test_float_image_uses_the_zero_to_255_scale() -> None:
    values = np.array([[-5.0, 0.4, 127.6, 300.0, np.nan]], dtype=np.float32)
    image = Image.fromarray(values)
    assert image.mode == "F"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 0, 128, 255, 0]


def test_grey_with_alpha() -> None:
    la = Image.new("LA", (4, 2), (60, 255))
    for x in range(2):
        for y in range(2):
            la.putpixel((x, y), (0, 0))
    rgb = np.asarray(to_rgb(load_image(encode(la, "PNG"))))
    assert (rgb[:, :2] == 255).all()
    assert (rgb[:, 2:] == 60).all()


def test_one_bit() -> None:
    bits = Image.new("1", (4, 4), 0)
    bits.putpixel((1, 2), 1)
    rgb = np.asarray(to_rgb(load_image(encode(bits, "PNG"))))
    assert rgb.dtype == np.uint8
    assert rgb[2, 1].tolist() == [255, 255, 255]
    assert int(rgb.sum()) == 3 * 255


def test_rgb_colour_key_is_transparent() -> None:
    image = Image.new("RGB", (2, 1), (1, 2, 3))
    image.putpixel((1, 0), (50, 60, 70))
    loaded = load_image(encode(image, "PNG", transparency=(1, 2, 3)))
    assert np.asarray(to_rgb(loaded)).tolist() == [[[255, 255, 255], [50, 60, 70]]]


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "RGBX"])
def test_other_colour_spaces(photo: Image.Image, mode: str) -> None:
    small = photo.resize((64, 48))
    converted = small.convert(mode)
    rgb = to_rgb(converted)
    assert rgb.mode == "RGB" and rgb.size == small.size
    difference = np.abs(np.asarray(rgb).astype(int) - np.asarray(small).astype(int))
    assert difference.mean() < 3


def test_rgb_is_not_copied(photo: Image.Image) -> None:
    assert to_rgb(photo) is photo


def test_unconvertible_mode_is_an_invalid_image() -> None:
    with pytest.raises(InvalidImageError, match="mode La"):
        to_rgb(Image.new("La", (2, 2)))


# --------------------------------------------------------------------------- pixel limit


def test_header_over_the_limit_is_refused_before_decoding() -> None:
    # 9000 x 9000 = 81e6 pixels: over our default limit, under Pillow's warning
    # threshold. Decoding would fail on the broken IDAT with a plain
    # InvalidImageError, so the exact type proves the check came first.
    data = png_header(9000, 9000)
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(data)
    assert type(caught.value) is ImageTooLargeError
    message = str(caught.value)
    assert "9000x9000" in message and str(DEFAULT_MAX_PIXELS) in message
    assert "<bytes>" in message
    # With a high enough limit the same bytes fail for what they are: truncated.
    with pytest.raises(InvalidImageError) as broken:
        load_image(data, max_pixels=100_000_000)
    assert type(broken.value) is InvalidImageError


def test_real_photo_over_a_small_limit(data_dir: Path) -> None:
    path = data_dir / "coco-photos" / "000000005082.jpg"
    with pytest.raises(ImageTooLargeError, match="limit of 1000 pixels") as caught:
        load_and_preprocess(path, PreprocessConfig(max_pixels=1000))
    assert str(path) in str(caught.value)
    assert load_image(path, max_pixels=640 * 428).size == (640, 428)


def test_pillow_decompression_bomb_error_becomes_ours() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        load_image(png_header(20000, 10000), max_pixels=10**12)
    assert before == Image.MAX_IMAGE_PIXELS


def test_pillow_decompression_bomb_warning_becomes_ours(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(photo, "JPEG")
    pixels = photo.size[0] * photo.size[1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels - 1)  # Pillow warns, not raises
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(ImageTooLargeError, match=f"limit of {pixels - 1} pixels"),
    ):
        load_image(data, max_pixels=10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels // 4)  # Pillow raises
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        load_image(data, max_pixels=10**9)


# --------------------------------------------------------------------------- invalid input


def invalid_cases(data_dir: Path, tmp_path: Path) -> list[tuple[Callable[[], object], str]]:
    jpeg = (data_dir / "coco-photos" / "000000005082.jpg").read_bytes()
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not an image")
    return [
        (lambda: load_image(b"\x00garbage" * 50), "<bytes>"),
        (lambda: load_image(b""), "<bytes>"),
        (lambda: load_image(bytearray()), "<bytes>"),
        (lambda: load_image(jpeg[: len(jpeg) // 2], name="upload-7"), "upload-7"),
        (lambda: load_image(io.BytesIO(jpeg[:1000])), "<stream>"),
        (lambda: load_image(tmp_path / "missing.jpg"), "missing.jpg"),
        (lambda: load_image(tmp_path), str(tmp_path)),
        (lambda: load_image(str(text_file)), "notes.jpg"),
        (lambda: load_and_preprocess(jpeg[:2000], name="cut.jpg"), "cut.jpg"),
        (lambda: preprocess(Image.new("RGB", (0, 5))), "0x5"),
    ]


def test_undecodable_inputs_raise_invalid_image_error(data_dir: Path, tmp_path: Path) -> None:
    for call, source in invalid_cases(data_dir, tmp_path):
        with pytest.raises(CnClipError) as caught:
            call()
        error = caught.value
        assert type(error) is InvalidImageError, repr(error)
        message = str(error)
        assert source in message, message
        assert "\n" not in message
        assert "object at 0x" not in message


def test_lazily_opened_truncated_image_is_an_invalid_image(data_dir: Path) -> None:
    jpeg = (data_dir / "coco-photos" / "000000005082.jpg").read_bytes()
    lazy = Image.open(io.BytesIO(jpeg[: len(jpeg) // 2]))
    with pytest.raises(InvalidImageError, match="truncated"):
        preprocess(lazy)


def test_wrong_source_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="int"):
        load_image(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": True},
        {"image_size": 224.0},
        {"max_pixels": -1},
        {"std": (0.2, 0.0, 0.3)},
        {"mean": (0.1, 0.2)},
        {"mean": (0.1, float("nan"), 0.3)},
        {"background": (0, 0, 256)},
        {"background": (0, 0)},
    ],
)
def test_config_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)  # type: ignore[arg-type]


def test_config_accepts_sequences_and_numpy_numbers() -> None:
    config = PreprocessConfig(
        mean=[0.5, 0.5, 0.5],  # type: ignore[arg-type]
        background=tuple(np.array([1, 2, 3], dtype=np.uint8)),
    )
    assert config.mean == (0.5, 0.5, 0.5)
    assert config.background == (1, 2, 3)
    assert hash(config) == hash(PreprocessConfig(mean=(0.5, 0.5, 0.5), background=(1, 2, 3)))


# --------------------------------------------------------------------------- batches, threads


def test_batch_shape_dtype_and_contents(data_dir: Path) -> None:
    images = [load_image(path) for path in photo_paths(data_dir)[:5]]
    images.append(Image.new("LA", (30, 20), (0, 0)))
    config = PreprocessConfig(image_size=336)
    batch = preprocess_batch(images, config)
    assert batch.shape == (6, 3, 336, 336)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    for index, image in enumerate(images):
        np.testing.assert_array_equal(batch[index], preprocess(image, config))
    empty = preprocess_batch([], config)
    assert empty.shape == (0, 3, 336, 336) and empty.dtype == np.float32


def test_concurrent_calls_give_the_sequential_results(data_dir: Path) -> None:
    sources: list[bytes] = [path.read_bytes() for path in photo_paths(data_dir)]
    sources += [data for _, data in muge_images(data_dir)]
    configs = [PreprocessConfig(image_size=224), PreprocessConfig(image_size=336)]
    jobs = [(data, configs[i % 2]) for i, data in enumerate(sources * 2)]
    expected = [load_and_preprocess(data, config) for data, config in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: load_and_preprocess(*job), jobs))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_runtime_module_does_not_import_torch() -> None:
    code = "import sys, runtime.images; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
