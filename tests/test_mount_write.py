"""The write side against a real FUSE mount: saving into a branch directory is a commit."""
import errno
import os
import subprocess
import threading
import time

import pytest
import safetensors.torch
import torch

from conftest import sha256_file
from corafs import Repository
from mountutil import corafs, mounted, needs_fuse, settled, wait_for

pytestmark = [needs_fuse, pytest.mark.mount]


def _log(repo, branch="main"):
    with Repository(repo) as r:
        return r.log(branch)


def _committed(repo, n, branch="main", timeout=10):
    return wait_for(lambda: len(_log(repo, branch)) >= n, timeout=timeout)


def _settled(repo, timeout=20):
    """Wait until nothing is staged any more: every change made so far is committed."""
    return wait_for(lambda: settled(repo), timeout=timeout)



@pytest.mark.smoke
def test_torch_save_is_one_commit_and_loads_from_history(fresh, tmp_path):
    repo, mnt = fresh
    sd = {"w": torch.randn(256, 256), "b": torch.randn(256).to(torch.bfloat16)}
    with mounted(repo, mnt, "--commit-delay", "0.5") as m:
        torch.save(sd, f"{m}/main/model.pth")
        assert _committed(repo, 2)
        log = _log(repo)
        assert len(log) == 2 and log[0].message == "Add model.pth"
        # the ref moved; the mount shows the commit once its refresh ran
        assert wait_for(lambda: len(os.listdir(f"{m}/@history/main")) == 2)
        entry = sorted(os.listdir(f"{m}/@history/main"))[-1]
        back = torch.load(f"{m}/@history/main/{entry}/model.pth", weights_only=True)
        assert torch.equal(back["w"], sd["w"]) and torch.equal(back["b"], sd["b"])
        sha = sha256_file(f"{m}/main/model.pth")
    with mounted(repo, mnt) as m:                      # after remount
        assert sha256_file(f"{m}/main/model.pth") == sha
    with Repository(repo) as r:
        assert r.fsck().ok
        assert r.entry(r.head("main"), "model.pth")["format"] == "pth"


def test_cp_r_and_save_pretrained_are_one_commit_each(fresh, tmp_path):
    from transformers import AutoModel, BertConfig, BertModel
    repo, mnt = fresh
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    for i in range(3):
        (run / f"f{i}.bin").write_bytes(os.urandom(100_000))
    (run / "sub" / "config.json").write_text("{}")
    with mounted(repo, mnt, "--commit-delay", "1") as m:
        subprocess.run(["cp", "-r", f"{run}/.", f"{m}/main/"], check=True)
        assert _settled(repo)
        assert len(_log(repo)) == 2, [c.message for c in _log(repo)]
        assert _log(repo)[0].message == "Add 4 files"
        for p in ("f0.bin", "f1.bin", "f2.bin", "sub/config.json"):
            assert sha256_file(f"{m}/main/{p}") == sha256_file(run / p)
        torch.manual_seed(0)
        model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, vocab_size=99,
                                     max_position_embeddings=32))
        os.mkdir(f"{m}/main/bert")
        model.save_pretrained(f"{m}/main/bert")
        assert _settled(repo)
        assert len(_log(repo)) == 3
        entry = sorted(os.listdir(f"{m}/@history/main"))[-1]
        back = AutoModel.from_pretrained(f"{m}/@history/main/{entry}/bert")
        sd, sb = model.state_dict(), back.state_dict()
        assert all(torch.equal(sd[k], sb[k]) for k in sd)


def test_file_operations_like_a_local_disk(fresh, tmp_path):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.5") as m:
        b = f"{m}/main"
        with open(f"{b}/a.bin", "wb") as f:           # writes at any offset, holes included
            f.write(b"x" * 10)
            f.seek(100)
            f.write(b"y" * 10)
            f.seek(5)
            f.write(b"zz")
        want_a = b"x" * 5 + b"zz" + b"x" * 3 + b"\0" * 90 + b"y" * 10
        assert open(f"{b}/a.bin", "rb").read() == want_a
        with open(f"{b}/tmp.safetensors.tmp", "wb") as f:   # save to temp, then rename
            f.write(safetensors.torch.save({"t": torch.ones(8)}))
        open(f"{b}/model.safetensors", "wb").write(b"old")
        os.rename(f"{b}/tmp.safetensors.tmp", f"{b}/model.safetensors")  # over an existing file
        os.makedirs(f"{b}/d/e")
        open(f"{b}/d/e/f.txt", "w").write("f")
        os.truncate(f"{b}/a.bin", 7)
        assert open(f"{b}/a.bin", "rb").read() == want_a[:7]
        assert _settled(repo)
        with Repository(repo) as r:
            assert r.read_file("main:a.bin") == want_a[:7]
            assert safetensors.torch.load(r.read_file("main:model.safetensors"))["t"].sum() == 8
            assert r.read_file("main:d/e/f.txt") == b"f"
            assert "tmp.safetensors.tmp" not in r.listdir(r.head("main"))
        n = len(_log(repo))
        os.unlink(f"{b}/a.bin")
        os.unlink(f"{b}/d/e/f.txt")
        os.rmdir(f"{b}/d/e")
        with pytest.raises(OSError) as e:
            os.rmdir(f"{b}/d/nothing")
        assert e.value.errno == errno.ENOENT
        os.rename(f"{b}/model.safetensors", f"{b}/d/moved.safetensors")
        assert _settled(repo)
        with Repository(repo) as r:
            names = {p for p, _ in r.walk(r.head("main"))}
        assert names == {"d/", "d/moved.safetensors"}, names
        assert len(_log(repo)) == n + 1
        assert _log(repo)[0].message == \
            "Rename model.safetensors to d/moved.safetensors, Remove 2 files", _log(repo)[0]
        # branches: mkdir at the top creates one, rmdir of one is refused
        os.mkdir(f"{m}/exp-lr")
        assert sorted(os.listdir(f"{m}/exp-lr")) == sorted(os.listdir(b))
        with pytest.raises(OSError) as e:
            os.rmdir(f"{m}/exp-lr")
        assert e.value.errno == errno.EPERM
        with pytest.raises(OSError) as e:
            open(f"{m}/toplevel.bin", "wb")
        assert e.value.errno in (errno.EPERM, errno.EROFS)


def test_fsync_and_unmount_commit_at_once(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "600") as m:
        with open(f"{m}/main/a.bin", "wb") as f:
            f.write(b"a" * 1000)
        fd = os.open(f"{m}/main/a.bin", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        assert len(_log(repo)) == 2                    # committed by fsync, not by the timer
        open(f"{m}/main/b.bin", "wb").write(b"b")
        assert wait_for(lambda: "main:b.bin" in corafs("status", repo).stdout)
        assert len(_log(repo)) == 2                    # staged, not committed (delay 600)
    with Repository(repo) as r:                        # unmount committed the rest
        assert r.read_file("main:b.bin") == b"b"


def test_second_mount_refused(fresh, tmp_path):
    repo, mnt = fresh
    with mounted(repo, mnt):
        os.makedirs(tmp_path / "mnt2")
        p = corafs("mount", repo, tmp_path / "mnt2", check=False)
        assert p.returncode != 0 and "already mounted" in p.stderr


def test_cli_and_mount_commit_to_one_branch(fresh, tmp_path):
    repo, mnt = fresh
    src = tmp_path / "src"
    src.mkdir()
    with mounted(repo, mnt, "--commit-delay", "0.2") as m:
        def cli():
            for i in range(6):
                p = src / f"cli{i}.bin"
                p.write_bytes(f"cli {i}".encode())
                corafs("commit", repo, p, "-m", f"cli {i}")
        t = threading.Thread(target=cli)
        t.start()
        for i in range(6):
            open(f"{m}/main/mnt{i}.bin", "wb").write(f"mount {i}".encode())
            time.sleep(0.35)
        t.join()
        assert wait_for(lambda: _all_there(repo), timeout=10)
    with Repository(repo) as r:
        msgs = [c.message for c in r.log("main")]
        assert sum(m.startswith("cli ") for m in msgs) == 6
        assert r.fsck().ok


def _all_there(repo):
    with Repository(repo) as r:
        names = set(r.listdir(r.head("main")))
    return {f"cli{i}.bin" for i in range(6)} | {f"mnt{i}.bin" for i in range(6)} <= names


def test_invalid_checkpoint_committed_opaque_with_reason(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.3") as m:
        open(f"{m}/main/broken.pth", "wb").write(b"PK\x03\x04 this is not a zip")
        assert _committed(repo, 2)
    with Repository(repo) as r:
        e = r.entry(r.head("main"), "broken.pth")
        assert e["format"] == "opaque"
        assert r.read_file("main:broken.pth") == b"PK\x03\x04 this is not a zip"
    assert "broken.pth stored as an opaque file" in open(f"{repo}/logs/mount.log").read()


def test_full_disk_gives_enospc_and_loses_nothing(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], check=True)
    try:
        repo = small / "repo"
        corafs("init", repo)
        with mounted(repo, tmp_path / "mnt", "--commit-delay", "0.3") as m:
            open(f"{m}/main/first.bin", "wb").write(os.urandom(1 << 20))
            assert _committed(repo, 2)
            with pytest.raises(OSError) as e:
                with open(f"{m}/main/huge.bin", "wb") as f:
                    for _ in range(64):
                        f.write(os.urandom(1 << 20))
            assert e.value.errno == errno.ENOSPC
            os.unlink(f"{m}/main/huge.bin")
        with Repository(repo) as r:
            assert len(r.read_file("main:first.bin")) == 1 << 20
            assert r.fsck().ok
    finally:
        subprocess.run(["umount", "-l", str(small)])
