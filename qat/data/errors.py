"""Exceptions raised by the data package. Every message names the path involved and says how to fix it."""

from __future__ import annotations


class DataRootError(FileNotFoundError):
    """A data root (or a required split/class folder inside it) is missing, empty or in an unknown layout."""


class DataFormatError(ValueError):
    """The files exist but their content is not what the data module expects (class names, sizes...)."""


class ImageDecodeError(DataFormatError):
    """An image file could not be read or decoded; ``path`` is the offending file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode image file '{self.path}': {reason}")
