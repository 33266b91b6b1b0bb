"""Byte-plane split + zstd (the ZipNN idea): the bytes of each element position are grouped so
exponent bytes (very compressible) are apart from mantissa bytes (nearly random). Each plane is
compressed on its own and kept raw when compression does not pay."""
from __future__ import annotations

import struct

import numpy as np

from . import zstd

_PLANE = struct.Struct("<BQ")   # mode (0 raw, 1 zstd), length
RAW, ZSTD = 0, 1


def split(buf, width: int) -> np.ndarray:
    """Planes as the rows of a (width, n) array. One transposed copy: measured 2.1 ms for
    4 MiB of fp32 here, against 5.8 ms for four strided gathers."""
    a = np.frombuffer(buf, dtype=np.uint8)
    if width == 1:
        return a.reshape(1, -1)
    return a.reshape(-1, width).T.copy()


def encode(buf, width: int, level: int) -> bytes:
    """``buf``'s length must be a multiple of ``width``."""
    out = [bytes([width])]
    for plane in split(buf, width):
        if plane.size == 0:
            out.append(_PLANE.pack(RAW, 0))
            continue
        z = zstd.compress(plane, level)
        if len(z) < plane.size * 0.98:
            out += [_PLANE.pack(ZSTD, len(z)), z]
        else:
            out += [_PLANE.pack(RAW, plane.size), plane.tobytes()]
    return b"".join(out)


def decode(body, raw_len: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode into a uint8 array of ``raw_len`` bytes (``out`` if given, reused)."""
    mv = memoryview(body)
    width = mv[0]
    if out is None:
        out = np.empty(raw_len, dtype=np.uint8)
    n = raw_len // width if width else 0
    grid = out.reshape(-1, width) if width > 1 else None
    words = width == 2 and np.little_endian and out.ctypes.data % 2 == 0
    held = []
    pos = 1
    for j in range(width):
        mode, ln = _PLANE.unpack_from(mv, pos)
        pos += _PLANE.size
        chunk = mv[pos:pos + ln]
        pos += ln
        if mode == ZSTD:
            plane = np.frombuffer(zstd.decompress(chunk, n), dtype=np.uint8)
        else:
            plane = np.frombuffer(chunk, dtype=np.uint8)
        if plane.size != n:
            raise ValueError(f"plane {j} holds {plane.size} bytes, expected {n}")
        if words:
            held.append(plane)
        elif grid is None:
            out[:] = plane
        else:
            grid[:, j] = plane          # each plane written as it comes: one held at a time
    if words:
        _merge_pairs(held[0], held[1], out)
    return out


def _merge_pairs(low: np.ndarray, high: np.ndarray, out: np.ndarray) -> None:
    """Interleave two byte planes into ``out`` (little-endian, 2-aligned) as uint16 words: a
    shift and an or that numpy runs vectorized, where two strided byte writes are slow. 4 MiB
    of bf16 here: 0.57 ms against 1.34 ms. (Width 4 done so in two levels needs half-size
    temporaries: 1.0 ms against 1.33 ms with them warm, slower when they are fresh memory or
    chunked small enough to stay in cache; it stays strided.)"""
    o = out.view(np.uint16)
    np.left_shift(high, 8, out=o, dtype=np.uint16)
    np.bitwise_or(o, low, out=o)
