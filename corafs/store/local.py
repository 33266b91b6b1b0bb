"""Local object store: append-only HDF5 pack files plus file refs.

Layout under ``<repo>/``::

    objects/pack-<time>-<rand>.h5   one contiguous uint8 dataset ``data`` + object table
    objects/pack-<time>-<rand>.idx  the same table as .npy, for fast start-up (rebuilt if
                                    missing)
    refs/heads/<branch>, refs/tags/<tag>, reflog/, corafs.json: see ``corafs.store.filerefs``

Durability order for a batch: pack written as ``*.h5.tmp``, fsynced, renamed, directory
fsynced, then the .idx; refs are only moved by the caller after ``commit()`` returns. A crash
therefore leaves at worst temporary files: garbage, not damage.

An object may be stored in several packs (head-first encoding writes a block's new encoding
to a new pack; a repack copies objects). Every copy decodes to the same bytes; reads use the
one in the newest pack (by the creation time in the name), and a repack drops the others.

Every temporary file carries the *token* of the process that writes it
(``pack-<name>.w<token>.spool.tmp``), and that process holds an exclusive lock on
``objects/writer-<token>.lock`` for as long as it lives. ``clean_temporaries`` removes a
temporary file only when its writer's lock is free: the writer died (a crash, kill -9), never
while a concurrent ``corafs commit`` is still writing it. It runs before the first write of
every process (the next command that writes, the next mount) and on ``fsck --repair``.

Locks: ``_lock`` guards the index and the handle table only (held for dict operations); a
pack being sealed (HDF5 calls, copies, fsyncs) never holds it, so reads go on meanwhile. Pack
handles are reference-counted: one evicted from the table is closed when its last read ends.
"""
from __future__ import annotations

import collections
import fcntl
import os
import re
import threading
from typing import Iterator, Optional

import numpy as np

from ..config import DEFAULT, Tuning
from ..errors import CorruptObject
from .base import ObjectStore, ObjectWriter
from .batch import PackBatch
from .filerefs import FileRefs
from .fsutil import WriterToken, atomic_write, fsync_dir, temporaries, writer_alive
from .hdf5pack import DATA_ROW, Pack, PackGone, PackWriter
from .packindex import IDX_DTYPE as _IDX_DTYPE, PackIndex


class _LocalWriter(PackBatch):
    """One batch of HDF5 packs. From its creation until it ends it holds the repository's gc
    lock shared, so a gc never deletes a pack whose objects this batch may have deduplicated
    against; at creation it reloads the index if a gc ran since (``has`` must not answer from
    a stale index). A writer whose objects become reachable only later (a commit's ref move)
    holds ``LocalStore.claim`` until then."""

    def __init__(self, store: "LocalStore", gc_lock: bool = True):
        super().__init__(store.tuning.pack_target)
        self.store = store
        self._gc_fd: Optional[int] = store._gc_shared() if gc_lock else None

    def _new_pack(self) -> PackWriter:
        return PackWriter(self.store.objdir, self.store.token())

    def _seal_pack(self, pack: PackWriter) -> None:
        table = pack.finish()
        with self.store._lock:
            self.store._add_pack(pack.name, table)

    def _release(self) -> None:
        fd, self._gc_fd = self._gc_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        try:
            self._release()
        except Exception:
            pass


class LocalStore(FileRefs, PackIndex, ObjectStore):
    def __init__(self, root: str, tuning: Tuning = DEFAULT):
        self.root = self.state_dir = root
        self.tuning = tuning
        self.objdir = os.path.join(root, "objects")
        self.refdir = os.path.join(root, "refs")
        self._lock = threading.RLock()
        self._index: dict[str, tuple[str, int, int]] = {}
        self._packs: set[str] = set()
        self._where: dict[str, tuple[int, int]] = {}
        #: reads served with O_DIRECT (bypassing the page cache), for the stats and tests
        self.direct_reads = 0
        self._handles: "collections.OrderedDict[str, Pack]" = collections.OrderedDict()
        self._token: Optional[WriterToken] = None
        self._tables: dict[str, np.ndarray] = {}     # pack -> its object table
        os.makedirs(self.objdir, exist_ok=True)
        os.makedirs(self.refdir, exist_ok=True)
        self._generation = self._read_generation()
        self._scan()

    # -- gc coordination ------------------------------------------------------------------------
    def _gc_lock_path(self) -> str:
        return os.path.join(self.objdir, "gc.lock")

    def _read_generation(self) -> int:
        try:
            with open(os.path.join(self.objdir, "gc-generation")) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _gc_shared(self) -> int:
        """Hold the gc lock shared (a batch in progress); reload the index if a gc ran."""
        fd = os.open(self._gc_lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        gen = self._read_generation()
        if gen != self._generation:
            self.rescan()
            self._generation = gen
        return fd

    def claim(self):
        """The gc lock, shared, for as long as the context lasts (see ``ObjectStore``)."""
        import contextlib

        @contextlib.contextmanager
        def held():
            fd = self._gc_shared()
            try:
                yield
            finally:
                os.close(fd)
        return held()

    def gc_exclusive(self):
        """Context manager: no batch is in progress in any process while it is held."""
        import contextlib

        @contextlib.contextmanager
        def held():
            fd = os.open(self._gc_lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)
        return held()

    def lease(self, name: str, blocking: bool = True):
        """``objects/<name>.lock``, an exclusive flock (released by the kernel however the
        holder ends)."""
        import contextlib

        @contextlib.contextmanager
        def held():
            fd = os.open(os.path.join(self.objdir, f"{name}.lock"), os.O_RDWR | os.O_CREAT,
                         0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                yield True
            finally:
                os.close(fd)
        return held()

    def refresh(self) -> None:
        self._scan()

    def bump_generation(self) -> None:
        gen = self._read_generation() + 1
        atomic_write(os.path.join(self.objdir, "gc-generation"), f"{gen}\n".encode(),
                     self.token())
        self._generation = gen

    def rescan(self) -> None:
        """Forget the index and load it again (packs were removed by a gc)."""
        with self._lock:
            self._index.clear()
            self._packs.clear()
            self._where.clear()
            self._tables.clear()
            for name, h in list(self._handles.items()):
                h.evicted = True
                if h.users == 0:
                    h.close()
            self._handles.clear()
        self._scan()

    def packs(self) -> dict[str, dict]:
        """Every pack: path, bytes on disk (.h5 + .idx), mtime and object table."""
        self._scan()
        out = {}
        with self._lock:
            for name, table in self._tables.items():
                h5 = os.path.join(self.objdir, name + ".h5")
                try:
                    st = os.stat(h5)
                except FileNotFoundError:
                    continue
                idx = os.path.join(self.objdir, name + ".idx")
                size = st.st_size + (os.path.getsize(idx) if os.path.exists(idx) else 0)
                out[name] = {"path": h5, "bytes": size, "mtime": st.st_mtime, "table": table}
        return out

    def location(self, oid: str) -> Optional[tuple[str, int, int]]:
        return self._index.get(oid)

    def remove_packs(self, names) -> int:
        """Delete packs (after their live objects were copied elsewhere). Readers holding a
        pack open keep reading it; others find it gone and reload the index."""
        freed = 0
        for name in names:
            for ext in (".h5", ".idx"):
                p = os.path.join(self.objdir, name + ext)
                try:
                    freed += os.path.getsize(p)
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        fsync_dir(self.objdir)
        return freed

    def token(self) -> WriterToken:
        """This process's writer token; the first write of a process first removes what dead
        writers left behind."""
        if self._token is None or self._token.pid != os.getpid():
            self._token = WriterToken.of(self.objdir)
            self.clean_temporaries()
        return self._token

    def temp_path(self, stem: str) -> str:
        return self.token().tmp(os.path.join(self.objdir, stem))

    def temporaries(self) -> list[tuple[str, int, bool]]:
        """(path, size, whether a live writer owns it) of every temporary file."""
        return [(p, n, tok is not None and writer_alive(self.objdir, tok))
                for p, n, tok in temporaries(self.objdir, self.refdir)]

    def clean_temporaries(self) -> list[tuple[str, int]]:
        """Remove the temporary files of writers that are gone (and their lock files)."""
        removed = []
        for p, n, alive in self.temporaries():
            if alive:
                continue
            try:
                os.unlink(p)
                removed.append((p, n))
            except FileNotFoundError:
                pass
        for fn in os.listdir(self.objdir):
            m = re.fullmatch(r"writer-([0-9a-f]{12})\.lock", fn)
            if m and not writer_alive(self.objdir, m.group(1)):
                try:
                    os.unlink(os.path.join(self.objdir, fn))
                except FileNotFoundError:
                    pass
        return removed

    @classmethod
    def create(cls, root: str, tuning: Tuning = DEFAULT) -> "LocalStore":
        os.makedirs(os.path.join(root, "objects"), exist_ok=True)
        for sub in ("heads", "tags"):
            os.makedirs(os.path.join(root, "refs", sub), exist_ok=True)
        return cls(root, tuning)

    # -- index -----------------------------------------------------------------------------
    def _scan(self) -> None:
        """Load the tables of packs not seen yet (another process may have added some)."""
        with self._lock:
            for fn in sorted(os.listdir(self.objdir)):
                if not fn.endswith(".h5") or not fn.startswith("pack-"):
                    continue
                name = fn[:-3]
                if name in self._packs:
                    continue
                idx = os.path.join(self.objdir, name + ".idx")
                try:
                    table = np.load(idx, allow_pickle=False)
                except (OSError, ValueError, EOFError):
                    table = self._rebuild_idx(name)
                    if table is None:
                        continue
                self._add_pack(name, table)

    def _rebuild_idx(self, name: str):
        import h5py
        path = os.path.join(self.objdir, name + ".h5")
        try:
            with h5py.File(path, "r") as f:
                table = np.empty(len(f["ids"]), dtype=_IDX_DTYPE)
                table["id"] = f["ids"][:]
                table["off"] = f["offsets"][:]
                table["len"] = f["lengths"][:]
        except (OSError, KeyError):
            return None
        tmp = self.token().tmp(os.path.join(self.objdir, name + ".idx"))
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, table)
            os.replace(tmp, os.path.join(self.objdir, name + ".idx"))
        except OSError:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return table

    def _add_pack(self, name: str, table: np.ndarray) -> None:
        """Index a pack: where its data lies (the table's header row), then its objects."""
        self._packs.add(name)
        if len(table) and table["id"][0] == DATA_ROW:
            self._where[name] = (int(table["off"][0]), int(table["len"][0]))
            table = table[1:]
        self._tables[name] = table
        self._index_table(name, table)

    def _handle(self, pack: str) -> Pack:
        f = self._handles.get(pack)
        if f is not None:
            self._handles.move_to_end(pack)
            return f
        f = Pack(os.path.join(self.objdir, pack + ".h5"), self._where.get(pack))
        self._handles[pack] = f
        while len(self._handles) > self.tuning.open_packs:
            _, old = self._handles.popitem(last=False)
            old.evicted = True
            if old.users == 0:
                old.close()
        return f

    def _release(self, h: Pack) -> None:
        with self._lock:
            h.users -= 1
            if h.evicted and h.users == 0:
                h.close()

    # -- objects -----------------------------------------------------------------------------
    def has(self, oid: str) -> bool:
        return oid in self._index

    def get(self, oid: str):
        return self._read_obj(oid, 0, None)

    def read_block(self, oid: str):
        return self._read_obj(oid, 0, None, self.tuning.direct_reads)

    def get_range(self, oid: str, offset: int, length: int):
        return self._read_obj(oid, offset, length)

    def _read_obj(self, oid: str, rel: int, length: Optional[int], direct: bool = False):
        for attempt in (0, 1):
            pack, off, ln = self._locate(oid)
            if rel < 0 or rel > ln:
                raise ValueError(f"range outside object {oid}")
            n = ln - rel if length is None else min(length, ln - rel)
            try:
                return self._read(oid, pack, off + rel, n,
                                  direct and n >= self.tuning.direct_read_min)
            except PackGone:
                if attempt:
                    raise CorruptObject(oid, f"pack {pack} vanished") from None
                self.rescan()            # a gc moved it: the index learns where

    def _read(self, oid, pack, off, ln, direct: bool = False):
        if ln == 0:
            return b""
        h = None
        try:
            with self._lock:
                try:
                    h = self._handle(pack)
                except FileNotFoundError:        # removed by a gc: the caller relocates
                    raise PackGone(pack) from None
                h.users += 1
            if off + ln > h.length or h.offset + off + ln > h.file_size:
                raise CorruptObject(oid, f"pack {pack} is truncated")
            data = h.read_direct(off, ln) if direct else None
            if data is None:
                data = h.read(off, ln)
            else:
                self.direct_reads += 1
            if len(data) != ln:
                raise CorruptObject(oid, f"short read from pack {pack}")
            return data
        except (CorruptObject, PackGone):
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            with self._lock:
                if self._handles.get(pack) is h and h is not None:
                    del self._handles[pack]
                    h.evicted = True
            raise CorruptObject(oid, f"cannot read pack {pack}: {e}") from None
        finally:
            if h is not None:
                self._release(h)

    def size_of(self, oid: str) -> int:
        return self._locate(oid)[2]

    def extent(self, oid: str) -> Optional[tuple[str, int, int]]:
        """Where an object's bytes lie on disk: (pack file, offset in it, length); None when
        it is not stored. For fsck's messages and the tests that damage a pack on purpose."""
        loc = self._index.get(oid)
        if loc is None:
            return None
        pack, off, ln = loc
        return (os.path.join(self.objdir, pack + ".h5"),
                self._where.get(pack, (0, 0))[0] + off, ln)

    def writer(self, gc_lock: bool = True) -> ObjectWriter:
        """A batch. ``gc_lock=False`` only for a gc that holds the lock exclusively itself."""
        return _LocalWriter(self, gc_lock)

    def ids(self) -> Iterator[str]:
        self._scan()
        return iter(list(self._index))

    def stored_bytes(self) -> int:
        total = 0
        for fn in os.listdir(self.objdir):
            if fn.endswith(".h5") or fn.endswith(".idx"):
                total += os.path.getsize(os.path.join(self.objdir, fn))
        return total

    def verify(self):
        for dirpath, _dirs, files in os.walk(self.refdir):
            for fn in files:
                if ".tmp" in fn:
                    continue
                path = os.path.join(dirpath, fn)
                rel = os.path.relpath(path, self.refdir)
                try:
                    val = open(path).read().strip()
                except (OSError, UnicodeDecodeError) as e:
                    yield (f"ref {rel}", f"unreadable: {e}")
                    continue
                if not re.fullmatch(r"[0-9a-f]{64}", val):
                    yield (f"ref {rel}", "empty or not a commit id" if not val else
                           f"not a commit id: {val[:40]!r}")
        import h5py
        for fn in sorted(os.listdir(self.objdir)):
            path = os.path.join(self.objdir, fn)
            if not fn.endswith(".h5"):
                continue
            try:
                with h5py.File(path, "r") as f:
                    n = f["data"].shape[0]
                    ends = f["offsets"][:] + f["lengths"][:]
                    if len(ends) and int(ends.max()) > n:
                        yield (fn, "object table points past the end of the data")
            except (OSError, KeyError) as e:
                yield (fn, f"unreadable pack: {e}")

    def close(self) -> None:
        with self._lock:
            for f in self._handles.values():
                f.close()
            self._handles.clear()
