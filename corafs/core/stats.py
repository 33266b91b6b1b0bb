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
    reverse_deltas: int = 0       # deltas against a newer version (head-first encoding)
    floating_roots: int = 0       # of those, deltas against a lineage's head (codecs.FLOATING)
    max_depth: int = 0            # longest delta chain any block decodes through
    mean_depth: float = 0.0
    head_max_depth: int = 0       # the same over the blocks of branch heads and tags only
    pending_jobs: int = 0         # queued head-first re-encodings
    held_jobs: int = 0            # re-encodings set aside (blocks that could not be read)

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
    memo: dict[str, int] = {}
    for oid in objs:
        h = codecs.parse_header(repo.store.get_range(oid, 0, 600))
        st.dedup_bytes += h.raw_len
        st.stored_bytes += repo.store.size_of(oid)
        counts[h.codec] += 1
        if h.is_delta:
            st.deltas += 1
            st.reverse_deltas += h.reverse
            st.floating_roots += h.floating
        else:
            st.keyframes += 1
    depths = [chain_depth(repo, oid, memo) for oid in objs]
    st.max_depth = max(depths, default=0)
    st.mean_depth = sum(depths) / len(depths) if depths else 0.0
    heads = set(repo.branches().values()) | set(repo.tags().values())
    for cid in heads:
        for t in repo.tensors_by_name(repo.commit_obj(cid).tree).values():
            for b in repo.tensor_manifest(t["id"])["blocks"]:
                st.head_max_depth = max(st.head_max_depth, chain_depth(repo, b[0], memo))
    from . import headfirst
    st.pending_jobs = len(headfirst.pending(repo))
    st.held_jobs = len(headfirst.held(repo))
    st.meta_bytes = sum(repo.store.size_of(m) for m in metas if repo.store.has(m))
    st.objects = len(objs)
    st.codecs = dict(counts)
    st.disk_bytes = repo.store.stored_bytes()
    return st


def by_kind(repo) -> dict[str, dict]:
    """Storage per kind of file (``.safetensors``, ``.pth``, ``.pt``, ``.json``, other):
    versions, logical bytes (every distinct version's size) and stored bytes (each object
    counted once, under the first kind that holds it)."""
    files: dict[str, dict] = {}
    for cid in repo.all_commits():
        for p, e in tree.walk(repo, repo.commit_obj(cid).tree):
            if e["kind"] == "file":
                files.setdefault(e["id"], dict(e, path=p))
    out: dict[str, dict] = {}
    seen: set[str] = set()
    for fid, e in sorted(files.items(), key=lambda kv: kv[1]["path"]):
        name = e["path"].rsplit("/", 1)[-1]
        kind = "." + name.rsplit(".", 1)[-1].lower() if "." in name else "(no extension)"
        k = out.setdefault(kind, {"versions": 0, "logical": 0, "stored": 0})
        k["versions"] += 1
        k["logical"] += e["size"]
        for oid in repo.get_meta(fid)["extents"]["obj"]:
            if oid not in seen:
                seen.add(oid)
                k["stored"] += repo.store.size_of(oid)
    return out


def chain_depth(repo, oid: str, memo: dict) -> int:
    """How many deltas decoding ``oid`` goes through (0: a keyframe), from headers alone."""
    path = []
    while oid not in memo:
        h = repo.block_header(oid)
        if not h.is_delta:
            memo[oid] = 0
            break
        path.append(oid)
        if len(path) > 256:
            raise ValueError(f"delta chain of {path[0]} does not end")
        oid = h.base_ids[0]
    d = memo[oid]
    for o in reversed(path):
        d += 1
        memo[o] = d
    return memo[path[0]] if path else d
