"""What both pack stores (local HDF5 packs, S3 packs) share: the table format of a pack's
objects, the sort key of pack names, and the object index in which the newest copy of an
object wins (re-encoding and repack only ever write newer packs)."""
from __future__ import annotations

import numpy as np

from ..errors import MissingObject

#: a pack's object table: id, offset in the pack's data, length
IDX_DTYPE = np.dtype([("id", "S64"), ("off", "<i8"), ("len", "<i8")])


def pack_order(name: str) -> tuple[int, str]:
    """Sort key of a pack name: its creation time (``[pack-]<ns hex>-<random>``); packs named
    before head-first encoding (``pack-<uuid>``) sort first."""
    body = name[5:] if name.startswith("pack-") else name
    if len(body) > 17 and body[16] == "-":
        try:
            return int(body[:16], 16), name
        except ValueError:
            pass
    return 0, name


class PackIndex:
    """Mixin: ``self._index`` maps object ids to ``(pack, offset, length)``; ``_scan()``
    (the store's) takes in packs written elsewhere."""

    _index: dict

    def _scan(self) -> None:
        raise NotImplementedError

    def _index_table(self, name: str, table: np.ndarray) -> None:
        """Index a pack's objects. An object stored in several packs (re-encoded, or copied
        by a repack) is read from the newest pack. Callers hold what guards the index."""
        key = pack_order(name)
        index = self._index
        for oid, off, ln in zip(table["id"].tolist(), table["off"].tolist(),
                                table["len"].tolist()):
            oid = oid.decode()
            cur = index.get(oid)
            if cur is None or pack_order(cur[0]) < key:
                index[oid] = (name, off, ln)

    def _locate(self, oid: str) -> tuple[str, int, int]:
        loc = self._index.get(oid)
        if loc is None:
            self._scan()
            loc = self._index.get(oid)
            if loc is None:
                raise MissingObject(oid)
        return loc
