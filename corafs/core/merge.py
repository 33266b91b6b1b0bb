"""Three-way merge of two branches at the file and the tensor level (weight-space merging).

Against the merge base, a path or a tensor changed on one side only takes that side (added and
removed ones too). Tensors changed on both sides follow the strategy: ``ours``, ``theirs``,
``fail`` (list every conflict, write nothing), ``average`` or ``weighted``
(``alpha*ours + (1-alpha)*theirs``). Arithmetic runs in float32 (float64 for F64) and rounds back
to the tensor's dtype the way torch does (round to nearest even; fp8 e4m3fn saturates at
+-448, e5m2 overflows to inf). Integer, bool and complex tensors that differ, tensors whose
dtype or shape differ, and non-checkpoint files changed on both sides are conflicts under
average/weighted/fail.

A merged checkpoint is written in its own format: the file of one side with the merged tensor
bytes spliced in (everything that is not a tensor kept from ours; a torch zip gets its CRC-32
fields recomputed), then ingested like any other version (a delta against ours). No torch here.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import uuid
import zipfile
import zlib
from typing import Optional

import numpy as np

from ..errors import CorafsError
from . import tree

STRATEGIES = ("ours", "theirs", "fail", "average", "weighted")


class MergeConflict(CorafsError):
    exit_code = 1

    def __init__(self, conflicts: list[str]):
        self.conflicts = conflicts
        lines = "\n  ".join(conflicts[:50])
        more = f"\n  ... and {len(conflicts) - 50} more" if len(conflicts) > 50 else ""
        super().__init__(f"merge conflict in {len(conflicts)} place(s), nothing written:\n  "
                         f"{lines}{more}")


@dataclasses.dataclass
class MergeResult:
    commit: Optional[str]               # the merge commit, the fast-forward target, or None
    fast_forward: bool = False
    up_to_date: bool = False
    files: list[str] = dataclasses.field(default_factory=list)          # merged at tensor level
    tensors: dict[str, str] = dataclasses.field(default_factory=dict)   # "path:tensor" -> how


def merge(repo, source: str, into: Optional[str] = None, strategy: str = "fail",
          alpha: float = 0.5, message: Optional[str] = None,
          author: Optional[str] = None) -> MergeResult:
    if strategy not in STRATEGIES:
        raise CorafsError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    into = into or repo.default_branch
    ours = repo.head(into)
    theirs = repo.resolve(source)
    if repo.is_ancestor(theirs, ours):
        return MergeResult(ours, up_to_date=True)
    if repo.is_ancestor(ours, theirs):
        repo._move_ref(f"heads/{into}", ours, theirs, f"merge {source}: fast-forward", author)
        return MergeResult(theirs, fast_forward=True)
    files = [_base_files(repo, ours, theirs)] + \
        [_files(repo, repo.commit_obj(c).tree) for c in (ours, theirs)]
    res = MergeResult(None)
    conflicts: list[str] = []
    changes: dict[str, Optional[dict]] = {}
    to_write: list[tuple[str, dict, dict, dict]] = []     # path, base, ours, theirs entries
    for path in sorted(set(files[0]) | set(files[1]) | set(files[2])):
        b, o, t = (f.get(path) for f in files)
        if _same(o, t) or _same(t, b):
            continue                                      # ours already has it
        if _same(o, b):
            changes[path] = t                             # theirs only (added, changed, gone)
            continue
        # changed on both sides: checkpoints merge tensor by tensor, other files by strategy
        if o is not None and t is not None and _checkpoint(repo, o, t):
            to_write.append((path, b, o, t))
        elif strategy == "ours":
            continue
        elif strategy == "theirs":
            changes[path] = t
        else:
            conflicts.append(f"{path}: changed on both sides"
                             + ("" if o is not None and t is not None else
                                " (deleted on one)"))
    plans = []
    for path, b, o, t in to_write:
        plan = _plan_file(repo, path, b, o, t, strategy, alpha, conflicts, res)
        if plan is None:
            continue
        spec = plan[1]
        if spec["splices"]:
            plans.append(plan)
        elif spec["skeleton"] is not o:
            changes[path] = spec["skeleton"]              # exactly theirs' file
    if conflicts:
        raise MergeConflict(conflicts)
    if message is None:
        message = f"Merge {source} into {into}" + (f" ({strategy})" if to_write else "")
    written: dict[str, str] = {}
    try:
        for path, spec in plans:
            tmp = repo.store.temp_path("merge") or \
                os.path.join(repo.path, f".merge-{uuid.uuid4().hex}.tmp")
            written[path] = tmp
            _write_file(repo, spec, tmp)
            res.files.append(path)
        cr = repo.commit(into, written, message=message, author=author, parent=ours,
                         entries=changes, merge_parents=(theirs,))
    finally:
        for tmp in written.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    res.commit = cr.commit
    return res


# -- file level -------------------------------------------------------------------------------
def _base_files(repo, a: str, b: str, depth: int = 0) -> dict[str, dict]:
    """The files of the merge base. After criss-cross merges there are several best bases;
    as git's recursive strategy does, they are merged into one virtual base (file by file;
    where they disagree on both sides, the newer base's version)."""
    bases = repo.merge_bases(a, b)
    if not bases:
        return {}
    if len(bases) == 1 or depth > 8:
        return _files(repo, repo.commit_obj(bases[0]).tree)
    virtual = _files(repo, repo.commit_obj(bases[0]).tree)
    for other in bases[1:]:
        below = _base_files(repo, bases[0], other, depth + 1)
        theirs = _files(repo, repo.commit_obj(other).tree)
        for path in set(below) | set(virtual) | set(theirs):
            bb, o, t = below.get(path), virtual.get(path), theirs.get(path)
            if _same(o, bb) and not _same(t, bb):
                if t is None:
                    virtual.pop(path, None)
                else:
                    virtual[path] = t
    return virtual


def _files(repo, tree_id: Optional[str]) -> dict[str, dict]:
    if not tree_id:
        return {}
    return {p: e for p, e in tree.walk(repo, tree_id) if e["kind"] != "dir"}


def _same(a: Optional[dict], b: Optional[dict]) -> bool:
    if a is None or b is None:
        return a is b
    return _content(a) == _content(b)


def _content(e: dict):
    return (e.get("kind"), e.get("id"), e.get("target"), e.get("mode"))


def _checkpoint(repo, o: dict, t: dict) -> bool:
    return (o.get("kind") == t.get("kind") == "file"
            and o.get("format") == t.get("format")
            and o.get("format") in ("safetensors", "pth"))


# -- tensor level -----------------------------------------------------------------------------
def _tensors(repo, e: Optional[dict]) -> dict[str, dict]:
    if e is None or e.get("kind") != "file" or e.get("format") not in ("safetensors", "pth"):
        return {}
    return {t["name"]: t for t in repo.get_meta(e["id"]).get("tensors", [])}


def _plan_file(repo, path, b, o, t, strategy, alpha, conflicts, res):
    """Decide every tensor of a file changed on both sides. Returns (path, spec) or None."""
    tb, to, tt = _tensors(repo, b), _tensors(repo, o), _tensors(repo, t)
    mo, mt = repo.get_meta(o["id"]), repo.get_meta(t["id"])
    chosen: dict[str, tuple] = {}                 # name -> ("ours"|"theirs"|"mix", ...)
    for name in sorted(set(tb) | set(to) | set(tt)):
        xb, xo, xt = tb.get(name), to.get(name), tt.get(name)
        ib, io_, it = (x["id"] if x else None for x in (xb, xo, xt))
        where = f"{path}:{name}"
        if io_ == it or it == ib:
            kind = "ours"
        elif io_ == ib:
            kind = "theirs"
        elif strategy in ("ours", "theirs"):
            kind = strategy
        elif strategy == "fail":
            conflicts.append(f"{where}: changed on both sides")
            continue
        elif xo is None or xt is None:
            conflicts.append(f"{where}: changed on one side, deleted on the other")
            continue
        elif (xo["dtype"], xo["shape"]) != (xt["dtype"], xt["shape"]):
            conflicts.append(f"{where}: {xo['dtype']}{xo['shape']} here, "
                             f"{xt['dtype']}{xt['shape']} there")
            continue
        elif xo["dtype"] not in FLOATS:
            conflicts.append(f"{where}: {xo['dtype']} values differ and cannot be "
                             f"{'averaged' if strategy == 'average' else 'weighted'}")
            continue
        else:
            kind = "mix"
            res.tensors[where] = strategy if strategy == "average" else f"weighted {alpha}"
        chosen[name] = (kind, xo, xt)
    # the merged structure: which tensors exist, with which dtype/shape
    def structure(ts):
        return sorted((n, x["dtype"], list(x["shape"]), x["nbytes"]) for n, x in ts.items())
    merged = {}
    for name, (kind, xo, xt) in chosen.items():
        x = xt if kind == "theirs" else xo
        if x is not None:
            merged[name] = x
    if structure(merged) == structure(to):
        skeleton, skel_meta, skel_tensors = o, mo, to
    elif structure(merged) == structure(tt):
        skeleton, skel_meta, skel_tensors = t, mt, tt
    else:
        conflicts.append(f"{path}: tensors added or removed on both sides (no file to write "
                         "the merge into)")
        return None
    splices = {}
    for name, (kind, xo, xt) in chosen.items():
        src = {"ours": xo, "theirs": xt}.get(kind)
        target = skel_tensors[name] if name in skel_tensors else None
        if target is None:
            continue
        if kind == "mix":
            splices[name] = ("mix", target, xo, xt, o, t)
        elif src is not None and src["id"] != target["id"]:
            splices[name] = ("copy", target, src, t if kind == "theirs" else o)
    return path, {"skeleton": skeleton, "meta": skel_meta, "splices": splices,
                  "strategy": strategy, "alpha": alpha}


def _write_file(repo, spec: dict, dest: str) -> None:
    """The skeleton file with the merged tensor bytes spliced in."""
    reader = repo.open_file(spec["skeleton"])
    readers = {}

    def open_entry(e):
        if e["id"] not in readers:
            readers[e["id"]] = repo.open_file(e)
        return readers[e["id"]]
    spans = []
    for name, sp in spec["splices"].items():
        target = sp[1]
        if sp[0] == "copy":
            _k, target, src, owner = sp
            data = open_entry(owner).read(src["offset"], src["nbytes"])
        else:
            _k, target, xo, xt, eo, et = sp
            a = open_entry(eo).read(xo["offset"], xo["nbytes"])
            b = open_entry(et).read(xt["offset"], xt["nbytes"])
            data = combine(a, b, target["dtype"], spec["strategy"], spec["alpha"])
        spans.append((target["offset"], target["nbytes"], data))
    spans.sort()
    with open(dest, "wb") as f:
        pos = 0
        for off, n, data in spans:
            _copy(reader, f, pos, off)
            f.write(data)
            pos = off + n
        _copy(reader, f, pos, reader.size)
        f.flush()
    if spec["skeleton"].get("format") == "pth" and spans:
        _fix_zip_crcs(dest, {off for off, _n, _d in spans})


def _copy(reader, f, start: int, end: int, step: int = 8 << 20) -> None:
    while start < end:
        n = min(step, end - start)
        f.write(reader.read(start, n))
        start += n


def _fix_zip_crcs(path: str, changed_offsets: set) -> None:
    """Recompute the CRC-32 of every stored record whose data starts at a changed offset, in
    its local header (or data descriptor) and its central directory entry."""
    with open(path, "r+b") as f:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
        cd_pos = zf.start_dir
        cd_of = {}
        for _ in infos:
            f.seek(cd_pos)
            head = f.read(46)
            if head[:4] != b"PK\x01\x02":
                raise CorafsError("merged zip: central directory is not where it says")
            n, e, c = struct.unpack_from("<HHH", head, 28)
            name = f.read(n).decode("utf-8", "replace")
            cd_of[name] = cd_pos
            cd_pos += 46 + n + e + c
        for info in infos:
            f.seek(info.header_offset)
            lh = f.read(30)
            n, e = struct.unpack_from("<HH", lh, 26)
            data_off = info.header_offset + 30 + n + e
            if data_off not in changed_offsets:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise CorafsError(f"merged zip: {info.filename} is compressed")
            f.seek(data_off)
            crc = 0
            left = info.compress_size
            while left:
                chunk = f.read(min(left, 8 << 20))
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            packed = struct.pack("<I", crc & 0xFFFFFFFF)
            if struct.unpack_from("<H", lh, 6)[0] & 0x08:     # CRC in a data descriptor
                f.seek(data_off + info.compress_size)
                sig = f.read(4)
                f.seek(data_off + info.compress_size + (4 if sig == b"PK\x07\x08" else 0))
                f.write(packed)
            f.seek(info.header_offset + 14)
            f.write(packed)
            f.seek(cd_of[info.filename] + 16)
            f.write(packed)


# -- arithmetic ---------------------------------------------------------------------------------
FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def combine(a: bytes, b: bytes, dtype: str, strategy: str, alpha: float) -> bytes:
    """``(a+b)/2`` or ``alpha*a + (1-alpha)*b`` of two tensors' bytes, as torch computes it."""
    wide = np.float64 if dtype == "F64" else np.float32
    x, y = to_float(a, dtype), to_float(b, dtype)
    if strategy == "average":
        r = (x + y) / wide(2)
    else:
        r = wide(alpha) * x + wide(1.0 - alpha) * y
    return from_float(r.astype(wide, copy=False), dtype)


def to_float(buf: bytes, dtype: str) -> np.ndarray:
    if dtype == "F64":
        return np.frombuffer(buf, "<f8")
    if dtype == "F32":
        return np.frombuffer(buf, "<f4")
    if dtype == "F16":
        return np.frombuffer(buf, "<f2").astype(np.float32)
    if dtype == "BF16":
        return (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
    return _fp8_values(dtype)[np.frombuffer(buf, np.uint8)]


def from_float(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "F64":
        return x.astype("<f8").tobytes()
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    if dtype == "BF16":
        u = x.astype(np.float32).view(np.uint32)
        r = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        r[np.isnan(x)] = 0xFFFF                     # what torch's conversion gives for NaN
        return r.astype("<u2").tobytes()
    return _to_fp8(x.astype(np.float64), dtype).tobytes()


_FP8: dict[str, np.ndarray] = {}


def _fp8_values(dtype: str) -> np.ndarray:
    """float32 value of each of the 256 codes."""
    if dtype not in _FP8:
        ebits, bias = (4, 7) if dtype == "F8_E4M3" else (5, 15)
        mbits = 7 - ebits
        out = np.empty(256, np.float32)
        for code in range(256):
            s = -1.0 if code & 0x80 else 1.0
            e = (code >> mbits) & ((1 << ebits) - 1)
            m = code & ((1 << mbits) - 1)
            if dtype == "F8_E4M3" and e == 15 and m == 7:
                v = float("nan")
            elif dtype == "F8_E5M2" and e == 31:
                v = float("inf") if m == 0 else float("nan")
            elif e == 0:
                v = m / (1 << mbits) * 2.0 ** (1 - bias)
            else:
                v = (1 + m / (1 << mbits)) * 2.0 ** (e - bias)
            out[code] = s * v
        _FP8[dtype] = out
    return _FP8[dtype]


def _to_fp8(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round to nearest, ties to the even code, as torch does (e4m3fn saturates at 448,
    e5m2 overflows to inf)."""
    vals = _fp8_values(dtype)[:128].astype(np.float64)      # non-negative codes
    grid_codes = np.arange(128)
    ok = ~np.isnan(vals)
    if dtype == "F8_E5M2":
        ok &= ~np.isinf(vals)
        # inf takes part in rounding as the next step above the largest finite value
        grid = np.append(vals[ok], 65536.0)
        codes = np.append(grid_codes[ok], 0x7C)
    else:
        grid, codes = vals[ok], grid_codes[ok]
    order = np.argsort(grid)
    grid, codes = grid[order], codes[order]
    mag = np.abs(x)
    hi = np.clip(np.searchsorted(grid, mag, side="left"), 0, len(grid) - 1)
    lo = np.clip(hi - 1, 0, len(grid) - 1)
    dlo, dhi = mag - grid[lo], grid[hi] - mag
    pick_hi = (dhi < dlo) | ((dhi == dlo) & (codes[hi] % 2 == 0) & (codes[lo] % 2 == 1))
    pick_hi |= mag <= grid[0]
    out = np.where(pick_hi, codes[hi], codes[lo]).astype(np.uint8)
    out = np.where(mag >= grid[-1], codes[-1], out).astype(np.uint8)     # saturate / inf
    out |= np.where(np.signbit(x), 0x80, 0).astype(np.uint8)
    out[np.isnan(x)] = 0x7F | 0x80 * np.signbit(x[np.isnan(x)]).astype(np.uint8)
    return out
