"""The confusion matrix as a PNG heat map, drawn with Pillow (no plotting library needed).

Rows are true classes, columns predicted classes; a cell's shade is its share of the
row (white 0% to dark blue 100%), so small and large classes read alike. Class names
label the axes when the cells are large enough. Chinese names need a font with CJK
glyphs: the first found of ``$CNCLIP_FONT`` and the usual Noto CJK / WenQuanYi / Droid
paths; without one, the folder names (or class numbers) are written instead, and the
report's tables keep the Chinese names.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from runtime.files import write_atomically

FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont

CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)
LATIN_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)
MAX_SIDE = 1000  # pixels of the matrix itself
LABEL_MIN_CELL = 10  # smaller cells get no axis labels
VALUE_MIN_CELL = 28  # smaller cells get no numbers


def _font(paths: Sequence[str], size: int) -> FontType | None:
    for path in paths:
        if path and Path(path).is_file():
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    return None


def _latin(text: str) -> bool:
    return all(ord(char) < 0x0250 for char in text)


def axis_labels(
    class_names: Sequence[str], folders: Sequence[str], size: int
) -> tuple[list[str], FontType]:
    """The labels to draw and a font that has their glyphs."""
    cjk = _font((os.environ.get("CNCLIP_FONT", ""), *CJK_FONTS), size)
    if cjk is not None:
        return list(class_names), cjk
    font = _font(LATIN_FONTS, size) or ImageFont.load_default()
    for candidates in (class_names, folders):
        if all(_latin(name) for name in candidates):
            return list(candidates), font
    return [str(i) for i in range(len(class_names))], font


def _shade(share: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1)."""
    low, high = np.array([255, 255, 255]), np.array([8, 48, 107])
    r, g, b = (low + (high - low) * share).round().astype(int)
    return int(r), int(g), int(b)


def _width(draw: ImageDraw.ImageDraw, text: str, font: FontType) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def render_confusion(
    matrix: npt.NDArray[np.integer],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    folders: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Draw ``matrix`` (``[true, predicted]`` counts) to ``path`` (PNG); returns the path."""
    m = np.asarray(matrix, dtype=np.int64)
    n = m.shape[0]
    cell = max(1, min(40, MAX_SIDE // max(n, 1)))
    labelled = cell >= LABEL_MIN_CELL
    font_size = max(8, min(14, cell - 2))
    names, font = axis_labels(class_names, folders or class_names, font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((_width(probe, s, font) for s in names), default=0) + 8 if labelled else 0
    top = 28 + (label_w if labelled else 0)
    left = 12 + label_w
    side = n * cell
    image = Image.new("RGB", (left + side + 12, top + side + 24), "white")
    draw = ImageDraw.Draw(image)
    title_font = _font(LATIN_FONTS, 14) or ImageFont.load_default()
    heading = title or "confusion matrix (rows: true class, columns: predicted)"
    draw.text((left, 6), heading if _latin(heading) else "confusion matrix", fill="black",
              font=title_font)  # fmt: skip
    totals = m.sum(axis=1)
    for t in range(n):
        for p in range(n):
            share = float(m[t, p]) / float(totals[t]) if totals[t] else 0.0
            x, y = left + p * cell, top + t * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=_shade(share))
            if cell >= VALUE_MIN_CELL and m[t, p]:
                colour = "white" if share > 0.5 else "black"
                value = str(int(m[t, p]))
                draw.text((x + (cell - _width(draw, value, font)) / 2, y + cell / 4), value,
                          fill=colour, font=font)  # fmt: skip
    draw.rectangle((left - 1, top - 1, left + side, top + side), outline="grey")
    if labelled:
        for i, name in enumerate(names):
            y = top + i * cell + (cell - font_size) / 2
            draw.text((left - 6 - _width(draw, name, font), y), name, fill="black", font=font)
            # Column labels, written vertically: draw on a strip, then rotate it.
            strip = Image.new("RGB", (label_w, cell), "white")
            ImageDraw.Draw(strip).text((2, (cell - font_size) / 2), name, fill="black", font=font)
            image.paste(strip.rotate(90, expand=True), (left + i * cell, top - label_w - 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_atomically(path, buffer.getvalue())
