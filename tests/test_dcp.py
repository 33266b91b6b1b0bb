"""DCP checkpoints (torch.distributed.checkpoint) as checkpoints: each ``.distcp`` is split
into its torch.save records, so a fine-tuning series in DCP dedups and delta-encodes; every
file comes back byte-exact; files that claim to be DCP but lie are stored opaque with the
reason."""
import os
import warnings

import pytest
import torch

import corafs
from conftest import sha256_bytes, sha256_file
from corafs.formats import detect
from mountutil import mounted, needs_fuse, settled, wait_for

dcp = pytest.importorskip("torch.distributed.checkpoint")


def _save(state, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)         # "assuming a single process"
        dcp.save(state, checkpoint_id=str(path), no_dist=True)


def _state(seed, base=None):
    torch.manual_seed(seed)
    w = torch.randn(512, 512) if base is None else base["model"]["w"] + 1e-3 * torch.randn(512, 512)
    return {"model": {"w": w, "b": torch.full((512,), float(seed))},
            "optim": {"m": w * 0.1, "step": torch.tensor(seed)}, "epoch": seed}


def _layout(path):
    with open(path, "rb") as f:
        return detect(f, os.path.basename(path), os.path.getsize(path))


def test_distcp_files_are_split_into_their_records(tmp_path):
    _save(_state(0), tmp_path / "ck")
    (data,) = [p for p in (tmp_path / "ck").iterdir() if p.suffix == ".distcp"]
    lay = _layout(data)
    assert lay.format == "pth" and lay.reason is None
    sizes = sorted(s.nbytes for s in lay.spans)
    assert sizes.count(512 * 512 * 4) == 2 and 512 * 4 in sizes       # w, m and b
    raw = data.read_bytes()
    w = _state(0)["model"]["w"].numpy().tobytes()
    assert any(raw[s.offset:s.offset + s.nbytes] == w for s in lay.spans)   # on tensor bytes
    assert len({s.name for s in lay.spans}) == len(lay.spans)


def test_a_dcp_series_dedups_and_deltas_and_reads_back_exact(repo, tmp_path):
    first = _state(1)
    _save(first, tmp_path / "s1")
    _save(_state(2, first), tmp_path / "s2")
    res1 = repo.commit("main", {f"step-1/{p.name}": str(p) for p in (tmp_path / "s1").iterdir()})
    res2 = repo.commit("main", {f"step-1/{p.name}": str(p) for p in (tmp_path / "s2").iterdir()})
    new1 = sum(r.new_bytes for _, r in res1.files)
    for (_d, r) in res2.files:
        assert r.reason is None
    repo.reencode()                  # head-first: the first save becomes deltas against the second
    st = repo.stats()
    assert st.stored_bytes < 1.7 * new1, (st.stored_bytes, new1)   # opaque chunks: 2.0x
    for rev, src in (("main~1", tmp_path / "s1"), ("main", tmp_path / "s2")):
        for p in src.iterdir():
            assert sha256_bytes(repo.read_file(f"{rev}:step-1/{p.name}")) == sha256_file(p)
    e = repo.entry(repo.head("main"), "step-1/__0_0.distcp")
    assert e["format"] == "pth" and len(repo.get_meta(e["id"])["tensors"]) >= 4
    assert repo.stats().deltas > 0
    target = {"model": {"w": torch.zeros(512, 512), "b": torch.zeros(512)},
              "optim": {"m": torch.zeros(512, 512), "step": torch.tensor(0)}, "epoch": 0}
    out = tmp_path / "back"
    repo.export("main~1:step-1", str(out))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(target, checkpoint_id=str(out), no_dist=True)
    assert torch.equal(target["model"]["w"], first["model"]["w"]) and target["epoch"] == 1


def test_distcp_files_that_lie_are_stored_opaque_with_the_reason(repo, tmp_path):
    _save(_state(3), tmp_path / "ck")
    (data,) = [p for p in (tmp_path / "ck").iterdir() if p.suffix == ".distcp"]
    raw = data.read_bytes()
    cases = {
        "garbage.distcp": os.urandom(10000),
        "truncated.distcp": raw[:len(raw) // 2],
        "headless.distcp": b"junk" + raw,
        "empty.distcp": b"",
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
    res = repo.commit("main", {n: str(tmp_path / n) for n in cases})
    reasons = dict((d, r.reason) for d, r in res.files)
    for name in ("garbage.distcp", "headless.distcp"):
        assert reasons[name] and "distcp" in reasons[name], (name, reasons[name])
    for name, body in cases.items():                           # nothing lost
        assert repo.read_file(f"main:{name}") == body
    tr = _layout(tmp_path / "truncated.distcp")                # the archives that are whole
    assert tr.format == "opaque" or all(s.offset + s.nbytes <= len(raw) // 2 for s in tr.spans)


def test_a_hostile_metadata_file_is_never_unpickled(repo, tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))
    d = tmp_path / "ck"
    d.mkdir()
    (d / ".metadata").write_bytes(pickle.dumps(Boom()))
    _save(_state(4), tmp_path / "real")
    for p in (tmp_path / "real").iterdir():
        if p.suffix == ".distcp":
            (d / p.name).write_bytes(p.read_bytes())
    repo.commit("main", {f"ck/{p.name}": str(p) for p in d.iterdir()})
    assert not (tmp_path / "pwned").exists()
    assert repo.read_file("main:ck/.metadata") == (d / ".metadata").read_bytes()
    assert repo.entry(repo.head("main"), "ck/.metadata")["format"] == "opaque"


def _rank(rank, world, init, path, mode, out, repo=None):
    import torch.distributed as dist
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        try:
            torch.manual_seed(rank)
            mine = {f"rank{rank}.w": torch.randn(256, 256) + rank,
                    "shared.b": torch.arange(64, dtype=torch.float32)}
            io_kw = {}
            if repo is not None:                 # through fsspec, each rank its own client
                from torch.distributed.checkpoint._fsspec_filesystem import (FsspecReader,
                                                                             FsspecWriter)
                io_kw = {"storage_writer": FsspecWriter(path, repo=repo)} if mode == "save" \
                    else {"storage_reader": FsspecReader(path, repo=repo)}
            else:
                io_kw = {"checkpoint_id": path}
            if mode == "save":
                dcp.save(mine, **io_kw)
            else:
                back = {k: torch.zeros_like(v) for k, v in mine.items()}
                dcp.load(back, **io_kw)
                torch.save(back, os.path.join(out, f"loaded{rank}.pt"))
                torch.save(mine, os.path.join(out, f"want{rank}.pt"))
        finally:
            dist.destroy_process_group()


@needs_fuse
@pytest.mark.mount
def test_two_gloo_ranks_save_and_load_dcp_through_the_mount(fresh, tmp_path):
    import torch.multiprocessing as mp
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.2") as m:
        path = f"{m}/main/step-100"
        for mode in ("save", "load"):
            init = f"file://{tmp_path}/rdv-{mode}"
            mp.start_processes(_rank, args=(2, init, path, mode, str(tmp_path)), nprocs=2,
                               start_method="spawn")
        for rank in (0, 1):
            back = torch.load(tmp_path / f"loaded{rank}.pt", weights_only=True)
            want = torch.load(tmp_path / f"want{rank}.pt", weights_only=True)
            assert all(torch.equal(back[k], want[k]) for k in want)
        assert wait_for(lambda: settled(repo), timeout=60)
    with corafs.Repository(str(repo)) as r:
        names = {p for p, e in r.walk(r.head("main")) if e["kind"] == "file"}
        assert {"step-100/.metadata", "step-100/__0_0.distcp", "step-100/__1_0.distcp"} <= names
        for rank in (0, 1):
            e = r.entry(r.head("main"), f"step-100/__{rank}_0.distcp")
            assert e["format"] == "pth"                       # split into tensors
        assert r.fsck().ok


def test_two_gloo_ranks_save_and_load_dcp_through_fsspec(repo, tmp_path):
    import torch.multiprocessing as mp
    path = "corafs://main/step-200"
    for mode in ("save", "load"):
        init = f"file://{tmp_path}/rdv-{mode}"
        mp.start_processes(_rank, args=(2, init, path, mode, str(tmp_path), repo.path),
                           nprocs=2, start_method="spawn")
    for rank in (0, 1):
        back = torch.load(tmp_path / f"loaded{rank}.pt", weights_only=True)
        want = torch.load(tmp_path / f"want{rank}.pt", weights_only=True)
        assert all(torch.equal(back[k], want[k]) for k in want)
    with corafs.Repository(repo.path) as r:                # both ranks' commits landed
        names = {p for p, e in r.walk(r.head("main")) if e["kind"] == "file"}
        assert {"step-200/.metadata", "step-200/__0_0.distcp", "step-200/__1_0.distcp"} <= names
        assert r.entry(r.head("main"), "step-200/__1_0.distcp")["format"] == "pth"
