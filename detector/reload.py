"""Hot reload: watch the bundle folder and load a new bundle beside the one serving.

A background thread looks at the folder every ``interval_s`` and takes its *signature*:
the name, size and modification time of every file in it (hidden files left out, so the
``.name.tmp`` files ``write_bundle`` renames into place do not count). When the signature
differs from the one last tried and has stayed the same for one more look (a copy in
progress is not read half-way), the thread loads the folder with ``load``
(``detector.bundle.load_bundle``: validate, compile, probe). Then:

* success: the bundle waits in the watcher until the scoring loop calls :meth:`take`
  between two batches, so the batch in flight finishes on the old bundle and none is
  dropped (the loop keeps receiving while the new one compiles);
* ``ModelError`` (or any other failure): the reason is logged, ``refused`` counts it, and
  the old bundle keeps serving. The same signature is never tried twice: the next attempt
  comes when the folder changes again.

A bundle whose version is the one already serving (only REPORT.md changed, or a file was
touched) is not swapped in and not counted.

The watcher is generic over what it loads (anything with a ``version``): the anomaly model
(anomaly/) is watched the same way, through its ``current`` pointer (``sign``) instead of
the folder's files.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from base.errors import ModelError

__all__ = ["BundleWatcher", "Signature", "bundle_signature"]

log = logging.getLogger(__name__)

# (name, size in bytes, mtime in ns) of each file, sorted; None when the folder is missing.
Signature = tuple[tuple[str, int, int], ...] | None


class Versioned(Protocol):
    @property
    def version(self) -> str: ...


M = TypeVar("M", bound=Versioned)


def bundle_signature(bundle_dir: Path) -> Signature:
    """What the watcher compares: names, sizes and mtimes of the folder's visible files."""
    try:
        entries = list(os.scandir(bundle_dir))
    except OSError:
        return None
    out = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
        except OSError:  # removed between listing and stat: the next look sees it
            continue
        out.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


class BundleWatcher(Generic[M]):
    """Loads the bundle folder again when it changes; the scoring loop takes the result."""

    def __init__(
        self,
        bundle_dir: Path,
        load: Callable[[Path], M],
        interval_s: float,
        *,
        current_version: str = "",
        signature: Signature = None,
        sign: Callable[[Path], Signature] = bundle_signature,
        what: str = "model bundle",
    ) -> None:
        """``signature`` is the folder's signature when the serving bundle was loaded (take
        it *before* loading, so a change during that load is seen); None takes it now.
        ``sign`` computes signatures (default: the folder's visible files); ``what`` names
        the model in log lines."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive (0 means: do not watch)")
        self.bundle_dir = Path(bundle_dir)
        self.what = what
        self._sign = sign
        self.interval_s = interval_s
        self.reloads = 0
        self.refused = 0
        self.last_error = ""
        self.version = current_version
        self._load = load
        self._tried: Signature = signature if signature is not None else sign(self.bundle_dir)
        self._seen: Signature = self._tried
        self._lock = threading.Lock()
        self._ready: M | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop looking; a load in progress is waited for up to ``timeout_s``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def take(self) -> M | None:
        """The bundle loaded since the last call, or None (cheap: call between batches)."""
        if self._ready is None:
            return None
        with self._lock:
            bundle, self._ready = self._ready, None
        return bundle

    def check(self) -> bool:
        """One look at the folder (the thread calls this); True if a new bundle was loaded."""
        sig = self._sign(self.bundle_dir)
        settled = sig == self._seen
        self._seen = sig
        if sig == self._tried or not settled:
            return False
        self._tried = sig
        if sig is None:
            self._refuse(f"{self.bundle_dir} disappeared")
            return False
        try:
            bundle = self._load(self.bundle_dir)
        except ModelError as exc:
            self._refuse(str(exc))
            return False
        except Exception as exc:  # a broken bundle must not end the watcher
            log.debug("unexpected error loading %s", self.bundle_dir, exc_info=True)
            self._refuse(f"{type(exc).__name__}: {exc}")
            return False
        if bundle.version == self.version:
            log.info("%s folder %s changed, same version %s: kept", self.what,
                     self.bundle_dir, bundle.version)  # fmt: skip
            return False
        with self._lock:
            self._ready = bundle
        log.info("new %s %s ready (was %s)", self.what, bundle.version, self.version or "none")
        self.version = bundle.version
        self.reloads += 1
        return True

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        self.last_error = reason
        log.warning(
            "refused the %s in %s, still serving %s: %s (fix or replace it; "
            "it is tried again when it changes)",
            self.what,
            self.bundle_dir,
            self.version or "the previous one",
            reason,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()
