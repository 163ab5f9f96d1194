"""Chinese prompt templates for zero-shot classification, written for this project.

Each template holds one ``{}`` for the class name. Two sets ship:

- ``prompts`` (:data:`PROMPT_TEMPLATES`, 12): photos of everyday objects and
  products; the service's default and ``cnclip eval zeroshot``'s;
- ``captions`` (:data:`CAPTION_TEMPLATES`, 8): what the trainer turns class names
  into captions with, and validates zero-shot with, unless a run config says
  otherwise. A model trained on classification data is evaluated with these to
  reproduce the trainer's own figures.

:func:`load_templates` takes a set's name or a UTF-8 file of one template per line.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import ConfigError

PROMPT_TEMPLATES: tuple[str, ...] = (
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

CAPTION_TEMPLATES: tuple[str, ...] = (
    "一张{}的照片。",
    "{}的图片",
    "这是一张{}的照片",
    "一张模糊的{}的照片",
    "一张清晰的{}的照片",
    "一张小的{}的照片",
    "一张大的{}的照片",
    "{}",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "prompts": PROMPT_TEMPLATES,
    "captions": CAPTION_TEMPLATES,
}


def fill(template: str, name: str) -> str:
    """The template with its ``{}`` replaced by ``name`` (other braces stay as they are)."""
    return template.replace("{}", name)


def check_templates(templates: list[str], where: str = "templates") -> list[str]:
    """The templates, each checked to hold ``{}``; ConfigError otherwise."""
    if not templates:
        raise ConfigError(f"{where}: no templates (give one per line, each with {{}})")
    for number, template in enumerate(templates, 1):
        if "{}" not in template:
            raise ConfigError(
                f"{where}: template {number} ({template!r}) has no {{}} for the class name"
            )
    return templates


def load_templates(spec: str | os.PathLike[str]) -> list[str]:
    """A built-in set by name (``prompts``, ``captions``) or a file of one template per line.

    Blank lines are ignored. Raises ConfigError for an unreadable file or a template
    without ``{}``.
    """
    if isinstance(spec, str) and spec in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[spec])
    path = Path(spec)
    if not path.is_file():
        names = ", ".join(TEMPLATE_SETS)
        raise ConfigError(f"templates {str(spec)!r}: neither a file nor a built-in set ({names})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read templates ({exc}); give a UTF-8 text file") from exc
    return check_templates([line.strip() for line in text.splitlines() if line.strip()], str(path))
