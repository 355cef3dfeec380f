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

**The writer's inverted lists are in a file, mapped** (``lists_dir``: the running store,
``mld rag import``, ``mld watch``): FAISS's ``OnDiskInvertedLists`` in a file private to
the process beside the database (``events.text.faiss.lists.<pid>.<n>``, deleted when the
index is replaced or closed, and, if its process died, by the next writer). Adding and
removing write into the mapping; the pages read or written are the kernel's page cache
(the process's ``RssFile``, reclaimable), not its heap (``RssAnon``), so the writer's
resident memory no longer holds every vector. A save streams the lists into the usual
single-file format (the one readers memory-map), list by list. Deletions go through
``remove_ids`` on the lists (each list compacted in place in the file); an IVF index
keeps no id map (the ids are in the lists). Below ``ivf_threshold`` the index is flat
and in memory (bounded by that threshold). Building an IVF index (training again,
``reindex``) takes the vectors as arrays that may be memory-mapped files
(rag/indexed_store.py writes them to a scratch file), trains on a sample and adds them
in chunks.

The indexes are derived data: ``indexed_upto`` in the database's meta table says up to
which event id a saved index holds, events after it are added again at start, and
``mld rag reindex`` rebuilds both from the database. A search drops duplicate ids (an
index saved just before the process died may hold a few events the catch-up adds again).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import os
import re
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from base.errors import RagError

__all__ = [
    "VectorIndex",
    "give_back_freed_memory",
    "keep_freed_memory_returnable",
    "process_alive",
    "remove_left_by_dead",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

_MAX_TRAIN = 100_000
_ADD_CHUNK = 16_384  # vectors added to a new IVF index at a time (from a mapped file)
_LISTS_SEQ = itertools.count()
_COMPACT_MIN = 16 << 20  # a lists file is never compacted below this size
# The end of an IVF index that FAISS serializes with empty array lists: "ilar", nlist,
# code_size, "sprs" and an empty vector of sizes (checked: a FAISS that writes otherwise
# is refused with a clear error rather than writing a file readers cannot read).
_EMPTY_TAIL = 4 + 8 + 8 + 4 + 8


# The process's own symbols (no ``find_library``, which runs ldconfig at import); None
# where the C library is not glibc.
_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


_LIBC = ctypes.CDLL(None)
_MALLOPT = getattr(_LIBC, "mallopt", None)
_MADVISE = getattr(_LIBC, "madvise", None)
if _MADVISE is not None:
    _MADVISE.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _MADVISE.restype = ctypes.c_int
_MADV_DONTNEED = 4  # Linux's
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_THRESHOLD = 128 * 1024  # glibc's defaults for both, before it raises them itself


def keep_freed_memory_returnable() -> bool:
    """Hold glibc's mmap and trim thresholds at their 128 KiB defaults in this process (a
    writer's: ``mld rag run``, ``import``, ``reindex``, ``mld watch``); False where the C
    library is not glibc.

    glibc raises both by itself each time a large block it mapped is freed (the mmap
    threshold up to that block's size, the trim threshold to twice it, up to 32 and 64
    MB): once the flat index's 20k vectors were rebuilt as IVF (a 20 MB array freed), the
    background training's arrays and SQLite pages were no longer mapped but carved out of
    that thread's arena, and an arena other than the main one is given back only when
    its top outgrows the trim threshold (``malloc_trim`` does not shrink it). After the
    swap that freed memory stayed resident: RssAnon +51-54 MB after two to four trainings
    at 40k replayed events, against +36-38 with the thresholds held, and +42 against +13
    in tests/rag/test_retrain_memory.py. Not all of the step: ingesting at a steady rate
    through the training at 80k, RssAnon after the swap was the same with and without
    (rag/README.md, the retrain step, for what the rest is).
    Large blocks (>= 128 KiB: a chunk of vectors, a training sample) are then mapped and
    unmapped each time; a batch's arrays (100 events) stay below that."""
    if _MALLOPT is None:
        return False
    _MALLOPT.argtypes = [ctypes.c_int, ctypes.c_int]
    _MALLOPT.restype = ctypes.c_int
    return bool(_MALLOPT(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        _MALLOPT(_M_TRIM_THRESHOLD, _THRESHOLD)
    )


def give_back_freed_memory() -> None:
    """Return the heap that a rebuilt index freed to the system (glibc ``malloc_trim``).

    A rebuild frees the old index's many small per-list arrays at once; glibc keeps that
    memory for later allocations: ingesting the shared captures' events in batches of 50,
    RSS jumped by 66 MB at the rebuild at 80k events without this, by 17 MB with it."""
    if _TRIM is not None:
        _TRIM(0)


def process_alive(pid: int) -> bool:
    """True if a process of this id exists (its files beside the database are in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_left_by_dead(directory: Path, prefix: str) -> None:
    """Delete the files (or folders) in ``directory`` named ``<prefix><pid>...`` whose
    process no longer exists: what a writer killed mid-way left (lists files, a training's
    saved indexes, vector scratch)."""
    for old in directory.glob(f"{prefix}*"):
        digits = re.match(r"\d+", old.name[len(prefix) :])
        if digits is None or process_alive(int(digits.group())):
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


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
        lists_dir: Path | None = None,
    ) -> None:
        self.path = path
        # Where an IVF index's lists are kept in a mapped file (a writer); None: in memory.
        self.lists_dir = lists_dir
        self._lists_file: Path | None = None
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
        """Bytes of vectors and ids the index holds, in memory or in its lists file (an
        estimate that leaves out FAISS's bookkeeping: IVF centroids, the flat index's id
        map): what grows per event. ``heap_bytes`` is the part in the heap."""
        inner = faiss.downcast_index(self.index)
        if isinstance(inner, faiss.IndexIVF):
            per_vector = int(inner.code_size) + 8
        else:
            per_vector = self.dim * 4 + 8
        return len(self) * per_vector

    @property
    def heap_bytes(self) -> int:
        """The part of ``memory_bytes`` in the process's heap: 0 for lists in a mapped
        file (their pages are the page cache's) or memory-mapped read-only."""
        return 0 if self.on_disk or self.mapped else self.memory_bytes

    @property
    def on_disk(self) -> bool:
        """True when the inverted lists are in this writer's mapped file."""
        return self._lists_file is not None

    def _new_lists_file(self) -> Path:
        """A fresh name for a lists file of this process; deletes those of dead ones."""
        assert self.lists_dir is not None
        prefix = f"{self.path.name}.lists."
        remove_left_by_dead(self.lists_dir, prefix)
        return self.lists_dir / f"{prefix}{os.getpid()}.{next(_LISTS_SEQ)}"

    def _lists_to_disk(self, ivf: Any) -> None:
        """Move ``ivf``'s inverted lists (in memory or mapped from a saved index) into a
        new lists file of this writer, list by list."""
        path = self._new_lists_file()
        path.unlink(missing_ok=True)
        lists: Any = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path))
        src = ivf.invlists
        for i in range(ivf.nlist):
            n = src.list_size(i)
            if n:
                lists.add_entries(i, n, src.get_ids(i), src.get_codes(i))
        ivf.replace_invlists(lists, True)  # frees the old lists; the index owns these
        lists.this.disown()  # not freed again by Python
        self._set_lists_file(path)

    def release_mapped_pages(self) -> int:
        """Take the pages of this writer's lists file out of its resident set; the bytes
        mapped (0 if the lists are not in a file).

        The lists file is mapped shared: every page a save reads (all of them: it streams
        every list) or an add writes stays mapped in the process, so its ``RssFile`` grew
        with the index (60.5 of the 87.5 MB/h the RAG store gained in the 60-minute lab
        soak, rag/README.md). ``MADV_DONTNEED`` on a shared file mapping only unmaps:
        the pages, written ones included, stay in the kernel's page cache and the file,
        and the next access maps them again (tests/rag/test_vectors_on_disk.py). Called
        after each save and after the lists are copied into a new file."""
        if self._lists_file is None or _MADVISE is None:
            return 0
        ivf: Any = faiss.extract_index_ivf(self.index)
        lists: Any = faiss.downcast_InvertedLists(ivf.invlists)
        size = int(lists.totsize)
        if size == 0:
            return 0
        address = faiss.rev_swig_ptr(lists.ptr, size).__array_interface__["data"][0]
        if _MADVISE(address, size, _MADV_DONTNEED) != 0:
            log.debug("madvise on %s failed (errno %d)", self._lists_file, ctypes.get_errno())
            return 0
        return size

    def _set_lists_file(self, path: Path | None) -> None:
        """Record the current index's lists file, deleting the previous one (no index
        of this process uses it any more; its mapping stays valid until freed)."""
        old, self._lists_file = self._lists_file, path
        if old is not None and old != path:
            old.unlink(missing_ok=True)

    def discard(self) -> None:
        """Free the index and delete its lists file (the store closes, or these indexes
        were replaced by ones trained again)."""
        self.index = self._flat()
        self._set_lists_file(None)

    def load(self, *, mapped: bool = False, source: Path | None = None) -> bool:
        """Read the saved index; False (and an empty index) if there is none or it is
        unreadable (it is then rebuilt from the database). ``mapped``: an IVF index's
        lists are memory-mapped read-only from the file instead of read into the heap (a
        reader's question touches only the ``nprobe`` lists it probes: loading the 100k
        text index took 0.9 ms and 2 MB against 20 ms and 27 MB); such an index cannot be
        added to (``writable`` False). ``source``: read that file instead of ``path`` (an
        index a training process saved), which stays this index's file."""
        source = self.path if source is None else source
        if not source.exists():
            return False
        # A writer reads an IVF index's lists mapped (the page cache), then copies them
        # into its own lists file, so the load never holds them all in its heap.
        to_disk = self.lists_dir is not None and not mapped
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped or to_disk else 0
        try:
            index = faiss.read_index(str(source), flags)
            inner = faiss.downcast_index(index)
            if to_disk and not isinstance(inner, faiss.IndexIVF):
                index = faiss.read_index(str(source))  # flat: small, and added to
        except RuntimeError as exc:
            log.warning("cannot read %s (%s): rebuilding it from the database", source, exc)
            return False
        if index.d != self.dim:
            log.warning("%s has %d dims, expected %d: rebuilding it", source, index.d, self.dim)
            return False
        inner = faiss.downcast_index(index)
        if to_disk and isinstance(inner, faiss.IndexIVF):
            self._lists_to_disk(inner)  # ``index`` owns ``inner``: kept
        else:
            self._set_lists_file(None)
        self.index = index
        self.mapped = mapped
        # Not saved with the index: assume it was trained on what it holds.
        self.trained_on = int(index.ntotal) if isinstance(inner, faiss.IndexIVF) else 0
        self._set_nprobe()
        self.release_mapped_pages()  # the copy wrote every page of the new file
        return True

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            if self.on_disk:
                self._write_streamed(tmp)
            else:
                faiss.write_index(self.index, str(tmp))
            os.replace(tmp, self.path)
        except (RuntimeError, OSError) as exc:
            raise RagError(f"cannot save the index {self.path}: {exc}") from exc
        self.dirty = 0
        if self.on_disk:
            self._compact_if_sparse()
            self.release_mapped_pages()

    def _compact_if_sparse(self) -> None:
        """Copy the lists into a new file when the lists file has grown to over four
        times what they hold. FAISS gives each list a slot of a power of two entries and
        frees the old slot when a list outgrows it; with events added and deleted
        (retention) the freed slots are reused only in part, and the file doubles: held at
        40k events (10.5 MB of text codes and ids), the text lists' file reached 64 MB,
        and the pages touched count in the writer's RssFile. The copy reads the file just
        saved, mapped, list by list."""
        assert self._lists_file is not None
        try:
            size = self._lists_file.stat().st_size
        except OSError:
            return
        if size <= max(4 * self.memory_bytes, _COMPACT_MIN):
            return
        index = faiss.read_index(str(self.path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        self._lists_to_disk(faiss.downcast_index(index))
        self.index = index
        self._set_nprobe()
        log.debug("index %s: lists file of %d MB compacted", self.path.name, size >> 20)

    def _write_streamed(self, out: Path) -> None:
        """Write the IVF index with its lists file's lists in FAISS's own single-file
        format (array lists, "full": every list's size, then each list's codes and ids,
        contiguous: what readers memory-map), list by list from the mapping, so saving
        holds no copy of the lists in the heap."""
        ivf: Any = faiss.downcast_index(self.index)
        lists = ivf.invlists
        # The index's header, quantizer and parameters: serialized with empty lists.
        empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)  # kept alive meanwhile
        ivf.own_invlists = False
        ivf.replace_invlists(empty, False)
        try:
            head = bytes(faiss.serialize_index(ivf))
        finally:
            ivf.replace_invlists(lists, True)
        nlist, code_size = int(ivf.nlist), int(ivf.code_size)
        tail = b"ilar" + struct.pack("<QQ", nlist, code_size) + b"sprs" + struct.pack("<Q", 0)
        if len(head) < _EMPTY_TAIL or head[-_EMPTY_TAIL:] != tail:
            raise RagError(
                f"this FAISS ({faiss.__version__}) serializes IVF lists in a layout this "
                "store does not know: set rag.ivf_threshold above rag.max_events to keep "
                "the indexes flat, or use the FAISS of the venv"
            )
        sizes = np.array([lists.list_size(i) for i in range(nlist)], dtype=np.uint64)
        with open(out, "wb") as f:
            f.write(head[:-_EMPTY_TAIL])
            f.write(b"ilar" + struct.pack("<QQ", nlist, code_size) + b"full")
            f.write(struct.pack("<Q", nlist))
            f.write(sizes.astype("<u8").tobytes())
            for i, n in enumerate(sizes.tolist()):
                if n:
                    f.write(faiss.rev_swig_ptr(lists.get_codes(i), n * code_size).tobytes())
                    f.write(faiss.rev_swig_ptr(lists.get_ids(i), n).tobytes())

    def reset(self) -> None:
        self.index = self._flat()
        self._set_lists_file(None)
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
            self._build_ivf(ids, vectors)
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
        """``vectors`` may be a memory-mapped array (rag/indexed_store.py): only the
        training sample and one chunk at a time are read into memory."""
        n = len(ids)
        # 4 sqrt(n) lists, each trained on at least 40 points (FAISS warns below 39).
        nlist = int(min(self.max_lists, max(64, min(4 * math.sqrt(n), n / 40))))
        ivf = faiss.index_factory(self.dim, f"IVF{nlist},SQ8", self._metric)
        rng = np.random.default_rng(0)
        size = max(_MAX_TRAIN, 40 * nlist)
        rows = np.sort(rng.choice(n, size, replace=False)) if n > size else slice(None)
        ivf.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        if self.lists_dir is not None:
            self._lists_to_disk(faiss.downcast_index(ivf))
        else:
            self._set_lists_file(None)
        for start in range(0, n, _ADD_CHUNK):
            part = np.ascontiguousarray(vectors[start : start + _ADD_CHUNK], dtype=np.float32)
            ivf.add_with_ids(part, np.asarray(ids[start : start + _ADD_CHUNK], dtype=np.int64))
        self.index = ivf
        self.mapped = False
        self.trained_on = n
        self._set_nprobe()
        self.dirty = n
        self.release_mapped_pages()
        log.info(
            "index %s: %d vectors, now IVF%d,SQ8 (nprobe %d%s)",
            self.path.name,
            n,
            nlist,
            self.nprobe,
            ", lists in a mapped file" if self.on_disk else "",
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
