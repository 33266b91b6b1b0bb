"""Bit-exact delta transforms on float bit patterns. Everything is unsigned modular arithmetic,
so each transform is a bijection: NaN payloads, -0.0, infinities and denormals come back exact."""
from __future__ import annotations

import numpy as np

UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
SINT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def lanes(buf: np.ndarray, width: int) -> np.ndarray:
    return buf.view(UINT[width])


def _ordered(u: np.ndarray, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Map sign-magnitude float bits to two's-complement integers that sort like the floats:
    negative values get their magnitude bits flipped. An involution (its own inverse); three
    in-place passes. Returns a signed view."""
    i = u.view(SINT[width])
    if out is None:
        out = np.empty_like(i)
    np.right_shift(i, width * 8 - 1, out=out)            # -1 for negatives, 0 otherwise
    np.bitwise_and(out, SINT[width](np.iinfo(SINT[width]).max), out=out)
    np.bitwise_xor(i, out, out=out)
    return out


def xor_delta(new: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    return np.bitwise_xor(lanes(new, width), lanes(base, width)).view(np.uint8)


def xor_undo(delta: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    np.bitwise_xor(lanes(delta, width), lanes(base, width), out=lanes(delta, width))
    return delta


def sub_delta(new: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """zigzag(ordered(new) - ordered(base)): small float updates become small integers."""
    d = _ordered(lanes(new, width), width)
    tmp = _ordered(lanes(base, width), width)
    np.subtract(d, tmp, out=d)                             # wraps: modular arithmetic
    np.right_shift(d, width * 8 - 1, out=tmp)              # sign spread
    np.left_shift(d, 1, out=d)
    np.bitwise_xor(d, tmp, out=d)
    return d.view(np.uint8)


def sub_undo(delta: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """Inverse of ``sub_delta``, in place on ``delta``."""
    return _undo_ordered(delta, _ordered(lanes(base, width), width), width)


def _undo_ordered(delta: np.ndarray, ob: np.ndarray, width: int) -> np.ndarray:
    """``sub_undo`` given the base already in ordered form (``ob``, signed; overwritten)."""
    z = lanes(delta, width)
    tmp = np.bitwise_and(z, UINT[width](1))
    np.negative(tmp, out=tmp)                              # 0 or all ones
    np.right_shift(z, UINT[width](1), out=z)
    np.bitwise_xor(z, tmp, out=z)
    zi = z.view(SINT[width])
    np.add(zi, ob, out=zi)
    # the map is its own inverse; applied in place with the mask in ob
    np.right_shift(zi, width * 8 - 1, out=ob)
    np.bitwise_and(ob, SINT[width](np.iinfo(SINT[width]).max), out=ob)
    np.bitwise_xor(zi, ob, out=zi)
    return delta


def _predict2_ordered(base: np.ndarray, base2: np.ndarray, width: int) -> np.ndarray:
    """2*ordered(base) - ordered(base2) (modular): the extrapolation, in ordered form."""
    p = _ordered(lanes(base, width), width)
    q = _ordered(lanes(base2, width), width)
    np.left_shift(p, 1, out=p)
    np.subtract(p, q, out=p)
    return p


def _predict2(base: np.ndarray, base2: np.ndarray, width: int) -> np.ndarray:
    """Linear extrapolation in ordered-integer space: 2*ordered(base) - ordered(base2)
    (modular), returned as unsigned float bits to subtract against."""
    p = _predict2_ordered(base, base2, width)
    return _ordered(p.view(UINT[width]), width).view(UINT[width]).view(np.uint8)


def sub2_delta(new: np.ndarray, bases: tuple, width: int) -> np.ndarray:
    """Second-order residual: new against the extrapolation of its two predecessors."""
    return sub_delta(new, _predict2(bases[0], bases[1], width), width)


def sub2_undo(delta: np.ndarray, bases: tuple, width: int) -> np.ndarray:
    # the extrapolation stays in ordered form: mapping it out and back (two involutions,
    # six passes over the block) cancels
    return _undo_ordered(delta, _predict2_ordered(bases[0], bases[1], width), width)
