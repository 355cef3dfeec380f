"""ML Defender: the ``mld`` command and what every component shares (errors, logging)."""

from __future__ import annotations

from mld.errors import ConfigError, FrameRejected, KeyFileError, MldError, TransportError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FrameRejected",
    "KeyFileError",
    "MldError",
    "TransportError",
    "__version__",
]
