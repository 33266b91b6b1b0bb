"""The numpy reference of the codec arithmetic: the test oracle of the compiled kernels
(``_kernels.c``), not a runtime path. Bit-exact delta transforms on float bit patterns, and
byte-plane split, merge, encode and decode. Everything is unsigned modular arithmetic, so each
transform is a bijection: NaN payloads, -0.0, infinities and denormals come back exact.

The kernels must produce the same bytes as these functions for every input (property tests in
``tests/test_kernels.py``); a block encoded by either decodes with either."""
from __future__ import annotations

import threading

import numpy as np

from . import zstd
from .planes import PLANE, ZSTD, pack

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
    """Inverse of ``sub_delta``."""
    return _undo_ordered(delta, _ordered_of(base, width), width)


# A delta chain decodes one level after the other in one thread: each level's result is the
# next level's base (and, second order, the one after's second base). The ordered form of a
# result is made on the way to it (it is the sum before the final map), so the last two are
# kept here per thread instead of being mapped out of the result again (three passes over
# the block per base: a quarter of decoding an 8-level fp32 chain).
_recent = threading.local()
_KEEP = 2


def _ordered_of(base: np.ndarray, width: int, kept: bool = True) -> np.ndarray:
    """``base`` in ordered form: with ``kept`` (decoding), the one kept when ``base`` is a
    recent result of this thread (read-only: callers never write into it); else computed."""
    if kept:
        for arr, ordered in getattr(_recent, "kept", ()):
            if arr is base and ordered.dtype.itemsize == width:
                return ordered
    return _ordered(lanes(base, width), width)


def _keep(result: np.ndarray, ordered: np.ndarray) -> None:
    kept = getattr(_recent, "kept", None)
    if kept is None:
        kept = _recent.kept = []
    kept.append((result, ordered))
    del kept[:-_KEEP]


def _undo_ordered(delta: np.ndarray, ob: np.ndarray, width: int) -> np.ndarray:
    """``sub_undo`` given the base in ordered form (``ob``, signed; not written). Returns a
    new array; the delta's buffer ends up holding the result's ordered form, kept for the next
    level of the chain."""
    z = lanes(delta, width)
    tmp = np.bitwise_and(z, UINT[width](1))
    np.negative(tmp, out=tmp)                              # 0 or all ones
    np.right_shift(z, UINT[width](1), out=z)
    np.bitwise_xor(z, tmp, out=z)
    zi = z.view(SINT[width])
    np.add(zi, ob, out=zi)                                 # the result, in ordered form
    # the map is its own inverse: out of ordered form into a new array (tmp's memory)
    mask = tmp.view(SINT[width])
    np.right_shift(zi, width * 8 - 1, out=mask)
    np.bitwise_and(mask, SINT[width](np.iinfo(SINT[width]).max), out=mask)
    np.bitwise_xor(zi, mask, out=mask)
    result = mask.view(np.uint8)
    _keep(result, zi)
    return result


def _predict2_ordered(base: np.ndarray, base2: np.ndarray, width: int,
                      kept: bool = False) -> np.ndarray:
    """2*ordered(base) - ordered(base2) (modular): the extrapolation, in ordered form (a new
    array). ``kept``: decoding, where the bases are this thread's recent results."""
    p = np.left_shift(_ordered_of(base, width, kept), 1)
    np.subtract(p, _ordered_of(base2, width, kept), out=p)
    return p


def _predict2(base: np.ndarray, base2: np.ndarray, width: int) -> np.ndarray:
    """Linear extrapolation in ordered-integer space: 2*ordered(base) - ordered(base2)
    (modular), returned as unsigned float bits to subtract against (encoding: computed from
    the bases' bytes, never from kept forms)."""
    p = _predict2_ordered(base, base2, width)
    return _ordered(p.view(UINT[width]), width).view(UINT[width]).view(np.uint8)


def sub2_delta(new: np.ndarray, bases: tuple, width: int) -> np.ndarray:
    """Second-order residual: new against the extrapolation of its two predecessors."""
    return sub_delta(new, _predict2(bases[0], bases[1], width), width)


def sub2_undo(delta: np.ndarray, bases: tuple, width: int) -> np.ndarray:
    # the extrapolation stays in ordered form: mapping it out and back (two involutions,
    # six passes over the block) cancels
    return _undo_ordered(delta, _predict2_ordered(bases[0], bases[1], width, kept=True), width)


# -- byte planes ------------------------------------------------------------------------------------
def split(buf, width: int) -> np.ndarray:
    """Planes as the rows of a (width, n) array."""
    a = np.frombuffer(buf, dtype=np.uint8)
    if width == 1:
        return a.reshape(1, -1)
    return a.reshape(-1, width).T.copy()


def merge(planes_: list, width: int) -> np.ndarray:
    """The inverse of ``split``: interleave ``width`` planes of n bytes."""
    n = len(planes_[0]) if planes_ else 0
    out = np.empty(n * width, dtype=np.uint8)
    grid = out.reshape(-1, width)
    for j, p in enumerate(planes_):
        grid[:, j] = np.frombuffer(p, dtype=np.uint8)
    return out


def planes_encode(buf, width: int, level: int) -> bytes:
    """The stored planes body of ``buf`` (the framing and zstd are shared with the runtime:
    ``planes.pack``; what the oracle checks is the split)."""
    return pack(list(split(buf, width)), level)


def planes_decode(body, raw_len: int) -> np.ndarray:
    mv = memoryview(body)
    width = mv[0]
    n = raw_len // width
    pos, got = 1, []
    for _ in range(width):
        mode, ln = PLANE.unpack_from(mv, pos)
        pos += PLANE.size
        chunk = mv[pos:pos + ln]
        pos += ln
        got.append(zstd.decompress(chunk, n) if mode == ZSTD else bytes(chunk))
    return merge(got, width)


#: the transform of each delta codec: (forward, inverse)
TRANSFORMS = {"xor-planes-zstd": (xor_delta, xor_undo),
              "osub-planes-zstd": (sub_delta, sub_undo),
              "osub2-planes-zstd": (sub2_delta, sub2_undo)}


def encode_body(codec: str, raw: np.ndarray, width: int, level: int, base=None) -> bytes:
    """A codec's body as the reference computes it (``base``: a block, or the pair of
    blocks for the second-order codec)."""
    if codec == "planes-zstd":
        return planes_encode(raw, width, level)
    fwd, _inv = TRANSFORMS[codec]
    return planes_encode(fwd(raw, base, width), width, level)


def decode_body(codec: str, body, raw_len: int, width: int, base=None) -> np.ndarray:
    d = planes_decode(body, raw_len)
    if codec == "planes-zstd":
        return d
    _fwd, inv = TRANSFORMS[codec]
    return inv(d, base, width)
