"""ML Defender's command line: ``mld`` and its subcommands (``mld.cli``), and the one
start-up every long-running service's run command hands its parts to (``mld.runner``).

The top of the layering: ``mld.cli`` imports every component's command line and nothing
imports it but the console script; the components' cli.py import ``mld.runner``.
"""

from __future__ import annotations

from base import __version__

__all__ = ["__version__"]
