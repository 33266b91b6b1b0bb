"""Storage accounting, from the store's own contents."""
from __future__ import annotations

import collections
import dataclasses

from .. import codecs
from . import tree


@dataclasses.dataclass
class Stats:
    commits: int = 0
    file_versions: int = 0
    logical_bytes: int = 0        # sum of the sizes of every distinct file version
    dedup_bytes: int = 0          # decoded size of distinct data objects (after exact dedup)
    stored_bytes: int = 0         # encoded size of those objects (after delta + compression)
    meta_bytes: int = 0           # commits, trees, recipes, tensor manifests
    disk_bytes: int = 0           # what the store occupies
    objects: int = 0
    codecs: dict = dataclasses.field(default_factory=dict)   # codec name -> object count
    keyframes: int = 0
    deltas: int = 0

    @property
    def ratio(self) -> float:
        return self.logical_bytes / self.disk_bytes if self.disk_bytes else 0.0


def stats(repo) -> Stats:
    st = Stats()
    commits = repo.all_commits()
    st.commits = len(commits)
    files: dict[str, dict] = {}
    metas: set[str] = set(commits)
    for cid in commits:
        t = repo.commit_obj(cid).tree
        metas.add(t)
        for _p, e in tree.walk(repo, t):
            if e["kind"] == "link":
                continue
            metas.add(e["id"])
            if e["kind"] == "file":
                files[e["id"]] = e
    st.file_versions = len(files)
    objs: set[str] = set()
    for fid, e in files.items():
        st.logical_bytes += e["size"]
        m = repo.get_meta(fid)
        objs.update(m["extents"]["obj"])
        metas.update(t["id"] for t in m.get("tensors", []))
    counts: collections.Counter = collections.Counter()
    for oid in objs:
        h = codecs.parse_header(repo.store.get_range(oid, 0, 600))
        st.dedup_bytes += h.raw_len
        st.stored_bytes += repo.store.size_of(oid)
        counts[h.codec] += 1
        if codecs.REGISTRY.get(h.codec) is not None and codecs.REGISTRY[h.codec].is_delta:
            st.deltas += 1
        else:
            st.keyframes += 1
    st.meta_bytes = sum(repo.store.size_of(m) for m in metas if repo.store.has(m))
    st.objects = len(objs)
    st.codecs = dict(counts)
    st.disk_bytes = repo.store.stored_bytes()
    return st
