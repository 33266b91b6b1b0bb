"""Block codecs. Each codec is a frozen dataclass whose ``name`` is written into every block it
encodes and never changes; decoding looks the name up in ``REGISTRY``.

A stored block (a *data object*) is ``header + body``; the header names the codec, the dtype,
the decoded length, the delta depth and (for deltas) the id of the base block. Its object id is
the xxh3-128 of the decoded bytes, so identical content is stored once whatever its encoding.

Two header versions: ``CB\x01`` (forward deltas and keyframes, as ingest wrote them before
head-first encoding) and ``CB\x02``, which adds one flags byte. ``REVERSE`` marks a delta
against a *newer* version of the block (head-first encoding); its depth field then counts the
block's position in its run of reverse deltas, from the oldest (1) up. ``FLOATING`` (with
``REVERSE``) marks a lineage's floating root, a delta against the lineage's head (depth 1).
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Callable, ClassVar, Optional

import numpy as np

from ..dtypes import DType, lookup
from . import _kernels, lossy as _lossy, planes, zstd
from .base import Codec

MAGIC = b"CB\x01"
MAGIC2 = b"CB\x02"
#: header flag: a delta against a newer version (head-first encoding)
REVERSE = 1
#: header flag (with REVERSE): a lineage's *floating root*, a delta against the newest version
#: of its block, encoded again against each new one (core/headfirst.py)
FLOATING = 2
_Q = struct.Struct("<QB")


def is_block(head) -> bool:
    """Whether the first three bytes of an object are a block header's magic."""
    return bytes(head[:3]) in (MAGIC, MAGIC2)


def _width(dt: DType, n: int) -> int:
    w = dt.lane or dt.itemsize
    return w if w > 1 and n % w == 0 else 1


@dataclasses.dataclass(frozen=True)
class Raw(Codec):
    name: ClassVar[str] = "raw"

    def encode(self, raw, dt, base, level):
        return raw.tobytes()

    def decode(self, body, dt, raw_len, base):
        # no copy: a view of the payload (read-only; nothing decodes in place into a base)
        return np.frombuffer(body, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Zstd(Codec):
    name: ClassVar[str] = "zstd"

    def encode(self, raw, dt, base, level):
        return zstd.compress(raw, level)

    def decode(self, body, dt, raw_len, base):
        return np.frombuffer(zstd.decompress(body, raw_len), dtype=np.uint8).copy()


@dataclasses.dataclass(frozen=True)
class PlanesZstd(Codec):
    """Keyframe: byte planes, each zstd-compressed or raw."""

    name: ClassVar[str] = "planes-zstd"

    def encode(self, raw, dt, base, level):
        return planes.encode(raw, _width(dt, raw.size), level)

    def decode(self, body, dt, raw_len, base):
        return planes.decode(body, raw_len)


@dataclasses.dataclass(frozen=True)
class _DeltaPlanes(Codec):
    """A bit-exact transform against the base block(s), then byte planes and zstd: one fused
    kernel pass each way (``planes``)."""

    is_delta: ClassVar[bool] = True
    kind: ClassVar[int]

    def _bases(self, base):
        return (base[0], base[1]) if self.bases == 2 else (base, None)

    def encode(self, raw, dt, base, level):
        b, b2 = self._bases(base)
        return planes.encode(raw, _width(dt, raw.size), level, self.kind, b, b2)

    def decode(self, body, dt, raw_len, base):
        b, b2 = self._bases(base)
        return planes.decode(body, raw_len, kind=self.kind, base=b, base2=b2)


@dataclasses.dataclass(frozen=True)
class XorPlanesZstd(_DeltaPlanes):
    """new XOR base, byte planes, zstd."""

    name: ClassVar[str] = "xor-planes-zstd"
    kind: ClassVar[int] = planes.XOR


@dataclasses.dataclass(frozen=True)
class SubPlanesZstd(_DeltaPlanes):
    """zigzag(ordered(new) - ordered(base)), byte planes, zstd."""

    name: ClassVar[str] = "osub-planes-zstd"
    kind: ClassVar[int] = planes.SUB


@dataclasses.dataclass(frozen=True)
class Sub2PlanesZstd(_DeltaPlanes):
    """Second order: residual against 2*ordered(prev) - ordered(prev's base), byte planes,
    zstd. Training moves weights in consistent directions (momentum), so extrapolating the
    last step predicts better than the last value. ``base`` is the pair (prev, prev's base)."""

    name: ClassVar[str] = "osub2-planes-zstd"
    bases: ClassVar[int] = 2
    kind: ClassVar[int] = planes.SUB2


REGISTRY: dict[str, Codec] = {c.name: c for c in (
    Raw(), Zstd(), PlanesZstd(), XorPlanesZstd(), SubPlanesZstd(), Sub2PlanesZstd())}


def register(codec: Codec) -> None:
    REGISTRY[codec.name] = codec


# -- the stored block format -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BlockHeader:
    codec: str
    dtype: str
    raw_len: int
    depth: int
    base: Optional[str]
    body_offset: int
    flags: int = 0

    @property
    def is_delta(self) -> bool:
        return self.base is not None

    @property
    def reverse(self) -> bool:
        return bool(self.flags & REVERSE)

    @property
    def floating(self) -> bool:
        return bool(self.flags & FLOATING)

    @property
    def base_ids(self) -> list[str]:
        """The blocks decoding needs: the one this is a delta against first."""
        return self.base.split(",") if self.base else []


def pack_header(codec: str, dtype: str, raw_len: int, depth: int, base: Optional[str],
                flags: int = 0) -> bytes:
    b = (base or "").encode()
    c = codec.encode()
    d = dtype.encode()
    magic = MAGIC2 + bytes([flags]) if flags else MAGIC
    return b"".join([magic, bytes([len(c)]), c, bytes([len(d)]), d,
                     _Q.pack(raw_len, min(depth, 255)), bytes([len(b)]), b])


def parse_header(payload) -> BlockHeader:
    """The header of a stored block; ValueError for anything that is not a whole header."""
    mv = memoryview(payload)
    magic = bytes(mv[:3])
    if magic == MAGIC:
        p, flags = 3, 0
    elif magic == MAGIC2 and len(mv) > 3:
        p, flags = 4, mv[3]
    else:
        raise ValueError("not a corafs block (bad magic)")

    def field(p: int) -> tuple[str, int]:
        if p >= len(mv) or p + 1 + mv[p] > len(mv):
            raise ValueError("block header truncated")
        try:
            return bytes(mv[p + 1:p + 1 + mv[p]]).decode("ascii"), p + 1 + mv[p]
        except UnicodeDecodeError:
            raise ValueError("block header holds a non-ASCII name") from None

    codec, p = field(p)
    dtype, p = field(p)
    if p + _Q.size > len(mv):
        raise ValueError("block header truncated")
    raw_len, depth = _Q.unpack_from(mv, p)
    p += _Q.size
    base, p = field(p)
    return BlockHeader(codec, dtype, raw_len, depth, base or None, p, flags)


def encode_block(raw: np.ndarray, dtype: str, level: int, base: Optional[np.ndarray] = None,
                 base_id: Optional[str] = None, base_depth: int = 0, max_depth: int = 8,
                 codec: Optional[str] = None, base2: Optional[np.ndarray] = None,
                 base2_id: Optional[str] = None, flags: int = 0) -> tuple[bytes, str, int]:
    """Encode one block; return ``(payload, codec name, depth)``. ``flags`` go into a delta's
    header (``REVERSE``); a keyframe has none.

    ``base2`` is the base's own base (for the second-order codec). Without ``codec``, picks the
    smallest of keyframe / XOR / ordered-sub / second-order deltas, judged cheaply on a sample,
    and keeps a delta only if it beats the keyframe."""
    dt = lookup(dtype)
    usable = (base is not None and base_id is not None and dt.is_float
              and base.size == raw.size and base_depth < max_depth)
    usable2 = usable and base2 is not None and base2_id is not None and base2.size == raw.size
    if codec is None:
        if raw.size == 0:
            codec = "raw"
        elif not usable:
            codec = "planes-zstd" if dt.kind != "b" else "zstd"
        else:
            codec = _choose(raw, dt, base, base2 if usable2 else None)
    c = REGISTRY[codec]
    if not c.is_delta:
        body = c.encode(raw, dt, None, level)
        if len(body) >= raw.size and codec != "raw":
            codec, body = "raw", raw.tobytes()
        return pack_header(codec, dtype, raw.size, 0, None) + body, codec, 0
    if c.bases == 2:
        body = c.encode(raw, dt, (base, base2), level)
        ids = f"{base_id},{base2_id}"
    else:
        body = c.encode(raw, dt, base, level)
        ids = base_id
    if len(body) >= raw.size:   # a delta that does not pay: fall back to a keyframe
        return encode_block(raw, dtype, level)
    return (pack_header(codec, dtype, raw.size, base_depth + 1, ids, flags) + body, codec,
            base_depth + 1)


_SAMPLE = 64 << 10


def _sample(a: np.ndarray, w: int) -> np.ndarray:
    if a.size <= 4 * _SAMPLE:
        return a
    step = (a.size // 4) // w * w
    return np.concatenate([a[i * step:i * step + _SAMPLE] for i in range(4)])


def sampled_keep(raw: np.ndarray, dtype: str, level: int) -> Optional[float]:
    """What fraction of its bytes a keyframe of ``raw`` would keep, judged on a sample (four
    slices of 64 KiB); None for a block small enough to be encoded whole instead."""
    dt = lookup(dtype)
    w = _width(dt, raw.size)
    if raw.size <= 8 * _SAMPLE:
        return None
    r = _sample(raw, w)
    return len(planes.encode(r, w, level)) / r.size


def _choose(raw: np.ndarray, dt: DType, base: np.ndarray, base2: Optional[np.ndarray]) -> str:
    w = _width(dt, raw.size)
    r, b = _sample(raw, w), _sample(base, w)
    sizes = {"planes-zstd": len(planes.encode(r, w, 1))}
    for name in ("xor-planes-zstd", "osub-planes-zstd"):
        sizes[name] = len(REGISTRY[name].encode(r, dt, b, 1))
    if base2 is not None:
        sizes["osub2-planes-zstd"] = len(REGISTRY["osub2-planes-zstd"].encode(
            r, dt, (b, _sample(base2, w)), 1))
    # a delta must beat the keyframe by a margin to be worth its decode cost
    best = min(sizes, key=sizes.get)
    if best != "planes-zstd" and sizes[best] > 0.97 * sizes["planes-zstd"]:
        best = "planes-zstd"
    return best


def decode_block(payload, get_base: Callable[[str], np.ndarray]) -> np.ndarray:
    """Decode a stored block to its raw bytes; ``get_base(id)`` supplies a delta's base."""
    h = parse_header(payload)
    c = REGISTRY.get(h.codec)
    if c is None:
        raise ValueError(f"unknown codec {h.codec!r}")
    ids = h.base_ids
    if len(ids) != (c.bases if c.is_delta else 0):
        raise ValueError(f"codec {h.codec} with {len(ids)} base id(s) in its header")
    if not c.is_delta:
        base = None
    elif c.bases == 2:
        base = (get_base(ids[0]), get_base(ids[1]))
    else:
        base = get_base(ids[0])
    out = c.decode(memoryview(payload)[h.body_offset:], lookup(h.dtype), h.raw_len, base)
    if out.size != h.raw_len:
        raise ValueError(f"decoded {out.size} bytes, header says {h.raw_len}")
    return out


def chain_level(h: BlockHeader, payload) -> Optional[tuple[int, int, list]]:
    """A delta block as one level of ``_kernels.chain``: ``(kind, width, planes)``, its planes
    still compressed; None for a block that is not a fused byte-planes delta (a keyframe, a
    lossy codec), which is decoded on its own. ValueError for a malformed block."""
    c = REGISTRY.get(h.codec)
    if not isinstance(c, _DeltaPlanes):
        return None
    if len(h.base_ids) != c.bases:
        raise ValueError(f"codec {h.codec} with {len(h.base_ids)} base id(s) in its header")
    width, frames = planes.frames(memoryview(payload)[h.body_offset:], h.raw_len)
    return c.kind, width, frames


def decode_chain(levels: list, base: np.ndarray, base2: Optional[np.ndarray],
                 raw_len: int) -> np.ndarray:
    """Decode ``levels`` (``chain_level`` tuples, bottom first, each a delta against the one
    below) on top of ``base`` (and ``base2``, the bottom's second base) in one call: the
    intermediate levels stay in this thread's scratch buffer, only the top is returned."""
    out = np.empty(raw_len, dtype=np.uint8)
    _kernels.chain(levels, base, base2, out, planes.scratch_for(raw_len, len(levels)))
    return out


# -- opt-in lossy codecs (registered so any stored block can be decoded) ----------------------
for _c in _lossy.BY_OPTION.values():
    register(_c)

LOSSY_OPTIONS = tuple(_lossy.BY_OPTION)


def encode_lossy_block(raw: np.ndarray, dtype: str, option: str, level: int,
                       base: np.ndarray, base_id: str, base_depth: int):
    """Encode with the lossy codec chosen by ``--lossy OPTION``; return
    ``(payload, decoded bytes, codec name, depth)``: the caller stores and hashes the decoded
    bytes, which is what every read will return."""
    c = _lossy.BY_OPTION[option]
    body, approx = c.approximate(raw, lookup(dtype), base, level)
    approx = np.ascontiguousarray(approx).view(np.uint8)
    return (pack_header(c.name, dtype, raw.size, base_depth + 1, base_id) + body, approx,
            c.name, base_depth + 1)
