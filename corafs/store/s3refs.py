"""Registers on S3 that need one conditional request only: create-if-absent.

A register (a ref, the repository's config, a lease) is a series of immutable generations
``<base>/<n>``, n written as 16 hex digits: the newest generation is the register's value, and an
empty body is a tombstone (a deleted branch). Moving the register from generation n means
creating n+1 with ``If-None-Match: *`` (on GCS ``x-goog-if-generation-match: 0``): the service
lets exactly one writer create each generation, so of two writers that both read n, one wins and
the other is told it lost (412/409) and reads again. Nothing is ever overwritten and nothing is
deleted conditionally, which is what lets corafs run on services that ignore or refuse
``If-Match`` (MinIO's DELETE, Ceph RGW before 19.2.7, R2, GCS's XML API).

Superseded generations are deleted by writers (in bursts, once a few have piled up) and by gc
(``sweep``, all but the newest two); the newest generation is never deleted, tombstones included,
so a writer holding a stale read can never re-create a generation that already existed.
Generations never change, so their bodies are cached in memory once read.
"""
from __future__ import annotations

import collections
import threading
from typing import Optional

from .s3client import S3Bucket, S3Error, lost_race

_DIGITS = 16
_HEX = frozenset("0123456789abcdef")
#: superseded generations a writer lets pile up before it deletes them
TRIM_AT = 4
#: generations whose bodies stay cached (refs are a few bytes each)
_CACHE_ENTRIES = 4096


def is_generation(name: str) -> bool:
    return len(name) == _DIGITS and set(name) <= _HEX


def key(base: str, n: int) -> str:
    return f"{base}/{n:0{_DIGITS}x}"


class Registers:
    """Generation registers under one bucket and prefix."""

    def __init__(self, remote: S3Bucket):
        self.remote = remote
        self._bodies: "collections.OrderedDict[str, bytes]" = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- reading --------------------------------------------------------------------------
    def generations(self, base: str) -> list[int]:
        """The generations of ``base`` that exist now, oldest first (one listing)."""
        pre = base + "/"
        out = [int(rel[len(pre):], 16) for rel, _t in self.remote.list(pre)
               if is_generation(rel[len(pre):])]
        return sorted(out)

    def scan(self, prefix: str) -> tuple[dict[str, list[int]], list[str]]:
        """Every register under ``prefix`` in one listing: base -> generations (oldest first),
        and the keys under it that are not generations (plain objects: the refs of format 1)."""
        regs: dict[str, list[int]] = collections.defaultdict(list)
        plain = []
        for rel, _t in self.remote.list(prefix):
            base, _, last = rel.rpartition("/")
            if base and is_generation(last):
                regs[base].append(int(last, 16))
            else:
                plain.append(rel)
        return {b: sorted(g) for b, g in regs.items()}, plain

    def body(self, base: str, n: int) -> Optional[bytes]:
        """Generation ``n``'s body; None when it is gone (superseded and deleted)."""
        k = key(base, n)
        with self._lock:
            hit = self._bodies.get(k)
        if hit is not None:
            return hit
        got = self.remote.get(k)
        if got is None:
            return None
        self._remember(k, got[0])
        return got[0]

    def read(self, base: str) -> tuple[int, Optional[bytes], list[int]]:
        """(newest generation, its body, the generations listed); (0, None, []) when the
        register has none."""
        for _ in range(16):
            gens = self.generations(base)
            if not gens:
                return 0, None, []
            data = self.body(base, gens[-1])
            if data is not None:
                return gens[-1], data, gens
            # deleted between the listing and the read: a newer generation exists; list again
        raise S3Error(f"s3://{self.remote.bucket}/{self.remote.key(base)} kept changing while "
                      "it was read: try again")

    # -- writing --------------------------------------------------------------------------
    def write(self, base: str, after: int, data: bytes, listed=()) -> bool:
        """Create generation ``after + 1``; False when another writer created it first. Once
        ``listed`` holds ``TRIM_AT`` generations older than ``after``, they are deleted (in a
        burst every few moves rather than one DELETE on each: a move is then a listing and
        one PUT, as a move with If-Match was a GET and one PUT)."""
        k = key(base, after + 1)
        try:
            self.remote.put(k, data, IfNoneMatch="*")
        except Exception as e:
            if lost_race(e):
                return False
            raise
        self._remember(k, data)
        stale = [g for g in listed if g < after]
        if len(stale) >= TRIM_AT:
            self._delete(base, stale)
        return True

    def sweep(self, prefix: str, keep: int = 2) -> int:
        """Delete all but the newest ``keep`` generations of every register under ``prefix``
        (writers that died before deleting what they superseded); the number deleted."""
        regs, _plain = self.scan(prefix)
        n = 0
        for base, gens in regs.items():
            n += self._delete(base, gens[:-max(1, keep)])
        return n

    def _delete(self, base: str, gens) -> int:
        n = 0
        for g in gens:
            try:
                self.remote.delete(key(base, g))
                n += 1
            except S3Error:
                pass        # left for the next writer or gc: superseded either way
        return n

    def _remember(self, k: str, data: bytes) -> None:
        with self._lock:
            self._bodies[k] = data
            self._bodies.move_to_end(k)
            while len(self._bodies) > _CACHE_ENTRIES:
                self._bodies.popitem(last=False)
