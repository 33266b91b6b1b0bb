"""Local object store: append-only HDF5 pack files plus file refs.

Layout under ``<repo>/``::

    objects/pack-<uuid>.h5     one contiguous-ish uint8 dataset ``data`` + object table
    objects/pack-<uuid>.idx    the same table as .npy, for fast start-up (rebuilt if missing)
    refs/heads/<branch>, refs/tags/<tag>
    refs.lock                  fcntl lock serializing ref compare-and-swap

Durability order for a batch: pack written as ``*.h5.tmp``, fsynced, renamed, directory
fsynced, then the .idx; refs are only moved by the caller after ``commit()`` returns. A crash
therefore leaves at worst a ``*.tmp`` file (ignored, reported by fsck, removed by gc).

h5py serializes every call behind one global lock anyway; this store holds its own lock around
HDF5 access so the rest of corafs can call it from worker threads.
"""
from __future__ import annotations

import collections
import fcntl
import os
import threading
import uuid
from typing import Iterator, Optional

import h5py
import numpy as np

from ..config import DEFAULT, Tuning
from ..errors import CorruptObject, MissingObject, RefConflict
from .base import ObjectStore, ObjectWriter

_H5_CHUNK = 1 << 20
_FLUSH = 8 << 20
_IDX_DTYPE = np.dtype([("id", "S64"), ("off", "<i8"), ("len", "<i8")])


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


class _PackWriter:
    """One pack being written (``.h5.tmp``)."""

    def __init__(self, directory: str):
        self.name = f"pack-{uuid.uuid4().hex}"
        self.tmp = os.path.join(directory, self.name + ".h5.tmp")
        self.final = os.path.join(directory, self.name + ".h5")
        self.f = h5py.File(self.tmp, "w", libver="latest")
        self.ds = None   # created at the first flush (chunked) or at finish (contiguous)
        self.size = 0            # bytes written to the dataset
        self.pending = bytearray()
        self.table: list[tuple[str, int, int]] = []

    @property
    def nbytes(self) -> int:
        return self.size + len(self.pending)

    def put(self, oid: str, data) -> None:
        mv = memoryview(data).cast("B")
        self.table.append((oid, self.nbytes, mv.nbytes))
        if len(self.pending) + mv.nbytes >= _FLUSH:
            self._flush(mv)
        else:
            self.pending += mv

    def _flush(self, extra=None) -> None:
        parts = [self.pending] if self.pending else []
        if extra is not None and memoryview(extra).nbytes:
            parts.append(extra)
        n = sum(memoryview(p).nbytes for p in parts)
        if not n:
            return
        if self.ds is None:
            self.ds = self.f.create_dataset("data", shape=(0,), maxshape=(None,), dtype="u1",
                                            chunks=(_H5_CHUNK,))
        self.ds.resize((self.size + n,))
        pos = self.size
        for p in parts:
            arr = np.frombuffer(p, dtype=np.uint8)
            self.ds[pos:pos + arr.size] = arr
            pos += arr.size
        self.size += n
        self.pending = bytearray()

    def finish(self) -> np.ndarray:
        if self.ds is None:   # small pack: one contiguous dataset of the exact size
            self.f.create_dataset("data", data=np.frombuffer(bytes(self.pending), np.uint8))
            self.size, self.pending = len(self.pending), bytearray()
        self._flush()
        table = np.array(self.table, dtype=_IDX_DTYPE)
        self.f.create_dataset("ids", data=table["id"])
        self.f.create_dataset("offsets", data=table["off"])
        self.f.create_dataset("lengths", data=table["len"])
        self.f.attrs["format"] = "corafs-pack-1"
        self.f.close()
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.final)
        fsync_dir(os.path.dirname(self.final))
        idx = self.final[:-3] + ".idx"
        with open(idx + ".tmp", "wb") as f:
            np.save(f, table)
            f.flush()
            os.fsync(f.fileno())
        os.replace(idx + ".tmp", idx)
        return table

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


class _LocalWriter(ObjectWriter):
    def __init__(self, store: "LocalStore"):
        self.store = store
        self.pack: Optional[_PackWriter] = None
        self.ids: set[str] = set()
        self.done = False

    def has(self, oid: str) -> bool:
        return oid in self.ids

    def put(self, oid: str, data) -> None:
        if oid in self.ids:
            return
        with self.store._lock:
            if self.pack is None:
                self.pack = _PackWriter(self.store.objdir)
            self.pack.put(oid, data)
            self.ids.add(oid)
            if self.pack.nbytes >= self.store.tuning.pack_target:
                self._seal()

    def _seal(self) -> None:
        pack, self.pack = self.pack, None
        table = pack.finish()
        self.store._add_pack(pack.name, table)

    def commit(self) -> None:
        if self.done:
            return
        with self.store._lock:
            if self.pack is not None:
                self._seal()
        self.done = True

    def abort(self) -> None:
        with self.store._lock:
            if self.pack is not None:
                self.pack.abort()
                self.pack = None
        self.done = True


class LocalStore(ObjectStore):
    def __init__(self, root: str, tuning: Tuning = DEFAULT):
        self.root = root
        self.tuning = tuning
        self.objdir = os.path.join(root, "objects")
        self.refdir = os.path.join(root, "refs")
        self._lock = threading.RLock()
        self._index: dict[str, tuple[str, int, int]] = {}
        self._packs: set[str] = set()
        self._handles: "collections.OrderedDict[str, h5py.File]" = collections.OrderedDict()
        os.makedirs(self.objdir, exist_ok=True)
        os.makedirs(self.refdir, exist_ok=True)
        self._scan()

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
                except (OSError, ValueError):
                    table = self._rebuild_idx(name)
                    if table is None:
                        continue
                self._add_pack(name, table)

    def _rebuild_idx(self, name: str):
        path = os.path.join(self.objdir, name + ".h5")
        try:
            with h5py.File(path, "r") as f:
                table = np.empty(len(f["ids"]), dtype=_IDX_DTYPE)
                table["id"] = f["ids"][:]
                table["off"] = f["offsets"][:]
                table["len"] = f["lengths"][:]
        except (OSError, KeyError):
            return None
        try:
            with open(os.path.join(self.objdir, name + ".idx.tmp"), "wb") as fh:
                np.save(fh, table)
            os.replace(os.path.join(self.objdir, name + ".idx.tmp"),
                       os.path.join(self.objdir, name + ".idx"))
        except OSError:
            pass
        return table

    def _add_pack(self, name: str, table: np.ndarray) -> None:
        self._packs.add(name)
        ids = table["id"].tolist()
        for oid, off, ln in zip(ids, table["off"].tolist(), table["len"].tolist()):
            self._index.setdefault(oid.decode(), (name, off, ln))

    def _locate(self, oid: str) -> tuple[str, int, int]:
        loc = self._index.get(oid)
        if loc is None:
            self._scan()
            loc = self._index.get(oid)
            if loc is None:
                raise MissingObject(oid)
        return loc

    def _handle(self, pack: str) -> h5py.File:
        f = self._handles.get(pack)
        if f is not None:
            self._handles.move_to_end(pack)
            return f
        f = h5py.File(os.path.join(self.objdir, pack + ".h5"), "r")
        self._handles[pack] = f
        while len(self._handles) > self.tuning.open_packs:
            _, old = self._handles.popitem(last=False)
            old.close()
        return f

    # -- objects -----------------------------------------------------------------------------
    def has(self, oid: str) -> bool:
        if oid in self._index:
            return True
        return False

    def get(self, oid: str):
        pack, off, ln = self._locate(oid)
        return self._read(oid, pack, off, ln)

    def get_range(self, oid: str, offset: int, length: int):
        pack, off, ln = self._locate(oid)
        if offset < 0 or offset > ln:
            raise ValueError(f"range outside object {oid}")
        length = min(length, ln - offset)
        return self._read(oid, pack, off + offset, length)

    def _read(self, oid, pack, off, ln):
        if ln == 0:
            return b""
        with self._lock:
            try:
                ds = self._handle(pack)["data"]
                if off + ln > ds.shape[0]:
                    raise CorruptObject(oid, f"pack {pack} is truncated")
                out = np.empty(ln, dtype=np.uint8)
                ds.read_direct(out, np.s_[off:off + ln])
            except CorruptObject:
                raise
            except (OSError, KeyError, ValueError, RuntimeError) as e:
                self._handles.pop(pack, None)
                raise CorruptObject(oid, f"cannot read pack {pack}: {e}") from None
        return out.data

    def size_of(self, oid: str) -> int:
        return self._locate(oid)[2]

    def writer(self) -> ObjectWriter:
        return _LocalWriter(self)

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
        for fn in sorted(os.listdir(self.objdir)):
            path = os.path.join(self.objdir, fn)
            if ".tmp" in fn:
                yield (fn, "leftover temporary file from an interrupted write (removed by gc)")
                continue
            if not fn.endswith(".h5"):
                continue
            try:
                with self._lock, h5py.File(path, "r") as f:
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

    # -- refs ----------------------------------------------------------------------------------
    def _ref_path(self, name: str) -> str:
        return os.path.join(self.refdir, *name.split("/"))

    def get_ref(self, name: str) -> Optional[str]:
        try:
            with open(self._ref_path(name), "r") as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def cas_ref(self, name: str, expected: Optional[str], new: Optional[str]) -> None:
        path = self._ref_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(os.path.join(self.root, "refs.lock"), "a+") as lk:
            fcntl.flock(lk.fileno(), fcntl.LOCK_EX)
            try:
                current = self.get_ref(name)
                if current != expected:
                    raise RefConflict(name, expected, current)
                if new is None:
                    if os.path.exists(path):
                        os.unlink(path)
                        fsync_dir(os.path.dirname(path))
                else:
                    atomic_write(path, (new + "\n").encode())
            finally:
                fcntl.flock(lk.fileno(), fcntl.LOCK_UN)

    def list_refs(self, prefix: str = "") -> dict[str, str]:
        out = {}
        base = self.refdir
        for dirpath, _dirs, files in os.walk(base):
            for fn in files:
                if ".tmp" in fn:
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fn), base).replace(os.sep, "/")
                if rel.startswith(prefix):
                    val = self.get_ref(rel)
                    if val:
                        out[rel] = val
        return out
