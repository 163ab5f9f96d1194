"""The default Chinese prompt templates for zero-shot classification.

Written for this project, for photos of everyday objects and products: each has one
``{}`` for the label. A request may bring its own (``templates``).
"""

from __future__ import annotations

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "一张{}的照片。",
    "这是一张{}的照片。",
    "图片里是{}。",
    "一张清晰的{}照片。",
    "一张模糊的{}照片。",
    "{}的特写。",
    "{}的商品图。",
    "一件{}的实拍图。",
    "一张{}的图片，背景简单。",
    "一幅{}的画。",
    "{}的卡通图片。",
)
