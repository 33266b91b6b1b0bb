"""Ingest: turn a file into a recipe (file manifest) plus data objects, streaming.

The file is read once, front to back. Non-tensor bytes go to a *skeleton* stream cut into
chunks by content (FastCDC: a cut depends only on the bytes before it in its chunk, so an
insertion or deletion changes the chunks around it and no others); each tensor is cut into
fixed-size blocks. Every block/chunk is hashed (xxh3-128); one
already stored is not encoded again (dedup), a new one is encoded in a worker thread, as a
delta against the matching block of a reference tensor when one is known and that pays. At most
``2 * workers`` blocks are in flight, so memory is bounded by a few blocks whatever the size.
The sha256 of the whole file (and each tensor's id) is computed on the way, on a thread of its
own, and recorded."""
from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np
from pyfastcdc import FastCDC

from .. import codecs, formats
from ..errors import CorafsError, IngestCancelled
from ..codecs.lossy import LOSSY_DTYPES
from ..dtypes import lookup
from . import simindex
from .objects import data_id, tensor_hasher

#: encoding chosen for skeleton / opaque chunks
_CHUNK_DTYPE = "U8"

#: how far above ``head_raw_above`` a head block's sampled keep must be for it to be stored raw
#: without compressing it whole: on the 4 MiB blocks of a real fp32 fine-tune (keeping
#: 0.829-0.835) and of random normal weights, the sample was within 0.0008 of the block
HEAD_SAMPLE_MARGIN = 0.01


@dataclasses.dataclass
class IngestResult:
    entry: dict           # the tree entry: kind, id, size, sha256, format
    manifest: dict
    reason: Optional[str]  # why the file was not parsed as a checkpoint, if it looked like one
    new_bytes: int        # encoded bytes this file added to the store


class Ingestor:
    """Ingests files into one ObjectWriter. Not thread-safe itself; uses a worker pool."""

    def __init__(self, repo, writer, pool: ThreadPoolExecutor,
                 on_progress: Optional[Callable[[int], None]] = None, lossy: Optional[str] = None):
        self.repo = repo
        self.store = repo.store
        self.writer = writer
        self.pool = pool
        self.t = repo.tuning
        self.on_progress = on_progress or (lambda n: None)
        self.lossy = lossy
        #: encodes in submission order; their payloads are written in that order (a file's
        #: blocks lie in the pack as the file reads, so a cold read of it is sequential)
        self._inflight: "collections.deque[tuple[str, Future]]" = collections.deque()
        self._payloads: dict[str, bytes] = {}
        self._submitted: dict[str, Future] = {}
        self._new_bytes = 0
        self._lock = threading.Lock()
        #: (dtype, nbytes, fingerprint, tensor id) of every tensor ingested, for the index
        self.fingerprints: list[tuple[str, int, int, str]] = []
        #: a threading.Event that stops the ingest (IngestCancelled) when set
        self.cancel = None
        #: tensors of the parent commit by name (set by the caller; lazily computed)
        self.parent_tensors: Callable[[], dict] = lambda: {}

    # -- public ------------------------------------------------------------------------------
    def ingest_path(self, path: str, name: str, ref: Optional[dict]) -> IngestResult:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            return self.ingest(f, name, size, ref)

    def ingest(self, f, name: str, size: int, ref: Optional[dict]) -> IngestResult:
        """``ref``: the previous version's file manifest (for delta references), or None.
        A checkpoint whose layout cannot be stored as parsed is stored opaque instead, with
        the reason: one file must never fail a commit for what its bytes are."""
        self._check_cancel()
        layout = formats.detect(f, name, size)
        if layout.format == "opaque":
            return self._ingest(f, size, ref, layout)
        try:
            return self._ingest(f, size, ref, layout)
        except (OSError, MemoryError, CorafsError):
            raise
        except Exception as e:
            self.abandon()
            reason = f"parsed as {layout.format} but not storable that way " \
                     f"({type(e).__name__}: {e})"[:500]
            return self._ingest(f, size, None, formats.Layout("opaque", size, reason=reason))

    def _ingest(self, f, size: int, ref: Optional[dict], layout) -> IngestResult:
        self._new_bytes = 0
        self.lossy_used = False
        sha = _FileHash()
        try:
            return self._ingest_hashed(f, size, ref, layout, sha)
        finally:
            sha.close()

    def _ingest_hashed(self, f, size: int, ref: Optional[dict], layout, sha) -> IngestResult:
        skel = _Skeleton(self.t.chunk_avg)
        extents: list[list] = []
        ref_tensors = self.repo.reference_tensors(ref) if ref else {}
        tensors = []
        f.seek(0)
        pos = 0
        for span in layout.spans:
            if span.offset > pos:
                self._skeleton(f, span.offset - pos, sha, skel, extents)
            tensors.append(self._tensor(f, span, sha, extents, ref_tensors.get(span.name)))
            pos = span.offset + span.nbytes
        if size > pos:
            self._skeleton(f, size - pos, sha, skel, extents)
        self._cut(skel, final=True)
        self._drain()
        for t in tensors:
            t["id"] = t.pop("_id").result()
        self._finish_tensors(tensors)
        extents = skel.resolve(extents)
        manifest = {
            "type": "file", "format": layout.format, "size": size,
            "sha256": sha.hexdigest(), "reason": layout.reason,
            "extents": {"len": [e[0] for e in extents], "obj": [e[1] for e in extents],
                        "off": [e[2] for e in extents]},
            "tensors": tensors,
            "lossy": self.lossy if self.lossy_used else None,
            "views": [[v.name, v.dtype, list(v.shape), v.span, v.storage_offset]
                      for v in layout.views],
        }
        fid = self.repo.put_meta(self.writer, manifest)
        entry = {"kind": "file", "id": fid, "size": size, "sha256": manifest["sha256"],
                 "format": layout.format}
        return IngestResult(entry, manifest, layout.reason, self._new_bytes)

    # -- skeleton / opaque bytes --------------------------------------------------------------
    def abandon(self) -> None:
        """After a file failed midway: wait for its encodes, forget what they were for."""
        while self._inflight:
            try:
                self._write_next()
            except Exception:
                pass
        self._submitted = {k: f for k, f in self._submitted.items()
                           if f.done() and f.exception() is None}

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise IngestCancelled()

    def _skeleton(self, f, n: int, sha, skel: "_Skeleton", extents) -> None:
        """``n`` bytes of the file that are not tensor data: onto the skeleton stream (an
        extent placeholder records where), cut into chunks as soon as enough is buffered."""
        hole = self.t.hole_unit
        while n > 0:
            self._check_cancel()
            if n >= hole and _is_hole(f, hole):
                # a hole (sparse file): never read, stored once as a zero object; what was
                # buffered before it is cut to the end first
                self._cut(skel, final=True)
                f.seek(hole, os.SEEK_CUR)
                zeros = _zeros(hole)
                sha.update(zeros)
                oid = _zero_id(hole)
                extents.append([hole, oid, 0])
                self._submit(oid, np.frombuffer(zeros, dtype=np.uint8), _CHUNK_DTYPE, None)
                n -= hole
                self.on_progress(hole)
                continue
            take = min(n, hole)
            data = _read_exact(f, take)
            sha.update(data)
            extents.append([take, _Skeleton.PENDING, skel.end])
            skel.add(data)
            n -= take
            self.on_progress(take)
            if skel.ready():
                self._cut(skel)

    def _cut(self, skel: "_Skeleton", final: bool = False) -> None:
        """Store the chunks the buffered skeleton bytes cut into; all of them when ``final``,
        else all but the last (it may continue past what is buffered)."""
        for arr in skel.cut(final):
            oid = data_id(arr)
            skel.chunk_ids.append(oid)
            self._submit(oid, arr, _CHUNK_DTYPE, None)

    # -- tensors --------------------------------------------------------------------------------
    def _tensor(self, f, span, sha, extents, ref: Optional[dict]) -> dict:
        bs = self.t.block_size
        h = tensor_hasher(span.dtype, span.shape)
        blocks = []
        fp = None
        for i, off in enumerate(range(0, span.nbytes, bs)):
            self._check_cancel()
            n = min(bs, span.nbytes - off)
            buf = np.empty(n, dtype=np.uint8)
            got = f.readinto(memoryview(buf))
            if got != n:
                raise OSError(f"file changed while reading (short read at {span.offset + off})")
            if i == 0:
                fp = simindex.fingerprint(buf, span.dtype)
                if not self._usable(ref, span):
                    ref = self._find_reference(span, fp)
            base = ref["blocks"][i] if self._usable(ref, span) else None
            if self.lossy and base is not None and span.dtype in LOSSY_DTYPES:
                buf, oid = self._lossy_block(buf, span.dtype, base)
            else:
                oid = data_id(buf)
                # head-first: the new version is stored whole; the version it replaces
                # becomes a delta against it afterwards (core/headfirst.py)
                self._submit(oid, buf, span.dtype, None if self.t.head_first else base)
            sha.update(buf, h)
            blocks.append(oid)
            extents.append([n, oid, 0])
            self.on_progress(n)
        return {"name": span.name, "dtype": span.dtype, "shape": list(span.shape),
                "offset": span.offset, "nbytes": span.nbytes, "_id": sha.tensor_id(h),
                "_blocks": blocks, "_ref": ref if self._usable(ref, span) else None, "_fp": fp}

    def _usable(self, ref: Optional[dict], span) -> bool:
        return (ref is not None and ref["dtype"] == span.dtype and ref["nbytes"] == span.nbytes
                and ref["block_size"] == self.t.block_size)

    def _find_reference(self, span, fp) -> Optional[dict]:
        """No same-named tensor in the previous version of this file: try the same name
        anywhere in the parent commit, then the similarity index."""
        cand = self.parent_tensors().get(span.name)
        if cand is not None and cand["dtype"] == span.dtype and cand["nbytes"] == span.nbytes:
            try:
                return dict(self.repo.tensor_manifest(cand["id"]), id=cand["id"])
            except Exception:
                pass
        tid = self.repo.simindex.nearest(span.dtype, span.nbytes, fp)
        if tid is not None:
            try:
                return dict(self.repo.tensor_manifest(tid), id=tid)
            except Exception:
                return None
        return None

    def _lossy_block(self, buf: np.ndarray, dtype: str, base) -> tuple[np.ndarray, str]:
        """Opt-in lossy delta: the block's content becomes the approximation reads return."""
        base_id, depth = base[0], base[1]
        if depth >= self.t.max_delta_depth:
            oid = data_id(buf)
            self._submit(oid, buf, dtype, None)
            return buf, oid
        base_raw = self.repo.decoder.raw(base_id)
        payload, approx, codec, d = codecs.encode_lossy_block(
            buf, dtype, self.lossy, self.t.zstd_level, base_raw, base_id, depth)
        oid = data_id(approx)
        self.lossy_used = True
        if oid not in self._submitted and not self.writer.has(oid) and not self.store.has(oid):
            self.writer.put(oid, payload)
            self._new_bytes += len(payload)
        done: Future = Future()
        done.set_result((codec, d))
        self._submitted.setdefault(oid, done)
        return approx, oid

    # -- encoding ---------------------------------------------------------------------------------
    def _submit(self, oid: str, buf: np.ndarray, dtype: str, base) -> None:
        """Encode and store ``buf`` unless it is stored or already on its way."""
        if oid in self._submitted or self.writer.has(oid) or self.store.has(oid):
            return
        while len(self._inflight) >= 2 * self.t.workers:
            self._write_next()
        fut = self.pool.submit(self._encode, oid, buf, dtype, base)
        self._submitted[oid] = fut
        self._inflight.append((oid, fut))

    def _write_next(self) -> None:
        """Wait for the oldest encode and write its payload."""
        oid, fut = self._inflight.popleft()
        try:
            fut.result()
        finally:
            payload = self._payloads.pop(oid, None)
        if payload is not None:
            self.writer.put(oid, payload)

    def _encode(self, oid: str, buf: np.ndarray, dtype: str, base) -> tuple[str, int]:
        base_raw = base_id = base2_raw = base2_id = None
        depth = 0
        if base is not None and base[0] != oid:
            try:
                base_id, depth = base[0], base[1]
                if depth >= self.t.max_delta_depth:
                    # chain is as deep as allowed: delta against its root keyframe instead of
                    # starting a new keyframe (a far delta is still far smaller)
                    base_id, depth = self.repo.chain_root(base_id), 0
                base_raw = self.repo.decoder.raw(base_id)
                if depth > 0:
                    base2_id = self.repo.block_header(base_id).base_ids[0]
                    base2_raw = self.repo.decoder.raw(base2_id)
            except Exception:   # an unreadable reference only costs compression
                base_raw = base_id = base2_raw = base2_id = None
                depth = 0
        head = None
        if base_raw is None and self.t.head_first and dtype != _CHUNK_DTYPE \
                and lookup(dtype).is_float:
            if self.t.head_codec != "auto":
                head = self.t.head_codec    # the newest version: stored for reading speed
            else:
                # auto: a block whose sample keeps clearly more than head_raw_above is
                # stored raw without compressing all of it (fp32 weights keep ~0.84: the
                # compression was a third of a commit's CPU, thrown away); near the line
                # the whole block decides. A raw head is compressed once it is replaced.
                keep = codecs.sampled_keep(buf, dtype, self.t.zstd_level)
                if keep is not None and keep > self.t.head_raw_above + HEAD_SAMPLE_MARGIN:
                    head = "raw"
        payload, codec, d = codecs.encode_block(buf, dtype, self.t.zstd_level, base_raw, base_id,
                                                depth, self.t.max_delta_depth, codec=head,
                                                base2=base2_raw, base2_id=base2_id)
        if base_raw is None and self.t.head_first and self.t.head_codec == "auto" \
                and codec == "planes-zstd" and len(payload) > self.t.head_raw_above * buf.size:
            # compression saves little here: the newest version is stored raw (a read is a
            # copy, not a decode); it is compressed once a newer version replaces it
            payload, codec, d = codecs.encode_block(buf, dtype, self.t.zstd_level, codec="raw")
        with self._lock:
            self._payloads[oid] = payload
            self._new_bytes += len(payload)
        return codec, d

    def _drain(self) -> None:
        while self._inflight:
            self._write_next()

    def _finish_tensors(self, tensors: list[dict]) -> None:
        """Write the tensor manifests of an ingested file (needs the encode results)."""
        for t in tensors:
            blocks = t.pop("_blocks")
            ref = t.pop("_ref")
            fp = t.pop("_fp")
            if fp is not None:
                self.fingerprints.append((t["dtype"], t["nbytes"], fp, t["id"]))
            if self.writer.has(t["id"]) or self.store.has(t["id"]):
                continue
            ref_depth = {b[0]: (b[1], b[2]) for b in ref["blocks"]} if ref else {}
            rows = []
            for oid in blocks:
                fut = self._submitted.get(oid)
                if fut is not None:
                    codec, depth = fut.result()
                elif oid in ref_depth:
                    depth, codec = ref_depth[oid]
                else:
                    codec, depth = self.repo.block_info(oid)
                rows.append([oid, depth, codec])
            tm = {"type": "tensor", "dtype": t["dtype"], "shape": t["shape"],
                  "nbytes": t["nbytes"], "block_size": self.t.block_size, "blocks": rows,
                  "fp": f"{fp:016x}" if fp is not None else None}
            if ref is not None and ref.get("id") and ref["id"] != t["id"]:
                # the version this one replaces: head-first re-encoding turns its blocks
                # into deltas against ours, and finds the run behind them through its "prev"
                tm["prev"] = ref["id"]
            self.repo.put_tensor_manifest(self.writer, t["id"], tm)


class _FileHash:
    """The file's sha256 and its tensors' ids (xxh3), computed on a thread of their own in file
    order while the reading thread goes on: at 1.4 GB/s, sha256 alone was a third of a 1 GiB
    commit on the reading thread. Both hashes release the GIL. At most ``PENDING`` buffers wait
    (memory stays a few blocks); ``tensor_id`` and ``hexdigest`` wait for what came before."""

    PENDING = 8

    def __init__(self):
        self.sha = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="corafs-hash")
        self._room = threading.BoundedSemaphore(self.PENDING)
        self._last: Optional[Future] = None

    def _submit(self, fn, *args) -> Future:
        self._room.acquire()
        try:
            fut = self._pool.submit(fn, *args)
        except BaseException:
            self._room.release()
            raise
        fut.add_done_callback(lambda _f: self._room.release())
        self._last = fut
        return fut

    def update(self, buf, tensor=None) -> None:
        """Hash ``buf`` next (into ``tensor``'s hasher too, when given)."""
        self._submit(self._both, buf, tensor)

    def _both(self, buf, tensor) -> None:
        self.sha.update(buf)
        if tensor is not None:
            tensor.update(buf)

    def tensor_id(self, tensor) -> Future:
        """The id of a tensor whose bytes were all given (a future: the reading goes on)."""
        return self._submit(tensor.hexdigest)

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.result()
        return self.sha.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Skeleton:
    """The skeleton stream of one file: bytes buffered until they are cut into chunks by
    content. Extents of skeleton bytes are recorded as placeholders ``[len, PENDING, stream
    offset]`` and resolved to ``[len, chunk id, offset in chunk]`` once every chunk is known
    (a piece that straddles a cut becomes two extents)."""

    PENDING = None

    def __init__(self, avg: int):
        self.cdc = FastCDC(avg)
        self.max = self.cdc.max_size
        self.buf = bytearray()
        self.base = 0                     # stream offset of buf[0]
        self.starts: list[int] = []       # stream offset of each chunk
        self.lens: list[int] = []
        self.chunk_ids: list[str] = []

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def add(self, data: bytes) -> None:
        self.buf += data

    def ready(self) -> bool:
        return len(self.buf) >= 4 * self.max

    def cut(self, final: bool):
        if not self.buf:
            return
        data = bytes(self.buf)
        chunks = [(c.offset, c.length) for c in self.cdc.cut_buf(data)]
        if not final:
            chunks = chunks[:-1]          # its end is where the buffer ends, not a cut
        used = 0
        for off, ln in chunks:
            self.starts.append(self.base + off)
            self.lens.append(ln)
            used = off + ln
            yield np.frombuffer(data, dtype=np.uint8, count=ln, offset=off)
        self.buf = bytearray(data[used:])
        self.base += used

    def resolve(self, extents: list) -> list:
        assert not self.buf, "the skeleton must be cut to its end first"
        out = []
        for e in extents:
            if e[1] is not self.PENDING:
                out.append(e)
                continue
            n, pos = e[0], e[2]
            i = bisect.bisect_right(self.starts, pos) - 1
            while n > 0:
                o = pos - self.starts[i]
                take = min(n, self.lens[i] - o)
                out.append([take, self.chunk_ids[i], o])
                n -= take
                pos += take
                i += 1
        return out


_ZEROS: dict[int, tuple[bytes, str]] = {}


def _zeros(n: int) -> bytes:
    if n not in _ZEROS:
        z = bytes(n)
        _ZEROS[n] = (z, data_id(np.frombuffer(z, dtype=np.uint8)))
    return _ZEROS[n][0]


def _zero_id(n: int) -> str:
    _zeros(n)
    return _ZEROS[n][1]


def _is_hole(f, n: int) -> bool:
    """Whether the next ``n`` bytes of ``f`` are a hole (SEEK_DATA finds no data in them)."""
    try:
        fd = f.fileno()
        pos = f.tell()
    except (AttributeError, OSError, ValueError):
        return False
    try:
        nxt = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        import errno
        nxt = None if e.errno == errno.ENXIO else pos      # ENXIO: only a hole to the end
    finally:
        os.lseek(fd, pos, os.SEEK_SET)
    return nxt is None or nxt >= pos + n


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise OSError("file changed while reading (short read)")
    return data
