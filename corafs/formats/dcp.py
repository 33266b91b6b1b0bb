"""``torch.distributed.checkpoint`` (DCP) data files, ``__<rank>_<n>.distcp``: each is a
concatenation of records, one per saved item: a ``torch.save`` zip archive for a tensor (or a
shard of one), raw bytes for a bytes item. The ``.metadata`` file beside them says where each
record lies; it is a pickle, and corafs never needs it: each archive is found from its end
record (torch's zip writer puts sizes in data descriptors, not local headers, so the records
cannot be walked from the front): every end-of-directory signature in the file is a candidate,
kept only if the directory and the first local header sit where it says, in order, after the
previous archive. Each archive is parsed as a ``.pth`` with the restricted reader, so tensors
deduplicate and delta-encode across versions and across ranks' files exactly as ``.pth``
storages do. Bytes between archives (bytes items) are kept as non-tensor bytes (content-defined
chunks), byte-exact like everything else. A file that does not start with a readable archive,
or whose archives lie, is stored opaque with the reason, like any malformed checkpoint.
"""
from __future__ import annotations

import io
import struct

from ..errors import UnsupportedFormat
from . import pth
from .layout import Layout, TensorSpan, View

MAX_ARCHIVES = 1 << 16
_LOCAL, _CENTRAL = b"PK\x03\x04", b"PK\x01\x02"
_EOCD64, _LOC64, _EOCD = b"PK\x06\x06", b"PK\x06\x07", b"PK\x05\x06"


def looks_like(name: str) -> bool:
    return name.lower().endswith(".distcp")


class _Window(io.RawIOBase):
    """``f`` from ``start`` for ``size`` bytes, as a file of its own (for zipfile)."""

    def __init__(self, f, start: int, size: int):
        super().__init__()
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, off: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + off)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self.size - self.pos))
        if n == 0:
            return 0
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _eocds(f, size: int, chunk: int = 64 << 20) -> list[int]:
    """Positions of every zip end-of-central-directory signature in the file (one pass; a
    tensor's bytes may hold the pattern by chance: ``_archive_at`` checks each)."""
    out, pos, tail = [], 0, b""
    f.seek(0)
    while pos < size:
        data = tail + f.read(min(chunk, size - pos))
        base = pos - len(tail)
        if len(data) == len(tail):
            break
        i = data.find(_EOCD)
        while i >= 0:
            out.append(base + i)
            i = data.find(_EOCD, i + 1)
        pos = base + len(data)
        tail = data[-3:]
    return sorted(set(out))


def _read_at(f, pos: int, n: int) -> bytes:
    f.seek(pos)
    return f.read(n)


def _archive_at(f, e: int, size: int):
    """(start, end) of the zip archive whose end record is at ``e``, or None when the bytes
    there are not one (the pattern inside tensor data, a lie)."""
    h = _read_at(f, e, 22)
    if len(h) < 22:
        return None
    cds, cdo, clen = struct.unpack_from("<IIH", h, 12)
    end = e + 22 + clen
    cd_end = e
    if e >= 20 and _read_at(f, e - 20, 4) == _LOC64:
        (z64,) = struct.unpack_from("<Q", _read_at(f, e - 20, 20), 8)
        # the zip64 record sits right before the locator: its offset is relative to the
        # archive's start, which is what we look for; find it by its fixed size
        cd_end = e - 20 - 56
        rec = _read_at(f, cd_end, 56)
        if rec[:4] != _EOCD64:
            return None
        cds, cdo = struct.unpack_from("<QQ", rec, 40)
        if cd_end - z64 < 0 or cd_end - z64 != cd_end - cds - cdo:
            return None
    start = cd_end - cds - cdo
    if start < 0 or end > size or cds == 0:
        return None
    if _read_at(f, start, 4) != _LOCAL or _read_at(f, start + cdo, 4) != _CENTRAL:
        return None
    return start, end


def parse(f, size: int) -> Layout:
    layout = Layout("pth", size)
    pos, k = 0, 0
    for e in _eocds(f, size):
        if e < pos or k >= MAX_ARCHIVES:
            continue
        found = _archive_at(f, e, size)
        if found is None or found[0] < pos:
            continue
        start, end = found
        if k == 0 and start != 0:
            raise UnsupportedFormat("distcp", "the file does not start with a torch.save record")
        try:
            sub = pth.parse(_Window(f, start, end - start), end - start)
        except UnsupportedFormat as e:
            raise UnsupportedFormat("distcp", f"record {k} at {start}: {e.why}") from None
        base = len(layout.spans)
        for sp in sub.spans:
            layout.spans.append(TensorSpan(_name(k, sp.name), sp.dtype, sp.shape,
                                           start + sp.offset, sp.nbytes))
        for v in sub.views:
            layout.views.append(View(_name(k, v.name), v.dtype, v.shape,
                                     v.span + base if v.span >= 0 else -1, v.storage_offset,
                                     v.stride))
        pos, k = end, k + 1
    if k == 0:
        raise UnsupportedFormat("distcp", "no torch.save record found")
    try:
        layout.sort_spans()
    except ValueError as e:
        raise UnsupportedFormat("distcp", str(e)) from None
    return layout


def _name(k: int, name: str) -> str:
    """Tensor names unique in the file and stable across saves: records come in the order
    DCP's planner writes them, which is the same from one save to the next."""
    return f"record{k}" + (f".{name}" if name else "")
