"""Verification inputs that ship with cnclip, for machines without real sample data.

Sentences: ``export/assets/verify_sentences.txt``, written for this project
(short queries to long descriptions, Chinese with some digits, Latin letters
and punctuation). Pictures: drawn with Pillow from a fixed seed — shapes and
gradients in several sizes and modes — so that every pixel path of the
preprocessing runs. Real photos are better evidence; ``--verify-data`` (or
``$CNCLIP_DATA_DIR``) points the export at a folder of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ASSETS = Path(__file__).resolve().parent / "assets"


def builtin_sentences() -> list[str]:
    text = (ASSETS / "verify_sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def builtin_pictures(count: int = 12, seed: int = 20221122) -> list[Image.Image]:
    """``count`` deterministic drawings of various sizes, in RGB, L and RGBA modes."""
    rng = np.random.default_rng(seed)
    pictures = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(96, 480, size=2))
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        base = rng.integers(0, 256, size=3).astype(np.float32)[None, None, :]
        pixels = (0.5 * ramp + 0.5 * base) * np.ones((height, 1, 1), dtype=np.float32)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 7))):
            x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            if rng.random() < 0.5:
                draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=colour)
            else:
                draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
        mode = ("RGB", "RGB", "L", "RGBA")[index % 4]
        pictures.append(image.convert(mode))
    return pictures
