"""The batch writer both pack stores share: objects go into an open pack; a pack that reaches
the store's target size is sealed (made durable and published) at once, so a batch of any size
holds at most one pack's worth of unsealed data; ``commit`` seals the last pack, ``abort``
drops it. A store supplies the pack (``_new_pack``: an object with ``put(oid, data)``,
``nbytes`` and ``abort()``), how a full pack is sealed (``_seal_pack``), and anything it holds
for the batch's lifetime (``_release``)."""
from __future__ import annotations

import threading

from .base import ObjectWriter


class PackBatch(ObjectWriter):
    def __init__(self, target: int):
        self.target = target
        self.pack = None
        self.ids: set[str] = set()
        self.done = False
        self._lock = threading.Lock()      # this batch only: never blocks readers

    # -- what a store supplies ------------------------------------------------------------------
    def _new_pack(self):
        raise NotImplementedError

    def _seal_pack(self, pack) -> None:
        """Make ``pack`` durable and visible to readers (its objects are in the index after)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Whatever the batch held until it ended (the local store's shared gc lock)."""

    # -- the batch ------------------------------------------------------------------------------
    def has(self, oid: str) -> bool:
        return oid in self.ids

    def put(self, oid: str, data) -> None:
        if oid in self.ids:
            return
        with self._lock:
            if self.pack is None:
                self.pack = self._new_pack()
            self.pack.put(oid, data)
            self.ids.add(oid)
            if self.pack.nbytes >= self.target:
                self._seal()

    def _seal(self) -> None:
        pack, self.pack = self.pack, None
        try:
            self._seal_pack(pack)
        except BaseException:
            pack.abort()
            raise

    def commit(self) -> None:
        if self.done:
            return
        try:
            with self._lock:
                if self.pack is not None:
                    self._seal()
        finally:
            self.done = True
            self._release()

    def abort(self) -> None:
        try:
            with self._lock:
                if self.pack is not None:
                    self.pack.abort()
                    self.pack = None
        finally:
            self.done = True
            self._release()
