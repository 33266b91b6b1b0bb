"""Open files and directories of a mount, and the rules for what may be done with them.

The FUSE layer (``corafs.fuse.ops``) only translates: it hands inodes, handles and flags to
:class:`OpenFiles` and turns the ``OSError`` raised here into the kernel's answer. Every rule of
the mount (what is read-only, which sizes and owners are refused, what an fsync commits) is
decided here, where it can be tested without FUSE.

Threads: methods marked *blocking* read the store or write the journal and are run in worker
threads by the caller; the rest are cheap and may run on the event loop. The handle tables are
plain dicts indexed by handle numbers from one counter, safe to use from both.
"""
from __future__ import annotations

import errno
import itertools
import os
import time
from typing import Optional

from ..core import commitmeta
from ..core.reader import FileReader, ReadAhead
from ..errors import CorafsError

ROOT_INODE = 1
#: what a read-only tree answers to ``setxattr``/``removexattr``
ENOATTR = errno.ENODATA


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class ReadHandle:
    __slots__ = ("reader", "inode", "ahead")

    def __init__(self, reader, inode: int, ahead: Optional[ReadAhead]):
        self.reader = reader
        self.inode = inode
        self.ahead = ahead          # ReadAhead, or None for a staged file (read from its spool)


class WriteHandle:
    """A file open for writing: a descriptor on its spool, and the node and staged data it
    belongs to (by identity: the node may be renamed meanwhile)."""

    __slots__ = ("node", "staged", "fd")

    def __init__(self, node, staged, fd: int):
        self.node, self.staged, self.fd = node, staged, fd


class OpenFiles:
    def __init__(self, view):
        self.view = view
        self.staging = view.staging
        self.repo = view.repo
        t = view.repo.tuning
        self.prefetch_start, self.prefetch_bytes = t.prefetch_start, t.prefetch_bytes
        self.files: dict[int, ReadHandle] = {}
        self.writers: dict[int, WriteHandle] = {}
        self.dirs: dict[int, tuple[object, list]] = {}
        self._fhs = itertools.count(2)
        self.reads = self.read_bytes = 0

    # -- rules ----------------------------------------------------------------------------------
    def file_to_open(self, inode: int, flags: int):
        """The node ``open`` may open with ``flags``, and whether for writing."""
        n = self.view.node(inode)
        if n.kind != "file":
            raise _err(errno.EISDIR)
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND))
        if writing and (not n.live or not self.staging.writable):
            raise _err(errno.EROFS)
        return n, writing

    def parent(self, inode: int):
        """The directory a name is created, removed or renamed in: a directory of a branch
        (only branches live at the top; everything else is history, read-only)."""
        n = self.view.node(inode)
        if inode == ROOT_INODE:
            raise _err(errno.EPERM)
        if not n.live:
            raise _err(errno.EROFS)
        return n

    def writable_node(self, inode: int):
        n = self.view.node(inode)
        if not n.live:
            raise _err(errno.EROFS)
        return n

    @staticmethod
    def check_owner(uid: Optional[int], gid: Optional[int]) -> None:
        """Ownership is not versioned: a chown to anyone else is refused before anything of
        the call is applied (the kernel clears set-id bits in the same call)."""
        keep = (-1, 0xFFFFFFFF)
        if (uid is not None and uid not in (os.getuid(), *keep)) or \
                (gid is not None and gid not in (os.getgid(), *keep)):
            raise _err(errno.EPERM)

    def check_link(self, new_parent: int) -> None:
        self.parent(new_parent)
        raise _err(errno.EPERM)                       # hard links are not versioned

    META = "user.corafs.meta."

    def setxattr(self, inode: int, name: str, value: bytes) -> None:
        """*Blocking*. Only commit metadata on a branch's top directory
        (``user.corafs.meta.KEY``: rides on the branch's next commit); nothing else is
        versioned (ENOTSUP), and history is read-only (EROFS)."""
        n = self.view.node(inode)
        if not n.live:
            raise _err(errno.EROFS)
        if not name.startswith(self.META) or n.kind != "dir" or \
                self.staging.forest.path(n) != "":
            raise _err(errno.ENOTSUP)
        try:
            self.staging.set_meta(n.branch, name[len(self.META):],
                                  commitmeta.parse_value(value.decode()))
        except (CorafsError, UnicodeDecodeError):
            raise _err(errno.EINVAL) from None

    def check_removexattr(self, inode: int) -> None:
        raise _err(ENOATTR if self.view.node(inode).live else errno.EROFS)

    def check_access(self, inode: int, mode: int) -> None:
        n = self.view.node(inode)
        if mode & os.W_OK and not (n.live or n.writable):
            raise _err(errno.EROFS)

    def root_xattr(self, name: str) -> Optional[bytes]:
        """The mount's own attributes on its root: the daemon's pid (``corafs umount`` waits
        for it), the repository, and read counters."""
        if name == "user.corafs.pid":
            return str(os.getpid()).encode()
        if name == "user.corafs.repo":
            return os.fsencode(self.repo.path)
        if name == "user.corafs.stats":
            d, c = self.repo.decoder, self.repo.cache
            return (f"reads={self.reads} read_bytes={self.read_bytes} "
                    f"decoded_objects={d.decoded} decoded_bytes={d.decoded_bytes} "
                    f"cache_bytes={c.bytes} cache_hits={c.hits} cache_misses={c.misses}").encode()
        return None

    # -- files ----------------------------------------------------------------------------------
    def open_write(self, node, truncate: bool) -> int:
        """*Blocking* (a journal transaction)."""
        st, fd = self.staging.open_write(node, truncate)
        return self.add_writer(node, st, fd)

    def add_writer(self, node, staged, fd: int) -> int:
        fh = next(self._fhs)
        self.writers[fh] = WriteHandle(node, staged, fd)
        return fh

    def open_read(self, inode: int) -> int:
        """*Blocking* (the file's read plan). Decoding starts ahead of the first read."""
        reader = self.view.open_reader(inode)
        ahead = None
        if isinstance(reader, FileReader):
            ahead = ReadAhead(reader, self.prefetch_start, self.prefetch_bytes)
            self.repo.decoder.prefetch(self.repo.pool, ahead.objects(ahead.opened()))
        fh = next(self._fhs)
        self.files[fh] = ReadHandle(reader, inode, ahead)
        return fh

    def read_now(self, fh: int, off: int, size: int):
        """What can be answered without waiting: a written file's spool, or bytes already
        decoded (a view of the decoded block). None: call :meth:`read` in a thread."""
        w = self.writers.get(fh)
        if w is not None:
            return os.pread(w.fd, size, off)
        data = self.files[fh].reader.read_cached(off, size, view=True)
        if data is not None:
            self._count(fh, off, len(data))
        return data

    def read(self, fh: int, off: int, size: int):
        """*Blocking*: decode what the read needs."""
        data = self.files[fh].reader.read(off, size, True)
        self._count(fh, off, len(data))
        return data

    def _count(self, fh: int, off: int, n: int) -> None:
        """Count a read and decode ahead of the reader along its file's read plan
        (core.reader.ReadAhead), in the repository's worker pool."""
        self.reads += 1
        self.read_bytes += n
        h = self.files[fh]
        if h.ahead is not None:
            ranges = h.ahead.read(off, n)
            if ranges:
                self.repo.decoder.prefetch(self.repo.pool, h.ahead.objects(ranges))

    def write(self, fh: int, off: int, buf: bytes) -> int:
        """A pwrite into the spool (the page cache): cheap enough to run inline."""
        w = self.writers[fh]
        if off + len(buf) > self.staging.max_file_size:
            raise _err(errno.EFBIG)
        n = os.pwrite(w.fd, buf, off)
        w.node.mtime_ns = time.time_ns()
        w.staged.synced = None
        return n

    def truncate(self, node, size: int, fh: Optional[int]) -> None:
        """*Blocking*: through the handle's descriptor when the call came with one."""
        w = self.writers.get(fh) if fh is not None else None
        fd = w.fd if w is not None and w.node is node else None
        self.staging.truncate(node, size, fd)
        if w is not None:
            w.staged.synced = None

    def close(self, fh: int) -> Optional[WriteHandle]:
        """Forget a handle. A written file is returned with its descriptor closed: the caller
        finishes it with :meth:`finish` (blocking)."""
        h = self.files.pop(fh, None)
        if h is not None:
            h.reader.close()
        w = self.writers.pop(fh, None)
        if w is not None:
            os.close(w.fd)
        return w

    def finish(self, w: WriteHandle) -> None:
        """*Blocking*: a closed file becomes committable (a journal transaction)."""
        self.staging.release(w.node, w.staged)

    def sync(self, fh: int) -> Optional[str]:
        """*Blocking*. fsync of a handle: a written file's content as it is now becomes
        committable (the file stays open and staged). Returns the branch to commit, if any."""
        w = self.writers.get(fh)
        if w is not None:
            os.fsync(w.fd)
            self.staging.sync_file(w.node, w.staged)
            node = w.node
        else:
            h = self.files.get(fh)
            node = self.view.nodes.get(h.inode) if h is not None else None
        return node.branch if node is not None and node.live else None

    # -- directories ----------------------------------------------------------------------------
    def make_dir(self, parent: int, name: str, mode: int):
        """*Blocking*. mkdir at the top makes a branch at the default branch's head (returns
        None: it shows after a refresh); anywhere else a directory in a branch."""
        if parent == ROOT_INODE:
            self.repo.create_branch(name)
            return None
        return self.staging.mkdir(self.parent(parent), name, mode)

    def open_dir(self, inode: int) -> int:
        """*Blocking*: a snapshot of the entries, so offsets stay stable for this handle."""
        entries = self.view.listdir(inode)
        fh = next(self._fhs)
        self.dirs[fh] = (self.view.nodes.get(inode), entries)
        return fh

    def dir_entries(self, fh: int) -> list:
        return self.dirs[fh][1]

    def close_dir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    def sync_dir(self, fh: int) -> tuple[bool, Optional[str]]:
        """fsync of a directory: a branch's directory commits that branch, the root every
        branch (when the mount writes), anything else nothing. (commit?, branch or None)."""
        d = self.dirs.get(fh, (None, None))[0]
        if d is not None and d.live:
            return True, d.branch
        if d is not None and d.inode == ROOT_INODE and self.staging.writable:
            return True, None
        return False, None
