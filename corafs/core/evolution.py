"""How a model's weights moved over a run: for each commit of a range and each tensor of one
checkpoint file, the relative change against the commit before it, ``||w_k - w_{k-1}|| /
||w_{k-1}||``, next to the metadata the run logged (``corafs plot``, ``corafs report``).

What it costs: a tensor whose stored id did not change (a frozen layer, an untouched buffer)
costs nothing; for the others both versions are decoded block by block (our deltas are
bit-exact transforms of the bit patterns, XOR or ordered subtraction, not arithmetic
differences, so a norm of the change cannot be read off a stored delta). Each tensor is
walked on its own from the newest version to the oldest, the order head-first encoding stores
them in (an older version is a delta against the newer one): each version of it is decoded
once, its base found in the block cache, which only ever needs one tensor's few blocks;
tensors are spread over the repository's worker pool. Results are cached by
the two tensor ids (content ids never change meaning) in this machine's state directory, so a
second plot of the same range decodes nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import threading
import uuid
from typing import Callable, Optional

import numpy as np

from ..errors import NotFound
from .diff import _shapes, sums
from .history import Commit

CACHE = os.path.join("cache", "evolution.json")


@dataclasses.dataclass
class Evolution:
    path: str                         # the checkpoint file followed
    commits: list[Commit]             # oldest first: one column each
    tensors: list[str]                # rows, in the file's order
    #: relative change per tensor (row) and commit (column); NaN where the tensor or the
    #: file is missing on either side (the range's first commit without a parent, say)
    change: np.ndarray
    decoded_bytes: int = 0            # decoded to compute this (0 when all was cached)
    cached_pairs: int = 0
    computed_pairs: int = 0

    def layers(self) -> list[tuple[str, int, int]]:
        """(layer, first row, end row): consecutive tensors of one layer, by name."""
        out: list[tuple[str, int, int]] = []
        for i, name in enumerate(self.tensors):
            g = layer_of(name)
            if out and out[-1][0] == g:
                out[-1] = (g, out[-1][1], i + 1)
            else:
                out.append((g, i, i + 1))
        return out

    def metric(self, key: str) -> list[Optional[float]]:
        from .commitmeta import number
        return [number(c.meta.get(key)) for c in self.commits]


_LAYER = re.compile(r"^(.*?\b(?:layers?|h|blocks?|encoder\.layer|decoder\.layer)\.\d+)\.")


def layer_of(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3``; names without a numbered
    block group by their module (``model.embed_tokens``, ``lm_head``)."""
    m = _LAYER.match(name)
    if m:
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def default_path(repo, cid: str) -> str:
    """The checkpoint to follow when none is named: the model's weights, i.e. the largest
    parsed file of ``cid``, a ``.safetensors`` one first, optimizer states last."""
    best = None
    for p, e in repo.walk(cid):
        if e["kind"] != "file" or e.get("format") in (None, "opaque"):
            continue
        name = p.rsplit("/", 1)[-1].lower()
        rank = (name.endswith(".safetensors"), "optim" not in name, e["size"])
        if best is None or rank > best[1]:
            best = (p, rank)
    if best is None:
        raise NotFound("checkpoint file in", cid[:12])
    return best[0]


def compute(repo, spec: Optional[str] = None, path: Optional[str] = None,
            progress: Optional[Callable] = None, use_cache: bool = True) -> Evolution:
    """``progress(total_bytes)``: a context manager yielding an ``update(n)`` callable (the
    CLI's progress bar), told how many bytes are left to decode once that is known."""
    commits = repo.commit_range(spec)
    if not commits:
        raise NotFound("commits in", spec or repo.default_branch)
    path = path or default_path(repo, commits[-1].id)
    cache = _Cache(os.path.join(repo.path, CACHE)) if use_cache else _Cache(None)
    order: list[str] = []                            # rows: tensor names, first seen first

    def manifest(cid: str) -> Optional[dict]:
        try:
            e = repo.entry(cid, path)
        except NotFound:
            return None
        if e.get("kind") != "file":
            return None
        m = repo.get_meta(e["id"])
        return _shapes(m) if m.get("tensors") else None

    prev = manifest(commits[0].parents[0]) if commits[0].parents else None
    work: list[tuple[int, str, dict, dict]] = []      # (column, name, old, new)
    cols: list[dict[str, float]] = []
    kept: list[Commit] = []                          # commits that hold the file: columns
    seen: set[str] = set()
    for c in commits:
        cur = manifest(c.id)
        if cur is None:
            prev = None
            continue
        k = len(kept)
        kept.append(c)
        col: dict[str, float] = {}
        order.extend(n for n in cur if n not in seen)
        seen.update(cur)
        if prev is not None:
            for name, y in cur.items():
                x = prev.get(name)
                if x is None or x["dtype"] != y["dtype"] or x["nbytes"] != y["nbytes"]:
                    continue
                if x["id"] == y["id"]:
                    col[name] = 0.0
                else:
                    work.append((k, name, x, y))
        cols.append(col)
        prev = cur
    if not kept:
        raise NotFound(f"{path} in the commits of", spec or repo.default_branch)
    commits = kept
    ev = Evolution(path, commits, order, np.full((len(order), len(commits)), np.nan))
    todo = []
    for k, name, x, y in work:
        hit = cache.get(x["id"], y["id"])
        if hit is not None:
            cols[k][name] = _relative(*hit)
            ev.cached_pairs += 1
        else:
            todo.append((k, name, x, y))
    before = repo.decoder.decoded_bytes
    lock = threading.Lock()
    total = sum(2 * int(t[3]["nbytes"]) for t in todo)
    bar = progress(total) if progress is not None else contextlib.nullcontext(lambda n: None)
    rows: dict[str, list] = {}
    for t in todo:
        rows.setdefault(t[1], []).append(t)
    with bar as update:
        def one_row(items):
            """One tensor across the range, newest pair first: its older version is stored
            as a delta against the newer one (head-first), which the pair before has just
            decoded, so the block cache only ever needs one tensor's few blocks."""
            out = []
            for k, name, x, y in sorted(items, key=lambda t: -t[0]):
                dd, aa = _change(repo, x, y)
                with lock:
                    cache.put(x["id"], y["id"], dd, aa)
                    update(2 * int(y["nbytes"]))
                out.append((k, name, _relative(dd, aa)))
            return out

        # tensors in parallel over the worker pool, the largest first
        order_rows = sorted(rows.values(), key=lambda items: -int(items[0][3]["nbytes"]))
        for done in repo.pool.map(one_row, order_rows):
            for k, name, r in done:
                cols[k][name] = r
    ev.computed_pairs = len(todo)
    ev.decoded_bytes = repo.decoder.decoded_bytes - before
    cache.save()
    row = {n: i for i, n in enumerate(order)}
    for k, col in enumerate(cols):
        for name, r in col.items():
            ev.change[row[name], k] = r
    return ev


def _relative(dd: float, aa: float) -> float:
    if aa > 0:
        return math.sqrt(dd / aa)
    return 0.0 if dd == 0 else float("inf")


def _change(repo, x: dict, y: dict) -> tuple[float, float]:
    """(||y - x||^2, ||x||^2)."""
    dd, aa, _bb, _ab = sums(repo, x, y, fast=True, cosine=False)
    return dd, aa


class _Cache:
    """``old_id:new_id -> [||d||^2, ||old||^2]`` in one JSON file, merged on save (two plots
    at once lose nothing but time)."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.data: dict[str, list] = {}
        self.new: dict[str, list] = {}
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError):
                self.data = {}

    def get(self, a: str, b: str):
        return self.data.get(f"{a}:{b}")

    def put(self, a: str, b: str, dd: float, aa: float) -> None:
        self.new[f"{a}:{b}"] = self.data[f"{a}:{b}"] = [dd, aa]

    def save(self) -> None:
        if not self.path or not self.new:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        merged = {}
        try:
            with open(self.path) as f:
                merged = json.load(f)
        except (OSError, ValueError):
            pass
        merged.update(self.new)
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w") as f:
            json.dump(merged, f)
        os.replace(tmp, self.path)
