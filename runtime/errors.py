"""Errors a user can cause, as typed exceptions with messages that say what to do.

Every package of the project raises subclasses of :class:`CnClipError` for bad
input (files, images, arguments); the command line prints their message on one
line and the service maps them to 4xx answers. Anything else is a bug.
"""

from __future__ import annotations


class CnClipError(Exception):
    """Base class of all errors caused by what a user gave us."""


class InvalidImageError(CnClipError):
    """An image that cannot be decoded (not an image, truncated, unsupported)."""


class ImageTooLargeError(InvalidImageError):
    """An image whose pixel count exceeds the configured limit (decompression bombs)."""


class CheckpointError(CnClipError):
    """A checkpoint that is missing, unreadable, or does not fit the architecture."""


class ConfigError(CnClipError):
    """An unknown architecture name or an inconsistent model configuration."""


class DataError(CnClipError):
    """A dataset that is missing, malformed or inconsistent (files, ids, annotations)."""
