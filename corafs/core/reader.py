"""Reading: decode data objects (following delta bases) through a bounded LRU cache, and
read any byte range of a stored file through its extent table.

A file recipe's extents are ``(length, object id, offset in the decoded object)``; a read finds
its first extent by bisection over cumulative offsets and splices."""
from __future__ import annotations

import bisect
import collections
import itertools
import threading
from concurrent.futures import Future
from typing import Iterator, Optional

import numpy as np

from .. import codecs
from ..codecs._kernels import Builder
from ..config import DEFAULT
from ..errors import CorafsError, CorruptObject
from .objects import data_id


_tls = threading.local()


#: bytes of a file decoded ahead of a reader, per worker thread (``FileReader._decoded``)
AHEAD_PER_WORKER = 8 << 20


class BlockCache:
    """LRU of decoded objects, bounded in bytes. Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._d: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, oid: str) -> Optional[np.ndarray]:
        with self._lock:
            a = self._d.get(oid)
            if a is not None:
                self._d.move_to_end(oid)
                self.hits += 1
            else:
                self.misses += 1
            return a

    def contains(self, oid: str) -> bool:
        """A probe that does not count as a hit or a miss."""
        with self._lock:
            return oid in self._d

    def put(self, oid: str, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        with self._lock:
            if oid in self._d:
                return
            self._d[oid] = arr
            self.bytes += arr.nbytes
            while self.bytes > self.max_bytes:
                _, old = self._d.popitem(last=False)
                self.bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.bytes = 0


class Decoder:
    """Turns data-object ids into their bytes, verifying each against its id. Concurrent
    requests for one object share a single decode (a read and a prefetch of the same block)."""

    def __init__(self, store, cache: BlockCache):
        self.store = store
        self.cache = cache
        #: number of objects decoded (not served from cache); tests and benchmarks read it
        self.decoded = 0
        self.decoded_bytes = 0
        self._inflight: dict[str, "Future"] = {}
        #: objects handed to the pool by ``prefetch`` and not started yet
        self._queued: set[str] = set()
        self._lock = threading.Lock()

    def raw(self, oid: str, _depth: int = 0, _payload=None) -> np.ndarray:
        arr = self.cache.get(oid)
        if arr is not None:
            return arr
        stack = getattr(_tls, "stack", None)
        if stack is None:
            stack = _tls.stack = set()
        if oid in stack:   # only a corrupt header can point a chain back at itself
            raise CorruptObject(oid, "delta chain loops back on itself")
        with self._lock:
            fut = self._inflight.get(oid)
            mine = fut is None
            if mine:
                fut = self._inflight[oid] = Future()
        if not mine:
            return fut.result()
        stack.add(oid)
        try:
            arr = self._decode(oid, _depth, _payload)
            fut.set_result(arr)
            return arr
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            stack.discard(oid)
            with self._lock:
                self._inflight.pop(oid, None)

    def _decode(self, oid: str, _depth: int, payload=None) -> np.ndarray:
        if _depth > 64:
            raise CorruptObject(oid, "delta chain too deep (cycle?)")
        if payload is None:
            payload = self.store.read_block(oid)
        levels = 1
        try:
            arr, levels = self._decode_chain(oid, payload, _depth)
        except CorafsError:          # missing base objects, corrupt bases: already typed
            raise
        except Exception as e:       # codec errors vary (zstd, numpy, struct): all mean corrupt
            raise CorruptObject(oid, f"cannot decode: {e}") from None
        if data_id(arr) != oid:
            if levels == 1:
                raise CorruptObject(oid, "decoded bytes do not match the object id")
            # one of the chain's levels is damaged: decode level by level, each checked
            # against its own id, so the error names the block that is
            arr = self._decode_one(oid, payload, _depth)
            levels = 1
            if data_id(arr) != oid:
                raise CorruptObject(oid, "decoded bytes do not match the object id")
        arr.flags.writeable = False
        with self._lock:
            self.decoded += levels
            self.decoded_bytes += arr.nbytes * levels
        self.cache.put(oid, arr)
        return arr

    def _decode_one(self, oid: str, payload, _depth: int, below=None) -> np.ndarray:
        """``oid`` decoded on top of its bases, each got (and checked) through ``raw``
        (``below``: the id and payload of one already read)."""
        def base(b):
            return self.raw(b, _depth + 1, below[1] if below and below[0] == b else None)
        try:
            return codecs.decode_block(payload, base)
        except CorafsError:
            raise
        except Exception as e:
            raise CorruptObject(oid, f"cannot decode: {e}") from None

    def _decode_chain(self, oid: str, payload, _depth: int) -> tuple[np.ndarray, int]:
        """(bytes of ``oid``, how many blocks were decoded for it). The run of fused-planes
        deltas below ``oid``, down to a block that is cached, a keyframe or another codec,
        is decoded in one kernel call (``codecs.decode_chain``): its intermediate levels are
        neither copied out, nor checked, nor cached; the top is checked by the caller, which
        a damaged level below fails too (each level is a bijection of the one below)."""
        chain = []                    # (oid, header, level), top first
        cur, pl = oid, payload
        seen = {oid}
        stack = _tls.stack
        while True:
            try:
                h = codecs.parse_header(pl)
                lvl = codecs.chain_level(h, pl)
            except ValueError:
                if not chain:
                    raise
                break                 # a damaged block below: decoding it names it
            if lvl is None:
                break
            if chain and chain[-1][2][0] == codecs.planes.SUB2 and \
                    chain[-1][1].base_ids[1] != h.base_ids[0]:
                break                 # a second-order level whose bases are not a chain
            chain.append((cur, h, lvl))
            nxt = h.base_ids[0]
            if nxt in seen or nxt in stack:
                raise CorruptObject(nxt, "delta chain loops back on itself")
            if len(chain) + _depth >= 64 or self.cache.contains(nxt) or nxt in self._inflight:
                break                 # (one being decoded elsewhere is waited for, not redone)
            seen.add(nxt)
            cur, pl = nxt, self.store.read_block(nxt)
        # the block below the chain was read already where the walk stopped at its codec
        below = (cur, pl) if chain and cur == chain[-1][1].base_ids[0] else None
        if len(chain) <= 1:
            return self._decode_one(oid, payload, _depth, below), 1
        bottom = chain[-1][1]
        d = _depth + len(chain)
        base = self.raw(bottom.base_ids[0], d, below and below[1])
        base2 = self.raw(bottom.base_ids[1], d) if len(bottom.base_ids) > 1 else None
        arr = codecs.decode_chain([c[2] for c in reversed(chain)], base, base2,
                                  chain[0][1].raw_len)
        return arr, len(chain)

    def prefetch(self, pool, oids) -> None:
        """Decode ``oids`` in the background (skipping cached and in-flight ones). A store
        that can fetch neighbouring objects in one request (``plan_fetch``: S3 coalesces
        nearby ranges of a pack into one GET) hands them out in groups, each fetched at once
        and then decoded, the groups in parallel."""
        with self._lock:
            # what is queued, being decoded or cached is not queued again: a reader asks for
            # overlapping windows, and workers that took the same object twice waited on each
            # other (reading history through the mount, three of four workers did)
            todo = [o for o in dict.fromkeys(oids) if o not in self._queued
                    and o not in self._inflight and not self.cache.contains(o)]
            self._queued.update(todo)
        for group in self.store.plan_fetch(todo):
            pool.submit(self._fetch_group, group)

    def _fetch_group(self, group: list[str]) -> None:
        if len(group) > 1:
            try:
                self.store.fetch_many(group)
            except Exception:
                pass        # each object is fetched on its own below, and errors reported
        for oid in group:
            with self._lock:
                self._queued.discard(oid)
                busy = oid in self._inflight
            if not busy:                # another thread is decoding it: nothing to wait for
                self._quiet(oid)

    def _quiet(self, oid: str) -> None:
        try:
            self.raw(oid)
        except Exception:   # the reader will meet (and report) the error itself
            pass


class FileReader:
    """Random access to one stored file version. Cheap to create (no decoding)."""

    def __init__(self, decoder: Decoder, manifest: dict):
        self.decoder = decoder
        self.manifest = manifest
        ext = manifest["extents"]
        # plain lists: a read looks up a few extents, where numpy's per-call cost (2 us a
        # searchsorted, 100 ns a scalar) is what shows, not its loops
        self.lens: list[int] = [int(n) for n in ext["len"]]
        self.objs = ext["obj"]
        self.offs: list[int] = [int(o) for o in ext["off"]]
        self.starts: list[int] = [0, *itertools.accumulate(self.lens)]
        self.size = int(manifest["size"])

    def close(self) -> None:
        """Nothing to release: decoded blocks belong to the shared cache."""

    def extent_at(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1

    def read(self, offset: int, size: int, view: bool = False, pool=None):
        """``size`` bytes from ``offset`` (fewer at the end). With ``view``, a read-only
        buffer that may share memory with the decoded object (no copy: the mount hands it to
        the kernel as it is). With ``pool``, a read spanning several objects decodes them in
        parallel."""
        if offset >= self.size or size <= 0:
            return b""
        end = min(self.size, offset + size)
        i = self.extent_at(offset)
        start = self.starts[i]
        if end <= start + self.lens[i]:       # inside one extent: one copy, or none
            o = self.offs[i] + offset - start
            obj = self.decoder.raw(self.objs[i])
            if view:
                return memoryview(obj)[o:o + end - offset]
            return obj[o:o + end - offset].tobytes()
        # every byte is written below, once: into a buffer the caller may view, or straight
        # into the bytes returned (Builder); both copies run without the GIL
        out = np.empty(end - offset, dtype=np.uint8) if view else Builder(end - offset)
        pos = offset
        j = self.extent_at(end - 1) + 1
        for i, obj in self._decoded(i, j, pool):
            start = self.starts[i]
            ln = self.lens[i]
            a = pos - start
            b = min(ln, end - start)
            o = self.offs[i]
            if view:
                out[pos - offset:pos - offset + (b - a)] = obj[o + a:o + b]
            else:
                out.put(pos - offset, obj[o + a:o + b])
            pos += b - a
        return memoryview(out) if view else out.take()

    def _decoded(self, i0: int, i1: int, pool=None, ahead: Optional[int] = None):
        """``(i, decoded object)`` for extents ``i0 .. i1-1`` in order. With a thread pool,
        the extents of up to ``ahead`` bytes past the one consumed (default
        ``AHEAD_PER_WORKER`` per worker, at most a quarter of the cache) are decoded ahead of
        the consumer in parallel (the kernels and zstd release the GIL); a bounded window, so
        a read larger than the cache does not evict what it decoded before using it.

        The window is in bytes, not extents: a .pth interleaves each tensor's extent with
        one of its zip record header (tens of bytes), and a window of four extents kept two
        workers a third idle while the consumer wrote (export of a 109 MB version 9 deltas
        deep: 0.87-0.99 s with four extents, 0.66-0.78 s with this window)."""
        if pool is None:
            for i in range(i0, i1):
                yield i, self.decoder.raw(self.objs[i])
            return
        if ahead is None:
            ahead = min(AHEAD_PER_WORKER * max(1, getattr(pool, "_max_workers", 4)),
                        self.decoder.cache.max_bytes // 4)
        starts = self.starts
        futures: dict[int, object] = {}
        nxt = i0
        for i in range(i0, i1):
            # decode through extent i, and on while what is queued past it is under ``ahead``
            while nxt < i1 and (nxt <= i or starts[nxt] - starts[i + 1] < ahead):
                if nxt == i0 or self.objs[nxt] != self.objs[nxt - 1]:
                    futures[nxt] = pool.submit(self.decoder.raw, self.objs[nxt])
                nxt += 1
            fut = futures.pop(i, None)
            yield i, (fut.result() if fut is not None else self.decoder.raw(self.objs[i]))

    def read_cached(self, offset: int, size: int, view: bool = False):
        """The bytes if every object the range needs is already decoded, else None (so a
        caller on an event loop can answer without a thread hand-off)."""
        if offset >= self.size or size <= 0:
            return b""
        for oid in self.objects_for(offset, size):
            if not self.decoder.cache.contains(oid):
                return None
        return self.read(offset, size, view)

    def objects_for(self, offset: int, size: int) -> list[str]:
        """Ids of the objects a read of this range touches (for prefetch)."""
        if offset >= self.size:
            return []
        i = self.extent_at(offset)
        j = self.extent_at(min(self.size, offset + size) - 1)
        return self.objs[i:j + 1]

    def chunks(self, pool=None, ahead: Optional[int] = None) -> Iterator[memoryview]:
        """The whole file, in order. With a thread pool, objects are decoded ahead of the
        consumer in parallel (``_decoded``)."""
        for i, obj in self._decoded(0, len(self.objs), pool, ahead):
            o = self.offs[i]
            yield memoryview(obj)[o:o + self.lens[i]]


def read_plan(manifest: dict, size: int) -> list[tuple[int, int]]:
    """The byte ranges of a stored file in the order its format's loaders read them.

    ``torch.load`` reads the zip's directory at the end first, then ``data.pkl`` at the
    start, then the records in the order the pickle names them, which is the order
    ``torch.save`` wrote them; safetensors readers read the header, then the tensors. Each
    tensor is one range (with the bytes up to the next one), so the plan covers the file."""
    offs = sorted((int(t["offset"]), int(t["offset"]) + int(t["nbytes"]))
                  for t in manifest.get("tensors") or () if int(t["nbytes"]) > 0)
    if not offs:
        return [(0, size)] if size else []
    cuts = [a for a, _b in offs]
    data_end = max(b for _a, b in offs)
    segs = [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)] + [(cuts[-1], data_end)]
    head = [(0, cuts[0])] if cuts[0] > 0 else []
    tail = [(data_end, size)] if data_end < size else []
    if manifest.get("format") == "pth":
        return tail + head + segs
    return head + segs + tail


class ReadAhead:
    """What to decode ahead of one open file, from its recipe.

    Reads are placed on the file's read plan (``read_plan``): a read that continues along
    the plan, as a loader's do, widens the window decoded ahead of it (doubling from
    ``start`` to ``limit``, like the kernel's read-ahead); a read elsewhere starts over
    from ``start``. Opening the file decodes the plan's first ``start`` bytes, so the
    zip directory, the pickle or the header, and the first tensors are on their way before
    the loader asks. The kernel's own read-ahead requests may arrive out of order: anything
    within ``start`` of the frontier counts as continuing."""

    def __init__(self, reader: FileReader, start: int = DEFAULT.prefetch_start,
                 limit: int = DEFAULT.prefetch_bytes):
        self.reader = reader
        self.start, self.limit = start, limit
        self.segs = read_plan(reader.manifest, reader.size)
        self.by_offset = sorted(range(len(self.segs)), key=lambda i: self.segs[i][0])
        self.seg_a = [self.segs[i][0] for i in self.by_offset]
        self.cum = [0]
        for a, b in self.segs:
            self.cum.append(self.cum[-1] + b - a)
        self.frontier = 0          # plan position just past the reads so far
        self.done_to = 0           # plan position decoded (or asked for) up to
        self.window = 0

    def _pos(self, off: int) -> int:
        """Plan position of byte ``off``."""
        k = bisect.bisect_right(self.seg_a, off) - 1
        i = self.by_offset[max(k, 0)]
        a, b = self.segs[i]
        return self.cum[i] + min(max(off - a, 0), b - a)

    def _ranges(self, p0: int, p1: int) -> list[tuple[int, int]]:
        """File byte ranges of plan positions ``[p0, p1)``, in plan order."""
        out: list[tuple[int, int]] = []
        i = bisect.bisect_right(self.cum, p0) - 1
        while i < len(self.segs) and self.cum[i] < p1:
            a, b = self.segs[i]
            lo = a + max(0, p0 - self.cum[i])
            hi = a + min(b - a, p1 - self.cum[i])
            if hi > lo:
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
            i += 1
        return out

    def objects(self, ranges) -> list[str]:
        """Object ids the file ranges need, in order, each once."""
        out: list[str] = []
        for lo, hi in ranges:
            out.extend(self.reader.objects_for(lo, hi - lo))
        return list(dict.fromkeys(out))

    def opened(self) -> list[tuple[int, int]]:
        """File ranges to decode ahead on open (the plan's first ``start`` bytes)."""
        self.window = self.start
        self.done_to = min(self.cum[-1], self.start)
        return self._ranges(0, self.done_to)

    def read(self, off: int, n: int) -> list[tuple[int, int]]:
        """File ranges to decode ahead after a read of ``n`` bytes at ``off`` (in plan order;
        none already asked for)."""
        if n <= 0 or not self.segs:
            return []
        p = self._pos(off)
        if abs(p - self.frontier) <= self.start:
            self.window = min(self.limit, max(self.start, self.window * 2))
            self.frontier = max(self.frontier, self._pos(off + n - 1) + 1)
        else:                                      # a jump: start over from here
            self.window = self.start
            self.frontier = self._pos(off + n - 1) + 1
            self.done_to = self.frontier
        start = max(self.frontier, self.done_to)
        end = min(self.cum[-1], self.frontier + self.window)
        if end <= start:
            return []
        self.done_to = end
        return self._ranges(start, end)
