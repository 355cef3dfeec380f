"""ML Defender's command line: ``mld`` and its subcommands (``mld.cli``).

The top of the layering: it imports every component's command line; nothing imports it
but the console script.
"""

from __future__ import annotations

from base import __version__

__all__ = ["__version__"]
