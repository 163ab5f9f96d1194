"""A small product catalog drawn with Pillow: items of several colours and kinds.

Every item is a picture of one kind (杯子, T恤, 帽子, 雨伞, 包, 鞋子) in one colour
(红色, 橙色, 黄色, 绿色, 蓝色, 紫色, 粉色, 黑色), drawn at a random size, place and
tilt on a light background with a few grey distractors, and titled the way a shop
would: ``红色的杯子``. The pictures differ from item to item, so a model has to learn
colour and shape from them, not memorise one image per title.

:func:`write_catalog` writes the pictures and a jsonl catalog (``{"id", "image",
"title", "colour", "kind", "image_url"}`` per line) that ``cnclip train`` (data kind
``catalog``) and ``cnclip index build --catalog`` read as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from runtime.files import write_atomically

Colour = tuple[int, int, int]
Draw = Callable[[ImageDraw.ImageDraw, float, Colour, Colour], None]

SIZE = 128  # pixels of a picture (the model sees it resized)

COLOURS: dict[str, Colour] = {
    "红色": (215, 35, 40),
    "橙色": (240, 135, 25),
    "黄色": (235, 205, 35),
    "绿色": (45, 155, 65),
    "蓝色": (35, 85, 205),
    "紫色": (125, 55, 165),
    "粉色": (240, 150, 190),
    "黑色": (35, 35, 38),
}


def _poly(d: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], s: float, fill: Colour,
          edge: Colour) -> None:  # fmt: skip
    """A polygon given in a unit box centred at 0, scaled by ``s`` around the centre."""
    c = SIZE / 2
    d.polygon([(c + x * s, c + y * s) for x, y in points], fill=fill, outline=edge)


def _box(s: float, x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
    c = SIZE / 2
    return (c + x0 * s, c + y0 * s, c + x1 * s, c + y1 * s)


def cup(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    d.arc(_box(s, 0.15, -0.25, 0.6, 0.25), -90, 90, fill=fill, width=max(2, int(s * 0.09)))
    _poly(d, [(-0.4, -0.45), (0.3, -0.45), (0.22, 0.45), (-0.32, 0.45)], s, fill, edge)
    d.ellipse(_box(s, -0.4, -0.52, 0.3, -0.38), fill=tuple(min(255, v + 40) for v in fill))


def tshirt(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    points = [(-0.2, -0.5), (-0.5, -0.35), (-0.62, -0.05), (-0.38, 0.05), (-0.33, -0.12),
              (-0.33, 0.5), (0.33, 0.5), (0.33, -0.12), (0.38, 0.05), (0.62, -0.05),
              (0.5, -0.35), (0.2, -0.5), (0.0, -0.38)]  # fmt: skip
    _poly(d, points, s, fill, edge)


def hat(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    d.ellipse(_box(s, -0.6, 0.05, 0.6, 0.3), fill=fill, outline=edge)
    d.chord(_box(s, -0.4, -0.45, 0.4, 0.35), 180, 360, fill=fill, outline=edge)
    d.ellipse(_box(s, -0.05, -0.5, 0.05, -0.4), fill=edge)


def umbrella(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    d.pieslice(_box(s, -0.6, -0.5, 0.6, 0.2), 180, 360, fill=fill, outline=edge)
    width = max(2, int(s * 0.04))
    d.line([_box(s, 0, -0.15, 0, 0.45)[:2], _box(s, 0, 0.45, 0, 0)[:2]], fill=(60, 60, 60),
           width=width)  # fmt: skip
    d.arc(_box(s, -0.16, 0.35, 0.0, 0.55), 0, 180, fill=(60, 60, 60), width=width)


def bag(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    d.arc(_box(s, -0.25, -0.55, 0.25, -0.05), 180, 360, fill=edge, width=max(2, int(s * 0.06)))
    d.rounded_rectangle(_box(s, -0.45, -0.3, 0.45, 0.45), radius=int(s * 0.08), fill=fill,
                        outline=edge)  # fmt: skip
    d.rectangle(_box(s, -0.08, -0.15, 0.08, -0.05), fill=(200, 200, 200))


def shoe(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    points = [(-0.55, 0.3), (-0.55, -0.25), (-0.25, -0.25), (-0.1, 0.0), (0.35, 0.05),
              (0.58, 0.2), (0.58, 0.3)]  # fmt: skip
    _poly(d, points, s, fill, edge)
    d.rectangle(_box(s, -0.58, 0.3, 0.6, 0.4), fill=(235, 235, 230), outline=edge)


KINDS: dict[str, Draw] = {
    "杯子": cup,
    "T恤": tshirt,
    "帽子": hat,
    "雨伞": umbrella,
    "包": bag,
    "鞋子": shoe,
}


def title(colour: str, kind: str) -> str:
    return f"{colour}的{kind}"


def _jitter(colour: Colour, rng: np.random.Generator, amount: int) -> Colour:
    r, g, b = (int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in colour)
    return r, g, b


def draw_item(colour: str, kind: str, rng: np.random.Generator) -> Image.Image:
    """One picture of a ``colour`` ``kind``: random size, place, tilt, background, clutter."""
    light = tuple(int(v) for v in rng.integers(215, 256, size=3))
    canvas = Image.new("RGB", (SIZE, SIZE), light)
    d = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 3))):  # grey clutter behind the item
        grey = int(rng.integers(150, 215))
        x, y, r = (float(v) for v in rng.uniform([0, 0, 6], [SIZE, SIZE, 18]))
        d.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, grey))
    layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    fill = _jitter(COLOURS[colour], rng, 18)
    edge = tuple(max(0, int(v * 0.6)) for v in fill)
    KINDS[kind](ImageDraw.Draw(layer), float(rng.uniform(70, 105)), fill, edge)  # type: ignore[arg-type]
    layer = layer.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC)
    dx, dy = (int(v) for v in rng.integers(-14, 15, size=2))
    canvas.paste(layer, (dx, dy), layer)
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return canvas


@dataclass(frozen=True)
class Catalog:
    """What :func:`write_catalog` wrote."""

    jsonl: Path
    items: list[dict[str, str]]


def write_catalog(
    directory: str | os.PathLike[str],
    per_title: int,
    *,
    seed: int = 0,
    name: str = "catalog",
    colours: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
) -> Catalog:
    """``per_title`` items of every colour and kind: pictures in ``directory/images/`` and
    ``directory/{name}.jsonl``; ids are ``{name}-{n}``; ``image_url`` is the picture's
    path under ``/media/`` (the service's media folder in the demo)."""
    if per_title < 1:
        raise ValueError(f"per_title must be positive, not {per_title}")
    out = Path(directory)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items: list[dict[str, str]] = []
    for colour in colours or list(COLOURS):
        for kind in kinds or list(KINDS):
            for _ in range(per_title):
                item_id = f"{name}-{len(items):05d}"
                file = f"{item_id}.jpg"
                draw_item(colour, kind, rng).save(images / file, quality=90)
                items.append(
                    {
                        "id": item_id,
                        "image": f"images/{file}",
                        "title": title(colour, kind),
                        "colour": colour,
                        "kind": kind,
                        "image_url": f"/media/images/{file}",
                    }
                )
    order = rng.permutation(len(items))  # shuffled, so no reader sees one title in a row
    lines = "".join(json.dumps(items[i], ensure_ascii=False) + "\n" for i in order)
    jsonl = out / f"{name}.jsonl"
    write_atomically(jsonl, lines.encode("utf-8"))
    return Catalog(jsonl, [items[i] for i in order])
