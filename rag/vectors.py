"""The FAISS indexes: one vector per event, found by event id.

Two indexes beside the database, both ``IndexIDMap``-style (the FAISS id is the event id):

* **features** (``*.features.faiss``, 54 dims, L2): the flow's feature vector
  (detector/features.py), centred and scaled by the shipped bundle's benign median and
  IQR and clipped to +-10, for "events like this one";
* **text** (``*.text.faiss``, 256 dims, inner product on unit vectors): the embedding of
  the event's description (rag/describe.py), for questions.

An index starts exact (flat). At ``ivf_threshold`` events it is rebuilt as an inverted
file with 8-bit scalar quantisation (``IVF<nlist>,SQ8``; nlist = 4 sqrt(n), clipped to
64..``max_lists`` and to n/40; trained on up to max(100k, 40 nlist) of its vectors), and trained
again from the database each time it holds four times what it was trained on, so nlist
keeps up and the centroids cover later events. At a million events a flat search reads
every vector (1 GB for the text index); IVF reads ``nprobe`` lists of about n / nlist
each, at a quarter of the bytes. bench/rag_speed.py measures both.

``max_lists`` bounds what adding costs: every vector added is compared with every list's
centroid (one thread: 20 us of CPU per text vector at 4000 lists, 10.6 at 2048, 5.7 at
1024; 24, 10.4 and 5.2 for the 54-dim features), which made FAISS ~45 us of every
event's ingest at a million events. The text index stops at 2048 lists (a question's
search reads twice the codes of 4000 lists, ~1 ms at 1M), the features index, which only
``similar`` searches, at 1024.

The indexes are derived data: ``indexed_upto`` in the database's meta table says up to
which event id a saved index holds, events after it are added again at start, and
``mld rag reindex`` rebuilds both from the database. A search drops duplicate ids (an
index saved just before the process died may hold a few events the catch-up adds again).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from base.errors import RagError

__all__ = ["VectorIndex", "give_back_freed_memory"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

_MAX_TRAIN = 100_000


# The process's own symbols (no ``find_library``, which runs ldconfig at import); None
# where the C library is not glibc.
_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def give_back_freed_memory() -> None:
    """Return the heap that a rebuilt index freed to the system (glibc ``malloc_trim``).

    A rebuild frees the old index's many small per-list arrays at once; glibc keeps that
    memory for later allocations: ingesting the shared captures' events in batches of 50,
    RSS jumped by 66 MB at the rebuild at 80k events without this, by 17 MB with it."""
    if _TRIM is not None:
        _TRIM(0)


class VectorIndex:
    """One FAISS index of event vectors, saved to and loaded from ``path``."""

    def __init__(
        self,
        path: Path,
        dim: int,
        *,
        inner_product: bool,
        ivf_threshold: int = 20000,
        nprobe: int = 16,
        max_lists: int = 4096,
    ) -> None:
        self.path = path
        self.dim = dim
        self.inner_product = inner_product
        self.ivf_threshold = ivf_threshold
        self.nprobe = nprobe
        self.max_lists = max_lists
        self._metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
        self.index: faiss.Index = self._flat()
        self.dirty = 0  # vectors added since the last save
        self.trained_on = 0  # vectors the IVF index was trained with
        self.mapped = False  # lists memory-mapped from the file, read-only (load)

    def _flat(self) -> faiss.Index:
        flat = faiss.IndexFlatIP(self.dim) if self.inner_product else faiss.IndexFlatL2(self.dim)
        return faiss.IndexIDMap2(flat)

    @property
    def kind(self) -> str:
        return "ivf" if self.is_ivf else "flat"

    @property
    def is_ivf(self) -> bool:
        return isinstance(faiss.downcast_index(self.index), faiss.IndexIVF)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def memory_bytes(self) -> int:
        """Bytes of vectors and ids the index holds (an estimate that leaves out FAISS's
        bookkeeping: IVF centroids, the id map's hash table): what grows per event."""
        inner = faiss.downcast_index(self.index)
        if isinstance(inner, faiss.IndexIVF):
            per_vector = int(inner.code_size) + 8
        else:
            per_vector = self.dim * 4 + 8
        return len(self) * per_vector

    def load(self, *, mapped: bool = False) -> bool:
        """Read the saved index; False (and an empty index) if there is none or it is
        unreadable (it is then rebuilt from the database). ``mapped``: an IVF index's
        lists are memory-mapped read-only from the file instead of read into the heap (a
        reader's question touches only the ``nprobe`` lists it probes: loading the 100k
        text index took 0.9 ms and 2 MB against 20 ms and 27 MB); such an index cannot be
        added to (``writable`` False)."""
        if not self.path.exists():
            return False
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped else 0
        try:
            index = faiss.read_index(str(self.path), flags)
        except RuntimeError as exc:
            log.warning("cannot read %s (%s): rebuilding it from the database", self.path, exc)
            return False
        if index.d != self.dim:
            log.warning("%s has %d dims, expected %d: rebuilding it", self.path, index.d, self.dim)
            return False
        self.index = index
        self.mapped = mapped
        inner = faiss.downcast_index(index)
        # Not saved with the index: assume it was trained on what it holds.
        self.trained_on = int(index.ntotal) if isinstance(inner, faiss.IndexIVF) else 0
        self._set_nprobe()
        return True

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, self.path)
        except (RuntimeError, OSError) as exc:
            raise RagError(f"cannot save the index {self.path}: {exc}") from exc
        self.dirty = 0

    def reset(self) -> None:
        self.index = self._flat()
        self.mapped = False
        self.dirty = 0

    def add(self, ids: Sequence[int] | npt.NDArray[np.int64], vectors: F32) -> None:
        if len(ids) == 0:
            return
        if self.mapped:
            raise RagError(f"{self.path} is memory-mapped read-only: load it unmapped to add")
        self.index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        )
        self.dirty += len(ids)
        if not self.is_ivf and len(self) >= self.ivf_threshold:
            self._to_ivf()
            give_back_freed_memory()

    def remove(self, ids: Sequence[int] | npt.NDArray[np.int64]) -> int:
        """Drop the vectors of ``ids`` (those it holds); returns how many went."""
        if len(ids) == 0:
            return 0
        if self.mapped:
            raise RagError(f"{self.path} is memory-mapped read-only: load it unmapped to remove")
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        removed = int(self.index.remove_ids(selector))
        self.dirty += removed
        return removed

    @property
    def needs_retraining(self) -> bool:
        """True once an IVF index holds four times what it was trained on: its lists are
        too few and too long, and its centroids describe the first events only. The
        vectors are rebuilt from the database then (RagStore), not decoded from SQ8."""
        return self.is_ivf and len(self) >= 4 * max(self.trained_on, 1)

    def build(self, ids: npt.NDArray[np.int64], vectors: F32) -> None:
        """Replace the index by one holding exactly these vectors (IVF trained on them at
        their number when there are ``ivf_threshold`` or more)."""
        self.reset()
        if len(ids) >= self.ivf_threshold:
            self._build_ivf(ids, np.ascontiguousarray(vectors, dtype=np.float32))
        elif len(ids):
            self.add(ids, vectors)

    def _to_ivf(self) -> None:
        """Rebuild the flat index as IVF,SQ8 from its own (exact) vectors."""
        n = len(self)
        idmap: Any = faiss.downcast_index(self.index)
        ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
        vectors = idmap.index.reconstruct_n(0, n)
        self._build_ivf(ids, vectors)

    def _build_ivf(self, ids: npt.NDArray[np.int64], vectors: F32) -> None:
        n = len(ids)
        # 4 sqrt(n) lists, each trained on at least 40 points (FAISS warns below 39).
        nlist = int(min(self.max_lists, max(64, min(4 * math.sqrt(n), n / 40))))
        ivf = faiss.index_factory(self.dim, f"IVF{nlist},SQ8", self._metric)
        rng = np.random.default_rng(0)
        size = max(_MAX_TRAIN, 40 * nlist)
        sample = vectors if n <= size else vectors[rng.choice(n, size, replace=False)]
        ivf.train(sample)
        ivf.add_with_ids(vectors, ids)
        self.index = ivf
        self.mapped = False
        self.trained_on = n
        self._set_nprobe()
        self.dirty = n
        log.info(
            "index %s: %d vectors, now IVF%d,SQ8 (nprobe %d)", self.path.name, n, nlist, self.nprobe
        )

    def _set_nprobe(self) -> None:
        inner = faiss.downcast_index(self.index)
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = self.nprobe

    def search(self, vector: F32, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest (id, score), best first; score is a similarity (higher is
        closer) for both metrics. Duplicate ids are dropped."""
        if len(self) == 0 or k <= 0:
            return []
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        distances, ids = self.index.search(query, min(len(self), k * 2))
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        for d, i in zip(distances[0].tolist(), ids[0].tolist(), strict=True):
            if i < 0 or i in seen:
                continue
            seen.add(i)
            out.append((i, d if self.inner_product else -d))
            if len(out) == k:
                break
        return out
