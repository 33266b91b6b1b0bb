"""The read side against a real FUSE mount in a subprocess, read with real clients."""
import errno
import glob
import hashlib
import os
import shutil
import signal
import subprocess

import pytest
import safetensors
import safetensors.torch
import torch

from conftest import sha256_file
from corafs import Repository
from mountutil import corafs, mounted, needs_fuse, wait_for

pytestmark = [needs_fuse, pytest.mark.mount]


def _bert_dir(path, seed):
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, vocab_size=99, max_position_embeddings=64)
    model = BertModel(cfg)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("mount-read")
    repo = base / "repo"
    corafs("init", repo)
    src = base / "src"
    versions = []
    for i in range(3):
        d = src / f"v{i}"
        model = _bert_dir(d, i)
        torch.save({"model": model.state_dict(), "step": i}, d / "model.pth")
        corafs("commit", repo, str(d) + "/", "-m", f"version {i}")
        versions.append(d)
    corafs("tag", repo, "v1", "main~1")
    corafs("branch", repo, "exp", "main~2")
    mnt = base / "mnt"
    with mounted(repo, mnt):
        yield {"repo": repo, "mnt": mnt, "versions": versions, "base": base}


def _shas(d):
    return {os.path.relpath(p, d): sha256_file(p)
            for p in glob.glob(f"{d}/**/*", recursive=True) if os.path.isfile(p)}


@pytest.mark.smoke
def test_every_file_in_every_view_byte_exact(env):
    mnt, v = env["mnt"], env["versions"]
    assert sorted(os.listdir(mnt)) == ["@commits", "@history", "@tags", "exp", "main"]
    assert _shas(f"{mnt}/main") == _shas(v[2])
    assert _shas(f"{mnt}/main~1") == _shas(v[1])
    assert _shas(f"{mnt}/main^^") == _shas(v[0])
    assert _shas(f"{mnt}/@tags/v1") == _shas(v[1])
    assert _shas(f"{mnt}/exp") == _shas(v[0])
    hist = sorted(os.listdir(f"{mnt}/@history/main"))
    assert len(hist) == 4 and hist[0].startswith("0001-")
    for entry, want in zip(hist[1:], v):
        assert os.path.islink(f"{mnt}/@history/main/{entry}")
        assert _shas(f"{mnt}/@history/main/{entry}") == _shas(want)
    with Repository(env["repo"]) as r:
        for cid in r.all_commits():
            for path, e in r.walk(cid):
                if e["kind"] == "file":
                    assert sha256_file(f"{mnt}/@commits/{cid}/{path}") == e["sha256"]
        c = r.resolve("main~1")
    assert _shas(f"{mnt}/@commits/{c[:8]}") == _shas(v[1])


def test_tools_cp_cat_rsync_sha256sum(env, tmp_path):
    mnt, v = env["mnt"], env["versions"]
    shutil.copy(f"{mnt}/main/model.safetensors", tmp_path / "cp.safetensors")
    assert sha256_file(tmp_path / "cp.safetensors") == sha256_file(v[2] / "model.safetensors")
    out = subprocess.run(f"cat {mnt}/main/model.pth | sha256sum", shell=True,
                         capture_output=True, text=True).stdout.split()[0]
    assert out == sha256_file(v[2] / "model.pth")
    out = subprocess.run(["sha256sum", f"{mnt}/main/config.json"], capture_output=True,
                         text=True).stdout.split()[0]
    assert out == sha256_file(v[2] / "config.json")
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-a", f"{mnt}/main/", str(tmp_path / "rs")], check=True)
        assert _shas(tmp_path / "rs") == _shas(v[2])


@pytest.mark.smoke
def test_torch_load_mmap_safe_open(env):
    mnt, v = env["mnt"], env["versions"]
    want = torch.load(v[1] / "model.pth", weights_only=True)
    for kw in ({}, {"mmap": True}):
        got = torch.load(f"{mnt}/@tags/v1/model.pth", weights_only=True, **kw)
        assert got["step"] == 1
        for k, t in want["model"].items():
            assert torch.equal(got["model"][k], t), k
    ref = safetensors.torch.load_file(v[2] / "model.safetensors")
    with safetensors.safe_open(f"{mnt}/main/model.safetensors", "pt") as f:
        assert set(f.keys()) == set(ref)
        for k in ref:
            assert torch.equal(f.get_tensor(k), ref[k])


@pytest.mark.smoke
def test_from_pretrained_on_branch_directory(env):
    from transformers import AutoModel
    mnt, v = env["mnt"], env["versions"]
    got = AutoModel.from_pretrained(f"{mnt}/main")
    want = AutoModel.from_pretrained(str(v[2]))
    sg, sw = got.state_dict(), want.state_dict()
    assert set(sg) == set(sw)
    assert all(torch.equal(sg[k], sw[k]) for k in sw)


def test_xattrs_sizes_mtimes(env):
    mnt = env["mnt"]
    with Repository(env["repo"]) as r:
        head = r.head("main")
        e = r.entry(head, "model.pth")
        t = r.commit_obj(head).time_ns
    p = f"{mnt}/main/model.pth"
    assert os.getxattr(p, "user.corafs.commit").decode() == head
    assert os.getxattr(p, "user.corafs.sha256").decode() == e["sha256"]
    assert os.getxattr(f"{mnt}/main", "user.corafs.commit").decode() == head
    st = os.stat(p)
    assert st.st_size == e["size"] and st.st_mtime_ns == t


def test_writes_to_immutable_views_are_erofs(env):
    mnt = env["mnt"]
    with Repository(env["repo"]) as r:
        cid = r.head("main")
    for path in (f"{mnt}/@tags/v1/new.bin", f"{mnt}/@commits/{cid}/new.bin",
                 f"{mnt}/main~1/new.bin", f"{mnt}/@tags/v1/config.json"):
        with pytest.raises(OSError) as e:
            open(path, "wb")
        assert e.value.errno == errno.EROFS, path
    with pytest.raises(OSError) as e:
        os.mkdir(f"{mnt}/@tags/v1/dir")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.unlink(f"{mnt}/@tags/v1/config.json")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.utime(f"{mnt}/@tags/v1/config.json")
    assert e.value.errno == errno.EROFS


def test_moved_branch_seen_open_handle_keeps_version(env, tmp_path):
    mnt, repo = env["mnt"], env["repo"]
    path = f"{mnt}/exp/model.safetensors"
    old_sha = sha256_file(path)
    f = open(path, "rb")
    head = f.read(1000)
    new = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"only": torch.randn(64, 64)}, str(new))
    corafs("commit", repo, new, "-b", "exp", "-m", "moved")
    assert wait_for(lambda: sha256_file(path) == sha256_file(new), timeout=5)
    rest = f.read()
    f.close()
    assert hashlib.sha256(head + rest).hexdigest() == old_sha
    hist = os.listdir(f"{mnt}/@history/exp")
    assert len(hist) == 3
    corafs("tag", repo, "later", "exp")
    assert wait_for(lambda: "later" in os.listdir(f"{mnt}/@tags"), timeout=5)


def test_mount_errors_are_clear(env, tmp_path):
    p = corafs("mount", tmp_path / "not-a-repo", tmp_path, check=False)
    assert p.returncode != 0 and "not a corafs repository" in p.stderr
    assert "Traceback" not in p.stderr
    p = corafs("mount", env["repo"], env["mnt"], check=False)
    assert p.returncode != 0 and "busy" in p.stderr


def test_corrupt_pack_gives_eio_for_that_file_only(tmp_path):
    repo = tmp_path / "repo"
    corafs("init", repo)
    (tmp_path / "a.bin").write_bytes(os.urandom(300_000))
    corafs("commit", repo, tmp_path / "a.bin")
    packs_before = set(glob.glob(f"{repo}/objects/*.h5"))
    (tmp_path / "b.bin").write_bytes(os.urandom(300_000))
    corafs("commit", repo, tmp_path / "b.bin")
    pack_b = max(set(glob.glob(f"{repo}/objects/*.h5")) - packs_before, key=os.path.getsize)
    with open(pack_b, "r+b") as f:     # damage the middle of the pack's data
        f.seek(os.path.getsize(pack_b) // 2)
        f.write(b"\x00" * 4096)
    with mounted(repo, tmp_path / "mnt") as mnt:
        with pytest.raises(OSError) as e:
            with open(f"{mnt}/main/b.bin", "rb") as f:
                f.read()
        assert e.value.errno == errno.EIO
        assert sha256_file(f"{mnt}/main/a.bin") == sha256_file(tmp_path / "a.bin")
        assert "a.bin" in os.listdir(f"{mnt}/main")           # the daemon still serves
    log = open(f"{repo}/logs/mount.log").read()
    assert "corrupt" in log


def test_sigterm_unmounts_cleanly(tmp_path):
    repo = tmp_path / "repo"
    corafs("init", repo)
    mnt = tmp_path / "mnt"
    os.makedirs(mnt)
    corafs("mount", repo, mnt)
    pid = int(os.getxattr(mnt, "user.corafs.pid"))
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not os.path.ismount(mnt), timeout=10)
    assert os.listdir(mnt) == []
