"""Lazy re-exports for package ``__init__`` files.

A package's ``__init__`` re-exports the public names of its modules so users write
``from detector import Scorer``. Importing them eagerly made every ``import detector.config``
(which runs ``detector/__init__``) load the whole package and, through it, FAISS, etcd3/grpc,
treelite and SciPy: ``mld detector analyze`` spent more time importing than reading a
10 MB capture. With :func:`lazy_exports` a name's module is imported on first use::

    if TYPE_CHECKING:                      # what type checkers and readers see
        from detector.scoring import Scorer
    __all__ = ["Scorer"]
    __getattr__, __dir__ = lazy_exports(__name__, {"detector.scoring": ("Scorer",)})

A submodule not imported yet is reachable as an attribute too (``detector.scoring`` after
``import detector``), as it was when the ``__init__`` imported it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package`` that import each exported
    name from its module (``exports``: module -> names) when it is first asked for."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}"):
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # once: later lookups are plain
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
