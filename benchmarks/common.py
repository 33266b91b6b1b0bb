"""Shared helpers for the benchmarks: the lossless baseline the issues compare against."""
from __future__ import annotations

import io
import subprocess
import sys
import time

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


# -- running corafs and timing reads (shared by the mount benchmarks) ----------------------------
def corafs(*args) -> None:
    """Run the real ``corafs`` command; fail loudly."""
    subprocess.run([sys.executable, "-m", "corafs", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


def drop_caches() -> None:
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cat(path) -> float:
    """Seconds to read a file front to back in 1 MiB reads."""
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - t


def timed_load(path, mmap) -> float:
    """Seconds for torch.load (weights_only) plus touching every tensor, in a fresh process."""
    code = ("import sys, time, torch\n"
            "t = time.perf_counter()\n"
            "sd = torch.load(sys.argv[1], weights_only=True, mmap=sys.argv[2] == '1')\n"
            "s = sum(float(v.float().sum()) for v in sd.values())\n"
            "print(time.perf_counter() - t)\n")
    p = subprocess.run([sys.executable, "-c", code, str(path), "1" if mmap else "0"],
                       capture_output=True, text=True, check=True)
    return float(p.stdout.strip())
