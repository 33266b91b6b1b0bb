"""pyfuse3 operations: a protocol adapter only. It translates inodes, handles and errors to and
from the view layer: ``corafs.view.MountView`` (what the tree *is*), ``corafs.view.handles``
(open files and the mount's rules) and ``corafs.view.staging`` (changes). Each handler calls
those and decides nothing itself; the rules raise ``OSError`` with their errno.

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
from ..view import MountView
from ..view.handles import OpenFiles

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


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    #: the kernel gathers writes in its page cache and sends them in large requests: cp and
    #: shutil.copyfile write through splice in 64 KiB pieces otherwise. Reads on handles opened
    #: for writing are served (the kernel may read-modify-write pages).
    enable_writeback_cache = True

    def __init__(self, view: MountView, on_change=None):
        super().__init__()
        self.view = view
        self.staging = view.staging
        self.repo = view.repo
        self.handles = OpenFiles(view)
        #: called (on the trio thread) after anything was staged or closed
        self.on_change = on_change or (lambda: None)
        self.limiter = trio.CapacityLimiter(view.repo.tuning.mount_read_threads)
        #: namespace changes get their own threads: a slow decode never delays a create
        self.meta_limiter = trio.CapacityLimiter(2)

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _meta(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.meta_limiter)

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
        return await self._meta(self.handles.open_dir, inode)

    @_guard
    async def readdir(self, fh, start_id, token):
        entries = self.handles.dir_entries(fh)
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(node), i + 1):
                return
            self.view.remember(node)

    async def releasedir(self, fh):
        self.handles.close_dir(fh)

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
        key = os.fsdecode(name)
        v = self.handles.root_xattr(key) if inode == pyfuse3.ROOT_INODE else None
        if v is None:
            v = (await self._meta(self.view.xattrs, inode)).get(key)
        if v is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return v

    @_guard
    async def listxattr(self, inode, ctx):
        return [os.fsencode(k) for k in await self._meta(self.view.xattrs, inode)]

    # -- files ----------------------------------------------------------------------------------
    @_guard
    async def open(self, inode, flags, ctx):
        n, writing = self.handles.file_to_open(inode, flags)
        if writing:
            fh = await self._meta(self.handles.open_write, n, bool(flags & os.O_TRUNC))
            self.on_change()
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)
        # the page cache of an inode stays valid: committed content never changes under one
        # inode (another writer's version is a new node), and writes through this mount go
        # through the kernel's own cache
        return pyfuse3.FileInfo(fh=await self._run(self.handles.open_read, inode),
                                keep_cache=True)

    @_guard
    async def read(self, fh, off, size):
        data = self.handles.read_now(fh, off, size)      # decoded ahead: answered inline
        if data is None:
            data = await self._run(self.handles.read, fh, off, size)
        return data

    async def release(self, fh):
        try:
            w = self.handles.close(fh)
            if w is None:
                return
            await self._meta(self.handles.finish, w)    # a journal transaction
        except Exception:  # release must not fail: the file stays staged
            log.exception("release of a file failed; a written file stays staged")
        self.on_change()

    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        d = self.handles.parent(parent_inode)
        node, st, fd = await self._meta(self.staging.create, d, self._name(name), mode)
        self.view.remember(node)
        fh = self.handles.add_writer(node, st, fd)
        self.on_change()
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attrs(node)

    @_guard
    async def write(self, fh, off, buf):
        return self.handles.write(fh, off, buf)    # a pwrite into the page cache: inline

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self.handles.writable_node(inode)
        self.handles.check_owner(attr.st_uid if fields.update_uid else None,
                                 attr.st_gid if fields.update_gid else None)
        if fields.update_size:
            await self._meta(self.handles.truncate, n, attr.st_size, fh)
            self.on_change()
        mode = attr.st_mode if fields.update_mode else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        if mode is not None or mtime is not None:
            await self._meta(self.staging.set_attrs, n, mode, mtime)
            self.on_change()
        return self._attrs(n)

    @_guard
    async def fsync(self, fh, datasync):
        """fsync commits (see OpenFiles.sync)."""
        branch = await self._meta(self.handles.sync, fh)
        if branch is not None:
            await self.commit_now(branch)

    @_guard
    async def fsyncdir(self, fh, datasync):
        """fsync on a directory of a branch commits that branch; on the root, every branch."""
        commit, branch = self.handles.sync_dir(fh)
        if commit:
            await self.commit_now(branch)

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
        d = self.handles.parent(parent_inode)
        if self.view.absent(parent_inode, self._name(name)):
            raise pyfuse3.FUSEError(errno.ENOENT)     # git unlinks before it creates: inline
        await self._meta(self.staging.unlink, d, self._name(name))
        self.on_change()

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        n = self._name(name)
        node = await self._meta(self.handles.make_dir, parent_inode, n, mode)
        if node is None:                          # a new branch: the root shows it after
            await self.apply_refresh()            # a refresh
            node = await self._meta(self.view.lookup, parent_inode, n)
        else:
            self.view.remember(node)
            self.on_change()
        return self._attrs(node)

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        d = self.handles.parent(parent_inode)          # branches are deleted with the CLI (EPERM)
        await self._meta(self.staging.rmdir, d, self._name(name))
        self.on_change()

    @_guard
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        d1, d2 = self.handles.parent(parent_old), self.handles.parent(parent_new)
        await self._meta(self.staging.rename, d1, self._name(name_old), d2,
                         self._name(name_new), flags)
        self.on_change()

    @_guard
    async def symlink(self, parent_inode, name, target, ctx):
        d = self.handles.parent(parent_inode)
        node = await self._meta(self.staging.symlink, d, self._name(name), target)
        self.view.remember(node)
        self.on_change()
        return self._attrs(node)

    @_guard
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self.handles.check_link(new_parent_inode)

    @_guard
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        d = self.handles.parent(parent_inode)
        node = await self._meta(self.staging.mknod, d, self._name(name), mode)
        self.view.remember(node)
        self.on_change()
        return self._attrs(node)

    @_guard
    async def setxattr(self, inode, name, value, ctx):
        await self._meta(self.handles.setxattr, inode, os.fsdecode(name), bytes(value))

    @_guard
    async def removexattr(self, inode, name, ctx):
        self.handles.check_removexattr(inode)

    @_guard
    async def access(self, inode, mode, ctx):
        self.handles.check_access(inode, mode)
        return True
