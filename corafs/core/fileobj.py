"""Loading without a mount: a stored file as a seekable read-only binary file object, and
chosen tensors of a checkpoint without decoding the others. For places where FUSE is not
available (unprivileged containers) or not wanted.

::

    f = corafs.open("./repo", "main~2:model.pth")       # decodes only what is read
    state = torch.load(f, weights_only=True)
    arrays = repo.load_tensors("main:model.safetensors", names=["lm_head.weight"])
"""
from __future__ import annotations

import io
import math
import os
from typing import Optional

import numpy as np

from ..dtypes import lookup
from ..errors import CorafsError, NotFound

#: numpy dtypes of the formats' dtypes that numpy has (bf16 and fp8 need framework="torch")
NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
         "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
         "C64": "<c8", "C128": "<c16"}
TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
         "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
         "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
         "U64": "uint64", "BOOL": "bool", "C64": "complex64", "C128": "complex128"}


class StoredFile(io.RawIOBase):
    """A file version of a repository, read-only and seekable. ``read`` decodes only the
    blocks it touches (and keeps recently decoded ones in the repository's cache).

    With a thread pool (``corafs.open`` passes the repository's), every core works: a read
    spanning several blocks decodes them in parallel, and the blocks a loader will read next
    are decoded ahead along the file's read plan (``ReadAhead``, as the mount does: the zip
    directory and pickle of a ``.pth``, the header of a ``.safetensors``, then the tensors in
    the order ``torch.load`` and ``safe_open`` ask for them)."""

    def __init__(self, reader, name: str, owner=None, pool=None):
        super().__init__()
        self._reader = reader
        self._pos = 0
        self.name = name
        self._owner = owner          # a Repository this object opened (closed with it)
        self._pool = pool
        self._ahead = None
        if pool is not None:
            from .reader import ReadAhead
            self._ahead = ReadAhead(reader)
            self._prefetch(self._ahead.opened())

    def _prefetch(self, ranges) -> None:
        if ranges:
            self._reader.decoder.prefetch(self._pool, self._ahead.objects(ranges))

    def _read(self, size: int):
        data = self._reader.read(self._pos, size, pool=self._pool)
        if self._ahead is not None and len(data):
            self._prefetch(self._ahead.read(self._pos, len(data)))
        return data

    @property
    def size(self) -> int:
        return self._reader.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._check()
        mv = memoryview(b).cast("B")
        data = self._read(len(mv))
        n = len(data)
        mv[:n] = data
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        self._check()
        if size is None or size < 0:
            size = max(0, self._reader.size - self._pos)
        data = self._read(size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._reader.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._check()
        return self._pos

    def close(self) -> None:
        if not self.closed and self._owner is not None:
            self._owner.close()
            self._owner = None
        super().close()

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")


def open_file(repo, spec: str, owner=None) -> StoredFile:
    _cid, path, e = repo.resolve_path(spec)
    if e["kind"] != "file":
        raise CorafsError(f"not a file: {spec}")
    return StoredFile(repo.open_file(e), os.path.basename(path), owner, repo.pool)


def load_tensors(repo, spec: str, names: Optional[list[str]] = None,
                 framework: str = "numpy") -> dict:
    """Tensors of a stored checkpoint by name (all if ``names`` is None), decoding only the
    blocks they lie in. ``framework``: "numpy" (dtypes numpy has) or "torch" (every dtype;
    imports torch only then)."""
    _cid, path, e = repo.resolve_path(spec)
    if e["kind"] != "file":
        raise CorafsError(f"not a file: {spec}")
    m = repo.get_meta(e["id"])
    if m.get("format") == "opaque":
        why = m.get("reason") or "not a checkpoint"
        raise CorafsError(f"{spec} is stored as an opaque file ({why}): it has no tensors")
    views = {v[0]: v for v in m.get("views", [])}
    want = list(views) if names is None else list(names)
    missing = [n for n in want if n not in views]
    if missing:
        raise NotFound("tensor", ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if framework not in ("numpy", "torch"):
        raise CorafsError(f"unknown framework {framework!r} (numpy or torch)")
    reader = repo.open_file(e)
    spans = m["tensors"]
    out = {}
    for n in want:
        _name, dtype, shape, span, soff = views[n][:5]
        dt = lookup(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        if span < 0 or nbytes == 0:
            data = b""
        else:
            t = spans[span]
            start = t["offset"] + int(soff or 0) * dt.itemsize
            if start + nbytes > t["offset"] + t["nbytes"]:
                raise CorafsError(f"tensor {n} is a view this loader cannot rebuild "
                                  "(not contiguous in its storage): load the file instead")
            data = reader.read(start, nbytes, pool=repo.pool)   # its blocks in parallel
        out[n] = _array(data, dtype, list(shape), framework, n)
    return out


def _array(data: bytes, dtype: str, shape: list, framework: str, name: str):
    if framework == "torch":
        import torch
        tname = TORCH.get(dtype)
        if tname is None:
            raise CorafsError(f"tensor {name}: dtype {dtype} has no torch equivalent here")
        td = getattr(torch, tname)
        if not data:
            return torch.empty(shape, dtype=td)
        return torch.frombuffer(bytearray(data), dtype=td).reshape(shape)
    npd = NUMPY.get(dtype)
    if npd is None:
        raise CorafsError(f"tensor {name}: numpy has no {dtype}; use framework='torch'")
    return np.frombuffer(data, dtype=npd).reshape(shape).copy()
