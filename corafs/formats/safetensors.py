"""``.safetensors``: 8-byte little-endian header length, a JSON header, then tensor data.
The header bytes are kept verbatim (they are not re-serialized)."""
from __future__ import annotations

import json
import math
import struct

from ..dtypes import BY_NAME
from ..errors import UnsupportedFormat
from .layout import Layout, TensorSpan, View

MAX_HEADER = 100 << 20


def looks_like(head: bytes) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= MAX_HEADER and head[8:9] == b"{"


def _int(x) -> int:
    """A non-negative integer as JSON gives it (no floats, no Infinity, no bools)."""
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise ValueError(f"{x!r} is not a non-negative integer")
    return x


def parse(f, size: int) -> Layout:
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise UnsupportedFormat("safetensors", "file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or 8 + n > size:
        raise UnsupportedFormat("safetensors", f"header length {n} exceeds the file ({size} bytes)")
    raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UnsupportedFormat("safetensors", f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise UnsupportedFormat("safetensors", "header is not a JSON object")
    base = 8 + n
    data_len = size - base
    layout = Layout("safetensors", size)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            if not isinstance(dtype, str):
                raise TypeError("dtype is not a string")
            shape = tuple(_int(x) for x in info["shape"])
            b, e = (_int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise UnsupportedFormat("safetensors", f"bad header entry for {name!r}") from None
        if not (0 <= b <= e <= data_len):
            raise UnsupportedFormat(
                "safetensors", f"tensor {name!r} lies outside the file (truncated?)")
        dt = BY_NAME.get(dtype)
        if dt is not None and dtype not in ("C32",):
            want = math.prod(shape) * dt.itemsize
            if want != e - b:
                raise UnsupportedFormat(
                    "safetensors", f"tensor {name!r}: {e - b} bytes for {dtype}{list(shape)}")
        span = -1
        if e > b:
            layout.spans.append(TensorSpan(name, dtype, shape, base + b, e - b))
            span = len(layout.spans) - 1
        layout.views.append(View(name, dtype, shape, span))
    try:
        layout.sort_spans()
    except ValueError as e:
        raise UnsupportedFormat("safetensors", str(e)) from None
    return layout
