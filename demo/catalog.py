"""A small product catalog drawn with Pillow: items of several colours and kinds.

Every item is a picture of one kind (杯子, T恤, 帽子, 雨伞, 包, 鞋子) in one colour
(红色, 橙色, 黄色, 绿色, 蓝色, 紫色, 粉色, 黑色), drawn at a random size, place and
tilt on a light background with a few grey distractors. The pictures differ from item
to item, so a model has to learn colour and shape from them, not memorise one image per
title.

- :func:`write_catalog` writes the training pictures, titled ``红色的杯子`` (``{"id",
  "image", "title", "colour", "kind"}`` per line), of the shop's kinds and of four more
  that the shop does not sell, which ``cnclip train`` (data kind ``catalog``) reads;
- :func:`write_shop` writes a shop: products (``spu``) of a brand, each with a model
  code and several pictures, titled as shops title them (``回力 红色的杯子 HL-1024``),
  with sales figures (``{"id", "image", "title", "spu", "brand", "code", "colour",
  "kind", "sales", "image_url"}`` per line), which ``cnclip index build --catalog``
  reads as it is;
- :func:`judged_queries` writes queries with their relevant items, judged from the
  catalog's attributes, for ``cnclip eval search``: kinds, colour and kind, brands,
  model codes, negations (``不要红色的杯子``) and queries the shop holds nothing for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def bicycle(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    width = max(2, int(s * 0.06))
    for x in (-0.38, 0.38):
        d.ellipse(_box(s, x - 0.22, 0.0, x + 0.22, 0.44), outline=fill, width=width)
    frame = [(-0.38, 0.22), (-0.05, 0.22), (0.2, -0.12), (-0.2, -0.12), (-0.05, 0.22)]
    c = SIZE / 2
    d.line([(c + x * s, c + y * s) for x, y in frame], fill=fill, width=width)
    d.line([_box(s, 0.2, -0.12, 0.38, 0.22)[:2], _box(s, 0.38, 0.22, 0, 0)[:2]], fill=fill,
           width=width)  # fmt: skip
    d.line([_box(s, 0.14, -0.22, 0.3, -0.22)[:2], _box(s, 0.3, -0.22, 0, 0)[:2]], fill=edge,
           width=width)  # fmt: skip


def phone(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    d.rounded_rectangle(_box(s, -0.25, -0.5, 0.25, 0.5), radius=int(s * 0.07), fill=fill,
                        outline=edge)  # fmt: skip
    d.rectangle(_box(s, -0.2, -0.4, 0.2, 0.36), fill=(40, 45, 60))
    d.ellipse(_box(s, -0.03, 0.4, 0.03, 0.46), fill=edge)


def sofa(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    d.rounded_rectangle(_box(s, -0.55, -0.3, 0.55, 0.1), radius=int(s * 0.06), fill=fill,
                        outline=edge)  # fmt: skip
    d.rectangle(_box(s, -0.6, 0.05, 0.6, 0.3), fill=fill, outline=edge)
    for x in (-0.6, 0.45):
        d.rounded_rectangle(_box(s, x, -0.1, x + 0.15, 0.3), radius=int(s * 0.04), fill=fill,
                            outline=edge)  # fmt: skip
    for x in (-0.5, 0.45):
        d.rectangle(_box(s, x, 0.3, x + 0.05, 0.42), fill=(70, 50, 30))


def lamp(d: ImageDraw.ImageDraw, s: float, fill: Colour, edge: Colour) -> None:
    _poly(d, [(-0.12, -0.5), (0.12, -0.5), (0.32, -0.1), (-0.32, -0.1)], s, fill, edge)
    d.rectangle(_box(s, -0.03, -0.1, 0.03, 0.38), fill=(90, 90, 90))
    d.ellipse(_box(s, -0.25, 0.34, 0.25, 0.48), fill=fill, outline=edge)


#: What the shop sells.
KINDS: dict[str, Draw] = {
    "杯子": cup,
    "T恤": tshirt,
    "帽子": hat,
    "雨伞": umbrella,
    "包": bag,
    "鞋子": shoe,
}
#: What the model also learns to recognise but the shop does not sell: a real model knows
#: far more than any one catalog holds, and a query for one of these must find nothing.
OTHER_KINDS: dict[str, Draw] = {
    "自行车": bicycle,
    "手机": phone,
    "沙发": sofa,
    "台灯": lamp,
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
    draw = KINDS.get(kind) or OTHER_KINDS[kind]
    draw(ImageDraw.Draw(layer), float(rng.uniform(70, 105)), fill, edge)  # type: ignore[arg-type]
    layer = layer.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC)
    dx, dy = (int(v) for v in rng.integers(-14, 15, size=2))
    canvas.paste(layer, (dx, dy), layer)
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return canvas


@dataclass(frozen=True)
class Catalog:
    """What :func:`write_catalog` or :func:`write_shop` wrote."""

    jsonl: Path
    items: list[dict[str, Any]]


def write_catalog(
    directory: str | os.PathLike[str],
    per_title: int,
    *,
    seed: int = 0,
    name: str = "catalog",
    colours: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
) -> Catalog:
    """``per_title`` items of every colour and kind (the shop's and the others, by
    default), titled ``红色的杯子``, half of them with a brand drawn at random in front
    (``回力 红色的杯子``: a brand says nothing of the picture, and the model learns to
    read past it): pictures in ``directory/images/`` and ``directory/{name}.jsonl``;
    ids are ``{name}-{n}``. The model is trained on these."""
    if per_title < 1:
        raise ValueError(f"per_title must be positive, not {per_title}")
    out = Path(directory)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    brands = list(BRANDS)
    items: list[dict[str, str]] = []
    for colour in colours or list(COLOURS):
        for kind in kinds or [*KINDS, *OTHER_KINDS]:
            for _ in range(per_title):
                item_id = f"{name}-{len(items):05d}"
                file = f"{item_id}.jpg"
                draw_item(colour, kind, rng).save(images / file, quality=90)
                named = title(colour, kind)
                if rng.random() < 0.5:
                    named = f"{brands[int(rng.integers(len(brands)))]} {named}"
                items.append(
                    {
                        "id": item_id,
                        "image": f"images/{file}",
                        "title": named,
                        "colour": colour,
                        "kind": kind,
                    }
                )
    return _write_shuffled(out / f"{name}.jsonl", items, rng)


def _write_jsonl(path: Path, lines: Sequence[Mapping[str, Any]]) -> Path:
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    write_atomically(path, text.encode("utf-8"))
    return path


def _write_shuffled(
    path: Path, items: Sequence[dict[str, Any]], rng: np.random.Generator
) -> Catalog:
    """``items`` in a random order (so no reader sees one title in a row) as jsonl."""
    shuffled = [items[i] for i in rng.permutation(len(items))]
    return Catalog(_write_jsonl(path, shuffled), shuffled)


#: Brands of the shop, with the letters their model codes start with.
BRANDS: dict[str, str] = {
    "回力": "HL",
    "飞跃": "FY",
    "百雀": "BQ",
    "晨光": "CG",
    "海魂": "HH",
    "双钱": "SQ",
}
#: Queries for what the shop does not sell: kinds the model knows (it was trained on
#: them) and the shop does not hold, alone and with a colour it does hold.
NOTHING = (
    "自行车",
    "手机",
    "沙发",
    "台灯",
    "红色的自行车",
    "黑色的手机",
    "蓝色的沙发",
    "台灯 白色",
)


def shop_title(brand: str, colour: str, kind: str, code: str) -> str:
    return f"{brand} {title(colour, kind)} {code}"


def write_shop(
    directory: str | os.PathLike[str],
    products_per_title: int,
    pictures: int,
    *,
    seed: int = 0,
) -> Catalog:
    """``products_per_title`` products of every colour and kind the shop sells, each of a
    brand (taken in turn) with a model code and ``pictures`` pictures:
    ``directory/images/`` and ``directory/items.jsonl``; ids ``item-NNNNN``, products
    ``spu-NNNN``."""
    if products_per_title < 1 or pictures < 1:
        raise ValueError("products_per_title and pictures must be positive")
    out = Path(directory)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    brands = list(BRANDS)
    items: list[dict[str, Any]] = []
    product = 0
    for colour in COLOURS:
        for kind in KINDS:
            for _ in range(products_per_title):
                brand = brands[product % len(brands)]
                product += 1
                code = f"{BRANDS[brand]}-{1000 + product}"
                sales = int(rng.integers(0, 10_000))
                for _ in range(pictures):
                    item_id = f"item-{len(items):05d}"
                    file = f"{item_id}.jpg"
                    draw_item(colour, kind, rng).save(images / file, quality=90)
                    items.append(
                        {
                            "id": item_id,
                            "image": f"images/{file}",
                            "title": shop_title(brand, colour, kind, code),
                            "spu": f"spu-{product:04d}",
                            "brand": brand,
                            "code": code,
                            "colour": colour,
                            "kind": kind,
                            "sales": sales,
                            "image_url": f"/media/images/{file}",
                        }
                    )
    return _write_shuffled(out / "items.jsonl", items, rng)


def judged_queries(items: Sequence[dict[str, Any]], *, seed: int = 0) -> list[dict[str, Any]]:
    """Queries with the ids of their relevant items, judged from the attributes:
    ``{"query", "relevant", "kind"}`` (negations also name what they ask and exclude)."""
    rng = np.random.default_rng(seed)

    def ids(must: dict[str, str], must_not: dict[str, str] | None = None) -> list[str]:
        return sorted(
            str(item["id"])
            for item in items
            if all(item[k] == v for k, v in must.items())
            and not any(item[k] == v for k, v in (must_not or {}).items())
        )

    out: list[dict[str, Any]] = []
    for kind in KINDS:
        out.append({"query": kind, "relevant": ids({"kind": kind}), "kind": "kind"})
    pairs = [(c, k) for c in COLOURS for k in KINDS]
    for n in rng.choice(len(pairs), size=min(16, len(pairs)), replace=False):
        colour, kind = pairs[int(n)]
        relevant = ids({"colour": colour, "kind": kind})
        out.append({"query": title(colour, kind), "relevant": relevant, "kind": "colour+kind"})
    for brand in sorted({str(item["brand"]) for item in items}):
        out.append({"query": brand, "relevant": ids({"brand": brand}), "kind": "brand"})
    codes = sorted({str(item["code"]) for item in items})
    for n in rng.choice(len(codes), size=min(16, len(codes)), replace=False):
        code = codes[int(n)]
        out.append({"query": code, "relevant": ids({"code": code}), "kind": "code"})
    for n in rng.choice(len(pairs), size=min(8, len(pairs)), replace=False):
        colour, kind = pairs[int(n)]
        out.append(
            {
                "query": f"不要{title(colour, kind)}",
                "relevant": ids({"kind": kind}, {"colour": colour}),
                "kind": "negation",
                "must": {"kind": kind},
                "must_not": {"colour": colour},
            }
        )
    for query in NOTHING:
        out.append({"query": query, "relevant": [], "kind": "nothing"})
    return out


def write_judged(path: str | os.PathLike[str], queries: Sequence[dict[str, Any]]) -> Path:
    """The judged queries as jsonl (``cnclip eval search --queries``)."""
    return _write_jsonl(Path(path), queries)
