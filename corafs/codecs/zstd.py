"""Thread-local zstd contexts (a ZstdCompressor must not be shared between threads)."""
from __future__ import annotations

import threading

import zstandard

_local = threading.local()


def compress(data, level: int) -> bytes:
    cs = getattr(_local, "c", None)
    if cs is None:
        cs = _local.c = {}
    c = cs.get(level)
    if c is None:
        c = cs[level] = zstandard.ZstdCompressor(level=level)
    return c.compress(data)


def decompress(data, size: int) -> bytes:
    """At most ``size`` bytes; a damaged frame is a ValueError like any other bad block."""
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    try:
        return d.decompress(data, max_output_size=size)
    except zstandard.ZstdError as e:
        raise ValueError(f"zstd: {e}") from None
