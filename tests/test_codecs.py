"""Every codec round-trips bit-exactly: dtypes, shapes, NaN payloads, +-Inf, -0.0, denormals,
empty tensors."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from corafs import codecs
from corafs.codecs import reference as transforms

WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
         "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
SPECIAL = {
    8: [0x7FF8000000000001, 0xFFF0000000000000, 0x7FF0000000000000, 0x8000000000000000,
        0x0000000000000001, 0x800FFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF],
    4: [0x7FC00001, 0xFF800000, 0x7F800000, 0x80000000, 0x00000001, 0x807FFFFF, 0xFFFFFFFF],
    2: [0x7E01, 0xFC00, 0x7C00, 0x8000, 0x0001, 0x83FF, 0xFFFF, 0x7F81],
    1: [0x7F, 0xFF, 0x80, 0x00, 0x01, 0xFE],
}
CODECS = ["raw", "zstd", "planes-zstd", "xor-planes-zstd", "osub-planes-zstd", "osub2-planes-zstd"]


def _arrays(dtype, n, seed, specials):
    w = WIDTH[dtype]
    rng = np.random.default_rng(seed)
    uint = transforms.UINT[w]
    base = rng.integers(0, np.iinfo(uint).max, n, dtype=uint, endpoint=True)
    if dtype in ("F32", "F64", "F16"):
        f = {"F32": np.float32, "F64": np.float64, "F16": np.float16}[dtype]
        vals = rng.standard_normal(n).astype(f)
        base = vals.view(uint).copy()
        new = (vals + (rng.standard_normal(n) * 1e-3).astype(f)).view(uint).copy()
    else:
        new = base ^ rng.integers(0, 4, n, dtype=uint)
    if specials and n:
        sp = np.array(SPECIAL[w], dtype=uint)
        k = min(n, sp.size)
        new[:k] = sp[:k]
        base[-k:] = sp[::-1][:k]
    return new.view(np.uint8), base.view(np.uint8)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(sorted(WIDTH)), n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1),
       specials=st.booleans(), codec=st.sampled_from(CODECS + [None]))
@pytest.mark.smoke
def test_block_roundtrip_bit_exact(dtype, n, seed, specials, codec):
    new, base = _arrays(dtype, n, seed, specials)
    base2 = _arrays(dtype, n, seed + 1, specials)[1]
    if codec in ("xor-planes-zstd", "osub-planes-zstd", "osub2-planes-zstd") and n == 0:
        codec = None
    payload, used, depth = codecs.encode_block(new, dtype, 3, base, "b" * 32, 0, 8, codec=codec,
                                               base2=base2, base2_id="c" * 32)
    out = codecs.decode_block(payload, lambda oid: base if oid == "b" * 32 else base2)
    assert out.tobytes() == new.tobytes()
    assert depth == (1 if codecs.REGISTRY[used].is_delta else 0)


@pytest.mark.parametrize("w", [1, 2, 4, 8])
@pytest.mark.smoke
def test_transforms_are_bijections(w):
    rng = np.random.default_rng(w)
    uint = transforms.UINT[w]
    a = rng.integers(0, np.iinfo(uint).max, 5000, dtype=uint, endpoint=True)
    b = rng.integers(0, np.iinfo(uint).max, 5000, dtype=uint, endpoint=True)
    a[:len(SPECIAL[w])] = SPECIAL[w]
    for fwd, inv in ((transforms.xor_delta, transforms.xor_undo),
                     (transforms.sub_delta, transforms.sub_undo)):
        d = fwd(a.view(np.uint8), b.view(np.uint8), w)
        back = inv(d.copy(), b.view(np.uint8), w)
        assert back.tobytes() == a.tobytes()
    c = rng.integers(0, np.iinfo(uint).max, 5000, dtype=uint, endpoint=True)
    d = transforms.sub2_delta(a.view(np.uint8), (b.view(np.uint8), c.view(np.uint8)), w)
    back = transforms.sub2_undo(d.copy(), (b.view(np.uint8), c.view(np.uint8)), w)
    assert back.tobytes() == a.tobytes()


def test_ordered_map_is_monotonic():
    x = np.array([-np.inf, -3.0, -1e-30, -0.0, 0.0, 1e-45, 2.0, np.inf], dtype=np.float32)
    m = transforms._ordered(x.view(np.uint32), 4)
    assert np.all(np.diff(m.astype(np.int64)) > 0)
    assert np.array_equal(transforms._ordered(m.view(np.uint32), 4).view(np.uint32),
                          x.view(np.uint32))           # an involution


def test_delta_beats_keyframe_on_small_updates():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(1 << 18).astype(np.float32)
    w2 = (w + rng.standard_normal(w.size).astype(np.float32) * 1e-4).astype(np.float32)
    key, _, _ = codecs.encode_block(w2.view(np.uint8), "F32", 3)
    delta, used, _ = codecs.encode_block(w2.view(np.uint8), "F32", 3, w.view(np.uint8), "x" * 32)
    assert codecs.REGISTRY[used].is_delta and len(delta) < 0.8 * len(key)


def test_depth_bound_forces_keyframe():
    a = np.arange(1000, dtype=np.float32)
    b = a + 1
    _, used, depth = codecs.encode_block(b.view(np.uint8), "F32", 3, a.view(np.uint8), "x" * 32,
                                         base_depth=8, max_depth=8)
    assert depth == 0 and not codecs.REGISTRY[used].is_delta


class _Flip:
    """Fault injection: a store wrapper that flips one byte of one object."""

    def __init__(self, inner, oid, pos):
        self.inner, self.oid, self.pos = inner, oid, pos

    def get(self, oid):
        data = bytearray(self.inner.get(oid))
        if oid == self.oid:
            data[self.pos] ^= 0xFF
        return bytes(data)

    read_block = get            # what the decoder reads blocks with


@pytest.mark.parametrize("pos", [-5, 40, 3])
@pytest.mark.smoke
def test_corrupt_block_detected(repo, work, pos):
    import safetensors.numpy
    from corafs.core.reader import BlockCache, Decoder
    from corafs.errors import CorruptObject
    rng = np.random.default_rng(0)
    safetensors.numpy.save_file({"w": rng.standard_normal((300, 300)).astype(np.float32)},
                                str(work / "a.safetensors"))
    repo.commit("main", {"a.safetensors": str(work / "a.safetensors")})
    m = repo.get_meta(repo.entry(repo.head("main"), "a.safetensors")["id"])
    oid = m["extents"]["obj"][1]
    dec = Decoder(_Flip(repo.store, oid, pos), BlockCache(1 << 20))
    with pytest.raises(CorruptObject) as e:
        dec.raw(oid)
    assert e.value.oid == oid


def _history_chain(tmp_path, work):
    """A repository with one fp32 tensor committed 6 times head-first; the oldest version's
    first block and the chain of blocks below it, top first (each a fused-planes delta)."""
    import safetensors.numpy
    from corafs import Repository
    from tests.conftest import SMALL
    r = Repository.init(str(tmp_path / "r"), tuning=SMALL)
    r.background_reencode = False
    rng = np.random.default_rng(1)
    w = rng.standard_normal(64 << 8).astype(np.float32)
    for _ in range(6):
        w = w + (rng.standard_normal(w.size) * 1e-4).astype(np.float32)
        safetensors.numpy.save_file({"w": w}, str(work / "m.safetensors"))
        r.commit("main", {"m.safetensors": str(work / "m.safetensors")})
        r.reencode()
    t = r.get_meta(r.entry(r.resolve("main~5"), "m.safetensors")["id"])["tensors"][0]
    chain = [r.tensor_manifest(t["id"])["blocks"][0][0]]
    while codecs.chain_level(r.block_header(chain[-1]), r.store.read_block(chain[-1])):
        chain.append(r.block_header(chain[-1]).base_ids[0])
    return r, chain[:-1]                 # the keyframe below is not part of the chain


def test_a_chain_decodes_in_one_call_and_only_its_top_is_cached(tmp_path, work):
    from corafs.core.reader import BlockCache, Decoder
    r, chain = _history_chain(tmp_path, work)
    assert len(chain) >= 3
    expected = r.decoder.raw(chain[0]).tobytes()
    dec = Decoder(r.store, BlockCache(64 << 20))
    assert dec.raw(chain[0]).tobytes() == expected
    assert dec.decoded == len(chain) + 1                 # every level and the keyframe
    assert dec.cache.contains(chain[0]) and not any(dec.cache.contains(o) for o in chain[1:])
    # a version above a cached one decodes from there
    dec2 = Decoder(r.store, BlockCache(64 << 20))
    dec2.raw(chain[1])
    before = dec2.decoded
    assert dec2.raw(chain[0]).tobytes() == expected and dec2.decoded == before + 1
    r.close()


@pytest.mark.parametrize("where", ["raw plane", "zstd frame"])
def test_a_damaged_level_inside_a_chain_is_named(tmp_path, work, where):
    """A level in the middle of a chain holding wrong bytes (a flip inside a raw plane decodes
    without error) or a damaged zstd frame: the top's check fails and the level-by-level
    decode names the damaged block, not the one read."""
    from corafs.codecs import planes
    from corafs.core.reader import BlockCache, Decoder
    from corafs.errors import CorruptObject
    r, chain = _history_chain(tmp_path, work)
    victim = chain[1]
    payload = r.store.read_block(victim)
    h = codecs.parse_header(payload)
    _w, frames = planes.frames(memoryview(payload)[h.body_offset:], h.raw_len)
    want = planes.RAW if where == "raw plane" else planes.ZSTD
    j = next(j for j, (m, _) in enumerate(frames) if m == want)
    # the middle of plane j in the payload: walk the body layout
    pos = h.body_offset + 1
    for k in range(j):
        pos += planes.PLANE.size + planes.PLANE.unpack_from(payload, pos)[1]
    pos += planes.PLANE.size + planes.PLANE.unpack_from(payload, pos)[1] // 2
    dec = Decoder(_Flip(r.store, victim, pos), BlockCache(64 << 20))
    with pytest.raises(CorruptObject) as e:
        dec.raw(chain[0])
    assert e.value.oid == victim
    r.close()


@pytest.mark.parametrize("width", [1, 2, 4, 8])
@pytest.mark.parametrize("misaligned", [False, True])
@pytest.mark.parametrize("compressible", [False, True])
def test_planes_decode_into_any_buffer(width, misaligned, compressible):
    """Planes come back interleaved byte-exact: word-wise for width 2 into an aligned buffer,
    strided otherwise (other widths, an output not aligned to 2), from zstd or raw planes."""
    from corafs.codecs import planes
    rng = np.random.default_rng(width)
    n = 4099
    data = rng.integers(0, 256 if not compressible else 3, n * width, dtype=np.uint8)
    data[:width] = 0xFF                            # all-ones and zero lanes at the ends
    data[-width:] = 0
    body = planes.encode(data, width, 3)
    backing = np.zeros(n * width + 1, dtype=np.uint8)
    out = backing[1:] if misaligned else backing[:-1]
    assert planes.decode(body, data.size, out) is out
    assert out.tobytes() == data.tobytes()
    assert planes.decode(body, data.size).tobytes() == data.tobytes()


@pytest.mark.parametrize("codec", ["osub-planes-zstd", "osub2-planes-zstd"])
def test_a_delta_chain_decodes_bit_exact_with_kernels_and_reference(codec):
    """A head-first chain (each version a delta against its successor and, second order, the
    successor's base) decodes bit-exact level by level, special values included, and the
    numpy reference decodes the same payloads to the same bytes."""
    rng = np.random.default_rng(7)
    n = 20000
    versions = [rng.standard_normal(n).astype(np.float32)]
    for _ in range(8):
        versions.append(versions[-1] + (rng.standard_normal(n) * 1e-3).astype(np.float32))
    for v in versions:
        v.view(np.uint32)[:len(SPECIAL[4])] = SPECIAL[4]
    raw = [v.view(np.uint8) for v in versions]
    payloads = {}
    for i in range(len(raw) - 2, -1, -1):
        payloads[i] = codecs.encode_block(raw[i], "F32", 3, raw[i + 1], f"{i + 1:032d}", 0, 8,
                                          codec=codec, base2=raw[min(i + 2, len(raw) - 1)],
                                          base2_id=f"{min(i + 2, len(raw) - 1):032d}")[0]
    decoded = {len(raw) - 1: raw[-1]}
    for i in range(len(raw) - 2, -1, -1):
        decoded[i] = codecs.decode_block(payloads[i], lambda oid: decoded[int(oid)])
        assert decoded[i].tobytes() == raw[i].tobytes(), i
        h = codecs.parse_header(payloads[i])
        ids = [int(x) for x in h.base_ids]
        base = raw[ids[0]] if len(ids) == 1 else (raw[ids[0]], raw[ids[1]])
        ref = transforms.decode_body(codec, memoryview(payloads[i])[h.body_offset:], n * 4, 4,
                                     base)
        assert ref.tobytes() == raw[i].tobytes(), i


def test_prefetch_queues_an_object_once_and_never_waits_on_one_in_flight(tmp_path, work):
    """A reader asks for overlapping windows ahead: an object already queued, being decoded or
    cached is not queued again, and a prefetch task whose object another thread is decoding
    moves on instead of waiting for it (workers that did waited on each other, one decoding)."""
    from concurrent.futures import Future
    from corafs.core.reader import BlockCache, Decoder
    r, chain = _history_chain(tmp_path, work)

    class Pool:
        def __init__(self):
            self.tasks = []

        def submit(self, fn, *a):
            self.tasks.append((fn, a))

    dec = Decoder(r.store, BlockCache(64 << 20))
    pool = Pool()
    dec.prefetch(pool, chain[:2])
    dec.prefetch(pool, chain[:3] + chain[:1])
    assert sorted(o for _fn, (g,) in pool.tasks for o in g) == sorted(chain[:3])
    # chain[0] is being decoded by another thread: its task returns at once
    dec._inflight[chain[0]] = Future()
    fn, args = next(t for t in pool.tasks if t[1][0] == [chain[0]])
    done = threading.Event()
    t = threading.Thread(target=lambda: (fn(*args), done.set()))
    t.start()
    assert done.wait(10), "the prefetch task waited on an object in flight elsewhere"
    del dec._inflight[chain[0]]
    for fn, args in pool.tasks:
        fn(*args)
    assert all(dec.cache.contains(o) for o in chain[1:3]) and not dec._queued
    dec.prefetch(pool, chain[1:3])              # cached now: nothing more is queued
    assert len(pool.tasks) == 3
    r.close()
