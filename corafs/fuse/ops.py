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
import time
from typing import Optional

import pyfuse3
import trio

from ..core.reader import FileReader, ReadAhead
from ..errors import CorafsError, CorruptObject, InvalidName, NotFound, RefExists
from ..view import MountView

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
    __slots__ = ("reader", "inode", "ahead")

    def __init__(self, reader, inode, ahead):
        self.reader = reader
        self.inode = inode
        self.ahead = ahead          # ReadAhead, or None for a staged file (read from disk)


class _WriteHandle:
    """A file open for writing: a descriptor on its spool, and the node and staged data it
    belongs to (by identity: the node may be renamed meanwhile)."""

    __slots__ = ("node", "staged", "fd")

    def __init__(self, node, staged, fd):
        self.node, self.staged, self.fd = node, staged, fd


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    #: the kernel gathers writes in its page cache and sends them in large requests: cp and
    #: shutil.copyfile write through splice in 64 KiB pieces otherwise. Reads on handles opened
    #: for writing are served (the kernel may read-modify-write pages).
    enable_writeback_cache = True

    def __init__(self, view: MountView, read_threads: int = 4, prefetch_bytes: int = 64 << 20,
                 prefetch_start: int = 8 << 20, on_change=None):
        super().__init__()
        self.view = view
        self.staging = view.staging
        self.repo = view.repo
        #: called (on the trio thread) after anything was staged or closed
        self.on_change = on_change or (lambda: None)
        self.writers: dict[int, _WriteHandle] = {}
        self.limiter = trio.CapacityLimiter(read_threads)
        #: namespace changes get their own threads: a slow decode never delays a create
        self.meta_limiter = trio.CapacityLimiter(2)
        self.prefetch_bytes = prefetch_bytes
        self.prefetch_start = prefetch_start
        self.files: dict[int, _FileHandle] = {}
        self.dirs: dict[int, list] = {}
        self.dir_nodes: dict[int, object] = {}
        self._next_fh = 1
        self.reads = self.read_bytes = 0

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _meta(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.meta_limiter)

    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    def _attrs(self, n) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = n.inode
        a.generation = 0
        a.entry_timeout = n.ttl
        a.attr_timeout = n.ttl
        a.st_mode = n.mode
        a.st_nlink = n.nlink
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        size = n.size
        a.st_size = size
        a.st_blksize = 1 << 20
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = n.mtime
        return a

    @staticmethod
    def _name(name: bytes) -> str:
        if len(name) > 255:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        return os.fsdecode(name)

    # -- metadata --------------------------------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode, name, ctx=None):
        # most lookups in a branch are dict lookups (git, tar, rsync stat every name before
        # writing it): answered inline, a thread only when the store must be read
        n = self.view.lookup_cached(parent_inode, self._name(name))
        if n is None:
            n = await self._meta(self.view.lookup, parent_inode, self._name(name))
        return self._attrs(n)

    @_guard
    async def getattr(self, inode, ctx=None):
        return self._attrs(self.view.node(inode))

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
        entries = await self._meta(self.view.listdir, inode)
        fh = self._fh()
        self.dirs[fh] = entries      # a snapshot: offsets stay stable for this handle
        self.dir_nodes[fh] = self.view.nodes.get(inode)
        return fh

    @_guard
    async def readdir(self, fh, start_id, token):
        entries = self.dirs[fh]
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(node), i + 1):
                return
            self.view.remember(node)

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)
        self.dir_nodes.pop(fh, None)

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
        if inode == pyfuse3.ROOT_INODE and name == b"user.corafs.repo":
            return os.fsencode(self.repo.path)   # lets `corafs umount` report what is left
        if inode == pyfuse3.ROOT_INODE and name == b"user.corafs.stats":
            d, c = self.repo.decoder, self.repo.cache
            return (f"reads={self.reads} read_bytes={self.read_bytes} "
                    f"decoded_objects={d.decoded} decoded_bytes={d.decoded_bytes} "
                    f"cache_bytes={c.bytes} cache_hits={c.hits} cache_misses={c.misses}").encode()
        v = (await self._meta(self.view.xattrs, inode)).get(os.fsdecode(name))
        if v is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return v

    @_guard
    async def listxattr(self, inode, ctx):
        return [os.fsencode(k) for k in await self._meta(self.view.xattrs, inode)]

    # -- reading ----------------------------------------------------------------------------------
    @_guard
    async def open(self, inode, flags, ctx):
        n = self.view.node(inode)
        if n.kind != "file":
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            if not n.live or not self.staging.writable:
                raise pyfuse3.FUSEError(errno.EROFS)
            st, fd = await self._meta(self.staging.open_write, n, bool(flags & os.O_TRUNC))
            fh = self._fh()
            self.writers[fh] = _WriteHandle(n, st, fd)
            self.on_change()
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)
        reader = await self._run(self.view.open_reader, inode)
        fh = self._fh()
        ahead = None
        if isinstance(reader, FileReader):
            ahead = ReadAhead(reader, self.prefetch_start, self.prefetch_bytes)
            self.repo.decoder.prefetch(self.repo.pool, ahead.objects(ahead.opened()))
        self.files[fh] = _FileHandle(reader, inode, ahead)
        # the page cache of an inode stays valid: committed content never changes under one
        # inode (another writer's version is a new node), and writes through this mount go
        # through the kernel's own cache
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_guard
    async def read(self, fh, off, size):
        w = self.writers.get(fh)
        if w is not None:
            return os.pread(w.fd, size, off)
        h = self.files[fh]
        # decoded ahead: answer inline, handing the kernel a view of the decoded block
        data = h.reader.read_cached(off, size, view=True)
        if data is None:
            data = await self._run(h.reader.read, off, size, True)
        self.reads += 1
        self.read_bytes += len(data)
        self._prefetch(h, off, len(data))
        return data

    def _prefetch(self, h: _FileHandle, off: int, n: int) -> None:
        """Decode ahead of the reader along its file's read plan (core.reader.ReadAhead), in
        the repository's worker pool."""
        if h.ahead is not None:
            ranges = h.ahead.read(off, n)
            if ranges:
                self.repo.decoder.prefetch(self.repo.pool, h.ahead.objects(ranges))

    async def release(self, fh):
        h = self.files.pop(fh, None)
        if h is not None and hasattr(h.reader, "close"):
            h.reader.close()
        w = self.writers.pop(fh, None)
        if w is None:
            return
        try:
            os.close(w.fd)
            # a journal transaction: not on the trio thread
            await self._meta(self.staging.release, w.node, w.staged)
        except Exception:  # release must not fail: the file stays staged
            log.exception("release of a written file failed; it stays staged")
        self.on_change()

    # -- writing ----------------------------------------------------------------------------------
    def _parent(self, inode: int):
        n = self.view.node(inode)
        if inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)       # only directories (branches) at the top
        if not n.live:
            raise pyfuse3.FUSEError(errno.EROFS)
        return n

    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        d = self._parent(parent_inode)
        node, st, fd = await self._meta(self.staging.create, d, self._name(name), mode)
        self.view.remember(node)
        fh = self._fh()
        self.writers[fh] = _WriteHandle(node, st, fd)
        self.on_change()
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attrs(node)

    @_guard
    async def write(self, fh, off, buf):
        # inline: a pwrite of at most max_write bytes into the page cache is cheaper than a
        # thread hand-off
        w = self.writers[fh]
        if off + len(buf) > self.staging.max_file_size:
            raise pyfuse3.FUSEError(errno.EFBIG)
        n = os.pwrite(w.fd, buf, off)
        w.node.mtime_ns = time.time_ns()
        w.staged.synced = None
        return n

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self.view.node(inode)
        if not n.live:
            raise pyfuse3.FUSEError(errno.EROFS)
        # refused before anything is applied: a chown comes with the kernel's clearing of the
        # set-id bits in the same call, and a refused call must leave the file as it was
        if (fields.update_uid and attr.st_uid not in (os.getuid(), -1, 0xFFFFFFFF)) or \
                (fields.update_gid and attr.st_gid not in (os.getgid(), -1, 0xFFFFFFFF)):
            raise pyfuse3.FUSEError(errno.EPERM)       # ownership is not versioned
        if fields.update_size:
            w = self.writers.get(fh) if fh is not None else None
            fd = w.fd if w is not None and w.node is n else None
            await self._meta(self.staging.truncate, n, attr.st_size, fd)
            if w is not None:
                w.staged.synced = None
            self.on_change()
        mode = attr.st_mode if fields.update_mode else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        if mode is not None or mtime is not None:
            await self._meta(self.staging.set_attrs, n, mode, mtime)
            self.on_change()
        return self._attrs(n)

    @_guard
    async def fsync(self, fh, datasync):
        """fsync commits: on a descriptor open for writing, the content as it is now (the
        file stays open and staged); on any other, whatever is ready on the branch."""
        w = self.writers.get(fh)
        if w is not None:
            await self._meta(os.fsync, w.fd)
            await self._meta(self.staging.sync_file, w.node, w.staged)
            node = w.node
        else:
            h = self.files.get(fh)
            node = self.view.nodes.get(h.inode) if h is not None else None
        if node is not None and node.live:
            await self.commit_now(node.branch)

    @_guard
    async def fsyncdir(self, fh, datasync):
        """fsync on a directory of a branch commits that branch; on the root, every branch."""
        d = self.dir_nodes.get(fh)
        if d is not None and d.live:
            await self.commit_now(d.branch)
        elif d is not None and d.inode == pyfuse3.ROOT_INODE and self.staging.writable:
            await self.commit_now()

    async def commit_now(self, branch: Optional[str] = None) -> None:
        """Commit staged work at once (fsync, unmount)."""
        branches = [branch] if branch else self.staging.pending()
        for b in branches:
            await self._meta(self.staging.commit, b)
        await self.apply_refresh()

    async def apply_refresh(self) -> None:
        todo = await self._meta(self.view.refresh)
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
        d = self._parent(parent_inode)
        if self.view.absent(parent_inode, self._name(name)):
            raise pyfuse3.FUSEError(errno.ENOENT)     # git unlinks before it creates: inline
        await self._meta(self.staging.unlink, d, self._name(name))
        self.on_change()

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        n = self._name(name)
        if parent_inode == pyfuse3.ROOT_INODE:   # a new branch at the default branch's head
            await self._meta(self.repo.create_branch, n)
            await self.apply_refresh()
            return self._attrs(await self._meta(self.view.lookup, parent_inode, n))
        d = self._parent(parent_inode)
        node = await self._meta(self.staging.mkdir, d, n, mode)
        self.view.remember(node)
        self.on_change()
        return self._attrs(node)

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        d = self._parent(parent_inode)          # branches are deleted with the CLI (EPERM)
        await self._meta(self.staging.rmdir, d, self._name(name))
        self.on_change()

    @_guard
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        d1, d2 = self._parent(parent_old), self._parent(parent_new)
        await self._meta(self.staging.rename, d1, self._name(name_old), d2,
                         self._name(name_new), flags)
        self.on_change()

    @_guard
    async def symlink(self, parent_inode, name, target, ctx):
        d = self._parent(parent_inode)
        node = await self._meta(self.staging.symlink, d, self._name(name), target)
        self.view.remember(node)
        self.on_change()
        return self._attrs(node)

    @_guard
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._parent(new_parent_inode)
        raise pyfuse3.FUSEError(errno.EPERM)           # hard links are not versioned

    @_guard
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        d = self._parent(parent_inode)
        node = await self._meta(self.staging.mknod, d, self._name(name), mode)
        self.view.remember(node)
        self.on_change()
        return self._attrs(node)

    @_guard
    async def setxattr(self, inode, name, value, ctx):
        n = self.view.node(inode)
        raise pyfuse3.FUSEError(errno.ENOTSUP if n.live else errno.EROFS)

    @_guard
    async def removexattr(self, inode, name, ctx):
        n = self.view.node(inode)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR if n.live else errno.EROFS)

    @_guard
    async def access(self, inode, mode, ctx):
        n = self.view.node(inode)
        if mode & os.W_OK and not (n.live or n.writable):
            raise pyfuse3.FUSEError(errno.EROFS)
        return True
