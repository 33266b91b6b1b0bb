"""Remotes between two local repositories (issue 10, item 3): push, pull, clone, and
fsck --repair fetching a damaged object back from a remote."""
import os

import numpy as np
import safetensors.numpy

from conftest import run_cli, sha256_file
from corafs import Repository


def _model(path, seed, base=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(1 << 17, dtype=np.float32) if base is None else \
        base + rng.standard_normal(base.size, dtype=np.float32) * 1e-3
    safetensors.numpy.save_file({"w": w.reshape(-1, 128)}, str(path))
    return w


def _objects(repo):
    d = os.path.join(repo, "objects")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
               if f.endswith((".h5", ".idx")))


def test_push_pull_clone_between_local_repositories(tmp_path, work):
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli("init", a)
    w, shas = None, []
    for v in range(3):
        p = work / "model.safetensors"
        w = _model(p, v, w)
        run_cli("commit", a, p, "-m", f"v{v}")
        shas.append(sha256_file(p))
    out = run_cli("push", a, str(b)).stdout                # creates b
    assert "(new branch)" in out
    assert _objects(b) <= _objects(a) * 1.02               # deltas travelled as deltas
    assert "up to date" in run_cli("push", a, str(b)).stdout
    run_cli("clone", b, tmp_path / "c")
    with Repository(str(tmp_path / "c")) as c:
        assert [x.message for x in c.log("main")][:3] == ["v2", "v1", "v0"]
        for i, sha in enumerate(reversed(shas)):
            out = tmp_path / f"x{i}"
            c.export(f"main~{i}:model.safetensors", str(out))
            assert sha256_file(out) == sha
    # work in the clone, push to b, pull into a
    w = _model(work / "model.safetensors", 9, w)
    run_cli("commit", tmp_path / "c", work / "model.safetensors", "-m", "v3")
    run_cli("push", tmp_path / "c", "origin")
    run_cli("remote", a, "add", "b", str(b))
    assert "b\t" in run_cli("remote", a).stdout
    out = run_cli("pull", a, "b").stdout
    assert "->" in out
    with Repository(str(a)) as r:
        assert r.log("main")[0].message == "v3"
    assert run_cli("fsck", a).returncode == 0


def test_fsck_repair_fetches_a_damaged_object_from_a_remote(tmp_path, work):
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli("init", a)
    _model(work / "m.safetensors", 1)
    run_cli("commit", a, work / "m.safetensors")
    run_cli("clone", a, b)
    with Repository(str(b)) as r:
        e = r.entry(r.head("main"), "m.safetensors")
        block = r.tensor_manifest(r.get_meta(e["id"])["tensors"][0]["id"])["blocks"][0][0]
        path, off, ln = r.store.extent(block)
    with open(path, "r+b") as f:                           # flip bytes inside the block
        f.seek(off + ln // 2)
        chunk = f.read(64)
        f.seek(off + ln // 2)
        f.write(bytes(x ^ 0xFF for x in chunk))
    p = run_cli("fsck", b, check=False)
    assert p.returncode == 1 and block in p.stdout
    p = run_cli("fsck", b, "--repair", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "fetched 1 object(s) from remote origin" in p.stdout
    assert "repository is consistent" in p.stdout
    with Repository(str(b)) as r:
        out = tmp_path / "out"
        r.export("main:m.safetensors", str(out))
        assert sha256_file(out) == sha256_file(work / "m.safetensors")
