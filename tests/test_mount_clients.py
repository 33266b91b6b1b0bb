"""Real clients against a real mount: the write side behaves like a local disk (issue 8)."""
import errno
import os
import sqlite3
import stat
import subprocess
import tarfile

import pytest

from conftest import sha256_file
from corafs import Repository
from mountutil import corafs, mounted, needs_fuse, settled, wait_for

pytestmark = [needs_fuse, pytest.mark.mount]


def _head(repo, branch="main"):
    with Repository(repo) as r:
        return r.head(branch)


def _wait_committed(repo, timeout=20):
    assert wait_for(lambda: settled(repo), timeout=timeout), corafs("status", repo).stdout



def test_rename_then_write_lands_in_the_new_name(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.3") as m:
        b = f"{m}/main"
        subprocess.run("echo v1 > a && mv a b && echo v2 > b && mkdir d && echo 1 > d/k && "
                       "mv d e && echo x > e/f", shell=True, check=True, cwd=b)
        assert open(f"{b}/b").read() == "v2\n" and open(f"{b}/e/f").read() == "x\n"
        _wait_committed(repo)
    with Repository(repo) as r:
        assert sorted(p for p, _ in r.walk(r.head("main"))) == ["b", "e/", "e/f", "e/k"]
        assert r.read_file("main:b") == b"v2\n"


def test_history_views_never_share_the_branch_node(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.2") as m:
        open(f"{m}/main/x", "w").write("one")
        _wait_committed(repo)
        head = _head(repo)
        ino = os.stat(f"{m}/main/x").st_ino
        for view in (f"@commits/{head}", "main~0", f"@commits/{head[:10]}"):
            assert os.stat(f"{m}/{view}/x").st_ino != ino
            with pytest.raises(OSError) as e:
                open(f"{m}/{view}/x", "w")
            assert e.value.errno == errno.EROFS
        open(f"{m}/main/x", "w").write("two")       # browsing history changed nothing here
        _wait_committed(repo)
        assert open(f"{m}/@commits/{head}/x").read() == "one"
        assert open(f"{m}/main/x").read() == "two"


def test_cwd_inside_a_branch_survives_commits_sqlite(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.2") as m:
        os.makedirs(f"{m}/main/run/db")
        here = os.getcwd()
        os.chdir(f"{m}/main/run/db")                    # a process whose cwd is in the branch
        try:
            for round_ in range(3):
                head = _head(repo)
                con = sqlite3.connect("metrics.db")      # relative: needs a valid cwd
                con.execute("create table if not exists m (step int, loss real)")
                for i in range(10):
                    con.execute("insert into m values (?, ?)", (round_ * 10 + i, 1.0 / (i + 1)))
                con.commit()
                con.close()
                assert wait_for(lambda: _head(repo) != head and settled(repo), timeout=20)
                assert os.getcwd() == f"{m}/main/run/db"    # still valid after the commit
                assert os.path.exists("metrics.db")
            con = sqlite3.connect("metrics.db")
            assert con.execute("select count(*) from m").fetchone()[0] == 30
            con.close()
        finally:
            os.chdir(here)
        assert wait_for(lambda: settled(repo), timeout=20)
    with Repository(repo) as r:
        assert len(r.log("main")) >= 4                  # the rounds were separate commits


def test_dd_notrunc_and_replace_are_read_back_at_once(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.2") as m:
        b = f"{m}/main"
        open(f"{b}/blob", "wb").write(b"0" * 4096)
        _wait_committed(repo)
        for i in range(1, 4):                            # repeated in-place writes
            subprocess.run(["dd", f"of={b}/blob", "bs=1", f"seek={i * 100}", "conv=notrunc",
                            "status=none"], input=b"X" * 10, check=True)
            data = open(f"{b}/blob", "rb").read()
            assert data[i * 100:i * 100 + 10] == b"X" * 10 and len(data) == 4096
        os.truncate(f"{b}/blob", 8192)                   # a truncate that grows it
        assert os.stat(f"{b}/blob").st_size == 8192
        assert open(f"{b}/blob", "rb").read()[4096:] == b"\0" * 4096
        for i in range(20):                              # tempfile + os.replace + open
            tmp = f"{b}/.cfg.{i}.tmp"
            with open(tmp, "w") as f:
                f.write(f"version {i}")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, f"{b}/config.json")
            assert open(f"{b}/config.json").read() == f"version {i}"
        _wait_committed(repo)
    with Repository(repo) as r:
        assert r.read_file("main:config.json") == b"version 19"
        assert len(r.read_file("main:blob")) == 8192


def test_fsync_of_a_write_descriptor_commits(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "600") as m:
        before = _head(repo)
        fd = os.open(f"{m}/main/train.log", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"step 1\n")
        os.fsync(fd)                                     # returns once committed
        with Repository(repo) as r:
            assert r.head("main") != before and r.read_file("main:train.log") == b"step 1\n"
        os.write(fd, b"step 2\n")
        os.close(fd)
    with Repository(repo) as r:                          # unmount committed the rest
        assert r.read_file("main:train.log") == b"step 1\nstep 2\n"


def test_rsync_twice_transfers_nothing_the_second_time(fresh, tmp_path):
    if subprocess.run(["which", "rsync"], capture_output=True).returncode:
        pytest.skip("rsync is not installed (scripts/setup.sh installs it)")
    repo, mnt = fresh
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / f"f{i}.bin").write_bytes(os.urandom(10_000 + i))
    (src / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "sub" / "run.sh", 0o755)
    os.symlink("f0.bin", src / "latest")
    with mounted(repo, mnt, "--commit-delay", "0.3") as m:
        subprocess.run(["rsync", "-a", f"{src}/", f"{m}/main/"], check=True)
        _wait_committed(repo)
        head = _head(repo)
        p = subprocess.run(["rsync", "-a", "--stats", f"{src}/", f"{m}/main/"], check=True,
                           capture_output=True, text=True)
        assert "Number of regular files transferred: 0" in p.stdout, p.stdout
        assert os.access(f"{m}/main/sub/run.sh", os.X_OK)
        assert os.readlink(f"{m}/main/latest") == "f0.bin"
        _wait_committed(repo)
        assert _head(repo) == head                       # nothing to commit either
    with mounted(repo, mnt) as m:                        # modes and links after a remount
        assert stat.S_IMODE(os.stat(f"{m}/main/sub/run.sh").st_mode) == 0o755
        assert os.readlink(f"{m}/main/latest") == "f0.bin"
        assert sha256_file(f"{m}/main/f3.bin") == sha256_file(src / "f3.bin")


def test_git_clone_and_tar_into_a_branch(fresh, tmp_path):
    repo, mnt = fresh
    src = tmp_path / "gitsrc"
    src.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    for i in range(3):
        (src / f"file{i}.txt").write_text(f"content {i}\n" * 100)
        subprocess.run(["git", "-C", str(src), "add", "."], check=True)
        subprocess.run(["git", "-C", str(src), "commit", "-qm", f"c{i}"], check=True, env=env)
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "x.txt").write_text("x")
    (tree / "tool").write_text("#!/bin/sh\n")
    os.chmod(tree / "tool", 0o750)
    os.symlink("a/b/x.txt", tree / "link")
    tarball = tmp_path / "t.tar"
    with tarfile.open(tarball, "w") as t:
        t.add(tree, arcname="tree")
    with mounted(repo, mnt, "--commit-delay", "0.3") as m:
        subprocess.run(["git", "clone", "-q", str(src), f"{m}/main/clone"], check=True)
        p = subprocess.run(["git", "-C", f"{m}/main/clone", "fsck"], capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stderr
        subprocess.run(["tar", "-xf", str(tarball), "-C", f"{m}/main"], check=True)
        assert os.readlink(f"{m}/main/tree/link") == "a/b/x.txt"
        assert stat.S_IMODE(os.stat(f"{m}/main/tree/tool").st_mode) == 0o750
        _wait_committed(repo, timeout=60)
        log = subprocess.run(["git", "-C", f"{m}/main/clone", "log", "--oneline"],
                             capture_output=True, text=True, check=True).stdout
        assert len(log.splitlines()) == 3
    with Repository(repo) as r:
        assert r.read_file("main:clone/file2.txt") == b"content 2\n" * 100
        assert r.entry(r.head("main"), "tree/link")["target"] == "a/b/x.txt"
        assert r.fsck().ok


def test_long_names_are_refused(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt) as m:
        with pytest.raises(OSError) as e:
            open(f"{m}/main/{'n' * 256}", "w")
        assert e.value.errno == errno.ENAMETOOLONG


def test_fsync_of_a_directory_commits(fresh):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "600") as m:
        before = _head(repo)
        os.makedirs(f"{m}/main/empty")
        open(f"{m}/main/a.txt", "w").write("a")
        fd = os.open(f"{m}/main/empty", os.O_RDONLY | os.O_DIRECTORY)   # an empty directory
        try:
            os.fsync(fd)                                 # returns once committed
        finally:
            os.close(fd)
        with Repository(repo) as r:
            assert r.head("main") != before and r.read_file("main:a.txt") == b"a"
