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
import json
import os
import tempfile
import threading
import time
import uuid
from typing import Iterator, Optional
from urllib.parse import urlparse

import numpy as np

from ..config import DEFAULT, Tuning
from ..errors import CorafsError, MissingObject, RefConflict
from .base import ObjectStore, ObjectWriter
from .diskcache import DiskCache
from .packindex import IDX_DTYPE as _IDX_DTYPE, PackIndex

_MiB = 1 << 20


def is_url(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith("s3://")


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc:
        raise CorafsError(f"not an S3 URL: {url} (expected s3://bucket/prefix)")
    return u.netloc, u.path.strip("/")


def cache_root() -> str:
    return os.environ.get("CORAFS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "corafs")


def local_dir(url: str) -> str:
    """This machine's directory for a remote repository: index cache, mount staging, logs."""
    bucket, prefix = parse_url(url)
    import hashlib
    tag = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "s3", f"{bucket}-{tag}")


class S3Error(CorafsError):
    """A request the service refused for good (after retries): names the key and the code."""


_ATTEMPTS = 10


def _client():
    import boto3
    from botocore.config import Config
    endpoint = os.environ.get("CORAFS_S3_ENDPOINT_URL") or None
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(
        retries={"mode": "standard", "max_attempts": _ATTEMPTS},
        max_pool_connections=32, connect_timeout=10, read_timeout=60))
    client.meta.events.register_first("needs-retry.s3", _retry_after)
    return client


def _retry_after(response=None, attempts=None, **_kw):
    """A temporary refusal that says when to come back (Retry-After, in seconds) is retried
    after that long (capped at a minute, with jitter); otherwise botocore's standard mode
    decides (exponential backoff with jitter)."""
    if response is None or attempts is None or attempts >= _ATTEMPTS:
        return None
    http = response[0]
    if getattr(http, "status_code", None) not in (408, 429, 500, 502, 503, 504):
        return None
    value = (getattr(http, "headers", None) or {}).get("Retry-After")
    try:
        delay = float(value)
    except (TypeError, ValueError):
        return None
    import random
    return min(max(delay, 0.0), 60.0) + random.uniform(0, 0.1)


def _code(e) -> str:
    r = getattr(e, "response", None) or {}
    return str(r.get("Error", {}).get("Code") or r.get("ResponseMetadata", {}).get(
        "HTTPStatusCode") or type(e).__name__)


#: how services say "your condition did not hold" (a lost race, not a failure)
_CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _lost_race(e) -> bool:
    return _code(e) in _CONFLICT


def _describe(e, bucket: str, key: str) -> S3Error:
    return S3Error(f"S3 request for s3://{bucket}/{key} failed: {_code(e)}")


class _S3Writer(ObjectWriter):
    """Objects spooled to a local file; each full pack is uploaded, then its index."""

    def __init__(self, store: "S3Store"):
        self.store = store
        self.ids: set[str] = set()
        self._lock = threading.Lock()
        self._spool: Optional[tempfile._TemporaryFileWrapper] = None
        self._table: list[tuple[str, int, int]] = []
        self._size = 0
        self.done = False
        store._scan()        # dedup (has) answers from a fresh index

    def has(self, oid: str) -> bool:
        return oid in self.ids

    def put(self, oid: str, data) -> None:
        if oid in self.ids:
            return
        mv = memoryview(data).cast("B")
        with self._lock:
            if self._spool is None:
                os.makedirs(self.store.tmpdir, exist_ok=True)
                self._spool = tempfile.NamedTemporaryFile(dir=self.store.tmpdir,
                                                          suffix=".pack.tmp")
            self._spool.write(mv)
            self._table.append((oid, self._size, mv.nbytes))
            self._size += mv.nbytes
            self.ids.add(oid)
            if self._size >= self.store.pack_target:
                self._seal()

    def _seal(self) -> None:
        if self._spool is None:
            return
        name = f"{time.time_ns():016x}-{uuid.uuid4().hex[:16]}"
        spool, table = self._spool, np.array(self._table, dtype=_IDX_DTYPE)
        self._spool, self._table, self._size = None, [], 0
        try:
            spool.flush()
            self.store._upload_file(spool.name, f"packs/{name}.pack")
            buf = io.BytesIO()
            np.save(buf, table)
            self.store._put(f"index/{name}.idx", buf.getvalue())   # after its pack only
        finally:
            spool.close()
        self.store._add(name, table)

    def commit(self) -> None:
        with self._lock:
            self._seal()
            self.done = True

    def abort(self) -> None:
        with self._lock:
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            self.done = True


class S3Store(PackIndex, ObjectStore):
    shared_by_machines = True

    def __init__(self, url: str, tuning: Tuning = DEFAULT, client=None):
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.tuning = tuning
        self.s3 = client or _client()
        self.local = local_dir(url)
        self.tmpdir = os.path.join(self.local, "tmp")
        self.idxdir = os.path.join(self.local, "index")
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
        self.disk = DiskCache(os.path.join(self.local, "objects"))
        self._inflight: dict[str, threading.Event] = {}
        self._doomed: set[str] = set()
        self._scan()

    # -- keys and requests ------------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _put(self, rel: str, data: bytes, **cond):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return self.s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data,
                                      **cond)
        except ClientError as e:
            if _lost_race(e):
                raise
            raise _describe(e, self.bucket, self._key(rel)) from None
        except BotoCoreError as e:
            raise _describe(e, self.bucket, self._key(rel)) from None

    def _get(self, rel: str, rng: Optional[str] = None) -> Optional[tuple[bytes, str]]:
        """(body, etag), or None when the key does not exist."""
        from botocore.exceptions import BotoCoreError, ClientError
        kw = {"Range": rng} if rng else {}
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=self._key(rel), **kw)
            return r["Body"].read(), r.get("ETag", "")
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404") or (rng and _code(e) in ("InvalidRange",
                                                                          "416")):
                return None         # gone, or a pack shorter than its index says: missing
            raise _describe(e, self.bucket, self._key(rel)) from None
        except BotoCoreError as e:
            raise _describe(e, self.bucket, self._key(rel)) from None

    def _list(self, rel_prefix: str) -> Iterator[tuple[str, float]]:
        """(key below the prefix, upload time) of every object under ``rel_prefix``."""
        from botocore.exceptions import BotoCoreError, ClientError
        base = self._key(rel_prefix)
        strip = len(self._key(""))
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=base):
                for o in page.get("Contents", []):
                    yield o["Key"][strip:], o["LastModified"].timestamp()
        except ClientError as e:
            raise _describe(e, self.bucket, base) from None
        except BotoCoreError as e:
            raise _describe(e, self.bucket, base) from None

    def _upload_file(self, path: str, rel: str) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError
        cfg = TransferConfig(multipart_threshold=16 * _MiB, multipart_chunksize=16 * _MiB,
                             max_concurrency=8)
        try:
            self.s3.upload_file(path, self.bucket, self._key(rel), Config=cfg)
        except (ClientError, BotoCoreError) as e:
            raise _describe(e, self.bucket, self._key(rel)) from None
        except Exception as e:      # boto3's S3UploadFailedError wraps the client error
            raise S3Error(f"upload of s3://{self.bucket}/{self._key(rel)} failed: "
                          f"{type(e).__name__}") from None

    # -- config -------------------------------------------------------------------------------
    def get_config(self) -> Optional[bytes]:
        got = self._get("corafs.json")
        return got[0] if got else None

    def create_config(self, data: bytes) -> bool:
        """Write the config unless one exists; False when it does."""
        try:
            self._put("corafs.json", data, IfNoneMatch="*")
            return True
        except Exception as e:
            if _lost_race(e):
                return False
            raise _describe(e, self.bucket, self._key("corafs.json")) from None

    def update_config(self, change) -> dict:
        """Replace the config with ``change(config)`` (a dict), and return it. Written with
        If-Match on the ETag read, so a concurrent change on another machine is read again and
        applied to, never overwritten."""
        for _ in range(8):
            got = self._get("corafs.json")
            if got is None:
                raise S3Error(f"s3://{self.bucket}/{self._key('corafs.json')} is missing")
            cfg = change(json.loads(got[0]))
            try:
                self._put("corafs.json", json.dumps(cfg, indent=2).encode(), IfMatch=got[1])
                return cfg
            except Exception as e:
                if not _lost_race(e):
                    raise
        raise S3Error(f"s3://{self.bucket}/{self._key('corafs.json')} kept changing under "
                      "this update: try again")

    def check_conditional_writes(self) -> None:
        """Two writers racing to create one key, and a move with a stale ETag: the service
        must refuse the loser each time, or concurrent commits could silently be lost."""
        rel = f"probe/cas-{uuid.uuid4().hex}"
        missing = []

        def refused(**cond) -> bool:
            try:
                self._put(rel, b"x", **cond)
                return False
            except Exception as e:
                if not _lost_race(e):
                    raise
                return True
        try:
            first = self._put(rel, b"a", IfNoneMatch="*")
            if not refused(IfNoneMatch="*"):
                missing.append("If-None-Match (create only if absent)")
            if not refused(IfMatch='"0123456789abcdef0123456789abcdef"'):
                missing.append("If-Match (replace only an expected version)")
            if not missing:
                try:                # deleting a branch is a conditional delete too
                    self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel),
                                          IfMatch='"0123456789abcdef0123456789abcdef"')
                    missing.append("If-Match on DELETE (delete only an expected version)")
                except Exception as e:
                    if not _lost_race(e):
                        raise
            if not missing:
                self._put(rel, b"d", IfMatch=first["ETag"])     # the right ETag must pass
        finally:
            try:
                self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel))
            except Exception:
                pass
        if missing:
            raise CorafsError(
                f"s3://{self.bucket}: this service does not honour conditional writes "
                f"({'; '.join(missing)}). corafs moves refs by compare-and-swap and refuses "
                "a store where two writers could both win; use a service that implements "
                "them (AWS S3, MinIO, Ceph RGW 18+, R2)")

    # -- index ----------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Load the tables of packs not seen yet (other writers, other machines), and the
        packs a gc has scheduled for deletion."""
        self._doomed = self._read_doomed()
        for rel, mtime in self._list("index/"):
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
                got = self._get(rel)
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
        """Context manager: hold ``locks/<name>`` exclusively across machines (created with
        If-None-Match, renewed with If-Match every ttl/3, taken over only once expired).
        Yields whether it was taken (always, when blocking)."""
        import contextlib
        import json
        import socket

        @contextlib.contextmanager
        def held():
            rel = f"locks/{name}"
            owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

            def body():
                return json.dumps({"owner": owner, "expires": time.time() + ttl}).encode()
            etag = None
            while etag is None:
                try:
                    etag = self._put(rel, body(), IfNoneMatch="*")["ETag"]
                    break
                except Exception as e:
                    if not _lost_race(e):
                        raise
                got = self._get(rel)
                if got is not None:
                    try:
                        expired = json.loads(got[0]).get("expires", 0) < time.time()
                    except ValueError:
                        expired = True
                    if expired:
                        try:
                            etag = self._put(rel, body(), IfMatch=got[1])["ETag"]
                            break
                        except Exception as e:
                            if not _lost_race(e):
                                raise
                if not blocking:
                    yield False
                    return
                time.sleep(0.5)
            stop = threading.Event()
            state = {"etag": etag}

            def renew():
                while not stop.wait(ttl / 3):
                    try:
                        state["etag"] = self._put(rel, body(), IfMatch=state["etag"])["ETag"]
                    except Exception:
                        return          # lost: it expires; the holder's work is idempotent
            t = threading.Thread(target=renew, daemon=True, name=f"corafs-lease-{name}")
            t.start()
            try:
                yield True
            finally:
                stop.set()
                t.join()
                try:
                    self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel),
                                          IfMatch=state["etag"])
                except Exception:
                    pass
        return held()

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
        for rel, _n in self._list("gc/"):
            got = self._get(rel)
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
        self._put(f"gc/{time.time_ns():016x}-{uuid.uuid4().hex[:8]}.json",
                  json.dumps({"packs": sorted(packs), "time": time.time()}).encode())
        self._doomed |= set(packs)

    def remove_gc_record(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

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
                try:
                    self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel))
                except Exception as e:
                    raise _describe(e, self.bucket, self._key(rel)) from None
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
            got = self._get(f"packs/{pack}.pack", f"bytes={off}-{off + ln - 1}") \
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
        got = self._get(f"packs/{pack}.pack", f"bytes={start}-{end - 1}")
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
        got = self._get(f"packs/{pack}.pack", f"bytes={off + offset}-{off + end - 1}")
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
    def _ref_get(self, name: str) -> tuple[Optional[str], Optional[str]]:
        got = self._get(f"refs/{name}")
        if got is None:
            return None, None
        return got[0].decode().strip() or None, got[1]

    def get_ref(self, name: str) -> Optional[str]:
        return self._ref_get(name)[0]

    def cas_ref(self, name: str, expected: Optional[str], new: Optional[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        current, etag = self._ref_get(name)
        if current != expected:
            raise RefConflict(name, expected, current)
        rel = f"refs/{name}"
        try:
            if new is None:
                if etag is not None:
                    self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel), IfMatch=etag)
            elif etag is None:
                self._put(rel, new.encode() + b"\n", IfNoneMatch="*")
            else:
                self._put(rel, new.encode() + b"\n", IfMatch=etag)
        except (ClientError, BotoCoreError) as e:
            if _lost_race(e):
                raise RefConflict(name, expected, self.get_ref(name)) from None
            raise _describe(e, self.bucket, self._key(rel)) from None

    def list_refs(self, prefix: str = "") -> dict[str, str]:
        out = {}
        for rel, _n in self._list(f"refs/{prefix}"):
            name = rel[len("refs/"):]
            v = self.get_ref(name)
            if v:
                out[name] = v
        return out

    def append_reflog(self, ref: str, line: str) -> None:
        self._put(f"reflog/{ref}/{time.time_ns():016x}-{uuid.uuid4().hex[:8]}",
                  line.rstrip("\n").encode() + b"\n")

    def read_reflog(self, ref: str) -> list[str]:
        out = []
        for rel, _n in sorted(self._list(f"reflog/{ref}/")):
            got = self._get(rel)
            if got:
                out.append(got[0].decode().rstrip("\n"))
        return out

    def reflog_refs(self) -> list[str]:
        refs = set()
        for rel, _n in self._list("reflog/"):
            refs.add(rel[len("reflog/"):].rsplit("/", 1)[0])
        return sorted(refs)
