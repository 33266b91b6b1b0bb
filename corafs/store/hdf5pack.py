"""The HDF5 pack file: writing one (objects spooled where the HDF5 file will hold them, one
contiguous uint8 dataset, the object table beside it, fsynced and renamed) and reading objects
from one (``os.pread`` at the offsets of the ``.idx`` table, O_DIRECT for large blocks, no HDF5
call on the read path)."""
from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from typing import Optional

import numpy as np

from . import faults
from .fsutil import WriterToken, fsync_dir
from .packindex import IDX_DTYPE as _IDX_DTYPE


_ALIGN = 4096             # O_DIRECT offsets, lengths and buffers: one page covers devices
_DIRECT_OPEN = threading.Lock()
DATA_ROW = b"@data"     # .idx header row: (file offset of the data, data length)


def _make_h5(target, size: int, table: np.ndarray) -> Optional[int]:
    """Create a pack's HDF5 file at ``target`` (a path, or an in-memory name for the core
    driver): one contiguous uint8 dataset of ``size`` bytes allocated early and never filled
    (HDF5 writes nothing there), then the object table. Where the data lies in the file."""
    import h5py
    kw = {"driver": "core", "backing_store": False} if target is None else {}
    # an in-memory file still has a name, and HDF5 refuses to create one open elsewhere
    name = target or f"corafs-probe-{uuid.uuid4().hex}.h5"
    with h5py.File(name, "w", libver="latest", **kw) as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        space = h5py.h5s.create_simple((size,))
        ds = h5py.h5d.create(f.id, b"data", h5py.h5t.NATIVE_UINT8, space, dcpl=dcpl)
        offset = ds.get_offset()
        f.create_dataset("ids", data=table["id"])
        f.create_dataset("offsets", data=table["off"])
        f.create_dataset("lengths", data=table["len"])
        f.attrs["format"] = "corafs-pack-1"
    return offset


_DATA_AT: list[int] = []
_DATA_AT_LOCK = threading.Lock()


def data_offset() -> int:
    """Where HDF5 puts a pack's data: the same for every pack this HDF5 library writes (what
    comes before the data, the superblock and two object headers, does not depend on the
    pack's size), measured once in memory (once: packs are started from several threads)."""
    with _DATA_AT_LOCK:
        if not _DATA_AT:
            _DATA_AT.append(_make_h5(None, 1, np.zeros(0, dtype=_IDX_DTYPE)) or 0)
        return _DATA_AT[0]


class PackWriter:
    """One pack being written. Objects are appended to a spool file (os.write releases the GIL)
    from the offset where HDF5 will put the pack's data (``data_offset``). ``finish`` creates
    the HDF5 file (its data allocated, never written), then copies HDF5's own bytes, the few
    KiB around the data, into the spool, which becomes the pack: the data is written once.
    Where HDF5 put the data elsewhere after all, the data is copied into the HDF5 file instead
    (copy_file_range, in the kernel). Then fsync and rename."""

    def __init__(self, directory: str, token: WriterToken):
        # the time first: when two packs hold one object, the newer encoding is preferred
        self.name = f"pack-{time.time_ns():016x}-{uuid.uuid4().hex[:16]}"
        self.token = token
        self.tmp = os.path.join(directory, f"{self.name}.w{token.token}.h5.tmp")
        self.spool_path = os.path.join(directory, f"{self.name}.w{token.token}.spool.tmp")
        self.final = os.path.join(directory, self.name + ".h5")
        self.base = data_offset()
        self.spool = os.open(self.spool_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.lseek(self.spool, self.base, os.SEEK_SET)
        self.size = 0
        self.table: list[tuple[str, int, int]] = []
        #: whether the last finish() made the pack from the spool in place (tests read it)
        self.in_place = False

    @property
    def nbytes(self) -> int:
        return self.size

    def put(self, oid: str, data) -> None:
        mv = memoryview(data).cast("B")
        self.table.append((oid, self.size, mv.nbytes))
        done = 0
        while done < mv.nbytes:
            done += os.write(self.spool, mv[done:])
        self.size += mv.nbytes

    def finish(self) -> np.ndarray:
        table = np.array(self.table, dtype=_IDX_DTYPE)
        offset = _make_h5(self.tmp, self.size, table)
        faults.point("pack")                    # the HDF5 file made, its data not copied
        if self.size and offset is None:
            self.abort()
            raise OSError("HDF5 did not allocate the pack's data")
        self.in_place = bool(self.size) and offset == self.base
        try:
            if self.in_place:
                # the spool holds the data where the HDF5 file has it: HDF5's bytes before
                # and after it make the spool the very same file
                _copy_around(self.tmp, self.spool, offset, self.size)
                os.fsync(self.spool)
                faults.point("pack")            # made and durable, not renamed
                os.replace(self.spool_path, self.final)
                os.unlink(self.tmp)
            else:
                fd = os.open(self.tmp, os.O_WRONLY)
                try:
                    if self.size:
                        _copy_range(self.spool, fd, offset, self.size, self.base)
                    os.fsync(fd)
                    faults.point("pack")        # copied and durable, not renamed
                finally:
                    os.close(fd)
                os.replace(self.tmp, self.final)
                os.unlink(self.spool_path)
        finally:
            os.close(self.spool)
        fsync_dir(os.path.dirname(self.final))
        faults.point("pack")                    # in place, its .idx not written
        # the side table's first row says where the data lies, so readers need no h5py
        table = np.concatenate([np.array([(DATA_ROW, offset or 0, self.size)], _IDX_DTYPE),
                                table])
        idx = self.final[:-3] + ".idx"
        tmp = self.token.tmp(idx)
        with open(tmp, "wb") as f:
            np.save(f, table)
            f.flush()
            os.fsync(f.fileno())
        faults.point("pack")                    # the .idx written, not renamed
        os.replace(tmp, idx)
        return table

    def abort(self) -> None:
        try:
            os.close(self.spool)
        except OSError:
            pass
        for p in (self.spool_path, self.tmp):
            if os.path.exists(p):
                os.unlink(p)


def _copy_around(h5_path: str, dst: int, offset: int, size: int) -> None:
    """Copy the bytes of the file at ``h5_path`` outside ``[offset, offset + size)`` into
    ``dst`` at the same offsets, and give ``dst`` its length."""
    with open(h5_path, "rb") as f:
        head = f.read(offset)
        f.seek(offset + size)
        tail = f.read()
    if len(head) != offset:
        raise OSError(f"{h5_path}: {len(head)} bytes before the data, expected {offset}")
    os.pwrite(dst, head, 0)
    os.pwrite(dst, tail, offset + size)
    os.ftruncate(dst, offset + size + len(tail))


def _copy_range(src: int, dst: int, dst_offset: int, n: int, src_offset: int = 0) -> None:
    src_off, dst_off, left = src_offset, dst_offset, n
    while left:
        try:
            k = os.copy_file_range(src, dst, left, src_off, dst_off)
        except OSError:
            k = 0
        if k <= 0:   # no kernel copy here: fall back to read/write
            chunk = os.pread(src, min(left, 8 << 20), src_off)
            k = os.pwrite(dst, chunk, dst_off)
        src_off += k
        dst_off += k
        left -= k


class Pack:
    """An open pack: a file descriptor and where its data lies (reads are os.pread, which
    releases the GIL; h5py would hold it for every read). ``where`` comes from the .idx
    header row; without it, HDF5 is asked."""

    def __init__(self, path: str, where: Optional[tuple[int, int]] = None):
        if where is not None:
            self.offset, self.length = where
        else:
            import h5py
            with h5py.File(path, "r") as f:
                ds = f["data"]
                self.length = int(ds.shape[0])
                self.offset = ds.id.get_offset()
        if self.offset is None and self.length:
            raise OSError(f"{path}: pack data is not one contiguous dataset")
        self.fd = os.open(path, os.O_RDONLY)
        self.file_size = os.fstat(self.fd).st_size
        self.path = path
        self.dfd = None         # O_DIRECT descriptor, opened on first use; -1: not usable
        self._dfd_owned = -1    # what close() closes (kept open if reads stopped using it)
        self.users = 0          # reads in progress (guarded by the store's lock)
        self.evicted = False

    def read(self, off: int, ln: int) -> bytes:
        return os.pread(self.fd, ln, self.offset + off)


    def read_direct(self, off: int, ln: int):
        """``ln`` bytes at ``off`` read with O_DIRECT into an aligned buffer (a read-only
        memoryview of it), or None where the filesystem does not allow it."""
        if self.dfd is None:
            with _DIRECT_OPEN:
                if self.dfd is None:
                    try:
                        self._dfd_owned = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
                        self.dfd = self._dfd_owned
                    except (OSError, AttributeError):  # a filesystem or OS without O_DIRECT
                        self.dfd = -1
        dfd = self.dfd
        if dfd < 0:
            return None
        start = self.offset + off
        a0 = start & ~(_ALIGN - 1)
        a1 = (start + ln + _ALIGN - 1) & ~(_ALIGN - 1)
        buf = np.empty(a1 - a0 + _ALIGN, dtype=np.uint8)
        pad = -buf.ctypes.data % _ALIGN
        view = buf[pad:pad + a1 - a0]
        try:
            got = os.preadv(dfd, [view], a0)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.dfd = -1               # alignment this device refuses: buffered from now on
            return None                 # (the descriptor closes with the pack)
        if got < start - a0 + ln:
            return None                 # short (the caller's buffered read reports why)
        mv = memoryview(view)[start - a0:start - a0 + ln]
        return mv.toreadonly()

    def close(self) -> None:
        if self._dfd_owned >= 0:
            os.close(self._dfd_owned)
            self._dfd_owned = -1
        self.dfd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PackGone(Exception):
    """A pack in the index no longer exists (a gc removed it after copying what was live)."""
