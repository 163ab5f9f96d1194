"""The one parser of device strings (``cpu``, ``cuda``, ``cuda:N``, and ``auto`` where a
command allows it), shared by the PyTorch paths, the GPU backends of bundles and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runtime.errors import ConfigError

Kind = Literal["cpu", "cuda", "auto"]


@dataclass(frozen=True)
class Device:
    """``kind`` and, for ``cuda``, the GPU ``index`` (None: not given)."""

    kind: Kind
    index: int | None = None

    @property
    def gpu(self) -> int:
        """The GPU index for a GPU backend (0 when not given)."""
        return self.index or 0

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(text: str, *, allow_auto: bool = False) -> Device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` (and ``"auto"`` with ``allow_auto``) as a Device.

    Raises:
        ConfigError: anything else, with the forms that are accepted.
    """
    forms = "cpu, cuda or cuda:N" + (" (or auto)" if allow_auto else "")
    value = str(text).strip().lower()
    if value == "cpu" or (allow_auto and value == "auto"):
        return Device(value)  # type: ignore[arg-type]
    kind, sep, index = value.partition(":")
    if kind == "cuda" and not sep:
        return Device("cuda")
    if kind == "cuda" and index.isdigit():
        return Device("cuda", int(index))
    raise ConfigError(f"unknown device {text!r}: use {forms}")
