"""diff between two commits: files added, removed and changed; for changed checkpoints the
tensors added, removed and changed, with the L2 norm of the change and the cosine similarity.
Norms are accumulated block by block, so memory stays bounded whatever the tensor size."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from ..dtypes import lookup
from . import tree


@dataclasses.dataclass
class TensorChange:
    name: str
    status: str                  # added, removed, changed, retyped
    dtype: str
    shape: list
    l2: Optional[float] = None   # ||new - old||
    cosine: Optional[float] = None


@dataclasses.dataclass
class FileChange:
    path: str
    status: str                  # added, removed, changed
    old_size: Optional[int]
    new_size: Optional[int]
    tensors: list[TensorChange] = dataclasses.field(default_factory=list)


def diff(repo, rev1: str, rev2: str, tensors: bool = True) -> list[FileChange]:
    c1, c2 = repo.resolve(rev1), repo.resolve(rev2)
    a = {p: e for p, e in tree.walk(repo, repo.commit_obj(c1).tree) if e["kind"] == "file"}
    b = {p: e for p, e in tree.walk(repo, repo.commit_obj(c2).tree) if e["kind"] == "file"}
    out = []
    for p in sorted(set(a) | set(b)):
        ea, eb = a.get(p), b.get(p)
        if ea is None:
            out.append(FileChange(p, "added", None, eb["size"]))
        elif eb is None:
            out.append(FileChange(p, "removed", ea["size"], None))
        elif ea["id"] != eb["id"]:
            fc = FileChange(p, "changed", ea["size"], eb["size"])
            if tensors:
                fc.tensors = tensor_diff(repo, repo.get_meta(ea["id"]), repo.get_meta(eb["id"]))
            out.append(fc)
    return out


def _shapes(m: dict) -> dict:
    """Stored tensors by name with the shape the user sees (a .pth storage is flat; its
    state-dict view of the same name has the real shape)."""
    views = {v[0]: v[2] for v in m.get("views", [])}
    out = {}
    for t in m.get("tensors", []):
        out[t["name"]] = dict(t, shape=views.get(t["name"], t["shape"]))
    return out


def tensor_diff(repo, ma: dict, mb: dict) -> list[TensorChange]:
    ta, tb = _shapes(ma), _shapes(mb)
    out = []
    for n in sorted(set(ta) | set(tb)):
        x, y = ta.get(n), tb.get(n)
        if x is None:
            out.append(TensorChange(n, "added", y["dtype"], y["shape"]))
        elif y is None:
            out.append(TensorChange(n, "removed", x["dtype"], x["shape"]))
        elif x["id"] != y["id"]:
            if x["dtype"] != y["dtype"] or x["nbytes"] != y["nbytes"]:
                out.append(TensorChange(n, "retyped", y["dtype"], y["shape"]))
                continue
            l2, cos = _norms(repo, x, y)
            out.append(TensorChange(n, "changed", y["dtype"], y["shape"], l2, cos))
    return out


def _norms(repo, x: dict, y: dict) -> tuple[float, float]:
    dd, aa, bb, ab = sums(repo, x, y)
    cos = ab / math.sqrt(aa * bb) if aa > 0 and bb > 0 else float("nan")
    return math.sqrt(dd), cos


def sums(repo, x: dict, y: dict, fast: bool = False,
         cosine: bool = True) -> tuple[float, float, float, float]:
    """(||y - x||^2, ||x||^2, ||y||^2, x.y) of two stored tensors of one size, block by block
    (memory stays bounded); a block both share is decoded once. ``fast``: the float types
    training writes as float32 (BLAS dot products: a plot's precision, not diff's), with the
    non-finite values zeroed only when a sum comes out non-finite. Without ``cosine`` the last
    two are 0 (two passes less over every block)."""
    bx = [b[0] for b in repo.tensor_manifest(x["id"])["blocks"]]
    by = [b[0] for b in repo.tensor_manifest(y["id"])["blocks"]]
    conv = _floats32 if fast else to_float
    dd = aa = bb = ab = 0.0
    for i, j in zip(bx, by):
        u = conv(repo.decoder.raw(i), x["dtype"])
        v = u if i == j else conv(repo.decoder.raw(j), y["dtype"])
        s = _block_sums(u, v, i == j, cosine)
        if fast and not all(map(math.isfinite, s)):
            s = _block_sums(_finite(u), _finite(v), i == j, cosine)
        dd, aa, bb, ab = dd + s[0], aa + s[1], bb + s[2], ab + s[3]
    return dd, aa, bb, ab


def _block_sums(u: np.ndarray, v: np.ndarray, same: bool,
                cosine: bool) -> tuple[float, float, float, float]:
    uu = float(np.dot(u, u))
    if same:
        return 0.0, uu, uu if cosine else 0.0, uu if cosine else 0.0
    d = v - u
    if not cosine:
        return float(np.dot(d, d)), uu, 0.0, 0.0
    return float(np.dot(d, d)), uu, float(np.dot(v, v)), float(np.dot(u, v))


def _floats32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32" and raw.size % 4 == 0:
        return raw.view(np.float32)
    if dtype == "BF16" and raw.size % 2 == 0:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16" and raw.size % 2 == 0:
        return raw.view(np.float16).astype(np.float32)
    return to_float(raw, dtype)


def _finite(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, a.dtype.type(0))


def _e4m3_table() -> np.ndarray:
    v = np.arange(256)
    s = np.where(v & 0x80, -1.0, 1.0)
    e = (v >> 3) & 0xF
    m = v & 0x7
    val = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e - 7.0))
    val = s * val
    val[(v & 0x7F) == 0x7F] = np.nan
    return val


_E4M3 = _e4m3_table()


def to_float(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Decoded bytes of a tensor block as float64 (non-finite values zeroed for the norms)."""
    if dtype == "BF16":
        a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif dtype == "F8_E5M2":
        a = (raw.astype(np.uint16) << 8).view(np.float16)
    elif dtype == "F8_E4M3":
        a = _E4M3[raw]
    else:
        np_types = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                    "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.uint8,
                    "C64": np.float32, "C128": np.float64}
        t = np_types.get(dtype)
        if t is None or raw.size % lookup(dtype).itemsize:
            t = np.uint8
        a = raw.view(t)
    a = a.astype(np.float64)
    a[~np.isfinite(a)] = 0.0
    return a
