"""pyfuse3 operations: a protocol adapter only. It translates inodes, handles and errors to and
from ``corafs.view.MountView``; what the tree *is* lives there.

One error boundary (``_guard``): nothing but FUSEError leaves a handler. Domain errors map to
errno in one table; a missing or corrupt object is logged with its id and answered with EIO,
and the rest of the filesystem keeps working.

Which awaits may interleave: every handler runs blocking work (decoding, store reads, tree
walks) in worker threads via ``trio.to_thread.run_sync``; the view is thread-safe, so two
handlers may be inside it at once. File handles are only created in ``open`` and dropped in
``release``, both on the trio thread.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
from typing import Optional

import pyfuse3
import trio

from ..errors import CorafsError, CorruptObject, InvalidName, NotFound, RefExists
from ..view import MountView, Node

log = logging.getLogger("corafs.fuse")

ERRNO = [                      # most specific first
    (NotFound, errno.ENOENT),
    (RefExists, errno.EEXIST),
    (CorruptObject, errno.EIO),
    (InvalidName, errno.EINVAL),
    (CorafsError, errno.EIO),
]


def errno_of(exc: BaseException) -> int:
    for cls, code in ERRNO:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def _guard(fn):
    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except CorruptObject as e:
            log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as e:  # the boundary: anything else would kill the filesystem
            code = errno_of(e)
            if code == errno.EIO:
                log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(code) from None
    return wrapper


class _FileHandle:
    __slots__ = ("reader", "inode", "next_off", "prefetched_to", "window", "run_start")

    def __init__(self, reader, inode):
        self.reader = reader
        self.inode = inode
        self.next_off = 0
        self.prefetched_to = 0
        self.window = 0
        self.run_start = 0


class _WriteHandle:
    """A file open for writing: a descriptor on its spool, and the staged file it belongs to
    (found by identity at release: it may have been renamed meanwhile)."""

    __slots__ = ("branch", "staged", "fd", "inode")

    def __init__(self, branch, staged, fd, inode):
        self.branch, self.staged, self.fd, self.inode = branch, staged, fd, inode


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    #: the kernel gathers writes in its page cache and sends them in large requests: cp and
    #: shutil.copyfile write through splice in 64 KiB pieces otherwise. Reads on handles opened
    #: for writing are served (the kernel may read-modify-write pages).
    enable_writeback_cache = True

    def __init__(self, view: MountView, read_threads: int = 4, prefetch_bytes: int = 32 << 20,
                 prefetch_start: int = 4 << 20, on_change=None):
        super().__init__()
        self.view = view
        self.staging = view.staging
        self.repo = view.repo
        #: called (on the trio thread) after anything was staged or closed
        self.on_change = on_change or (lambda: None)
        self.writers: dict[int, _WriteHandle] = {}
        self.limiter = trio.CapacityLimiter(read_threads)
        self.prefetch_bytes = prefetch_bytes
        self.prefetch_start = prefetch_start
        self.files: dict[int, _FileHandle] = {}
        self.dirs: dict[int, list] = {}
        self._next_fh = 1
        self.reads = self.read_bytes = 0

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    def _attrs(self, n: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = n.inode
        a.generation = 0
        a.entry_timeout = n.ttl
        a.attr_timeout = n.ttl
        a.st_mode = n.mode
        a.st_nlink = 2 if n.kind == "dir" else 1
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        a.st_size = n.size
        a.st_blksize = 1 << 20
        a.st_blocks = (n.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = n.mtime_ns
        return a

    # -- metadata --------------------------------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode, name, ctx=None):
        n = await self._run(self.view.lookup, parent_inode, os.fsdecode(name))
        return self._attrs(n)

    @_guard
    async def getattr(self, inode, ctx=None):
        return self._attrs(self.view.fresh(inode))

    @_guard
    async def readlink(self, inode, ctx):
        return self.view.readlink(inode)

    async def forget(self, inode_list):
        for inode, n in inode_list:   # must not raise
            try:
                self.view.forget(inode, n)
            except Exception:
                log.exception("forget(%s) failed", inode)

    @_guard
    async def opendir(self, inode, ctx):
        entries = await self._run(self.view.listdir, inode)
        fh = self._fh()
        self.dirs[fh] = entries      # a snapshot: offsets stay stable for this handle
        return fh

    @_guard
    async def readdir(self, fh, start_id, token):
        entries = self.dirs[fh]
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(node), i + 1):
                return
            self.view.remember(node.inode)

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    @_guard
    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        vfs = os.statvfs(self.repo.path)
        st.f_bsize = st.f_frsize = vfs.f_frsize
        st.f_blocks, st.f_bfree, st.f_bavail = vfs.f_blocks, vfs.f_bfree, vfs.f_bavail
        st.f_files, st.f_ffree, st.f_favail = vfs.f_files, vfs.f_ffree, vfs.f_favail
        st.f_namemax = 255
        return st

    async def getxattr(self, inode, name, ctx):
        # the kernel asks for security.capability before every write chunk: answer at once
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self._getxattr(inode, name)

    @_guard
    async def _getxattr(self, inode, name):
        if inode == pyfuse3.ROOT_INODE and name == b"user.corafs.pid":
            return str(os.getpid()).encode()     # lets `corafs umount` wait for the daemon
        if inode == pyfuse3.ROOT_INODE and name == b"user.corafs.stats":
            d, c = self.repo.decoder, self.repo.cache
            return (f"reads={self.reads} read_bytes={self.read_bytes} "
                    f"decoded_objects={d.decoded} decoded_bytes={d.decoded_bytes} "
                    f"cache_bytes={c.bytes} cache_hits={c.hits} cache_misses={c.misses}").encode()
        v = self.view.xattrs(inode).get(os.fsdecode(name))
        if v is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return v

    @_guard
    async def listxattr(self, inode, ctx):
        return [os.fsencode(k) for k in self.view.xattrs(inode)]

    # -- reading ----------------------------------------------------------------------------------
    @_guard
    async def open(self, inode, flags, ctx):
        n = self.view.node(inode)
        if n.kind != "file":
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            if not n.writable or self.staging is None:
                raise pyfuse3.FUSEError(errno.EROFS)
            branch, path = self.view.branch_path(inode)
            committed = None if n.key[0] == "staged" else n.entry
            st, fd = await self._run(self.staging.open_write, branch, path,
                                     bool(flags & os.O_TRUNC), committed)
            fh = self._fh()
            self.writers[fh] = _WriteHandle(branch, st, fd, inode)
            self.on_change()
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False)
        reader = await self._run(self.view.open_reader, inode)
        fh = self._fh()
        self.files[fh] = _FileHandle(reader, inode)
        # a committed file's inode never changes content (its key holds its version): keep the
        # page cache; a staged one may still change
        return pyfuse3.FileInfo(fh=fh, keep_cache=n.key[0] != "staged")

    @_guard
    async def read(self, fh, off, size):
        w = self.writers.get(fh)
        if w is not None:
            return os.pread(w.fd, size, off)
        h = self.files[fh]
        data = h.reader.read_cached(off, size)      # decoded ahead: answer inline
        if data is None:
            data = await self._run(h.reader.read, off, size)
        self.reads += 1
        self.read_bytes += len(data)
        self._prefetch(h, off, len(data))
        return data

    def _prefetch(self, h: _FileHandle, off: int, n: int) -> None:
        """Sequential reads decode ahead in the repository's worker pool. Like the kernel's
        read-ahead, the window starts small and doubles while reads stay sequential, so a
        short read (one tensor out of a large file) decodes little beyond what it asked."""
        # the kernel's read-ahead requests run concurrently and may arrive out of order:
        # anything near the frontier counts as sequential
        sequential = abs(off - h.next_off) <= (4 << 20)
        h.next_off = max(h.next_off, off + n) if sequential else off + n
        if not sequential or n == 0:
            h.window = 0
            h.prefetched_to = 0
            h.run_start = off
            return
        # read ahead at most a quarter of what was read sequentially so far: a long read soon
        # gets the full window, a short one (one tensor) decodes little beyond itself
        h.window = min(self.prefetch_bytes, max(self.prefetch_start, h.window * 2),
                       max(self.prefetch_start, (h.next_off - h.run_start) // 4))
        start = max(h.next_off, h.prefetched_to)
        end = min(h.reader.size, h.next_off + h.window)
        if end <= start:
            return
        oids = h.reader.objects_for(start, end - start)
        h.prefetched_to = end
        self.repo.decoder.prefetch(self.repo.pool, oids)

    async def release(self, fh):
        h = self.files.pop(fh, None)
        if h is not None and hasattr(h.reader, "close"):
            h.reader.close()
        w = self.writers.pop(fh, None)
        if w is None:
            return
        try:
            os.close(w.fd)
            self.staging.release(w.branch, w.staged)   # the committer ingests closed files
        except Exception:  # release must not fail: the file stays staged
            log.exception("release on %s", w.branch)
        self.on_change()

    # -- writing ----------------------------------------------------------------------------------
    def _where(self, parent_inode: int, name: bytes) -> tuple[str, str]:
        """(branch, path) for a new name in a directory; EROFS outside branch directories."""
        try:
            branch, dirpath = self.view.branch_path(parent_inode)
        except CorafsError:
            raise pyfuse3.FUSEError(errno.EROFS if parent_inode != pyfuse3.ROOT_INODE
                                    else errno.EPERM) from None
        if self.staging is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        n = os.fsdecode(name)
        if n in (".", "..") or "/" in n:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return branch, f"{dirpath}/{n}" if dirpath else n

    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        branch, path = self._where(parent_inode, name)
        st, fd = await self._run(self.staging.create, branch, path)
        node = await self._run(self.view.lookup, parent_inode, os.fsdecode(name))
        fh = self._fh()
        self.writers[fh] = _WriteHandle(branch, st, fd, node.inode)
        self.on_change()
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self._attrs(node)

    @_guard
    async def write(self, fh, off, buf):
        # inline: a pwrite of at most max_write bytes into the page cache is cheaper than a
        # thread hand-off (measured: cp into the mount 57 -> see docs/mount.md)
        return os.pwrite(self.writers[fh].fd, buf, off)

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self.view.node(inode)
        if not n.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size:
            if not n.writable or self.staging is None:
                raise pyfuse3.FUSEError(errno.EROFS)
            branch, path = self.view.branch_path(inode)
            w = self.writers.get(fh) if fh is not None else None
            if w is not None:
                os.ftruncate(w.fd, attr.st_size)
            else:
                committed = None if n.key[0] == "staged" else n.entry
                await self._run(self.staging.truncate, branch, path, attr.st_size, committed)
                if n.key[0] != "staged":   # the name now shows the staged version
                    pyfuse3.invalidate_entry_async(self._parent_of(inode), os.fsencode(
                        path.rsplit("/", 1)[-1]), ignore_enoent=True)
            self.on_change()
        # times and modes of branch files are not versioned: accepted and ignored
        return self._attrs(self.view.fresh(inode))

    def _parent_of(self, inode: int) -> int:
        for parent, _ in self.view.parents.get(inode, ()):
            return parent
        return pyfuse3.ROOT_INODE

    @_guard
    async def fsync(self, fh, datasync):
        w = self.writers.get(fh)
        if w is not None:
            os.fsync(w.fd)
            return
        h = self.files.get(fh)
        if h is not None and self.staging is not None:
            try:
                branch, _ = self.view.branch_path(h.inode)
            except CorafsError:
                return
            await self.commit_now(branch)

    async def commit_now(self, branch: Optional[str] = None) -> None:
        """Commit staged work at once (fsync, unmount)."""
        branches = [branch] if branch else list(self.staging.pending())
        for b in branches:
            await self._run(self.staging.commit, b)
        await self.apply_refresh()

    async def apply_refresh(self) -> None:
        todo = await self._run(self.view.refresh)
        for item in todo:
            try:
                if item[0] == "entry":
                    pyfuse3.invalidate_entry_async(item[1], os.fsencode(item[2]),
                                                   ignore_enoent=True)
                else:
                    await trio.to_thread.run_sync(pyfuse3.invalidate_inode, item[1])
            except OSError:
                pass

    @_guard
    async def unlink(self, parent_inode, name, ctx):
        branch, path = self._where(parent_inode, name)
        n = await self._run(self.view.lookup, parent_inode, os.fsdecode(name))
        self.view.forget(n.inode, 1)
        if n.kind == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        in_head = self.view.head_entry(branch, path) is not None
        await self._run(self.staging.unlink, branch, path, in_head)
        self.on_change()

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        n = os.fsdecode(name)
        if parent_inode == pyfuse3.ROOT_INODE:   # a new branch at the default branch's head
            await self._run(self.repo.create_branch, n)
            await self._run(self.view.refresh)
            return self._attrs(await self._run(self.view.lookup, parent_inode, n))
        branch, path = self._where(parent_inode, name)
        try:
            await self._run(self.view.lookup, parent_inode, n)
            raise pyfuse3.FUSEError(errno.EEXIST)
        except NotFound:
            pass
        await self._run(self.staging.mkdir, branch, path)
        self.on_change()
        return self._attrs(await self._run(self.view.lookup, parent_inode, n))

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        if parent_inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)   # branches are deleted with the CLI
        branch, path = self._where(parent_inode, name)
        d = await self._run(self.view.lookup, parent_inode, os.fsdecode(name))
        self.view.forget(d.inode, 1)
        if d.kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if await self._run(self.view.listdir, d.inode):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        in_head = self.view.head_entry(branch, path) is not None
        await self._run(self.staging.unlink, branch, path, in_head)
        self.on_change()

    @_guard
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        b1, old = self._where(parent_old, name_old)
        b2, new = self._where(parent_new, name_new)
        if b1 != b2:
            raise pyfuse3.FUSEError(errno.EXDEV)
        src = await self._run(self.view.lookup, parent_old, os.fsdecode(name_old))
        self.view.forget(src.inode, 1)
        if flags & pyfuse3.RENAME_NOREPLACE:
            try:
                dst = await self._run(self.view.lookup, parent_new, os.fsdecode(name_new))
                self.view.forget(dst.inode, 1)
                raise pyfuse3.FUSEError(errno.EEXIST)
            except NotFound:
                pass
        elif flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self._run(self.staging.rename, b1, old, new, self.view.head_entry(b1, old))
        self.on_change()

    async def _erofs(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    mknod = symlink = link = setxattr = removexattr = _erofs

    @_guard
    async def access(self, inode, mode, ctx):
        n = self.view.node(inode)
        if mode & os.W_OK and not n.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

