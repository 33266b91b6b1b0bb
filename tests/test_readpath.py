"""The read path of the newest version (issue 9, items 3 and 4): read plans from the recipe,
read-ahead along them, pack layout in read order, direct (O_DIRECT) block reads into huge
pages. All without FUSE; the mount tests read through the same code."""
import dataclasses
import os

import numpy as np
import pytest
import safetensors.numpy
import torch

from conftest import SMALL, sha256_bytes, sha256_file
from corafs import Repository
from corafs.core.reader import FileReader, ReadAhead, read_plan


def _covers(plan, size):
    """The plan's ranges tile [0, size) exactly."""
    assert sum(b - a for a, b in plan) == size
    edges = sorted(plan)
    assert edges[0][0] == 0 and edges[-1][1] == size
    assert all(edges[i][1] == edges[i + 1][0] for i in range(len(edges) - 1))


def _pth(path, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {f"layer{i}.weight": torch.randn(64, 256, generator=g) for i in range(n)}
    torch.save(sd, str(path))
    return sd


def _safetensors(path, n=6, seed=0, rows=64):
    rng = np.random.default_rng(seed)
    t = {f"layer{i}.weight": rng.standard_normal((rows, 256), dtype=np.float32)
         for i in range(n)}
    safetensors.numpy.save_file(t, str(path))
    return t


def _manifest(repo, spec):
    _cid, _path, e = repo.resolve_path(spec)
    return repo.get_meta(e["id"])


def test_pth_plan_reads_the_zip_directory_then_the_pickle_then_records_in_order(repo, work):
    p = work / "m.pth"
    _pth(p)
    repo.commit("main", {"m.pth": str(p)})
    m = _manifest(repo, "main:m.pth")
    size = int(m["size"])
    plan = read_plan(m, size)
    _covers(plan, size)
    offs = sorted(int(t["offset"]) for t in m["tensors"])
    data_end = max(int(t["offset"]) + int(t["nbytes"]) for t in m["tensors"])
    assert plan[0] == (data_end, size)            # zip directory (torch.load reads it first)
    assert plan[1] == (0, offs[0])                 # data.pkl and the zip headers before it
    assert [a for a, _b in plan[2:]] == offs       # then every record, in file order


def test_safetensors_plan_is_header_then_tensors(repo, work):
    p = work / "m.safetensors"
    _safetensors(p)
    repo.commit("main", {"m.safetensors": str(p)})
    m = _manifest(repo, "main:m.safetensors")
    plan = read_plan(m, int(m["size"]))
    _covers(plan, int(m["size"]))
    assert plan[0][0] == 0 and plan == sorted(plan)


def test_plan_of_a_file_without_tensors_is_the_file():
    assert read_plan({"format": "opaque", "tensors": []}, 1000) == [(0, 1000)]
    assert read_plan({"format": "opaque"}, 0) == []


def test_read_ahead_follows_torch_load_order_and_restarts_after_a_jump(repo, work):
    p = work / "m.pth"
    _pth(p, n=24)                                  # 24 x 64 KiB records, one block each
    repo.commit("main", {"m.pth": str(p)})
    m = _manifest(repo, "main:m.pth")
    r = FileReader(repo.decoder, m)
    plan = read_plan(m, r.size)
    ahead = ReadAhead(r, start=128 << 10, limit=1 << 20)
    first = ahead.objects(ahead.opened())
    # opening asks for the zip directory and the pickle before the loader does
    assert set(r.objects_for(plan[0][0], plan[0][1] - plan[0][0])) <= set(first)
    assert set(r.objects_for(0, plan[1][1])) <= set(first)
    # torch.load's order: directory, pickle, then records; each read is "continuing", so
    # the window grows and what is asked for lies ahead of the read, in plan order
    asked = list(first)
    windows = []
    for a, b in plan:
        asked += ahead.objects(ahead.read(a, b - a))
        windows.append(ahead.window)
    assert windows[-1] == 1 << 20 and windows == sorted(windows)
    every = [o for a, b in plan for o in r.objects_for(a, b - a)]
    assert set(asked) == set(every)
    # first asked for in plan order (an object straddling two ranges may be named twice:
    # the decoder skips what is cached or on its way)
    assert list(dict.fromkeys(asked)) == list(dict.fromkeys(every))
    assert len(asked) <= 2 * len(set(every))
    # a read far from the frontier (one tensor, elsewhere) starts over with a small window
    ahead2 = ReadAhead(r, start=128 << 10, limit=1 << 20)
    ahead2.opened()
    a, b = plan[12]
    got = ahead2.objects(ahead2.read(a, b - a))
    assert ahead2.window == 128 << 10
    assert sum(len(repo.store.get(o)) for o in got) <= 3 * (128 << 10)


def _locations(repo, spec):
    r = repo.open_file(repo.resolve_path(spec)[2])
    m = r.manifest
    order = [o for a, b in read_plan(m, r.size) for o in r.objects_for(a, b - a)]
    locs = [repo.store.location(o) for o in dict.fromkeys(order)]
    return [loc[0] for loc in locs], [loc[1] for loc in locs]


def test_a_commit_writes_a_files_tensor_blocks_in_the_order_they_are_read(repo, work):
    p = work / "m.safetensors"
    _safetensors(p, n=12, rows=256)
    repo.commit("main", {"m.safetensors": str(p)})
    m = _manifest(repo, "main:m.safetensors")
    blocks = [b[0] for t in sorted(m["tensors"], key=lambda t: t["offset"])
              for b in repo.tensor_manifest(t["id"])["blocks"]]
    assert len(blocks) >= 12 * 4                    # 256 KiB tensors, 64 KiB blocks (SMALL)
    locs = [repo.store.location(o) for o in dict.fromkeys(blocks)]
    assert len({loc[0] for loc in locs}) == 1
    offsets = [loc[1] for loc in locs]
    # (the bytes between tensors, headers included, go into one chunk written at the end)
    assert offsets == sorted(offsets)


def test_repack_puts_the_heads_first_in_read_order(work, tmp_path):
    repo = Repository.init(str(tmp_path / "r"), tuning=SMALL)
    repo.background_reencode = False
    t = None
    for i in range(4):
        p = work / f"m{i}.pth"
        g = torch.Generator().manual_seed(i)
        t = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in t.items()} \
            if t is not None else {f"l{j}": torch.randn(64, 256, generator=g) for j in range(8)}
        torch.save(t, str(p))
        repo.commit("main", {"m.pth": str(p)}, message=f"v{i}")
        repo.reencode()
        if i == 1:
            repo.create_branch("side")
    repo.repack(grace=0)
    for spec in ("main:m.pth", "side:m.pth"):
        packs, offsets = _locations(repo, spec)
        by_pack = {}
        for pk, off in zip(packs, offsets):
            by_pack.setdefault(pk, []).append(off)
        assert all(v == sorted(v) for v in by_pack.values()), spec
    # every version still reads back byte-exact
    for i, c in enumerate(reversed(repo.log("main", limit=4))):
        assert sha256_bytes(repo.read_file(f"{c.id}:m.pth")) == sha256_file(work / f"m{i}.pth")
    repo.close()


@pytest.mark.parametrize("size", [(256 << 10) + 1, 3 * (1 << 20) + 12345, 1 << 20])
def test_direct_reads_return_the_same_bytes(tmp_path, work, size):
    """O_DIRECT reads round offsets and lengths out to pages and slice; the ends of a pack
    (a short read at end of file) and unaligned objects come back byte-exact."""
    tuning = dataclasses.replace(SMALL, block_size=4 << 20, chunk_avg=1 << 20,
                                 direct_read_min=64 << 10)
    path = str(tmp_path / "r")
    Repository.init(path, tuning=tuning).close()
    rng = np.random.default_rng(size)
    files = {}
    for i in range(3):
        p = work / f"f{i}.bin"
        p.write_bytes(rng.integers(0, 256, size + i * 777, dtype=np.uint8).tobytes())
        files[f"f{i}.bin"] = str(p)
    with Repository(path, tuning=tuning) as r:
        r.commit("main", files)
    with Repository(path, tuning=dataclasses.replace(tuning, direct_reads=True)) as r:
        for name, p in files.items():
            assert sha256_bytes(r.read_file(f"main:{name}")) == sha256_file(p)
        direct = r.store.direct_reads
    try:                          # a filesystem that refuses O_DIRECT: the fallback was used
        os.close(os.open(files["f0.bin"], os.O_RDONLY | os.O_DIRECT))
        supported = True
    except OSError:
        supported = False
    assert (direct > 0) if supported else (direct == 0)


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0]


@pytest.mark.skipif(_thp_mode() == "never", reason="transparent huge pages are off here")
def test_daemon_read_buffers_come_from_huge_pages():
    """The daemon's heap is faulted in as huge pages before it serves, and a block-sized
    buffer allocated afterwards (where O_DIRECT reads land) reuses that memory: a 4 MiB
    read is then one block-layer request instead of four (see daemon.memory.tune_malloc)."""
    import subprocess
    import sys
    code = (
        "import numpy as np\n"
        "from corafs.daemon.memory import tune_malloc\n"
        "tune_malloc(64 << 20)\n"
        "buf = np.empty(4 << 20, np.uint8); buf[:] = 1\n"
        "lo_b, hi_b = buf.ctypes.data, buf.ctypes.data + buf.nbytes\n"
        "covered = 0\n"
        "vma = None\n"
        "for line in open('/proc/self/smaps'):\n"
        "    head = line.split()[0]\n"
        "    if '-' in head and ':' not in head:\n"
        "        vma = [int(x, 16) for x in head.split('-')]\n"
        "    elif line.startswith('AnonHugePages:') and vma:\n"
        "        lo, hi = vma\n"
        "        # a mapping (nearly) all in huge pages: its overlap with the buffer is too\n"
        "        if int(line.split()[1]) << 10 >= 0.9 * (hi - lo):\n"
        "            covered += max(0, min(hi, hi_b) - max(lo, lo_b))\n"
        "print(covered)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert int(out) >= 3 << 20, out             # all but the ends (2 MiB alignment)


def test_decode_ahead_window_is_in_bytes_not_extents():
    """A .pth interleaves each tensor's extent with its zip record header (tens of bytes):
    the window decoded ahead of a whole-file reader (export, fsck, a mount's write-back)
    spans ``ahead`` bytes of the file however many small extents lie between, and no more."""
    from concurrent.futures import Future

    from corafs.core.reader import BlockCache

    MiB = 1 << 20
    lens, objs = [], []
    for k in range(12):
        lens += [40, MiB]
        objs += [f"h{k}", f"t{k}"]
    manifest = {"size": sum(lens),
                "extents": {"len": lens, "obj": objs, "off": [0] * len(lens)}}
    log = []          # (object submitted, extents consumed so far)

    class Decoder:
        cache = BlockCache(64 * MiB)

        def raw(self, oid):
            return np.zeros(lens[objs.index(oid)], np.uint8)

    class Pool:
        _max_workers = 2

        def submit(self, fn, oid):
            log.append((oid, consumed))
            f = Future()
            f.set_result(fn(oid))
            return f

    reader = FileReader(Decoder(), manifest)
    consumed = 0
    for i, obj in reader._decoded(0, len(objs), Pool(), ahead=3 * MiB):
        assert obj.size == lens[i]
        queued = [objs.index(o) for o, c in log]
        # past the extent consumed, what is queued stays within the window (plus the one
        # extent that crosses it) and reaches it unless the file ends first
        past = sum(lens[j] for j in queued if j > i)
        assert past < 3 * MiB + MiB + 40
        assert past >= 3 * MiB or max(queued) == len(objs) - 1
        consumed += 1
    assert sorted(o for o, _ in log) == sorted(objs)      # each object queued once
    # before the consumer took anything, three tensors (3 MiB) were queued past the first
    # extent: a window of four extents would have held two
    assert sum(1 for o, c in log if c == 0 and o.startswith("t")) == 3
