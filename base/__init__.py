"""What every ML Defender package stands on: errors, stop signals, metrics, file locks
and the strict YAML-to-dataclass loader.

``base`` imports nothing of the project. Everything else may import it; it is the bottom
of the layering described in ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from base.errors import ConfigError, FrameRejected, KeyFileError, MldError, TransportError

# The version of the whole project (one number for every component and the CLI).
__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FrameRejected",
    "KeyFileError",
    "MldError",
    "TransportError",
    "__version__",
]
