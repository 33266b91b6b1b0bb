"""Head-first encoding (issue 9, item 1): the version just committed is stored whole, what it
replaced becomes reverse deltas afterwards, chains stay bounded, nothing is ever lost."""
import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from conftest import SMALL, run_cli, sha256_bytes, sha256_file
from corafs import Repository
from corafs.core import headfirst, maintenance
from corafs.core.stats import chain_depth
from corafs.store.faults import FAULT_EXIT
from mountutil import mounted, needs_fuse, settled, wait_for


def _version(path, w, seed, noise=1e-3):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(1 << 17, dtype=np.float32) if w is None else \
        w + rng.standard_normal(w.size, dtype=np.float32) * noise
    safetensors.numpy.save_file({"a": w.reshape(-1, 128), "b": (w[:4096] * 2).copy()},
                                str(path))
    return w


def _blocks(repo, spec):
    """Data block ids of the tensors of one file version."""
    _cid, _path, e = repo.resolve_path(spec)
    out = []
    for t in repo.get_meta(e["id"])["tensors"]:
        out += [b[0] for b in repo.tensor_manifest(t["id"])["blocks"]]
    return out


def _depths(repo, spec):
    memo = {}
    return [chain_depth(repo, b, memo) for b in _blocks(repo, spec)]


def _commit_series(repo, work, n, branch="main"):
    want, w = {}, None
    for v in range(n):
        p = work / f"v{v}.safetensors"
        w = _version(p, w, v)
        cid = repo.commit(branch, {"model.safetensors": str(p)}, message=f"v{v}").commit
        # right after the commit returned: the new head is keyframes
        assert _depths(repo, f"{cid}:model.safetensors") == \
            [0] * len(_blocks(repo, f"{cid}:model.safetensors"))
        want[cid] = sha256_file(p)
    return want


def _all_exact(repo, want):
    for cid, sha in want.items():
        assert sha256_bytes(repo.read_file(f"{cid}:model.safetensors")) == sha, cid


def test_api_head_is_keyframes_and_history_becomes_reverse_deltas(tmp_path, work):
    repo = Repository.init(str(tmp_path / "r"), tuning=SMALL)
    try:
        want = _commit_series(repo, work, 4)
        assert repo.wait_reencode(60)
        cids = list(want)
        assert set(_depths(repo, f"{cids[-1]}:model.safetensors")) == {0}
        # every earlier version is now a chain of deltas against newer versions
        for i, cid in enumerate(cids[:-1]):
            d = _depths(repo, f"{cid}:model.safetensors")
            assert max(d) == len(cids) - 1 - i, (i, d)
            for b in _blocks(repo, f"{cid}:model.safetensors")[:5]:
                h = repo.block_header(b)
                assert h.reverse and h.is_delta
        _all_exact(repo, want)
        st = repo.stats()
        assert st.reverse_deltas > 0 and st.head_max_depth == 0 and st.pending_jobs == 0
        # superseded keyframes were dropped on their own: the disk holds about what is stored
        assert st.disk_bytes < 1.25 * (st.stored_bytes + st.meta_bytes)
        assert repo.fsck().ok
    finally:
        repo.close()
    # a fresh process reads the newest encodings
    with Repository(str(tmp_path / "r")) as r:
        _all_exact(r, want)


def test_auto_head_judges_large_blocks_on_a_sample(tmp_path, work, monkeypatch):
    """head_codec auto: a 1 MiB block of fp32 weights (zstd keeps ~0.83 of them) is stored raw
    from a sample without compressing the whole block; low-entropy floats are compressed; a
    block whose sample is near the line is compressed whole to decide. Reads are exact."""
    from corafs.codecs import planes
    sizes = []
    real = planes.encode
    monkeypatch.setattr(planes, "encode", lambda buf, *a, **k: (sizes.append(
        np.asarray(buf).size), real(buf, *a, **k))[1])
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal(1 << 18).astype(np.float32),        # one 1 MiB block
               "q": rng.integers(0, 4, 1 << 18).astype(np.float32)}
    safetensors.numpy.save_file(tensors, str(work / "m.safetensors"))
    r = Repository.init(str(tmp_path / "r"), tuning=dataclasses.replace(
        SMALL, block_size=1 << 20))
    r.background_reencode = False
    r.commit("main", {"m.safetensors": str(work / "m.safetensors")})
    m = r.get_meta(r.entry(r.head("main"), "m.safetensors")["id"])
    codec = {t["name"]: r.block_header(r.tensor_manifest(t["id"])["blocks"][0][0]).codec
             for t in m["tensors"]}
    assert codec == {"w": "raw", "q": "planes-zstd"}
    assert sizes.count(1 << 20) == 1            # only "q" was compressed whole
    assert sha256_bytes(r.read_file("main:m.safetensors")) == sha256_file(work / "m.safetensors")
    # near the line: a sample keeping just above head_raw_above is not trusted
    sizes.clear()
    near = dataclasses.replace(r.tuning, head_raw_above=0.825)
    r2 = Repository.init(str(tmp_path / "r2"), tuning=near)
    r2.background_reencode = False
    r2.commit("main", {"m.safetensors": str(work / "m.safetensors")})
    assert sizes.count(1 << 20) == 2
    r.close()
    r2.close()


def test_chains_stay_bounded_over_a_long_history(tmp_path, work):
    t = dataclasses.replace(SMALL, max_delta_depth=3, head_codec="raw")
    repo = Repository.init(str(tmp_path / "r"), tuning=t)
    try:
        repo.background_reencode = False
        want = {}
        w = None
        for v in range(11):
            p = work / "m.safetensors"
            w = _version(p, w, v)
            want[repo.commit("main", {"model.safetensors": str(p)}).commit] = sha256_file(p)
            repo.reencode()
        depths = [max(_depths(repo, f"{c}:model.safetensors")) for c in want]
        assert max(depths) <= 3, depths
        assert depths[-1] == 0
        # the head's float blocks are stored raw here (reading them is a copy); every block
        # that stopped being the head was compressed or became a delta
        cids = list(want)
        assert {repo.block_header(b).codec
                for b in _blocks(repo, f"{cids[-1]}:model.safetensors")} == {"raw"}
        for c in cids[:-1]:
            assert "raw" not in {repo.block_header(b).codec
                                 for b in _blocks(repo, f"{c}:model.safetensors")}, c
        # runs are closed by far deltas against the lineage's root, not by new keyframes:
        # two keyframes per block position (the root and the head)
        st = repo.stats()
        assert st.keyframes <= 2 * len(_blocks(repo, "main:model.safetensors")) + 2, st
        _all_exact(repo, want)
        assert repo.fsck().ok
        # a repack keeps every version exact
        repo.repack(grace=0)
        _all_exact(repo, want)
    finally:
        repo.close()


def test_tagged_versions_stay_one_delta_from_a_keyframe(tmp_path, work):
    repo = Repository.init(str(tmp_path / "r"), tuning=SMALL)
    try:
        repo.background_reencode = False
        want = _commit_series(repo, work, 2)
        repo.reencode()
        tagged = list(want)[-1]
        repo.create_tag("release", tagged)
        w = None
        for v in range(3):
            p = work / "later.safetensors"
            w = _version(p, w, 50 + v) if w is not None else _version(p, None, 1)
            want[repo.commit("main", {"model.safetensors": str(p)}).commit] = sha256_file(p)
            repo.reencode()
        assert max(_depths(repo, "release:model.safetensors")) <= 1
        assert repo.stats().head_max_depth <= 1
        _all_exact(repo, want)
    finally:
        repo.close()


def test_cli_commit_reencodes_before_it_exits(tmp_path, work):
    repo = tmp_path / "r"
    run_cli("init", repo)
    want, w = {}, None
    for v in range(3):
        p = work / "model.safetensors"
        w = _version(p, w, v)
        run_cli("commit", repo, p, "-m", f"v{v}")
        with Repository(str(repo)) as r:
            want[r.head("main")] = sha256_file(p)
    with Repository(str(repo)) as r:
        assert headfirst.pending(r) == []
        cids = list(want)
        assert set(_depths(r, "main:model.safetensors")) == {0}
        assert max(_depths(r, f"{cids[0]}:model.safetensors")) == 2
        _all_exact(r, want)
    out = run_cli("show", repo, f"{cids[0]}:model.safetensors").stdout
    assert "reverse delta" in out and "depth 2" in out
    assert "keyframe" in run_cli("show", repo, "main:model.safetensors").stdout
    assert "of them reverse" in run_cli("stats", repo).stdout


def _reencode_with_fault(path: str, fault: str) -> None:
    """In a forked child: re-encode under CORAFS_FAULT (it ends the child at the step)."""
    os.environ["CORAFS_FAULT"] = fault
    with Repository(path, tuning=SMALL) as r:
        r.reencode()


@pytest.mark.parametrize("event", ("put", "seal", "pack", "drop"))
def test_reencoding_killed_at_every_step_is_finished_by_the_next_command(tmp_path, work, event):
    """Re-encoding (and the repack it runs) stopped before its n-th step of one kind, for
    every n: fsck clean every time, every version exact, and the next re-encoding finishes
    the queue."""
    import multiprocessing
    seed = tmp_path / "seed"
    with Repository.init(str(seed), tuning=SMALL) as r:
        r.background_reencode = False
        want = {}
        w = None
        for v in range(3):
            p = work / f"v{v}.safetensors"
            w = _version(p, w, v, noise=1e-2)
            if v == 2:
                r.reencode()                    # one job left: the last commit's
            want[r.commit("main", {"model.safetensors": str(p)}).commit] = sha256_file(p)
        assert len(headfirst.pending(r)) == 1
    fork = multiprocessing.get_context("fork")
    n = 0
    while True:
        n += 1
        assert n < 200
        repo = tmp_path / f"r{n}"
        shutil.copytree(seed, repo)
        child = fork.Process(target=_reencode_with_fault, args=(str(repo), f"{event}:{n}"))
        child.start()
        child.join()
        assert child.exitcode in (0, FAULT_EXIT), (event, n, child.exitcode)
        with Repository(str(repo), tuning=SMALL) as r:
            rep = r.fsck()
            assert rep.ok, (event, n, rep.problems)
            _all_exact(r, want)
            if child.exitcode == 0:
                break
            r.reencode()                        # the next command finishes the queue
            assert headfirst.pending(r) == [] and r.stats().head_max_depth == 0
            _all_exact(r, want)
            rep = r.fsck()
            assert rep.ok and not [g for g in rep.garbage if not g[2]], (event, n, rep)
        shutil.rmtree(repo)
    assert n > 1, "the fault was never reached"


def test_reader_holding_a_file_reads_on_across_reencoding(tmp_path, work):
    repo = Repository.init(str(tmp_path / "r"), tuning=SMALL)
    try:
        repo.background_reencode = False
        want = _commit_series(repo, work, 2)
        first = list(want)[0]
        f = repo.open(f"{first}:model.safetensors")
        part = f.read(1000)
        repo.reencode()             # re-encodes and rewrites the pack f was reading
        with Repository(str(tmp_path / "r"), tuning=SMALL) as other:
            assert max(_depths(other, f"{first}:model.safetensors")) == 1
        rest = f.read()
        assert sha256_bytes(part + rest) == want[first]
    finally:
        repo.close()


@needs_fuse
@pytest.mark.mount
def test_mount_commit_is_keyframes_and_the_daemon_reencodes(fresh, work):
    repo, mnt = fresh
    w = None
    want = {}
    with mounted(repo, mnt):
        for v in range(3):
            p = work / "model.safetensors"
            w = _version(p, w, v)
            with open(p, "rb") as src, open(mnt / "main" / "model.safetensors", "wb") as dst:
                dst.write(src.read())
            assert wait_for(lambda: settled(repo), timeout=60)
            with Repository(str(repo)) as r:
                cid = r.head("main")
                want[cid] = sha256_file(p)
                assert set(_depths(r, f"{cid}:model.safetensors")) == {0}
        # the daemon re-encodes in the background: wait for the condition, not a time
        first = list(want)[0]

        def reencoded():
            with Repository(str(repo)) as r:
                return not headfirst.pending(r) and \
                    max(_depths(r, f"{first}:model.safetensors")) == 2
        assert wait_for(reencoded, timeout=60), "the daemon did not re-encode"
        for cid, sha in want.items():
            assert sha256_file(mnt / "@commits" / cid / "model.safetensors") == sha
        assert sha256_file(mnt / "main" / "model.safetensors") == list(want.values())[-1]
    with Repository(str(repo)) as r:
        _all_exact(r, want)
        assert r.fsck().ok


def _keyframes_per_position(repo, cids):
    """Keyframe blocks of tensor "a" over all versions (one lineage per block position)."""
    n = 0
    seen = set()
    for c in cids:
        for b in _blocks(repo, f"{c}:model.safetensors"):
            if b not in seen:
                seen.add(b)
                n += not repo.block_header(b).is_delta
    return n


@pytest.mark.parametrize("depth", [3, 4])
def test_depth_bound_is_used_and_the_head_is_the_only_keyframe(tmp_path, work, depth):
    """Issue 20: a version may sit at max_delta_depth (no run closes early), no version ever
    decodes through more, and a lineage holds one keyframe, its head: the block that closes a
    run becomes the floating root (a delta against the head, encoded again for each new
    head) or an anchor against it, not a second keyframe. Checked after every commit."""
    t = dataclasses.replace(SMALL, max_delta_depth=depth, head_codec="raw")
    repo = Repository.init(str(tmp_path / "r"), tuning=t)
    try:
        repo.background_reencode = False
        want, w = {}, None
        positions = None
        for v in range(3 * depth + 2):
            p = work / "m.safetensors"
            w = _version(p, w, v)
            cid = repo.commit("main", {"model.safetensors": str(p)}).commit
            want[cid] = sha256_file(p)
            assert set(_depths(repo, f"{cid}:model.safetensors")) == {0}
            rep = repo.reencode()
            positions = positions or len(_blocks(repo, f"{cid}:model.safetensors"))
            depths = [max(_depths(repo, f"{c}:model.safetensors")) for c in want]
            assert max(depths) <= depth, (v, depths)
            if len(want) == depth + 1:
                assert depths[0] == depth, depths        # the bound is used, not depth - 1
            # every position: its head, and no second keyframe
            assert _keyframes_per_position(repo, want) == positions, v
            # the work per commit is bounded: the old head and the floating root
            assert rep.blocks <= 2 * positions, rep
        floating = [b for c in want for b in _blocks(repo, f"{c}:model.safetensors")
                    if repo.block_header(b).floating]
        assert floating, "a long history has a floating root per position"
        # each job supersedes a little of the previous job's pack (the floating root it
        # re-encodes): the repository as a whole holds little that is superseded
        st = repo.stats()
        assert st.disk_bytes <= 1.08 * (st.stored_bytes + st.meta_bytes), st
        _all_exact(repo, want)
        assert repo.fsck().ok
    finally:
        repo.close()


def test_floating_root_is_pinned_when_a_delta_no_longer_pays(tmp_path, work):
    """Weights that drift (a quarter of the values replaced at each version) keep adjacent
    versions close but carry the head away from the floating root: once a delta against the
    head no longer pays, the floating root becomes a keyframe (pinned) and the next run that
    closes makes a new one; every version stays exact and within the bound."""
    t = dataclasses.replace(SMALL, max_delta_depth=3, head_codec="raw")
    repo = Repository.init(str(tmp_path / "r"), tuning=t)
    try:
        repo.background_reencode = False
        want = {}
        rng = np.random.default_rng(5)
        w = rng.standard_normal(1 << 16, dtype=np.float32)
        pinned = 0
        for v in range(14):
            p = work / "m.safetensors"
            w = w.copy()
            moved = rng.random(w.size) < 0.25
            w[moved] = rng.standard_normal(int(moved.sum()), dtype=np.float32)
            safetensors.numpy.save_file({"a": w.reshape(-1, 128)}, str(p))
            want[repo.commit("main", {"model.safetensors": str(p)}).commit] = sha256_file(p)
            pinned += repo.reencode().pinned
            depths = [max(_depths(repo, f"{c}:model.safetensors")) for c in want]
            assert max(depths) <= 3, (v, depths)
        assert pinned > 0
        _all_exact(repo, want)
        assert repo.fsck().ok
    finally:
        repo.close()


def test_repack_reencode_brings_a_forward_repository_to_the_current_scheme(tmp_path, work):
    """Issue 20, item 5: a repository whose history is stored another way (here: forward
    deltas, the encoding before head-first) keeps reading, and ``corafs repack --reencode``
    re-encodes its history as head-first would have: the head keyframes, one keyframe per
    block position, every version within the depth bound and sha256-exact. Interrupted after
    its first step, every version still reads and fsck is clean; the queue finishes it."""
    depth = 3
    fwd = dataclasses.replace(SMALL, head_first=False, max_delta_depth=depth)
    path = str(tmp_path / "r")
    repo = Repository.init(path, tuning=fwd)
    repo.set_config("max_delta_depth", depth)       # the CLI below reads it from the repo
    want, w = {}, None
    try:
        for v in range(3 * depth):
            p = work / "m.safetensors"
            w = _version(p, w, v)
            want[repo.commit("main", {"model.safetensors": str(p)}).commit] = sha256_file(p)
        repo.create_branch("side", list(want)[4])
        assert max(_depths(repo, "main:model.safetensors")) > 0      # forward: head is a delta
    finally:
        repo.close()
    t = dataclasses.replace(fwd, head_first=True)
    with Repository(path, tuning=t) as repo:
        # killed after the blocks were written whole, before the jobs ran
        real = maintenance.reencode
        maintenance.reencode = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
        try:
            with pytest.raises(KeyboardInterrupt):
                repo.reencode_history()
        finally:
            maintenance.reencode = real
        _all_exact(repo, want)
        assert repo.fsck().ok
        assert headfirst.pending(repo)
    out = subprocess.run([sys.executable, "-m", "corafs", "repack", path, "--reencode"],
                         capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    with Repository(path, tuning=t) as repo:
        assert not headfirst.pending(repo)
        cids = list(want)
        assert set(_depths(repo, "main:model.safetensors")) == {0}
        depths = [max(_depths(repo, f"{c}:model.safetensors")) for c in cids]
        assert max(depths) <= depth, depths
        positions = len(_blocks(repo, "main:model.safetensors"))
        # one keyframe per position on main's lineage, plus the side branch's head
        assert _keyframes_per_position(repo, cids) <= positions + \
            len(set(_blocks(repo, "side:model.safetensors"))), depths
        _all_exact(repo, want)
        assert repo.fsck().ok


def test_floating_root_stays_put_when_the_old_head_stays_whole(tmp_path, work):
    """When the old head stays a keyframe (here: the version below it was tagged after the
    fact, so the run may not grow over it), the floating root must stay a delta against that
    keyframe instead of following the new head: below a keyframe, later jobs cannot find it
    to follow it again, and its run would sink one level per commit."""
    depth = 3
    t = dataclasses.replace(SMALL, max_delta_depth=depth, head_codec="raw")
    repo = Repository.init(str(tmp_path / "r"), tuning=t)
    try:
        repo.background_reencode = False
        want, w = {}, None
        for v in range(12):
            p = work / "m.safetensors"
            w = _version(p, w, v)
            want[repo.commit("main", {"model.safetensors": str(p)}).commit] = sha256_file(p)
            repo.reencode()
            if v == 6:
                repo.create_tag("late", list(want)[-2])     # a version already a delta
            depths = [max(_depths(repo, f"{c}:model.safetensors")) for c in want]
            assert max(depths) <= depth, (v, depths)
        _all_exact(repo, want)
        assert repo.fsck().ok
    finally:
        repo.close()
