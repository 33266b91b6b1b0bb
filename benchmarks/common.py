"""The lossless baselines the benchmarks compare against (tensor bytes of a checkpoint, byte
planes + zstd, the compressed non-tensor bytes). Running, timing and reporting: harness.py."""
from __future__ import annotations

import io

import numpy as np
import zstandard

from corafs.formats import detect


def storages(path: str) -> dict[str, tuple[str, np.ndarray]]:
    """Tensor bytes of a checkpoint by name: name -> (dtype, uint8 array)."""
    with open(path, "rb") as f:
        data = f.read()
    layout = detect(io.BytesIO(data), path, len(data))
    return {s.name: (s.dtype, np.frombuffer(data, np.uint8, s.nbytes, s.offset))
            for s in layout.spans}


def planes_zstd(buf: np.ndarray, width: int, level: int) -> int:
    """Size of byte planes + zstd (per plane)."""
    c = zstandard.ZstdCompressor(level=level)
    if width == 1 or buf.size % width:
        return len(c.compress(buf.tobytes()))
    m = buf.reshape(-1, width)
    return sum(len(c.compress(np.ascontiguousarray(m[:, j]).tobytes())) for j in range(width))


WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}


def nontensor_bytes(path: str) -> int:
    """Compressed size of everything in a file that is not tensor data (headers, pickle)."""
    with open(path, "rb") as f:
        data = f.read()
    layout = detect(io.BytesIO(data), path, len(data))
    pos, parts = 0, []
    for s in layout.spans:
        parts.append(data[pos:s.offset])
        pos = s.offset + s.nbytes
    parts.append(data[pos:])
    return len(zstandard.ZstdCompressor(level=3).compress(b"".join(parts)))
