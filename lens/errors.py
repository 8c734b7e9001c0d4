"""Errors raised by lens.

Every message says what was expected and how to fix it, so that the CLI can print it as one line and the
dashboard can show it with ``st.error`` without a traceback.
"""

from __future__ import annotations


class LensError(Exception):
    """Base class of every error lens raises on purpose."""


class UnknownEncoderError(LensError, KeyError):
    """An encoder name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(LensError):
    """The encoder's weights cannot be found or fetched on this machine; the message carries the remedy."""


class CatalogError(LensError):
    """A catalog that cannot be used as given (missing column, duplicate ids, missing files, ...)."""


class ImageLoadError(LensError):
    """An image that cannot be decoded (not an image, truncated, too large, ...)."""


class IndexMismatchError(LensError):
    """An index or embedding file that does not match what it is used with (dimension, encoder, ids)."""


class CacheError(LensError):
    """A cache entry that is corrupt or does not match its key."""
