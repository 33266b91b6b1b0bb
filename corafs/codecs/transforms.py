"""Bit-exact delta transforms on float bit patterns. Everything is unsigned modular arithmetic,
so each transform is a bijection: NaN payloads, -0.0, infinities and denormals come back exact."""
from __future__ import annotations

import numpy as np

UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
SINT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def lanes(buf: np.ndarray, width: int) -> np.ndarray:
    return buf.view(UINT[width])


def _ordered(u: np.ndarray, width: int) -> np.ndarray:
    """Map sign-magnitude float bits to integers that sort like the floats (new array)."""
    bits = width * 8
    sign_bit = UINT[width](1 << (bits - 1))
    mask = np.negative(u >> UINT[width](bits - 1))
    mask |= sign_bit
    return np.bitwise_xor(u, mask, out=mask)


def _unordered(m: np.ndarray, width: int) -> np.ndarray:
    """Inverse of ``_ordered``, in place."""
    bits = width * 8
    sign_bit = UINT[width](1 << (bits - 1))
    mask = m >> UINT[width](bits - 1)
    mask -= UINT[width](1)
    mask |= sign_bit
    np.bitwise_xor(m, mask, out=m)
    return m


def xor_delta(new: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    return np.bitwise_xor(lanes(new, width), lanes(base, width)).view(np.uint8)


def xor_undo(delta: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    np.bitwise_xor(lanes(delta, width), lanes(base, width), out=lanes(delta, width))
    return delta


def sub_delta(new: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """zigzag(ordered(new) - ordered(base)): small float updates become small integers."""
    d = _ordered(lanes(new, width), width)
    d -= _ordered(lanes(base, width), width)
    bits = width * 8
    sign = (d.view(SINT[width]) >> (bits - 1)).view(UINT[width])
    d <<= UINT[width](1)
    d ^= sign
    return d.view(np.uint8)


def sub_undo(delta: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    z = lanes(delta, width)
    neg = np.negative(z & UINT[width](1))
    z >>= UINT[width](1)
    z ^= neg
    z += _ordered(lanes(base, width), width)
    _unordered(z, width)
    return delta
