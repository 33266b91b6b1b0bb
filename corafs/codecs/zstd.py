"""Thread-local zstd contexts (a ZstdCompressor must not be shared between threads)."""
from __future__ import annotations

import threading

import zstandard

_local = threading.local()


#: The match table of the fast levels, for byte planes of numbers (``compress_plane``): such
#: planes hold few long repeats, and with a table of 2^6 entries zstd keeps the matches worth a
#: sequence and leaves the rest to its Huffman-coded literals. On the byte planes of a real
#: fine-tuning run (fp32 and bf16, keyframes and ordered-subtraction deltas, 1 MiB planes) that
#: was 0.4-3.8% smaller than level 1's own table (2^14), encoded 1.45-2.0x and decoded
#: 1.15-1.55x faster (``benchmarks/bench_kernels.py`` measures the codec both ways).
PLANE_HASH_LOG = 6
#: the levels that get it (zstd's "fast" strategy; higher levels search differently)
_FAST_LEVELS = range(-7, 3)


def _compressor(key, make):
    cs = getattr(_local, "c", None)
    if cs is None:
        cs = _local.c = {}
    c = cs.get(key)
    if c is None:
        c = cs[key] = make()
    return c


def compress(data, level: int) -> bytes:
    return _compressor(level, lambda: zstandard.ZstdCompressor(level=level)).compress(data)


def compress_plane(data, level: int) -> bytes:
    """``compress`` for a byte plane of numbers (see ``PLANE_HASH_LOG``); any zstd decoder
    reads the result."""
    if level not in _FAST_LEVELS:
        return compress(data, level)
    hash_log = PLANE_HASH_LOG
    return _compressor(("plane", level, hash_log), lambda: zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters.from_level(
            level, hash_log=hash_log))).compress(data)


def decompress(data, size: int) -> bytes:
    """At most ``size`` bytes; a damaged frame is a ValueError like any other bad block."""
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    try:
        return d.decompress(data, max_output_size=size)
    except zstandard.ZstdError as e:
        raise ValueError(f"zstd: {e}") from None
