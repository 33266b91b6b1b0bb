"""An fsspec filesystem over a corafs repository (protocol ``corafs``), for everything built on
fsspec (pandas, pyarrow, zarr, ``datasets``, DCP's FsspecWriter) where FUSE is not available or
not wanted. Paths are laid out as in the mount::

    main/model.safetensors           a branch's head (writable: a write is a commit)
    main~2/model.safetensors         any revision (read-only)
    @tags/v1/model.safetensors       a tag
    @commits/<id>/model.safetensors  a commit

::

    fs = fsspec.filesystem("corafs", repo="/data/repo")        # or repo="s3://bucket/prefix"
    with fs.open("main~1/model.safetensors") as f: ...          # seekable, decodes what it reads
    with fs.open("main/metrics.csv", "wb") as f: f.write(data)  # one commit on close
    with fs.transaction:                                        # several writes, one commit
        fs.pipe_file("main/a.json", b"{}"); fs.pipe_file("main/b.json", b"[]")
    pd.read_csv("corafs://main/metrics.csv", storage_options={"repo": "/data/repo"})

Without ``repo=``, ``CORAFS_REPO`` names the repository (for tools that take a bare URL).
Reads go through ``corafs.open`` (the read plan and decode-ahead of the mount); ``info`` gives
size, sha256 and the commit; writes are spooled to a temporary file beside the store and
committed with the CAS commit of the Python API, so concurrent writers never lose a commit.
"""
from __future__ import annotations

import os
import uuid
from typing import Optional

from fsspec import AbstractFileSystem
from fsspec.transaction import Transaction

from ..core import Repository
from ..errors import CorafsError, NotFound

_SPECIAL = ("@tags", "@commits")


class _Spool:
    """A file being written into a branch: a temporary file, committed on close (or with the
    transaction it belongs to)."""

    def __init__(self, fs: "CorafsFileSystem", branch: str, dest: str, autocommit: bool):
        self.fs, self.branch, self.dest, self.autocommit = fs, branch, dest, autocommit
        self.path = fs.repo.store.temp_path(f"fsspec-{uuid.uuid4().hex[:8]}") or \
            os.path.join(fs.repo.path, f".fsspec-{uuid.uuid4().hex}.tmp")
        self._f = open(self.path, "wb")
        self.closed = False
        self.mode = "wb"

    def write(self, data) -> int:
        return self._f.write(data)

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self._f.close()
        self.closed = True
        if self.autocommit:
            self.commit()

    def commit(self) -> None:
        try:
            self.fs._commit(self.branch, {self.dest: self.path}, [])
        finally:
            self.discard()

    def discard(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.closed = True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _CorafsTransaction(Transaction):
    """Every write and removal of the transaction lands in one commit per branch."""

    def start(self):
        super().start()
        self.deletes: list[tuple[str, str]] = []

    def complete(self, commit: bool = True):
        files, self.files = list(self.files), type(self.files)()
        deletes, self.deletes = getattr(self, "deletes", []), []
        try:
            if commit:
                by_branch: dict[str, tuple[dict, list]] = {}
                for f in files:
                    f.close()
                    by_branch.setdefault(f.branch, ({}, []))[0][f.dest] = f.path
                for branch, dest in deletes:
                    by_branch.setdefault(branch, ({}, []))[1].append(dest)
                for branch, (put, rm) in by_branch.items():
                    self.fs._commit(branch, put, rm)
        finally:
            for f in files:
                f.discard()
            self.fs._intrans = False


class CorafsFileSystem(AbstractFileSystem):
    protocol = "corafs"
    root_marker = ""
    transaction_type = _CorafsTransaction

    def __init__(self, repo: Optional[str] = None, message: Optional[str] = None,
                 author: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        spec = repo or os.environ.get("CORAFS_REPO")
        if not spec:
            raise CorafsError("corafs filesystem: pass repo=... (a directory or s3:// URL) or "
                              "set CORAFS_REPO")
        self.repo = spec if isinstance(spec, Repository) else Repository(spec)
        self.message = message
        self.author = author

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("corafs://"):
            path = path[len("corafs://"):]
        elif path.startswith("corafs:"):
            path = path[len("corafs:"):]
        return path.strip("/")

    # -- paths ------------------------------------------------------------------------------------
    def _split(self, path: str) -> tuple[Optional[str], str, Optional[str]]:
        """(commit id, path inside it, branch if the path is a branch's head) of a path; the
        commit is None for the root and the two special directories."""
        parts = [p for p in self._strip_protocol(path).split("/") if p]
        if not parts:
            return None, "", None
        if parts[0] in _SPECIAL:
            if len(parts) == 1:
                return None, parts[0], None
            rev = parts[1]
            if parts[0] == "@tags" and rev not in self.repo.tags():
                raise FileNotFoundError(path)
            try:
                cid = self.repo.resolve(rev)
            except (NotFound, CorafsError):
                raise FileNotFoundError(path) from None
            return cid, "/".join(parts[2:]), None
        try:
            cid = self.repo.resolve(parts[0])
        except (NotFound, CorafsError):
            raise FileNotFoundError(path) from None
        branch = parts[0] if parts[0] in self.repo.branches() else None
        return cid, "/".join(parts[1:]), branch

    def _entry_info(self, name: str, e: dict, cid: str) -> dict:
        if e["kind"] == "dir":
            return {"name": name, "size": 0, "type": "directory", "commit": cid}
        out = {"name": name, "size": e.get("size", 0), "type": "file", "commit": cid}
        if e["kind"] == "link":
            out["type"], out["target"] = "other", e.get("target")
        if "sha256" in e:
            out["sha256"] = e["sha256"]
        return out

    # -- reading ----------------------------------------------------------------------------------
    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        cid, inner, _branch = self._split(path)
        if cid is None and inner == "":
            names = [*sorted(self.repo.branches()), *_SPECIAL]
            out = [{"name": n, "size": 0, "type": "directory"} for n in names]
        elif cid is None:
            names = sorted(self.repo.tags()) if inner == "@tags" else \
                sorted(self.repo.all_commits())
            out = [{"name": f"{inner}/{n}", "size": 0, "type": "directory"} for n in names]
        else:
            try:
                e = self.repo.entry(cid, inner)
            except NotFound:
                raise FileNotFoundError(path) from None
            if e["kind"] != "dir":
                out = [self._entry_info(path, e, cid)]
            else:
                out = [self._entry_info(f"{path}/{n}", ce, cid)
                       for n, ce in sorted(self.repo.listdir(cid, inner).items())]
        return out if detail else [o["name"] for o in out]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        cid, inner, _branch = self._split(path)
        if cid is None:
            if inner in ("",) + _SPECIAL:
                return {"name": path, "size": 0, "type": "directory"}
            raise FileNotFoundError(path)
        try:
            e = self.repo.entry(cid, inner)
        except NotFound:
            raise FileNotFoundError(path) from None
        return self._entry_info(path, e, cid)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        path = self._strip_protocol(path)
        cid, inner, branch = self._split(path)
        if "r" in mode:
            if cid is None:
                raise IsADirectoryError(path)
            try:
                return self.repo.open(f"{cid}:{inner}")
            except NotFound:
                raise FileNotFoundError(path) from None
        if "a" in mode or "+" in mode:
            raise NotImplementedError("corafs: files are written whole (mode 'wb')")
        if branch is None or not inner:
            raise PermissionError(f"{path}: only a branch's files are writable (history is "
                                  "read-only)")
        return _Spool(self, branch, inner, autocommit)

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self._open(path, "rb") as f:
            size = f.size
            start = 0 if start is None else (start + size if start < 0 else start)
            end = size if end is None else (end + size if end < 0 else min(end, size))
            f.seek(start)
            return f.read(max(0, end - start))

    # -- writing ----------------------------------------------------------------------------------
    def _commit(self, branch: str, files: dict, deletes: list) -> Optional[str]:
        return self.repo.commit(branch, files, deletes=deletes, message=self.message,
                                author=self.author).commit

    def _rm(self, path):
        path = self._strip_protocol(path)
        cid, inner, branch = self._split(path)
        if branch is None or not inner:
            raise PermissionError(f"{path}: only a branch's files can be removed")
        if self.repo.entry(cid, inner)["kind"] == "dir":
            raise IsADirectoryError(path)
        if self._intrans:
            self.transaction.deletes.append((branch, inner))
        else:
            self._commit(branch, {}, [inner])

    def rm_file(self, path):
        self._rm(path)

    def rm(self, path, recursive=False, maxdepth=None):
        for p in ([path] if isinstance(path, str) else path):
            if recursive and self.isdir(p):
                for f in self.find(p):
                    self._rm(f)
            else:
                self._rm(p)

    def mkdir(self, path, create_parents=True, **kwargs):
        """Directories exist as soon as a file is written under them (as in git)."""

    def makedirs(self, path, exist_ok=False):
        pass

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        """A rename within one branch is one commit (the entry moves; no data is copied)."""
        c1, p1, b1 = self._split(path1)
        c2, p2, b2 = self._split(path2)
        if b1 is None or b1 != b2 or not p1 or not p2:
            raise PermissionError("corafs: rename within one branch only")
        e = self.repo.entry(c1, p1)
        self.repo.commit(b1, {}, deletes=[p1], entries={p2: e}, message=self.message,
                         author=self.author)

    rename = mv

    def created(self, path):
        import datetime
        cid = self.info(path).get("commit")
        if cid is None:
            raise FileNotFoundError(path)
        return datetime.datetime.fromtimestamp(self.repo.commit_obj(cid).time)

    modified = created
