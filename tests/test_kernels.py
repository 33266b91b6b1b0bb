"""The compiled kernels against their numpy oracle (corafs/codecs/reference.py): bit-exact for
every transform and width, special float values, odd lengths and unaligned buffers; and the
decoders fed truncated and mutated blocks raise a clear error, never crash (CI also runs this
file under AddressSanitizer: make test-asan)."""
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from corafs import codecs
from corafs.codecs import _kernels, planes
from corafs.codecs import reference as ref

KINDS = {planes.KEY: None, planes.XOR: ref.xor_delta, planes.SUB: ref.sub_delta,
         planes.SUB2: ref.sub2_delta}
UNDO = {planes.XOR: ref.xor_undo, planes.SUB: ref.sub_undo, planes.SUB2: ref.sub2_undo}

# bit patterns every width must carry exactly: NaN payloads (quiet, signalling, negative),
# signed zeros, infinities, denormals, extremes
SPECIAL = {
    1: [0x00, 0x80, 0x7F, 0xFF, 0x01, 0x81],
    2: [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E01, 0xFE01, 0x7D00, 0x0001, 0x8001, 0x7F80, 0xFF81,
        0x7FFF, 0xFFFF],
    4: [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00001, 0xFFC12345, 0x7F800001,
        0x00000001, 0x80000001, 0x007FFFFF, 0x7F7FFFFF, 0xFFFFFFFF],
    8: [0, 1 << 63, 0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000001,
        0xFFF8DEADBEEF0001, 0x7FF0000000000001, 1, (1 << 63) | 1, 0x000FFFFFFFFFFFFF,
        0xFFFFFFFFFFFFFFFF],
}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _unaligned(a: np.ndarray, offset: int) -> np.ndarray:
    """The same bytes at an address ``offset`` past an aligned one."""
    backing = np.zeros(a.nbytes + 16, dtype=np.uint8)
    out = backing[offset:offset + a.nbytes]
    out[:] = a.view(np.uint8)
    return out


@st.composite
def blocks(draw):
    """(width, kind, data, base, base2): uint8 arrays of n elements, random words mixed with
    special patterns and small steps (the deltas training makes), at any alignment."""
    w = draw(st.sampled_from([1, 2, 4, 8]))
    kind = draw(st.sampled_from(sorted(KINDS)))
    n = draw(st.integers(0, 300))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    info = np.iinfo(UINT[w])

    def words():
        a = rng.integers(0, int(info.max), n, dtype=UINT[w], endpoint=True)
        k = min(n, len(SPECIAL[w]))
        if k and draw(st.booleans()):
            a[rng.choice(n, k, replace=False)] = np.array(SPECIAL[w][:k], dtype=UINT[w])
        return a

    x = words()
    base = x + rng.integers(0, 3, n).astype(UINT[w]) if draw(st.booleans()) else words()
    base2 = words()
    offs = [draw(st.integers(0, 7)) for _ in range(3)]
    return (w, kind, _unaligned(x, offs[0]), _unaligned(base, offs[1]),
            _unaligned(base2, offs[2]))


def _ref_delta(kind, x, b, b2, w):
    if kind == planes.KEY:
        return x.copy()
    f = KINDS[kind]
    return f(x.copy(), (b.copy(), b2.copy()) if kind == planes.SUB2 else b.copy(), w)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_encode_matches_the_reference(case):
    w, kind, x, b, b2 = case
    out = np.empty(x.size, dtype=np.uint8)
    _kernels.encode(kind, w, x, b, b2, out)
    expected = ref.split(_ref_delta(kind, x, b, b2, w), w).reshape(-1)
    assert out.tobytes() == expected.tobytes()
    # the whole stored body too: the same bytes whichever implementation wrote them
    assert planes.encode(x, w, 1, kind, b, b2) == ref.planes_encode(
        _ref_delta(kind, x, b, b2, w), w, 1)


@pytest.mark.smoke
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks(), st.integers(0, 7))
def test_decode_inverts_encode_and_matches_the_reference(case, out_offset):
    w, kind, x, b, b2 = case
    body = planes.encode(x, w, 1, kind, b, b2)
    out = _unaligned(np.zeros(x.size, dtype=np.uint8), out_offset)
    assert planes.decode(body, x.size, out, kind, b, b2) is out
    assert out.tobytes() == x.tobytes()
    d = ref.planes_decode(body, x.size)
    back = d if kind == planes.KEY else UNDO[kind](
        d, (b.copy(), b2.copy()) if kind == planes.SUB2 else b.copy(), w)
    assert back.tobytes() == x.tobytes()


FLOATS = ["F64", "F32", "F16", "BF16", "F8_E4M3", "C64"]
DELTAS = ["xor-planes-zstd", "osub-planes-zstd", "osub2-planes-zstd"]


@pytest.mark.parametrize("dtype,codec", [(d, "planes-zstd") for d in FLOATS + ["I32", "U8",
                                                                               "BOOL"]] +
                         [(d, c) for d in FLOATS for c in DELTAS])
def test_every_codec_and_dtype_roundtrips_like_the_reference(dtype, codec):
    from corafs.dtypes import lookup
    dt = lookup(dtype)
    rng = np.random.default_rng(hash((dtype, codec)) % 2 ** 32)
    n = 3001 * dt.itemsize                          # odd element count
    raw = rng.integers(0, 256, n, dtype=np.uint8)
    base = raw.copy()
    base[::7] ^= 1
    base2 = base.copy()
    base2[::5] ^= 2
    w = codecs._width(dt, n)
    b = (base, base2) if codec == "osub2-planes-zstd" else base
    c = codecs.REGISTRY[codec]
    body = c.encode(raw, dt, b, 3)
    assert body == ref.encode_body(codec, raw, w, 3, b)
    assert c.decode(body, dt, n, b).tobytes() == raw.tobytes()
    assert ref.decode_body(codec, body, n, w, b).tobytes() == raw.tobytes()


# -- hostile input ----------------------------------------------------------------------------
def _decode_one(kind, w, planes_, base, base2, out):
    """One block through ``chain`` (a chain of one level), its planes given raw."""
    _kernels.chain([(kind, w, [(planes.RAW, x) for x in planes_])], base, base2, out,
                   np.empty(1 << 16, dtype=np.uint8))


def test_kernel_arguments_are_checked():
    p = np.zeros(4, dtype=np.uint8)
    out = np.zeros(16, dtype=np.uint8)
    for args in [(planes.KEY, 3, [p] * 3, None, None, np.zeros(12, dtype=np.uint8)),
                 (planes.KEY, 4, [p] * 3, None, None, out),           # too few planes
                 (planes.KEY, 4, [p, p, p, p[:3]], None, None, out),  # a short plane
                 (planes.KEY, 4, [p] * 4, None, None, out[:15]),      # short output
                 (planes.SUB, 4, [p] * 4, None, None, out),           # base missing
                 (planes.SUB, 4, [p] * 4, out[:8], None, out),        # short base
                 (planes.SUB2, 4, [p] * 4, out, None, out),           # second base missing
                 (9, 4, [p] * 4, None, None, out)]:                   # unknown kind
        with pytest.raises(ValueError):
            _decode_one(*args)
    with pytest.raises((ValueError, BufferError, TypeError)):
        _decode_one(planes.KEY, 4, [p] * 4, None, None, b"\0" * 16)   # read-only output
    with pytest.raises(ValueError):
        _kernels.encode(planes.KEY, 4, np.zeros(15, dtype=np.uint8), None, None,
                        np.zeros(15, dtype=np.uint8))
    with pytest.raises(ValueError):
        _kernels.encode(planes.XOR, 4, out, out[:12], None, out.copy())


def _blocks_to_damage():
    rng = np.random.default_rng(11)
    a = rng.standard_normal(5000).astype(np.float32)
    b = a + (rng.standard_normal(5000) * 1e-3).astype(np.float32)
    c = b + (rng.standard_normal(5000) * 1e-3).astype(np.float32)
    ra, rb, rc = (x.view(np.uint8) for x in (a, b, c))
    bases = {"b" * 32: rb, "c" * 32: rc}
    out = [codecs.encode_block(ra, "F32", 3)[0]]
    for codec in ("xor-planes-zstd", "osub-planes-zstd", "osub2-planes-zstd"):
        out.append(codecs.encode_block(ra, "F32", 3, rb, "b" * 32, 0, 8, codec=codec,
                                       base2=rc, base2_id="c" * 32)[0])
    return out, bases


def test_truncated_and_mutated_blocks_raise_clear_errors():
    """Stored bytes can be damaged: every prefix of a block and thousands of mutations either
    decode (a flip inside a raw plane is still a well-formed block: the object id check above
    the codec catches it) or raise an error the decoder turns into CorruptObject."""
    payloads, bases = _blocks_to_damage()
    rng = np.random.default_rng(5)

    def attempt(p):
        try:
            out = codecs.decode_block(p, lambda oid: bases[oid])
        except (ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError):
            return
        assert isinstance(out, np.ndarray)

    for p in payloads:
        h = codecs.parse_header(p)
        for cut in sorted({*range(0, h.body_offset + 64), *rng.integers(0, len(p), 200)}):
            attempt(p[:cut])
        for _ in range(1500):
            m = bytearray(p)
            for pos in rng.integers(0, len(m), rng.integers(1, 4)):
                m[pos] = rng.integers(0, 256)
            attempt(bytes(m))
        # lengths that claim more than there is, in each plane header
        body = bytearray(p)
        for j in range(4):
            pos = h.body_offset + 1
            m = bytearray(body)
            for _ in range(j):
                mode, ln = planes.PLANE.unpack_from(m, pos)
                pos += planes.PLANE.size + ln
            if pos + planes.PLANE.size <= len(m):
                planes.PLANE.pack_into(m, pos, planes.RAW, 2 ** 62)
                attempt(bytes(m))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12), st.integers(0, 7))
def test_builder_assembles_pieces_into_the_bytes_it_returns(pieces, skew):
    """What FileReader.read returns for a read spanning blocks: every piece copied once into
    the bytes object itself, from bytes, memoryviews and (unaligned) numpy slices alike."""
    b = _kernels.Builder(sum(map(len, pieces)))
    at = 0
    for k, p in enumerate(pieces):
        if k % 3 == 1:
            src = memoryview(p)
        elif k % 3 == 2:
            src = np.frombuffer(bytes(skew) + p, dtype=np.uint8)[skew:]
        else:
            src = p
        b.put(at, src)
        at += len(p)
    out = b.take()
    assert type(out) is bytes and out == b"".join(pieces)


def test_builder_refuses_what_does_not_fit_and_never_returns_unwritten_memory():
    b = _kernels.Builder(8)
    with pytest.raises(ValueError, match="do not fit"):
        b.put(5, b"abcd")
    with pytest.raises(ValueError, match="do not fit"):
        b.put(-1, b"a")
    with pytest.raises(ValueError, match="do not fit"):
        b.put(9, b"")
    b.put(0, b"abcd")
    with pytest.raises(ValueError, match="4 of 8 bytes were put"):
        b.take()
    b.put(4, b"efgh")
    assert b.take() == b"abcdefgh"
    with pytest.raises(ValueError, match="already taken"):
        b.take()
    with pytest.raises(ValueError, match="already taken"):
        b.put(0, b"x")
    with pytest.raises(ValueError):
        _kernels.Builder(-1)
    with pytest.raises(TypeError):
        _kernels.Builder(4).put(0, "not a buffer")
    assert _kernels.Builder(0).take() == b""


# -- chain(): a whole delta chain in one call ---------------------------------------------------
@st.composite
def chains(draw):
    """(width, versions, kinds, offset): versions oldest first (version 0 the bottom's second
    base, 1 its base, i+2 what level i decodes to), each a small step from the one before or
    random; the transform each level is stored with (level 0 may be a keyframe)."""
    w = draw(st.sampled_from([1, 2, 4, 8]))
    n = draw(st.integers(0, 200))
    levels = draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    info = np.iinfo(UINT[w])
    v = [rng.integers(0, int(info.max), n, dtype=UINT[w], endpoint=True)]
    k = min(n, len(SPECIAL[w]))
    if k:
        v[0][rng.choice(n, k, replace=False)] = np.array(SPECIAL[w][:k], dtype=UINT[w])
    for _ in range(levels + 1):
        step = rng.integers(0, 4, n).astype(UINT[w])
        v.append(v[-1] + step if draw(st.booleans()) else
                 rng.integers(0, int(info.max), n, dtype=UINT[w], endpoint=True))
    kinds = [draw(st.sampled_from([planes.KEY, planes.XOR, planes.SUB, planes.SUB2]))]
    kinds += [draw(st.sampled_from([planes.XOR, planes.SUB, planes.SUB2]))
              for _ in range(levels - 1)]
    return w, [a.view(np.uint8) for a in v], kinds, draw(st.integers(0, 7))


@pytest.mark.smoke
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_chain_decodes_like_the_levels_one_by_one(case):
    """Level i (stored against version i+1 and, second order, i) decoded on top of the one
    below equals the oracle's level-by-level decode, for every mix of transforms and widths,
    raw and zstd planes, with the top written to an unaligned buffer."""
    w, v, kinds, off = case
    base2, base = v[0], v[1]
    levels = []
    for i, kind in enumerate(kinds):
        x = v[i + 2]
        b, b2 = (v[i + 1], v[i]) if kind != planes.KEY else (None, None)
        body = planes.encode(x, w, 1, kind, b, b2)
        levels.append((kind,) + planes.frames(body, x.size))
        # the oracle: this level alone, against its own bases
        d = ref.planes_decode(body, x.size)
        back = d if kind == planes.KEY else UNDO[kind](
            d, (b.copy(), b2.copy()) if kind == planes.SUB2 else b.copy(), w)
        assert back.tobytes() == x.tobytes()
    top = v[len(kinds) + 1]
    out = _unaligned(np.zeros(top.size, dtype=np.uint8), off)
    first = kinds[0]
    needs_base = first != planes.KEY or (len(kinds) > 1 and kinds[1] == planes.SUB2)
    _kernels.chain(levels, base if needs_base else None,
                   base2 if first == planes.SUB2 else None, out,
                   planes.scratch_for(top.size, len(levels)))
    assert out.tobytes() == top.tobytes()


def test_chain_arguments_and_damaged_frames_raise_clear_errors():
    rng = np.random.default_rng(3)
    a = rng.standard_normal(4096).astype(np.float32).view(np.uint8)
    b = a.copy()
    b[::9] ^= 1
    c = b.copy()
    c[::5] ^= 2
    lv1 = (planes.SUB,) + planes.frames(planes.encode(b, 4, 1, planes.SUB, a), a.size)
    lv2 = (planes.SUB2,) + planes.frames(planes.encode(c, 4, 1, planes.SUB2, b, a), a.size)
    out = np.empty(a.size, dtype=np.uint8)
    sc = planes.scratch_for(a.size, 2)
    _kernels.chain([lv1, lv2], a, None, out, sc)
    assert out.tobytes() == c.tobytes()
    bad = [
        ([], a, None, out, sc),                                   # no level
        ([lv1, lv2], None, None, out, sc),                         # the bottom's base missing
        ([lv1, lv2], a[:-4], None, out, sc),                       # a short base
        ([lv1, lv2], a, None, out, sc[:a.size]),                   # scratch too small
        ([lv1, lv2], a, None, out[:-4], sc),                       # output of another length
        ([lv1, (planes.KEY,) + lv2[1:]], a, None, out, sc),         # a keyframe above the bottom
        ([(planes.SUB2,) + lv1[1:]], a, None, out, sc),            # second base missing
        ([(planes.SUB, 4, lv1[2][:3])], a, None, out, sc),         # too few planes
        ([(planes.SUB, 4, [(2, p) for _, p in lv1[2]])], a, None, out, sc),  # unknown mode
        ([(9, 4, lv1[2])], a, None, out, sc),                      # unknown kind
        ([("x", 4, lv1[2])], a, None, out, sc),                    # not a level
    ]
    for args in bad:
        with pytest.raises((ValueError, TypeError)):
            _kernels.chain(*args)
    # damaged zstd frames, truncated or mutated, at any level: a ValueError naming it
    zs = [j for j, (m, _) in enumerate(lv2[2]) if m == planes.ZSTD]
    assert zs
    for _ in range(300):
        j = zs[rng.integers(len(zs))]
        frame = bytearray(lv2[2][j][1])
        if rng.integers(2):
            frame = frame[:rng.integers(0, len(frame))]
        else:
            for pos in rng.integers(0, len(frame), rng.integers(1, 4)):
                frame[pos] = rng.integers(0, 256)
        pl = list(lv2[2])
        pl[j] = (planes.ZSTD, bytes(frame))
        try:
            _kernels.chain([lv1, (planes.SUB2, 4, pl)], a, None, out, sc)
        except ValueError as e:
            assert "level 1 plane" in str(e)
