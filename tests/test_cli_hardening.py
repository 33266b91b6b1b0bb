"""The CLI against hostile or unusual input (issue 8, items 11-14)."""
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from conftest import run_cli
from corafs import Repository


@pytest.fixture
def repo_path(tmp_path):
    p = tmp_path / "repo"
    run_cli("init", p)
    return p


def test_commit_dir_versions_symlinks_and_skips_special_files(repo_path, tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("a")
    (d / "sub" / "x").write_text("x")
    os.symlink("/etc/passwd", d / "pw")                # out of the directory: a link, no content
    os.symlink("sub", d / "sublink")                   # a symlinked directory: a link
    os.mkfifo(d / "fifo")                              # would block a reader forever
    p = subprocess.run([sys.executable, "-m", "corafs", "commit", str(repo_path), str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "skipped" in p.stderr and "fifo" in p.stderr and "FIFO" in p.stderr
    with Repository(repo_path) as r:
        head = r.head("main")
        assert r.entry(head, "pw") == {"kind": "link", "target": "/etc/passwd"}
        assert r.entry(head, "sublink") == {"kind": "link", "target": "sub"}
        assert "fifo" not in r.listdir(head)
        assert r.fsck().ok
    out = tmp_path / "out"
    run_cli("export", repo_path, "main", out)
    assert os.readlink(out / "pw") == "/etc/passwd" and (out / "sub" / "x").read_text() == "x"
    assert "pw -> /etc/passwd" in run_cli("ls", repo_path).stdout


def test_export_never_replaces_a_device_and_handles_255_byte_names(repo_path, tmp_path):
    long = "n" * 255
    f = tmp_path / long
    f.write_bytes(b"long name")
    run_cli("commit", repo_path, f)
    out = tmp_path / "out"
    out.mkdir()
    run_cli("export", repo_path, f"main:{long}", out / long)
    assert (out / long).read_bytes() == b"long name"
    p = run_cli("export", repo_path, f"main:{long}", "/dev/null", check=False)
    assert p.returncode != 0 and "not replaced" in p.stderr
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_revisions_are_never_paths(repo_path):
    for rev in ("../../corafs.json", "../../../../etc/hostname", "heads/../main", "/etc/passwd"):
        p = run_cli("log", repo_path, rev, check=False)
        assert p.returncode != 0, rev
        assert "format" not in p.stderr and "corrupt" not in p.stderr.lower(), p.stderr
        assert "not found" in p.stderr.lower() or "invalid" in p.stderr.lower(), p.stderr


def test_fsck_finds_an_empty_ref_and_swapped_index_rows(repo_path, tmp_path):
    ref = repo_path / "refs" / "heads" / "broken"
    ref.write_text("")
    p = run_cli("fsck", repo_path, check=False)
    assert p.returncode == 1 and "refs/heads/broken" not in p.stdout.replace("ref heads/", "")
    assert "ref heads/broken" in p.stdout and "empty" in p.stdout
    ref.unlink()
    # two tensors of the same shape: swap their tensor manifests' rows in the .idx
    rng = np.random.default_rng(0)
    src = tmp_path / "m.safetensors"
    safetensors.numpy.save_file({"a": rng.standard_normal(64, dtype=np.float32),
                                 "b": rng.standard_normal(64, dtype=np.float32)}, str(src))
    run_cli("commit", repo_path, src)
    with Repository(repo_path) as r:
        m = r.get_meta(r.entry(r.head("main"), "m.safetensors")["id"])
        ta, tb = (t["id"] for t in m["tensors"])
    objdir = repo_path / "objects"
    for fn in os.listdir(objdir):
        if fn.endswith(".idx"):
            table = np.load(objdir / fn)
            ids = [x.decode() for x in table["id"]]
            if ta in ids and tb in ids:
                i, j = ids.index(ta), ids.index(tb)
                table["off"][[i, j]] = table["off"][[j, i]]
                table["len"][[i, j]] = table["len"][[j, i]]
                with open(objdir / fn, "wb") as f:     # np.save(path) would add .npy
                    np.save(f, table)
                break
    else:
        pytest.fail("tensor manifests not found in one pack")
    p = run_cli("fsck", repo_path, check=False)
    assert p.returncode == 1 and "tensor" in p.stdout, p.stdout
    p = run_cli("diff", repo_path, "main~1", "main", check=False)
    assert "Traceback" not in p.stderr


def test_log_into_a_closed_pipe_is_quiet(repo_path, tmp_path):
    for i in range(30):
        (tmp_path / "f").write_text(str(i))
        run_cli("commit", repo_path, tmp_path / "f", "-m", f"commit {i} " + "x" * 200)
    p = subprocess.run(f"{shlex.quote(sys.executable)} -m corafs log {repo_path} | head -1",
                       shell=True, capture_output=True, text=True)
    assert p.stdout.startswith("commit ") and p.stderr == "", p.stderr
