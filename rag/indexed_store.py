"""The RAG store: the event store (rag/store.py) and the two FAISS indexes beside it.

:class:`RagStore` is the event store and its two FAISS indexes (rag/vectors.py) as one
thing: ``ingest`` writes a batch of ScoredEvents to SQLite in one transaction, then adds
their vectors; ``catch_up`` adds what the saved indexes miss (events written after the
last save, e.g. before a kill); ``reindex`` rebuilds both indexes from SQLite. Readers
(the console, ``mld rag`` queries) and writers (``mld rag run``, ``mld rag import``,
``mld watch``) all open it here; the transport service is rag/service.py.

Several processes may write one store (``mld watch run`` beside ``mld rag run``): each
indexes the events the others stored (read back from SQLite) before its own and before
saving, so every saved index holds every event up to its ``indexed_upto``, and saves take
a lock file beside the database so two writers never interleave their index files.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from base.errors import RagError
from base.filelock import file_lock
from detector.bundle import DEFAULT_BUNDLE_DIR, read_manifest
from detector.features import columns_from_records, feature_matrix, packed_feature_matrix
from native import _ragtext
from proto.events_pb2 import ScoredEvent
from proto.flowpack import ENCODE_OPS, PACKED_DTYPE
from rag.config import RagConfig
from rag.describe import TEXT_DIM, code_blobs, describe_batch, embed_flat_codes, embed_texts
from rag.store import EventStore
from rag.vectors import (
    VectorIndex,
    give_back_freed_memory,
    keep_freed_memory_returnable,
    remove_left_by_dead,
)

__all__ = ["RagStore", "db_path"]

log = logging.getLogger(__name__)

_CLIP = 10.0
_RETRY_S = 300  # after a failed training (the indexes it would replace still work)
_SUPERSEDED_MAX = 10_000  # replaced rows' ids held for the next save at most


def db_path(cfg: RagConfig, state_dir: str) -> Path:
    return Path(cfg.db) if cfg.db else Path(state_dir) / "rag" / "events.sqlite"


class FeatureScaler:
    """Feature vectors centred and scaled like the detector's explanations (benign median
    and IQR of the shipped bundle), clipped, so no one feature's unit dominates L2.

    The matrix is the detector's (``feature_matrix(columns_from_records(...))``), computed
    from the events' serialized bytes in two C passes: their FlowRecords decoded into the
    packed rows of ``proto.flowpack`` (native ``record_rows``, the program the sniffer
    encodes those rows with), then ``packed_feature_matrix`` (the detector's native
    matrix of packed rows): the same bits (tests/rag/test_describe.py), ~0.3 us an event
    against ~8 for the columns from the records' fields in Python. A record the decoder
    does not take (a value wider than its column, such as a negative enum) makes the
    batch go through the Python path."""

    def __init__(self, bundle_dir: Path = DEFAULT_BUNDLE_DIR) -> None:
        manifest = read_manifest(bundle_dir)
        self.center = np.array(manifest.center, dtype=np.float32)
        scale = np.array(manifest.scale, dtype=np.float32)
        self.scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        self.dim = len(self.center)

    def __call__(
        self, events: Sequence[ScoredEvent], blobs: Sequence[bytes] | None = None
    ) -> npt.NDArray[np.float32]:
        """The scaled vectors of ``events``; ``blobs``: their serialized bytes, if the
        caller has them (the ingest stores them)."""
        return self._scaled(record_matrix(events, blobs))

    def of_blobs(self, blobs: Sequence[bytes]) -> npt.NDArray[np.float32]:
        """The scaled vectors of serialized events (stored rows' blobs), parsed only if
        the C decoder does not take them."""
        return self._scaled(record_matrix(None, blobs))

    def _scaled(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        scaled = np.clip((x - self.center) / self.scale, -_CLIP, _CLIP)
        return np.asarray(scaled, dtype=np.float32)


_RECORD_FIELD = ScoredEvent.DESCRIPTOR.fields_by_name["record"].number


def record_matrix(
    events: Sequence[ScoredEvent] | None, blobs: Sequence[bytes] | None = None
) -> npt.NDArray[np.float32]:
    """``feature_matrix(columns_from_records([ev.record for ev in events]))``, from the
    events' serialized bytes (``blobs``, else serialized here) in C. ``events`` may be
    None when ``blobs`` are given: they are parsed only for the Python path."""
    if blobs is None:
        assert events is not None
        blobs = [ev.SerializeToString() for ev in events]
    rows = np.zeros(len(blobs), dtype=PACKED_DTYPE)
    try:
        _ragtext.record_rows(list(blobs), _RECORD_FIELD, ENCODE_OPS, rows, PACKED_DTYPE.itemsize)
    except ValueError:
        if events is None:
            events = [ScoredEvent.FromString(blob) for blob in blobs]
        return feature_matrix(columns_from_records([ev.record for ev in events]))
    return packed_feature_matrix(rows)


class RagStore:
    """SQLite events plus the feature and text indexes beside the database."""

    def __init__(self, path: Path, cfg: RagConfig, *, readonly: bool = False) -> None:
        # One FAISS thread: adding an EventBatch (~100 vectors) cost 15 ms in OpenMP
        # start-up and spinning on 2 busy cores against 0.7 ms with one (bench/README.md).
        faiss.omp_set_num_threads(1)
        self.cfg = cfg
        self.store = EventStore(path, readonly=readonly)
        self.scaler = FeatureScaler()
        # A writer keeps its IVF lists in a mapped file beside the database
        # (rag/vectors.py), not in its heap.
        lists_dir = None if readonly else path.parent
        if not readonly:
            # So what the background training frees goes back to the system after the
            # swap, not into glibc's pools (rag/vectors.py, rag/README.md).
            keep_freed_memory_returnable()
        common = {"ivf_threshold": cfg.ivf_threshold, "nprobe": cfg.ivf_nprobe}
        # Lists at most: what each added vector is compared with (rag/vectors.py).
        self.features = VectorIndex(
            path.with_suffix(".features.faiss"),
            self.scaler.dim,
            inner_product=False,
            max_lists=1024,
            lists_dir=lists_dir,
            **common,
        )
        self.text = VectorIndex(
            path.with_suffix(".text.faiss"),
            TEXT_DIM,
            inner_product=True,
            max_lists=2048,
            lists_dir=lists_dir,
            **common,
        )
        self.readonly = readonly
        # Held around reading or writing the saved indexes and ``indexed_upto`` (a
        # read-only store that cannot create the file reads without it).
        self._lock_path = path.with_suffix(".faiss.lock")
        # Every event id up to this one is in the in-memory indexes (None: not known yet,
        # before open_indexes or reindex on a store that was not empty).
        self._indexed_upto: int | None = None if self.store.max_id() else 0
        # Training again in the background (ingest goes on into the current indexes).
        self._retrain: _Retrain | None = None
        self._retrain_after = 0.0  # time.monotonic(): not again before this after a failure
        self._superseded: list[int] = []  # replaced rows' ids, out of the indexes at the save

    def open_indexes(self) -> int:
        """Load the saved indexes and add the events they miss; returns how many."""
        with file_lock(self._lock_path, shared=True, optional=True):
            upto = int(self.store.meta("indexed_upto") or 0)
            # A reader maps the saved lists rather than reading them into its heap,
            # unless it has events to add to them (a writer that has not saved yet).
            mapped = self.readonly and self.store.max_id() <= upto
            loaded = self.features.load(mapped=mapped) and self.text.load(mapped=mapped)
        if not loaded:
            self.features.reset()
            self.text.reset()
            upto = 0
        self._indexed_upto = upto
        return self.catch_up(upto)

    def _vectors(
        self, chunk: list[tuple[int, bytes, str]]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Ids, feature vectors and text vectors of stored events (store.scan rows)."""
        return _chunk_vectors(self.scaler, chunk)

    def _index_stored(self, after_id: int, until_id: int | None = None) -> int:
        """Index the stored events after ``after_id`` (up to ``until_id``); how many."""
        added = 0
        for chunk in self.store.scan(after_id, until_id=until_id):
            ids, features, texts = self._vectors(chunk)
            self.features.add(ids, features)
            self.text.add(ids, texts)
            added += len(ids)
            self._indexed_upto = int(ids[-1])
        return added

    def catch_up(self, after_id: int) -> int:
        added = self._index_stored(after_id)
        if added:
            log.info("indexed %d events the saved indexes did not hold", added)
            if not self.readonly:
                self.save()
        return added

    def _others_before(self, first_id: int) -> None:
        """Index what other writers stored between the last event indexed here and
        ``first_id`` (read back from SQLite), so the indexes have no hole."""
        if self._indexed_upto is not None and first_id > self._indexed_upto + 1:
            added = self._index_stored(self._indexed_upto, first_id - 1)
            log.debug("indexed %d events another process stored", added)

    def ingest(
        self,
        events: Sequence[ScoredEvent],
        detector_id: str,
        *,
        meta: Mapping[str, str] | None = None,
        whole: bool = False,
    ) -> range:
        """Store events (one transaction per ``write_batch``) and index them. With ``meta``,
        all of them and those meta rows go in one transaction: all or nothing (``mld
        watch`` stores a capture file and the record that it did so together); with
        ``whole``, all of them in one transaction too (the service's gathered batches)."""
        ids = range(0)
        if meta is not None and not events:
            self.store.add([], detector_id, [], meta)
        one = meta is not None or whole
        size = max(len(events), 1) if one else self.cfg.write_batch
        for start in range(0, len(events), size):
            part = events[start : start + size]
            texts, codes, ends = describe_batch(part)
            # Serialized once: the stored blob and the feature rows' source.
            blobs = [ev.SerializeToString() for ev in part]
            got = self.store.add(
                part, detector_id, texts, meta, code_blobs(codes, ends), serialized=blobs
            )
            if len(got):
                self._others_before(got.start)
                self.features.add(list(got), self.scaler(part, blobs))
                self.text.add(list(got), embed_flat_codes(codes, ends))
                # Rows replaced by a newer record of their flow (interim records).
                self._drop_superseded(self.store.superseded)
                if self._indexed_upto is not None:
                    self._indexed_upto = got.stop - 1
            ids = range(ids.start if len(ids) else got.start, got.stop)
        self._retrain_if_due()
        return ids

    def _drop_superseded(self, ids: list[int]) -> None:
        """Take the vectors of rows a newer record of their flow replaced out of the
        indexes: now from indexes in memory, at the next save from lists in a file.

        Removing from IVF lists scans every list's ids, so it maps in a page of every list
        of the lists file: done at every batch with an interim record replaced (most
        batches of a busy network), it kept ~14 MB of the 32 MB text lists file resident
        at 37k events in the lab soak, back within 3 s of each save releasing them
        (rag/vectors.py ``release_mapped_pages``). At the save the pages it maps are
        released with the rest. Meanwhile a search may name a replaced row: readers take
        rows from the database by id, where it is gone, and show the others."""
        if not ids:
            return
        if self._retrain is not None:  # the training may have read those rows already
            self._retrain.removed.extend(ids)
        if self.features.on_disk or self.text.on_disk:
            self._superseded.extend(ids)
            if len(self._superseded) >= _SUPERSEDED_MAX:
                self._drop_superseded_now()
        else:
            self.features.remove(ids)
            self.text.remove(ids)

    def _drop_superseded_now(self) -> None:
        if self._superseded:
            self.features.remove(self._superseded)
            self.text.remove(self._superseded)
            self._superseded = []

    def _retrain_if_due(self) -> None:
        """Swap in indexes trained in the background once they are ready; start training
        when an index has grown four times past what it was trained on."""
        if self._retrain is not None:
            if self._retrain.done.is_set():
                self._swap_retrained()
            return
        if self.readonly or self._indexed_upto is None:
            return
        if time.monotonic() < self._retrain_after:
            return
        if self.text.needs_retraining or self.features.needs_retraining:
            self._retrain = _Retrain(self, self._indexed_upto)
            self._retrain.start()

    def swap_retrained(self) -> bool:
        """Swap in the indexes a background training finished (the running store calls
        it between batches, so an idle store does not hold both for long); True if it
        did."""
        if self._retrain is not None and self._retrain.done.is_set():
            self._swap_retrained()
            return True
        return False

    @property
    def retraining(self) -> bool:
        """True while indexes are being trained again in the background."""
        return self._retrain is not None

    def wait_retrained(self, timeout: float | None = None) -> bool:
        """Wait for a background training to finish and swap its indexes in; False if it
        is still running after ``timeout`` seconds."""
        job = self._retrain
        if job is None:
            return True
        if not job.done.wait(timeout):
            return False
        self._swap_retrained()
        return True

    def _swap_retrained(self) -> None:
        job = self._retrain
        assert job is not None and job.done.is_set()
        self._retrain = None
        job.join()
        if job.error is not None:
            for index in (job.features, job.text):
                if index is not None:
                    index.discard()
            self._retrain_after = time.monotonic() + _RETRY_S
            log.warning(
                "training the indexes again failed (%s): keeping the current ones, trying "
                "again in %d s",
                job.error,
                _RETRY_S,
            )
            return
        assert job.features is not None and job.text is not None
        # The new indexes hold the events up to the snapshot; add what was ingested since
        # (read back from SQLite) and drop what retention deleted meanwhile.
        features, text = job.features, job.text
        upto = self._indexed_upto if self._indexed_upto is not None else job.upto
        for chunk in self.store.scan(job.upto, until_id=upto):
            ids, f_vectors, t_vectors = self._vectors(chunk)
            features.add(ids, f_vectors)
            text.add(ids, t_vectors)
        if job.removed:
            features.remove(job.removed)
            text.remove(job.removed)
        features.dirty = text.dirty = len(text)
        old = (self.features, self.text)
        self.features, self.text = features, text
        for index in old:
            index.discard()
        give_back_freed_memory()
        log.info(
            "indexes trained again in the background at %d events in %.1f s",
            job.upto_count,
            job.seconds,
        )

    def prune(self, now: float | None = None) -> int:
        """Apply ``retention_days`` and ``max_events``: delete the events past them and
        their vectors, then save the indexes (so a saved index never names a deleted
        event for long); returns how many events went. The age is the time an event
        was stored here, not the flow's own time (an imported old capture is kept
        retention_days after the import)."""
        days = self.cfg.retention_days
        now = time.time() if now is None else now
        ids = self.store.prune(now - days * 86400 if days > 0 else None, self.cfg.max_events)
        if ids:
            self.features.remove(ids)
            self.text.remove(ids)
            if self._retrain is not None:
                self._retrain.removed.extend(ids)
            self.save()
            log.info(
                "deleted %d events past rag.retention_days=%g / rag.max_events=%d",
                len(ids),
                days,
                self.cfg.max_events,
            )
        else:  # save() gave it back otherwise: the scan read every page of the table
            self._give_back_memory()
        return len(ids)

    def save(self) -> None:
        """Write both indexes, then record up to which event id they hold (first adding
        what other writers stored since, when it is known what these indexes hold)."""
        with file_lock(self._lock_path, optional=True):
            if self._indexed_upto is None:
                upto = self.store.max_id()  # the caller's word: ingest without open_indexes
            else:
                self._index_stored(self._indexed_upto)
                upto = self._indexed_upto
            self._drop_superseded_now()
            self.features.save()
            self.text.save()
            self.store.set_meta("indexed_upto", str(upto))
        self.store.optimize()
        self._give_back_memory()

    def _give_back_memory(self) -> None:
        """What the batches since the last save (or a prune's scan of the table) left
        behind: SQLite's page cache, then glibc's freed chunks (the parsed events, the
        batches' arrays), which it otherwise keeps in its arenas (bench/rag_speed.py
        --soak, rag/README.md)."""
        self.store.shrink_cache()
        give_back_freed_memory()

    def reindex(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Rebuild both indexes from the database, an IVF one trained at its full size.
        The vectors go to scratch files beside the database (~1.2 kB an event, deleted
        at the end) and are read back mapped, a training sample and a chunk at a time,
        so the heap does not hold them all."""
        total = self.store.count()
        with _VectorFiles(self.store.path.parent, self.features.dim, self.text.dim) as files:
            done = 0
            for chunk in self.store.scan(0):
                files.append(*self._vectors(chunk))
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            all_ids, features, texts = files.arrays()
            self.features.build(all_ids, features)
            self.text.build(all_ids, texts)
        self._indexed_upto = int(all_ids[-1]) if len(all_ids) else 0
        if not self.readonly:
            self.save()
        return done

    def close(self) -> None:
        if self._retrain is not None:
            self._retrain.stop.set()
            self._retrain.join()
            for index in (self._retrain.features, self._retrain.text):
                if index is not None:
                    index.discard()
            self._retrain = None
        # The lists files are this process's (the saved indexes are what others read).
        self.features.discard()
        self.text.discard()
        self.store.close()


class _VectorFiles:
    """Scratch files of vectors written chunk by chunk and read back memory-mapped (the
    page cache's, not the heap's): what building an index reads. In ``directory`` (the
    database's, not /tmp, which may be memory) or, if it cannot be written, the system's
    temporary directory. Named with the process id: those of a process that died (a
    kill during a training) are deleted by the next one."""

    def __init__(self, directory: Path, *dims: int) -> None:
        self.dims = dims
        remove_left_by_dead(directory, ".rag-vectors-")
        try:
            self._tmp = tempfile.TemporaryDirectory(
                prefix=f".rag-vectors-{os.getpid()}-", dir=directory
            )
        except OSError:
            self._tmp = tempfile.TemporaryDirectory(prefix="rag-vectors-")
        self._paths = [Path(self._tmp.name) / f"{i}.f32" for i in range(len(dims))]
        self._files = [open(p, "wb") for p in self._paths]  # noqa: SIM115 (closed in arrays)
        self._ids: list[npt.NDArray[np.int64]] = []
        self._maps: list[npt.NDArray[np.float32]] = []

    def __enter__(self) -> _VectorFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._files:
            f.close()
        self._maps.clear()
        self._tmp.cleanup()

    def append(self, ids: npt.NDArray[np.int64], *vectors: npt.NDArray[np.float32]) -> None:
        self._ids.append(ids)
        for f, v in zip(self._files, vectors, strict=True):
            f.write(np.ascontiguousarray(v, dtype=np.float32).tobytes())

    def arrays(self) -> tuple[Any, ...]:
        """The ids (in memory: 8 bytes an event) and each file's vectors, mapped."""
        for f in self._files:
            f.close()
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=np.int64)
        self._maps = [
            np.memmap(p, dtype=np.float32, mode="r", shape=(len(ids), dim))
            if len(ids)
            else np.zeros((0, dim), np.float32)
            for p, dim in zip(self._paths, self.dims, strict=True)
        ]
        return (ids, *self._maps)


def _index_params(index: VectorIndex) -> dict[str, Any]:
    """What builds an index like ``index`` (its file and lists file aside)."""
    return {
        "dim": index.dim,
        "inner_product": index.inner_product,
        "ivf_threshold": index.ivf_threshold,
        "nprobe": index.nprobe,
        "max_lists": index.max_lists,
    }


def _train_in_child(
    db: str, upto: int, params: list[dict[str, Any]], outs: list[str], conn: Any
) -> None:
    """The training process: read the events up to ``upto`` from the database (its own
    read-only connection), embed them again, build an index of each kind (IVF trained at
    their number) and save it to its ``outs`` file; send ``("ok", events)`` or
    ``("error", text)`` on ``conn``. Its lists are in a mapped file of its own while it
    builds (deleted when it saves), so its heap holds the training sample and a chunk."""
    try:
        faiss.omp_set_num_threads(1)
        keep_freed_memory_returnable()
        path = Path(db)
        scaler = FeatureScaler()
        store = EventStore(path, readonly=True)
        try:
            with _VectorFiles(path.parent, *(p["dim"] for p in params)) as files:
                for chunk in store.scan(0, until_id=upto):
                    files.append(*_chunk_vectors(scaler, chunk))
                store.close()
                all_ids, *vectors = files.arrays()
                for p, out, v in zip(params, outs, vectors, strict=True):
                    index = VectorIndex(Path(out), lists_dir=path.parent, **p)
                    index.build(all_ids, v)
                    index.save()
                    index.discard()
        finally:
            store.close()
        conn.send(("ok", len(all_ids)))
    except Exception as exc:  # reported to the parent, which keeps its indexes
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _chunk_vectors(
    scaler: FeatureScaler, chunk: list[tuple[int, bytes, str]]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Ids, feature vectors and text vectors of stored events (store.scan rows)."""
    ids = np.array([i for i, _, _ in chunk], dtype=np.int64)
    blobs = [blob for _, blob, _ in chunk]
    return ids, scaler.of_blobs(blobs), embed_texts(d for _, _, d in chunk)


def _remove_files_of(directory: Path, pid: int | None) -> None:
    """Delete the lists files and vector scratch of a process that is gone."""
    if pid is None:
        return
    for old in directory.glob(f"*.lists.{pid}.*"):
        old.unlink(missing_ok=True)
    for old in directory.glob(f".rag-vectors-{pid}-*"):
        shutil.rmtree(old, ignore_errors=True)


def _new_index_file(index: VectorIndex, pid: int) -> Path:
    """Where the training of writer ``pid`` saves the new ``index``: ``events.text.new-<pid>
    .faiss`` (its save's scratch, ``.tmp`` for ``.faiss``, is then the writer's own too)."""
    return index.path.with_name(f"{index.path.stem}.new-{pid}{index.path.suffix}")


class _Retrain(threading.Thread):
    """Builds new indexes from the events up to ``upto`` in a child process while the
    ingest thread keeps adding to the current ones, then reads them in (this thread):
    their inverted lists copied into new lists files of this writer, list by list.

    In a child process because what training takes stays with the process that took it:
    in a thread of the writer, the events parsed and embedded again, the training sample
    and FAISS's and BLAS's buffers left ~33 MB of freed memory resident in the writer after
    every swap (Python's pools, the thread's arena; rag/README.md, the retrain step), the
    step the lab soak read as growth. The child's memory goes when it exits. It is started
    with ``spawn`` (a fork of a process holding FAISS's threads and SQLite connections is
    not safe); ``stop`` kills it."""

    def __init__(self, owner: RagStore, upto: int) -> None:
        super().__init__(name="rag-retrain", daemon=True)
        self.path = owner.store.path
        self.owner_features = owner.features
        self.owner_text = owner.text
        self.upto = upto
        self.upto_count = 0
        self.done = threading.Event()
        self.stop = threading.Event()
        self.removed: list[int] = []  # deleted by retention meanwhile (from the ingest thread)
        self.features: VectorIndex | None = None
        self.text: VectorIndex | None = None
        self.error: Exception | None = None
        self.seconds = 0.0
        self.child_pid: int | None = None

    def _like(self, index: VectorIndex) -> VectorIndex:
        return VectorIndex(index.path, lists_dir=index.lists_dir, **_index_params(index))

    def _train(self, owners: list[VectorIndex], outs: list[Path]) -> int:
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=_train_in_child,
            args=(
                str(self.path),
                self.upto,
                [_index_params(i) for i in owners],
                [str(o) for o in outs],
                send,
            ),
            name="rag-retrain",
            daemon=True,
        )
        child.start()
        send.close()
        self.child_pid = child.pid
        try:
            while not multiprocessing.connection.wait([receive, child.sentinel], timeout=0.5):
                if self.stop.is_set():
                    raise _Stopped
            if self.stop.is_set():
                raise _Stopped
            try:
                outcome, value = receive.recv()
            except EOFError:
                child.join(5)
                raise RagError(
                    f"the training process exited with code {child.exitcode} before it was done"
                ) from None
            if outcome != "ok":
                raise RagError(f"the training process failed: {value}")
            return int(value)
        finally:
            receive.close()
            if child.is_alive() and self.stop.is_set():
                child.kill()
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join()
            if child.exitcode != 0:  # killed or crashed: what it was writing
                _remove_files_of(self.path.parent, child.pid)

    def run(self) -> None:
        started = time.perf_counter()
        owners = [self.owner_features, self.owner_text]
        outs = [_new_index_file(i, os.getpid()) for i in owners]
        try:
            for index in owners:  # what trainings of writers that died left
                remove_left_by_dead(index.path.parent, f"{index.path.stem}.new-")
            self.upto_count = self._train(owners, outs)
            new = []
            for index, out in zip(owners, outs, strict=True):
                # Read with this writer's lists file; then named as the index it replaces.
                fresh = self._like(index)
                if not fresh.load(source=out):
                    raise RagError(f"cannot read the index the training saved ({out.name})")
                new.append(fresh)
            self.features, self.text = new
        except _Stopped:
            return
        except Exception as exc:  # reported by the ingest thread, which keeps the old ones
            self.error = exc
        finally:
            for out in outs:
                with contextlib.suppress(OSError):
                    out.unlink(missing_ok=True)
            self.seconds = time.perf_counter() - started
            self.done.set()


class _Stopped(Exception):
    """The store is closing: the training is abandoned."""
