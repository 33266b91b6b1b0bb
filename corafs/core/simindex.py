"""Similarity index: finds a close tensor anywhere in the repository, so a model copied in under
a new name or onto a new branch still delta-encodes.

A tensor's fingerprint is a 64-bit SimHash of a fixed-size strided sample (at most 4096 values)
of its first block, against a fixed random projection: memory and time do not grow with tensor
size. Candidates must have the same dtype and byte size; the nearest by Hamming distance wins
if it is within ``MAX_DISTANCE`` bits (cosine similarity above about 0.95).

The index is a local cache file (``REPO/index/simhash``, one line per tensor) appended after a
commit's objects are durable; if it is missing it is rebuilt from the tensor manifests."""
from __future__ import annotations

import os
import threading
from typing import Optional

import numpy as np

from ..dtypes import lookup
from . import tree
from .diff import to_float

SAMPLE = 4096
BITS = 64
MAX_DISTANCE = 10
_PROJ = np.random.default_rng(0x5EED).standard_normal((SAMPLE, BITS)).astype(np.float32)
_WEIGHTS = (1 << np.arange(BITS, dtype=np.uint64)).astype(np.uint64)


def fingerprint(block: np.ndarray, dtype: str) -> Optional[int]:
    dt = lookup(dtype)
    if not dt.is_float or dt.kind == "c" or block.size < dt.itemsize * 16:
        return None
    n = block.size // dt.itemsize
    idx = np.linspace(0, n - 1, min(n, SAMPLE)).astype(np.int64)
    items = block[: n * dt.itemsize].reshape(n, dt.itemsize)[idx].reshape(-1)
    x = np.zeros(SAMPLE, dtype=np.float32)
    x[: idx.size] = to_float(np.ascontiguousarray(items), dtype)
    norm = float(np.linalg.norm(x))
    if norm == 0:
        return None
    bits = (x / norm) @ _PROJ > 0
    return int((bits.astype(np.uint64) * _WEIGHTS).sum())


def distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


class SimIndex:
    def __init__(self, repo):
        self.repo = repo
        self.path = os.path.join(repo.path, "index", "simhash")
        self._lock = threading.Lock()
        self._by_key: Optional[dict[tuple[str, int], list[tuple[int, str]]]] = None

    def _load(self) -> dict:
        if self._by_key is not None:
            return self._by_key
        by_key: dict = {}
        if not os.path.exists(self.path):
            self._rebuild()
        try:
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 4:
                        by_key.setdefault((parts[0], int(parts[1])), []).append(
                            (int(parts[2], 16), parts[3]))
        except OSError:
            pass
        self._by_key = by_key
        return by_key

    def _rebuild(self) -> None:
        rows = set()
        for cid in self.repo.all_commits():
            for _p, e in tree.walk(self.repo, self.repo.commit_obj(cid).tree):
                if e["kind"] != "file" or e.get("format") == "opaque":
                    continue
                for t in self.repo.get_meta(e["id"]).get("tensors", []):
                    try:
                        fp = self.repo.tensor_manifest(t["id"]).get("fp")
                    except Exception:
                        continue
                    if fp:
                        rows.add(f"{t['dtype']} {t['nbytes']} {fp} {t['id']}\n")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.writelines(sorted(rows))
        os.replace(tmp, self.path)

    def nearest(self, dtype: str, nbytes: int, fp: Optional[int]) -> Optional[str]:
        if fp is None:
            return None
        with self._lock:
            cands = self._load().get((dtype, nbytes), [])
            best, best_d = None, MAX_DISTANCE + 1
            for other, tid in cands:
                d = distance(fp, other)
                if d < best_d:
                    best, best_d = tid, d
            return best

    def add(self, rows: list[tuple[str, int, int, str]]) -> None:
        """Record tensors (dtype, nbytes, fingerprint, tensor id) whose objects are durable."""
        if not rows:
            return
        with self._lock:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            if not os.path.exists(self.path):
                self._by_key = None
            with open(self.path, "a") as f:
                f.writelines(f"{d} {n} {fp:016x} {tid}\n" for d, n, fp, tid in rows)
            if self._by_key is not None:
                for d, n, fp, tid in rows:
                    self._by_key.setdefault((d, n), []).append((fp, tid))
