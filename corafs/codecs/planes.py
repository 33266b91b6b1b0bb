"""Byte planes + zstd (the ZipNN idea), with the bit-exact delta transforms fused in: the
bytes of each element position are grouped so exponent bytes (very compressible) are apart from
mantissa bytes (nearly random). Each plane is compressed on its own and kept raw when
compression does not pay.

The per-byte work runs in the compiled kernels (``_kernels.c``: split or merge the planes and
apply or undo a transform in one pass, without the GIL); zstd runs through ``zstandard``, which
releases the GIL too. ``reference.py`` holds the numpy arithmetic the kernels are tested
against.

Body layout: one byte ``width``, then per plane ``(mode: u8, length: u64 LE)`` and its bytes
(mode 0 raw, 1 zstd)."""
from __future__ import annotations

import struct
import threading
from typing import Optional

import numpy as np

from . import _kernels, zstd

PLANE = struct.Struct("<BQ")   # mode (0 raw, 1 zstd), length
RAW, ZSTD = 0, 1

#: transforms the kernels fuse with the planes
KEY, XOR, SUB, SUB2 = _kernels.KEY, _kernels.XOR, _kernels.SUB, _kernels.SUB2

WIDTHS = (1, 2, 4, 8)


def _u8(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) and a.dtype == np.uint8 else \
        np.frombuffer(a, dtype=np.uint8)


def encode(buf, width: int, level: int, kind: int = KEY, base=None, base2=None) -> bytes:
    """Transform ``buf`` (``kind`` against ``base``/``base2``), split it into ``width`` planes
    and compress each. ``buf``'s length must be a multiple of ``width``."""
    a = _u8(buf)
    if width == 1 and kind == KEY:
        split = a                                  # one plane: the bytes themselves
    else:
        split = np.empty(a.size, dtype=np.uint8)
        _kernels.encode(kind, width, a, base, base2, split)
    n = a.size // width
    return pack([split[j * n:(j + 1) * n] for j in range(width)], level)


def pack(split_planes: list, level: int) -> bytes:
    """The body of ``split_planes`` (uint8 arrays of one length): each compressed with zstd,
    or kept raw where compression does not save 2%."""
    out = [bytes([len(split_planes)])]
    for plane in split_planes:
        if plane.size == 0:
            out.append(PLANE.pack(RAW, 0))
            continue
        z = zstd.compress_plane(plane, level)
        if len(z) < plane.size * 0.98:
            out += [PLANE.pack(ZSTD, len(z)), z]
        else:
            out += [PLANE.pack(RAW, plane.size), plane.tobytes()]
    return b"".join(out)


def frames(body, raw_len: int) -> tuple[int, list[tuple[int, memoryview]]]:
    """(width, planes): each plane as ``(mode, view of body)``, still compressed, in the form
    ``_kernels.chain`` takes. ValueError for a body whose layout does not describe ``raw_len``
    bytes (a frame's contents are checked where it is decompressed)."""
    mv = memoryview(body)
    if len(mv) < 1:
        raise ValueError("empty planes body")
    width = mv[0]
    if width not in WIDTHS or raw_len % width:
        raise ValueError(f"bad plane width {width} for {raw_len} bytes")
    n = raw_len // width
    got = []
    pos = 1
    for j in range(width):
        if pos + PLANE.size > len(mv):
            raise ValueError(f"planes body truncated at plane {j}")
        mode, ln = PLANE.unpack_from(mv, pos)
        pos += PLANE.size
        if ln > len(mv) - pos:
            raise ValueError(f"plane {j} claims {ln} bytes, {len(mv) - pos} are left")
        if mode not in (RAW, ZSTD):
            raise ValueError(f"plane {j} has unknown mode {mode}")
        if mode == RAW and ln != n:
            raise ValueError(f"plane {j} holds {ln} bytes, expected {n}")
        got.append((mode, mv[pos:pos + ln]))
        pos += ln
    if pos != len(mv):
        raise ValueError(f"{len(mv) - pos} bytes after the last plane")
    return width, got


_local = threading.local()


def scratch(nbytes: int) -> np.ndarray:
    """This thread's work buffer for ``_kernels.chain``, at least ``nbytes`` long: kept and
    reused, so decoding does not fault in fresh pages for every block (a decode of history
    spent a third of its time in the kernel zeroing them)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.size < nbytes:
        buf = _local.scratch = np.empty(max(nbytes, 0), dtype=np.uint8)
    return buf


def scratch_for(raw_len: int, levels: int) -> np.ndarray:
    """Scratch for a chain of ``levels`` blocks of ``raw_len`` bytes (``_kernels.chain``)."""
    return scratch(_kernels.scratch_size(raw_len, levels))


def decode(body, raw_len: int, out: Optional[np.ndarray] = None, kind: int = KEY,
           base=None, base2=None) -> np.ndarray:
    """Decode into a uint8 array of ``raw_len`` bytes (``out`` if given), undoing ``kind``
    against ``base`` (and ``base2``) in the same pass as the plane merge."""
    width, got = frames(body, raw_len)
    if out is None:
        out = np.empty(raw_len, dtype=np.uint8)
    _kernels.chain([(kind, width, got)], base, base2, out, scratch_for(raw_len, 1))
    return out
