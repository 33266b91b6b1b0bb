"""Defects found in review and in a fresh-venv run (issue 19), each tested without FUSE: the
staging journal after a failed statement, an unreadable journal set aside whole, a
re-encoding job that cannot finish, fsck beside a repack, the mount lock's probe, gc's grace on
a local repository, and the background-health record the mount keeps."""
import os
import sqlite3
import subprocess
import sys
import threading

import numpy as np
import pytest
import safetensors.numpy

from conftest import SMALL, run_cli, sha256_file
from corafs import Repository
from corafs.core import headfirst, maintenance
from corafs.daemon import MountLock
from corafs.view import health
from corafs.core.journal import Journal
from corafs.view.staging import Staging


# -- the staging journal ---------------------------------------------------------------------------
def test_journal_rolls_back_a_change_that_fails_midway(tmp_path):
    """A change that fails inside its transaction (here a row that cannot be encoded) must
    roll it back: before the fix the connection stayed inside it and every later change of the
    mount failed ("cannot start a transaction within a transaction"), until remount."""
    j = Journal(str(tmp_path / "journal.db"))
    j.update("main", "c0", [], {"a": {"op": "entry"}})
    with pytest.raises(TypeError):
        j.update("main", "c0", [], {"b": {"op": "entry"}, "c": {"op": {1, 2}}})
    assert not j.db.in_transaction
    j.update("main", "c0", [], {"d": {"op": "entry"}})
    with pytest.raises(TypeError):
        j.replace("main", "c1", {"e": {"bad": object()}})
    j.replace("exp", "c1", {"x": {"op": "delete"}})
    rows = j.load()
    assert set(rows["main"][1]) == {"a", "d"} and set(rows["exp"][1]) == {"x"}
    j.close()


def test_journal_recovers_from_a_full_disk(tmp_path):
    """A statement failing inside the transaction (here SQLite's "database or disk is full")
    must roll it back: before the fix the connection stayed inside it and every later change
    failed ("cannot start a transaction within a transaction")."""
    j = Journal(str(tmp_path / "journal.db"))
    j.update("main", "c0", [], {"a": {"op": "entry"}})
    pages = j.db.execute("PRAGMA page_count").fetchone()[0]
    j.db.execute(f"PRAGMA max_page_count={pages}")          # a full disk, as SQLite sees it
    big = {f"f{i}": {"op": "entry", "pad": "x" * 4000} for i in range(50)}
    with pytest.raises(sqlite3.OperationalError, match="full"):
        j.update("main", "c0", [], big)
    assert not j.db.in_transaction
    j.db.execute("PRAGMA max_page_count=1073741823")        # space again
    j.update("main", "c0", [], {"b": {"op": "entry"}})
    j.replace("exp", "c1", {"x": {"op": "delete"}})
    rows = j.load()
    assert set(rows["main"][1]) == {"a", "b"} and set(rows["exp"][1]) == {"x"}
    j.close()


def test_journal_unreadable_at_recovery_is_set_aside_with_its_wal(tmp_path, repo):
    """A journal that opened but cannot be read at recovery goes to lost+found with its -wal
    and -shm. Before the fix only journal.db moved: the fresh journal found the old WAL beside
    it and SQLite replayed the bad rows into it."""
    root = tmp_path / "staging"
    st = Staging(repo, str(root))
    st.journal.update("main", repo.head("main"), [], {"ok": {"op": "mkdir"}})
    st.journal.db.execute("INSERT INTO rows VALUES ('main', 'bad', '{not json')")
    # a reader has it open meanwhile (`corafs status`, a gc), so closing the journal leaves
    # its WAL in place
    reader = sqlite3.connect(f"file:{root / 'journal.db'}?mode=ro", uri=True)
    reader.execute("SELECT count(*) FROM rows").fetchone()
    report = st.recover()
    reader.close()
    assert any("could not be read" in line for line in report)
    kept = [n for n in os.listdir(root / "lost+found") if n.startswith("journal-")]
    assert {n.rsplit(".db", 1)[1] for n in kept} >= {"", "-wal"}
    assert st.journal.load() == {}                 # nothing of the old one came back
    st.close()
    st = Staging(repo, str(root))                  # nor on the next open
    assert st.journal.load() == {} and st.recover() == []
    st.close()


def test_unreadable_journal_is_set_aside_with_its_wal_and_shm(tmp_path, repo):
    """An unreadable journal goes to lost+found together with its -wal and -shm: left beside
    the fresh journal, SQLite could replay the old WAL into it."""
    root = tmp_path / "staging"
    root.mkdir()
    path = root / "journal.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    (root / "journal.db-wal").write_bytes(b"old wal frames" * 50)
    (root / "journal.db-shm").write_bytes(b"\0" * 32768)
    st = Staging(repo, str(root))
    report = st.recover()
    assert any("could not be read" in line for line in report)
    lost = sorted(os.listdir(root / "lost+found"))
    kept = [n for n in lost if n.startswith("journal-")]
    assert len(kept) == 3 and {n.rsplit(".db", 1)[1] for n in kept} == {"", "-wal", "-shm"}
    assert not (root / "journal.db-wal").exists() or \
        b"old wal frames" not in (root / "journal.db-wal").read_bytes()
    assert st.journal.load() == {}
    st.journal.update("main", repo.head("main"), [], {"a": {"op": "mkdir"}})
    assert "a" in st.journal.load()["main"][1]
    st.close()


# -- re-encoding jobs that cannot finish -------------------------------------------------------------
def _series(repo, work, n=3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    shas = []
    for i in range(n):
        w = w + rng.standard_normal(w.shape).astype(np.float32) * 1e-3
        p = work / f"v{i}.safetensors"
        safetensors.numpy.save_file({"w": w, "b": w[0].copy()}, str(p))
        repo.commit("main", {"model.safetensors": str(p)}, message=f"v{i}")
        shas.append(sha256_file(p))
    return shas


def _corrupt(repo, oid):
    """Flip bytes inside one stored object, in its pack file."""
    payload = bytes(repo.store.get(oid))
    pack = repo.store.location(oid)[0]
    path = os.path.join(repo.store.objdir, pack + ".h5")
    with open(path, "rb") as f:
        at = f.read().find(payload)          # packs hold objects as stored, contiguously
    assert at >= 0
    with open(path, "r+b") as f:
        f.seek(at + len(payload) // 2)
        f.write(bytes(b ^ 0xFF for b in payload[len(payload) // 2:][:64]))
    repo.store.rescan()
    repo.cache.clear()


def _blocks(repo, rev):
    m = repo.get_meta(repo.entry(repo.resolve(rev), "model.safetensors")["id"])
    return [b[0] for t in m["tensors"] for b in repo.tensor_manifest(t["id"])["blocks"]]


@pytest.mark.smoke
def test_reencoding_job_with_an_unreadable_block_is_set_aside(tmp_path, work):
    repo = Repository.init(str(tmp_path / "r"), tuning=SMALL)
    repo.background_reencode = False          # the job stays queued until reencode()
    _series(repo, work, n=2)
    assert len(headfirst.pending(repo)) == 2
    old = _blocks(repo, "main~1")             # what the last commit's job re-encodes
    _corrupt(repo, old[0])
    rep = repo.reencode()
    assert rep.held == 1 and rep.blocks >= 1  # the other blocks were re-encoded
    assert headfirst.pending(repo) == []
    (h,) = headfirst.held(repo)
    assert h.commit == repo.head("main") and "could not be read" in h.reason
    # nothing is stuck behind it: later commits, their re-encoding and gc go on
    _series(repo, work, n=2, seed=1)
    assert repo.reencode().held == 0
    repo.gc()
    rep = repo.fsck()
    assert not rep.ok and any(old[0] in what or old[0] in why for what, why in rep.problems)
    assert [x.commit for x in rep.held] == [h.commit]
    repo.close()
    # the CLI: status and fsck name it; a commit still exits 0
    assert "re-encoding of what commit" in run_cli("status", tmp_path / "r").stdout
    p = run_cli("fsck", tmp_path / "r", check=False)
    assert p.returncode == 1 and "set aside" in p.stdout
    src = work / "v1.safetensors"
    p = run_cli("commit", tmp_path / "r", str(src), "-m", "again")
    assert p.returncode == 0


# -- fsck beside re-encoding and repack -----------------------------------------------------------------
def test_fsck_holds_the_lease_that_pack_replacement_needs(repo, work):
    """Re-encoding and repack replace packs only while they hold the re-encoding lease; fsck
    holds it for its whole run, so a pack cannot vanish under it and read as damage."""
    _series(repo, work, n=3)
    repo.wait_reencode()              # the lease is free before fsck starts
    seen = []

    def probe(_n):
        if not seen:
            def other():
                with maintenance.lock(repo, blocking=False) as got:
                    seen.append(got)
            t = threading.Thread(target=other)
            t.start()
            t.join()

    assert repo.fsck(on_progress=probe).ok
    assert seen == [False]
    repo.wait_reencode()              # the re-encoder that waited for fsck has its turn
    with maintenance.lock(repo, blocking=False) as got:       # released afterwards
        assert got


# -- the mount lock ---------------------------------------------------------------------------------------
def test_mount_lock_probe_never_takes_the_lock(tmp_path):
    """`corafs status`, fsck and a second mount ask who holds the lock; before the fix the
    probe took it for a moment, and a mount starting at that moment was refused."""
    repo = str(tmp_path / "r")
    os.makedirs(os.path.join(repo, "staging"))
    open(os.path.join(repo, "staging", "mount.lock"), "w").close()
    prober = subprocess.Popen([sys.executable, "-c", f"""
import time
from corafs.daemon import MountLock
lock = MountLock({repo!r})
print("probing", flush=True)
end = time.monotonic() + 30
while time.monotonic() < end:
    lock.holder()
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert prober.stdout.readline().strip() == "probing"
        lock = MountLock(repo)
        for _ in range(2000):                 # the lock is free most of the time, as it is
            lock.acquire("/mnt/x")            # before a mount; raises "already mounted" if
            lock.release()                    # a probe held it at that moment
        lock.acquire("/mnt/x")
        assert lock.holder() == "pid %d at /mnt/x" % os.getpid()
        lock.release()
    finally:
        prober.kill()
        prober.wait()
    assert MountLock(repo).holder() is None


# -- gc on a local repository -------------------------------------------------------------------------------
def _big(work, name, seed):
    p = work / name
    p.write_bytes(np.random.default_rng(seed).bytes(3 << 20))
    return p


def test_gc_frees_a_deleted_branch_at_once_on_a_local_repository(tmp_path, work):
    """The README's `branch -d X && gc --expire-reflog now`: no grace period is needed where
    every writer holds the gc lock, so the space comes back at once."""
    repo = tmp_path / "r"
    run_cli("init", repo)
    run_cli("branch", repo, "exp")
    run_cli("commit", repo, _big(work, "blob.bin", 1), "-b", "exp")
    run_cli("branch", repo, "-d", "exp")
    p = run_cli("gc", repo, "--expire-reflog", "now")
    assert "pack(s) younger" not in p.stdout
    with Repository(str(repo)) as r:
        assert r.store.stored_bytes() < 1 << 20
        assert r.fsck().ok


def test_gc_says_what_its_grace_kept(tmp_path, work):
    repo = tmp_path / "r"
    run_cli("init", repo)
    run_cli("branch", repo, "exp")
    run_cli("commit", repo, _big(work, "blob.bin", 2), "-b", "exp")
    run_cli("branch", repo, "-d", "exp")
    p = run_cli("gc", repo, "--expire-reflog", "now", "--grace", "900")
    assert "younger than 15 min kept" in p.stdout and "--grace 0 collects them now" in p.stdout
    with Repository(str(repo)) as r:
        assert r.store.stored_bytes() > 3 << 20
    run_cli("gc", repo, "--expire-reflog", "now", "--grace", "0")
    with Repository(str(repo)) as r:
        assert r.store.stored_bytes() < 1 << 20


# -- the background-health record --------------------------------------------------------------------------
def test_health_records_a_streak_once_and_its_recovery(tmp_path):
    h = health.Health(str(tmp_path))
    assert h.failed("commit", PermissionError(1, "Operation not permitted")) is True
    for _ in range(5):
        assert h.failed("commit", PermissionError(1, "Operation not permitted")) is False
    assert h.failed("commit", OSError(28, "No space left on device")) is True   # new reason
    (line,) = health.failing_lines(str(tmp_path))
    assert line.startswith("failing  commits are failing since ") and "(7 attempts)" in line
    assert "No space left" in line
    assert h.remind("commit") is None                     # not again so soon
    assert h.ok("commit") is True and h.ok("commit") is False
    assert health.failing_lines(str(tmp_path)) == []
    (hist,) = health.history_lines(str(tmp_path))
    assert "then succeeded" in hist and "7 attempts" in hist
    assert h.failed("commit", OSError(5, "I/O error")) is True    # a new streak
    assert "(1 attempts)" in health.failing_lines(str(tmp_path))[0]
    (gone,) = health.failing_lines(str(tmp_path), mounted=False)  # what a dead mount left
    assert "commits were failing when the last mount ended" in gone and "I/O error" in gone
    health.Health(str(tmp_path))                          # a new mount starts clean
    assert health.read(str(tmp_path)) == {}
