"""S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, ...) behind ``ObjectStore``.

Layout under ``s3://BUCKET/PREFIX/``::

    corafs.json                        the repository's config (created with If-None-Match)
    packs/<time>-<rand>.pack           objects, concatenated (32 MiB; random keys, so a
                                       retried upload never collides with another writer's)
    index/<time>-<rand>.idx            that pack's object table (.npy: id, offset, length)
    refs/heads/<branch>, refs/tags/<tag>   one id each; moved by conditional requests only
    reflog/<ref>/<time>-<rand>         one object per ref move (append-only by unique keys)

Write order, enforced by the writer: a pack, then its index, then (the caller) the ref. Nothing
but refs is ever overwritten. Refs: created with ``If-None-Match: *``, moved and deleted with
``If-Match: <etag>``; a lost race raises RefConflict, and the Repository re-applies its change
set onto the new head exactly as with the local store. ``check_conditional_writes`` proves at
``init`` that the service honours both headers (several have shipped them broken).

Reads: the index tables are listed and loaded once (kept in the local cache directory: they
never change) and again when an id is not found; an object is one ranged GET of its pack, one
GET however many threads want it at once, and a prefetch gets neighbouring objects of a pack
(as the recipe lists them for the range about to be read) in one GET (``plan_fetch``,
``fetch_many``). Fetched objects are kept in a bounded in-memory LRU and on this machine's disk
(``DiskCache``); decoded blocks are cached above by the Repository.

Temporary failures (5xx, 408, 429, throttling, connection errors) are retried by botocore's
standard mode: exponential backoff with jitter, 10 attempts; a ``Retry-After`` the service
sends is honoured (``_retry_after``).

Credentials come from boto3's usual chain (environment, ``~/.aws``, instance roles) and are
never written to the repository, the cache or any message: errors name the bucket, the key and
the service's error code only.
"""
from __future__ import annotations

import collections
import io
import logging
import json
import os
import tempfile
import threading
import time
import uuid
from typing import Iterator, Optional

import numpy as np

from ..config import DEFAULT, Tuning
from ..errors import MissingObject, RefConflict
from .base import ObjectStore, ObjectWriter
from .batch import PackBatch
from .diskcache import DiskCache
from . import s3lease, s3probe
from .packindex import IDX_DTYPE as _IDX_DTYPE, PackIndex
from .s3refs import Registers
from .s3client import (S3Bucket, S3Error, describe, local_dir, lost_race, make_client, parse_url)

_MiB = 1 << 20
_log = logging.getLogger("corafs.s3")


class _SpoolPack:
    """A pack being filled: objects appended to a local temporary file."""

    def __init__(self, tmpdir: str):
        os.makedirs(tmpdir, exist_ok=True)
        self.spool = tempfile.NamedTemporaryFile(dir=tmpdir, suffix=".pack.tmp")
        self.table: list[tuple[str, int, int]] = []
        self.nbytes = 0

    def put(self, oid: str, data) -> None:
        mv = memoryview(data).cast("B")
        self.spool.write(mv)
        self.table.append((oid, self.nbytes, mv.nbytes))
        self.nbytes += mv.nbytes

    def abort(self) -> None:
        self.spool.close()


class _S3Writer(PackBatch):
    """Objects spooled to a local file; each full pack is uploaded, then its index."""

    def __init__(self, store: "S3Store"):
        super().__init__(store.pack_target)
        self.store = store
        store._scan()        # dedup (has) answers from a fresh index

    def _new_pack(self) -> _SpoolPack:
        return _SpoolPack(self.store.tmpdir)

    def _seal_pack(self, pack: _SpoolPack) -> None:
        name = f"{time.time_ns():016x}-{uuid.uuid4().hex[:16]}"
        table = np.array(pack.table, dtype=_IDX_DTYPE)
        try:
            pack.spool.flush()
            self.store.remote.upload_file(pack.spool.name, f"packs/{name}.pack")
            buf = io.BytesIO()
            np.save(buf, table)
            self.store.remote.put(f"index/{name}.idx", buf.getvalue())   # after its pack only
        finally:
            pack.spool.close()
        self.store._add(name, table)


class S3Store(PackIndex, ObjectStore):
    shared_by_machines = True

    def __init__(self, url: str, tuning: Tuning = DEFAULT, client=None):
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.tuning = tuning
        self.s3 = client or make_client()
        self.remote = S3Bucket(self.s3, self.bucket, self.prefix)
        self.state_dir = local_dir(url)
        self.tmpdir = os.path.join(self.state_dir, "tmp")
        self.idxdir = os.path.join(self.state_dir, "index")
        os.makedirs(self.idxdir, exist_ok=True)
        #: remote packs of 32 MiB (within 16-64 MiB): big enough for throughput, small enough
        #: that an interrupted upload loses little and a repack rewrites little
        self.pack_target = min(max(16 * _MiB, tuning.pack_target), 32 * _MiB)
        self._lock = threading.RLock()
        self._index: dict[str, tuple[str, int, int]] = {}
        self._packs: dict[str, int] = {}          # name -> bytes
        self._tables: dict[str, np.ndarray] = {}  # name -> object table
        self._mtimes: dict[str, float] = {}       # name -> upload time of its index
        self._lru: "collections.OrderedDict[str, bytes]" = collections.OrderedDict()
        self._lru_bytes = 0
        self._lru_max = max(64 * _MiB, tuning.block_cache_bytes // 2)
        self.disk = DiskCache(os.path.join(self.state_dir, "objects"))
        self._inflight: dict[str, threading.Event] = {}
        self._doomed: set[str] = set()
        self.regs = Registers(self.remote)
        #: the repository's format as its config says (1: refs not migrated to generations)
        self._format: Optional[int] = None
        self._scan()

    # -- config ---------------------------------------------------------------------------------
    #: the repository format this store writes: 2, refs as generation registers (format 1 kept
    #: refs as single objects moved with If-Match; such repositories migrate on first write)
    layout_format = 2

    def _config(self) -> tuple[int, Optional[bytes], list[int]]:
        """(generation, body, generations listed) of the config: the newest generation of
        ``config/``, else ``corafs.json`` (the one written at init) as generation 0."""
        n, body, gens = self.regs.read("config")
        if body is None:
            got = self.remote.get("corafs.json")
            body = got[0] if got else None
        return n, body, gens

    def get_config(self) -> Optional[bytes]:
        _n, body, _g = self._config()
        if body is not None:
            try:
                self._format = json.loads(body).get("format")
            except (ValueError, AttributeError):
                pass
        return body

    def create_config(self, data: bytes) -> bool:
        """Write the config unless one exists; False when it does."""
        try:
            self.remote.put("corafs.json", data, IfNoneMatch="*")
        except Exception as e:
            if lost_race(e):
                return False
            raise describe(e, self.bucket, self.remote.key("corafs.json")) from None
        self._format = self.layout_format
        return True

    def update_config(self, change) -> dict:
        """Write ``change(config)`` as the config's next generation and return it; a
        concurrent change on another machine is read again and applied to, never
        overwritten."""
        self._upgrade()
        for _ in range(16):
            n, body, gens = self._config()
            if body is None:
                raise S3Error(f"s3://{self.bucket}/{self.remote.key('corafs.json')} is missing")
            cfg = change(json.loads(body))
            if self.regs.write("config", n, json.dumps(cfg, indent=2).encode(), gens):
                return cfg
        raise S3Error(f"s3://{self.bucket}/{self.remote.key('config')} kept changing under "
                      "this update: try again")

    def _upgrade(self) -> None:
        """Move a format-1 repository (refs as objects moved with If-Match) to generation
        registers, before this process's first write. ``corafs.json`` says format 2 first (a
        client that predates generations refuses it from then on); then each old ref becomes
        generation 1 of its register and its object is deleted, with If-Match on the ETag read,
        so a move an older client made meanwhile is carried over, not lost. Format-1
        repositories were only ever created on services that honour If-Match."""
        if self._format != 1:
            return
        with self._lock:
            if self._format != 1:
                return
            for _ in range(16):
                got = self.remote.get("corafs.json")
                cfg = json.loads(got[0])
                if cfg.get("format") != 1:
                    break
                cfg["format"] = self.layout_format
                try:
                    self.remote.put("corafs.json", json.dumps(cfg, indent=2).encode(),
                                    IfMatch=got[1])
                    break
                except Exception as e:
                    if not lost_race(e):
                        raise
            else:
                raise self._cannot_migrate("corafs.json")
            _regs, plain = self.regs.scan("refs/")
            for rel in plain:
                self._migrate_ref(rel)
            _regs, old_locks = self.regs.scan("locks/")
            for rel in old_locks:
                self.remote.delete(rel)
            self._format = self.layout_format

    def _migrate_ref(self, rel: str) -> None:
        """One format-1 ref object -> generation 1 of its register, then the object deleted
        with If-Match; a move an older client made after it was read is carried over as the
        next generation (or, if a newer client wrote meanwhile, left in the reflog, warned)."""
        seen = None
        for _ in range(16):
            got = self.remote.get(rel)
            if got is None:
                return
            n, body, gens = self.regs.read(rel)
            if n == 0:
                self.regs.write(rel, 0, got[0])     # lost: another machine migrated it
            elif body != got[0] and body == seen:
                self.regs.write(rel, n, got[0], gens)
            elif body != got[0]:
                _log.warning("%s: an older corafs client moved it to %s after newer writes; "
                             "that commit stays in the reflog", rel, got[0].decode().strip())
            seen = got[0]
            try:
                self.remote.delete(rel, IfMatch=got[1])
                return
            except Exception as e:
                if not lost_race(e):
                    raise
        raise self._cannot_migrate(rel)

    def _cannot_migrate(self, rel: str) -> S3Error:
        return S3Error(f"s3://{self.bucket}/{self.remote.key(rel)}: this format-1 repository "
                       "cannot move to generation refs: the service keeps refusing If-Match "
                       "with the ETag it returned (`corafs doctor` shows it); it stays readable")

    def check_conditional_writes(self) -> "s3probe.Report":
        """Prove that the service lets exactly one of several racing writers create a key;
        refuse it (``CorafsError`` naming what is missing) otherwise."""
        return s3probe.require(self.remote)

    # -- index ----------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Load the tables of packs not seen yet (other writers, other machines), and the
        packs a gc has scheduled for deletion."""
        self._doomed = self._read_doomed()
        for rel, mtime in self.remote.list("index/"):
            name = rel[len("index/"):-len(".idx")]
            if not rel.endswith(".idx") or name in self._packs:
                continue
            cached = os.path.join(self.idxdir, name + ".idx")
            table = None
            if os.path.exists(cached):
                try:
                    table = np.load(cached, allow_pickle=False)
                except (OSError, ValueError, EOFError):
                    table = None
            if table is None:
                got = self.remote.get(rel)
                if got is None:
                    continue
                table = np.load(io.BytesIO(got[0]), allow_pickle=False)
                tmp = f"{cached}.{uuid.uuid4().hex[:8]}.tmp"
                with open(tmp, "wb") as f:
                    np.save(f, table)
                os.replace(tmp, cached)
            self._add(name, table, mtime)

    def _add(self, name: str, table: np.ndarray, mtime: Optional[float] = None) -> None:
        """Index a pack; ``mtime``: its upload time (now, for a pack this process wrote)."""
        with self._lock:
            self._mtimes[name] = time.time() if mtime is None else mtime
            self._packs[name] = int(table["len"].sum()) if len(table) else 0
            self._tables[name] = table
            self._index_table(name, table)

    # -- a lease across machines ---------------------------------------------------------------
    def lease(self, name: str, blocking: bool = True, ttl: float = 300.0):
        """Hold ``locks/<name>`` across machines (``corafs.store.s3lease``)."""
        return s3lease.lease(self.regs, name, blocking, ttl)

    # -- gc support ---------------------------------------------------------------------------
    def _read_doomed(self) -> set[str]:
        out: set[str] = set()
        for rec in self.gc_records():
            out.update(rec["packs"])
        return out

    def gc_records(self) -> list[dict]:
        """Packs a gc scheduled for deletion (phase one), with when: ``gc/<time>-<rand>``."""
        import json
        out = []
        for rel, _n in self.remote.list("gc/"):
            got = self.remote.get(rel)
            if got is not None:
                try:
                    rec = json.loads(got[0])
                    rec["key"] = rel
                    out.append(rec)
                except ValueError:
                    continue
        return out

    def add_gc_record(self, packs: list[str]) -> None:
        import json
        self.remote.put(f"gc/{time.time_ns():016x}-{uuid.uuid4().hex[:8]}.json",
                  json.dumps({"packs": sorted(packs), "time": time.time()}).encode())
        self._doomed |= set(packs)

    def remove_gc_record(self, key: str) -> None:
        self.remote.delete(key)

    def packs(self) -> dict[str, dict]:
        """Every pack: bytes, mtime (the index's upload time) and object table."""
        self._scan()
        with self._lock:
            return {name: {"bytes": self._packs[name], "mtime": self._mtimes.get(name, 0.0),
                           "table": self._tables[name]} for name in self._packs}

    def location(self, oid: str):
        return self._index.get(oid)

    def refresh(self) -> None:
        self._scan()

    def rescan(self) -> None:
        """Forget the index and load it again (packs were removed or re-encoded). The caches
        stay: they are keyed by object and pack, so nothing in them goes stale."""
        with self._lock:
            self._index.clear()
            self._packs.clear()
            self._tables.clear()
        self._scan()

    def remove_packs(self, names) -> int:
        """Delete packs: the index first (no reader finds them any more), then the data."""
        freed = 0
        for name in names:
            for rel in (f"index/{name}.idx", f"packs/{name}.pack"):
                self.remote.delete(rel)
            freed += self._packs.get(name, 0)
            try:
                os.unlink(os.path.join(self.idxdir, name + ".idx"))
            except FileNotFoundError:
                pass
        return freed

    # -- objects ------------------------------------------------------------------------------
    def has(self, oid: str) -> bool:
        """Whether a commit may rely on ``oid`` being here: objects only in packs a gc has
        scheduled for deletion count as absent (a writer stores them again)."""
        loc = self._index.get(oid)
        return loc is not None and loc[0] not in self._doomed

    def _fetch(self, oid: str) -> bytes:
        # caches are keyed by the copy (object and pack): a newer encoding of an object (a
        # re-encoding, in a newer pack) is never answered with an older one
        pack, off, ln = self._locate(oid)
        key = f"{oid}.{pack}"
        with self._lock:
            data = self._lru.get(key)
            if data is not None:
                self._lru.move_to_end(key)
                return data
            ev = self._inflight.get(key)
            mine = ev is None
            if mine:
                ev = self._inflight[key] = threading.Event()
        if not mine:                 # single flight: one GET per object, the others wait
            ev.wait()
            return self._fetch(oid)
        try:
            data = self._fetch_uncached(oid, key, pack, off, ln)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            ev.set()
        return data

    def _fetch_uncached(self, oid: str, key: str, pack: str, off: int, ln: int) -> bytes:
        data = self.disk.get(key, ln)
        if data is None:
            got = self.remote.get(f"packs/{pack}.pack", f"bytes={off}-{off + ln - 1}") \
                if ln else (b"", "")
            if got is None or len(got[0]) != ln:
                raise MissingObject(oid)
            data = got[0]
            self.disk.put(key, data)
        self._remember(key, data)
        return data

    def _remember(self, key: str, data: bytes) -> None:
        with self._lock:
            if key not in self._lru and len(data) <= self._lru_max // 8:
                self._lru[key] = data
                self._lru_bytes += len(data)
                while self._lru_bytes > self._lru_max:
                    _k, old = self._lru.popitem(last=False)
                    self._lru_bytes -= len(old)

    def get(self, oid: str):
        return self._fetch(oid)

    #: objects of one pack closer than this are fetched in one GET, up to ``_COALESCE_MAX``
    _COALESCE_GAP = 1 * _MiB
    _COALESCE_MAX = 16 * _MiB

    def plan_fetch(self, oids) -> list[list[str]]:
        """Group objects not cached yet into runs of nearby ranges of one pack (one GET each);
        the rest alone. Order within a pack follows the offsets."""
        by_pack: dict[str, list[tuple[int, int, str]]] = {}
        singles = []
        for oid in oids:
            loc = self._index.get(oid)
            if loc is None or self._cached(oid, loc[0]):
                singles.append([oid])
                continue
            by_pack.setdefault(loc[0], []).append((loc[1], loc[2], oid))
        groups = []
        for items in by_pack.values():
            items.sort()
            cur, start, end = [], 0, 0
            for off, ln, oid in items:
                if cur and (off - end > self._COALESCE_GAP
                            or off + ln - start > self._COALESCE_MAX):
                    groups.append(cur)
                    cur = []
                if not cur:
                    start = off
                cur.append(oid)
                end = max(end, off + ln) if len(cur) > 1 else off + ln
            if cur:
                groups.append(cur)
        return groups + singles

    def _cached(self, oid: str, pack: str) -> bool:
        key = f"{oid}.{pack}"
        with self._lock:
            if key in self._lru:
                return True
        return os.path.exists(self.disk._path(key))

    def fetch_many(self, oids: list[str]) -> None:
        """Fetch objects of one pack with one ranged GET and cache each (no-op for those
        cached or in another pack)."""
        locs = [(oid, self._index.get(oid)) for oid in oids]
        locs = [(oid, loc) for oid, loc in locs if loc is not None]
        if len(locs) < 2 or len({loc[0] for _o, loc in locs}) != 1:
            return
        pack = locs[0][1][0]
        start = min(loc[1] for _o, loc in locs)
        end = max(loc[1] + loc[2] for _o, loc in locs)
        got = self.remote.get(f"packs/{pack}.pack", f"bytes={start}-{end - 1}")
        if got is None or len(got[0]) != end - start:
            return
        mv = memoryview(got[0])
        for oid, (_p, off, ln) in locs:
            key = f"{oid}.{pack}"
            data = bytes(mv[off - start:off - start + ln])
            self.disk.put(key, data)
            self._remember(key, data)

    def get_range(self, oid: str, offset: int, length: int):
        pack, off, ln = self._locate(oid)
        key = f"{oid}.{pack}"
        with self._lock:
            data = self._lru.get(key)
        if data is not None:
            return data[offset:offset + length]
        cached = self.disk.read(key, offset, length, ln)
        if cached is not None:
            return cached
        end = min(ln, offset + length)
        if end <= offset:
            return b""
        got = self.remote.get(f"packs/{pack}.pack", f"bytes={off + offset}-{off + end - 1}")
        if got is None:
            raise MissingObject(oid)
        return got[0]

    def size_of(self, oid: str) -> int:
        return self._locate(oid)[2]

    def writer(self, gc_lock: bool = True) -> ObjectWriter:
        """A batch. (``gc_lock`` is for the local store's interface: S3 has no lock across
        machines; gc works in two phases instead.)"""
        return _S3Writer(self)

    def ids(self) -> Iterator[str]:
        self._scan()
        return iter(list(self._index))

    def stored_bytes(self) -> int:
        self._scan()
        return sum(self._packs.values())

    # -- refs ---------------------------------------------------------------------------------
    def _ref_read(self, name: str) -> tuple[int, Optional[str], list[int]]:
        """(generation, value, generations listed) of ``refs/<name>``; in a format-1 repository
        a ref still kept as a plain object (not migrated yet) reads as generation 0."""
        base = f"refs/{name}"
        n, body, gens = self.regs.read(base)
        if n == 0 and self._format == 1:
            got = self.remote.get(base)
            body = got[0] if got else None
        value = body.decode().strip() if body is not None else ""
        return n, value or None, gens

    def get_ref(self, name: str) -> Optional[str]:
        return self._ref_read(name)[1]

    def cas_ref(self, name: str, expected: Optional[str], new: Optional[str]) -> None:
        """Create the ref's next generation (a tombstone deletes) if the newest holds
        ``expected``: one request that only succeeds if no other writer created it first."""
        self._upgrade()
        n, current, gens = self._ref_read(name)
        if current != expected:
            raise RefConflict(name, expected, current)
        if current is None and new is None:
            return
        body = new.encode() + b"\n" if new is not None else b""
        if not self.regs.write(f"refs/{name}", n, body, gens):
            raise RefConflict(name, expected, self.get_ref(name))

    def list_refs(self, prefix: str = "") -> dict[str, str]:
        regs, plain = self.regs.scan(f"refs/{prefix}")
        out = {}
        for base, gens in regs.items():
            body = self.regs.body(base, gens[-1])
            value = (body.decode().strip() if body is not None
                     else self._ref_read(base[len("refs/"):])[1])
            if value:
                out[base[len("refs/"):]] = value
        for rel in plain:               # format 1 refs not migrated yet
            if rel not in regs:
                value = self._ref_read(rel[len("refs/"):])[1]
                if value:
                    out[rel[len("refs/"):]] = value
        return out

    def sweep_refs(self) -> int:
        """Delete superseded generations of refs, config and leases (gc)."""
        return sum(self.regs.sweep(p) for p in ("refs/", "config/", "locks/"))

    def append_reflog(self, ref: str, line: str) -> None:
        self.remote.put(f"reflog/{ref}/{time.time_ns():016x}-{uuid.uuid4().hex[:8]}",
                  line.rstrip("\n").encode() + b"\n")

    def read_reflog(self, ref: str) -> list[str]:
        out = []
        for rel, _n in sorted(self.remote.list(f"reflog/{ref}/")):
            got = self.remote.get(rel)
            if got:
                out.append(got[0].decode().rstrip("\n"))
        return out

    def reflog_refs(self) -> list[str]:
        refs = set()
        for rel, _n in self.remote.list("reflog/"):
            refs.add(rel[len("reflog/"):].rsplit("/", 1)[0])
        return sorted(refs)
