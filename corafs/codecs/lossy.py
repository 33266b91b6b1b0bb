"""Opt-in lossy delta codecs (``corafs commit --lossy NAME``). Never the default.

Each encodes ``new - base`` approximately. ``encode`` returns the body *and* the bytes that
decoding will return, so the caller stores and hashes what reads will give back (a lossy file's
recorded sha256 is that of the approximation). Decoding is deterministic: float32 arithmetic
in a fixed order, then a cast to the tensor's dtype."""
from __future__ import annotations

import dataclasses
import struct
from typing import ClassVar

import numpy as np

from ..dtypes import DType
from . import zstd
from .base import Codec

_F = struct.Struct("<f")
_I = struct.Struct("<I")


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return raw.view(np.float32).astype(np.float32)
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float32)
    if dtype == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"no lossy codec for {dtype}")


def from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        out = x.astype(np.float32)
    elif dtype == "F16":
        out = x.astype(np.float16)
    elif dtype == "BF16":
        u = x.astype(np.float32).view(np.uint32)
        # round to nearest even, keep NaNs NaN
        r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
        out = r.astype(np.uint16)
        nan = np.isnan(x)
        out[nan] = (u[nan] >> np.uint32(16)).astype(np.uint16) | np.uint16(0x40)
    else:
        raise ValueError(dtype)
    return out.view(np.uint8)


#: float64 is left lossless: a float32 detour would change the untouched values too
LOSSY_DTYPES = {"F32", "F16", "BF16"}


@dataclasses.dataclass(frozen=True)
class _Lossy(Codec):
    is_delta: ClassVar[bool] = True
    lossy: ClassVar[bool] = True

    def approximate(self, raw: np.ndarray, dt: DType, base: np.ndarray, level: int):
        """(body, decoded bytes)."""
        body = self._encode(to_f32(raw, dt.name), to_f32(base, dt.name), level)
        return body, self.decode(body, dt, raw.size, base)

    def encode(self, raw, dt, base, level):
        return self.approximate(raw, dt, base, level)[0]

    def decode(self, body, dt, raw_len, base):
        b = to_f32(base, dt.name)
        return from_f32(b + self._delta(memoryview(body), b.size), dt.name).copy()


@dataclasses.dataclass(frozen=True)
class QuantDelta(_Lossy):
    """Delta quantized to signed integers with one float32 scale per block."""

    bits: int = 8

    @property
    def name(self):  # type: ignore[override]
        return f"lossy-int{self.bits}-delta"

    def _encode(self, new, base, level):
        d = new - base
        d[~np.isfinite(d)] = 0
        top = (1 << (self.bits - 1)) - 1
        m = float(np.max(np.abs(d))) if d.size else 0.0
        scale = np.float32(m / top if m > 0 else 1.0)
        q = np.rint(d / scale).clip(-top, top).astype(np.int8 if self.bits == 8 else np.int16)
        return _F.pack(scale) + zstd.compress(q, level)

    def _delta(self, body, n):
        (scale,) = _F.unpack_from(body)
        t = np.int8 if self.bits == 8 else np.int16
        q = np.frombuffer(zstd.decompress(body[4:], n * np.dtype(t).itemsize), dtype=t)
        return q.astype(np.float32) * np.float32(scale)


@dataclasses.dataclass(frozen=True)
class SparseDelta(_Lossy):
    """Only the largest ``density`` fraction of the changes are kept (exactly, as float32)."""

    density: float = 0.05
    name: ClassVar[str] = "lossy-sparse-delta"

    def _encode(self, new, base, level):
        d = new - base
        d[~np.isfinite(d)] = 0
        k = int(np.ceil(d.size * self.density)) if d.size else 0
        idx = np.sort(np.argpartition(np.abs(d), d.size - k)[d.size - k:]) if k else np.empty(0, np.int64)
        idx = idx.astype(np.uint32)
        gaps = np.diff(idx, prepend=np.uint32(0)).astype(np.uint32)
        zi = zstd.compress(gaps, level)
        zv = zstd.compress(d[idx].astype(np.float32), level)
        return _I.pack(k) + _I.pack(len(zi)) + zi + zv

    def _delta(self, body, n):
        (k,) = _I.unpack_from(body)
        (li,) = _I.unpack_from(body, 4)
        gaps = np.frombuffer(zstd.decompress(body[8:8 + li], 4 * k), dtype=np.uint32)
        vals = np.frombuffer(zstd.decompress(body[8 + li:], 4 * k), dtype=np.float32)
        out = np.zeros(n, dtype=np.float32)
        out[np.cumsum(gaps, dtype=np.uint64).astype(np.int64)] = vals
        return out


@dataclasses.dataclass(frozen=True)
class SignPerAxis(_Lossy):
    """1-bit signs of the change with one scale (mean |change|) per group of ``group`` values
    (a row of the tensor when rows divide the block)."""

    group: int = 256
    name: ClassVar[str] = "lossy-sign-per-axis"

    def _encode(self, new, base, level):
        d = new - base
        d[~np.isfinite(d)] = 0
        g = self.group
        n = d.size
        pad = (-n) % g
        dp = np.concatenate([d, np.zeros(pad, np.float32)]).reshape(-1, g)
        scales = np.abs(dp).mean(axis=1).astype(np.float32)
        signs = np.packbits(dp >= 0)
        return (_I.pack(g) + _I.pack(scales.size) + scales.tobytes()
                + zstd.compress(signs, level))

    def _delta(self, body, n):
        (g,) = _I.unpack_from(body)
        (rows,) = _I.unpack_from(body, 4)
        scales = np.frombuffer(body[8:8 + 4 * rows], dtype=np.float32)
        bits = np.frombuffer(zstd.decompress(body[8 + 4 * rows:], (rows * g + 7) // 8), np.uint8)
        s = np.unpackbits(bits)[:rows * g].astype(np.float32) * 2 - 1
        return (s.reshape(rows, g) * scales[:, None]).reshape(-1)[:n]


INT8 = QuantDelta(8)
INT16 = QuantDelta(16)
SPARSE = SparseDelta()
PER_AXIS = SignPerAxis()

#: ``--lossy`` choice -> codec
BY_OPTION = {"int8": INT8, "int16": INT16, "sparse": SPARSE, "per-axis": PER_AXIS}
