"""The corafs command, run as a real subprocess."""
import os

import safetensors.torch
import torch

from conftest import run_cli, sha256_file


def _ckpts(work):
    torch.manual_seed(0)
    m = torch.nn.Linear(64, 32)
    safetensors.torch.save_file(m.state_dict(), str(work / "model.safetensors"))
    (work / "config.json").write_text('{"hidden": 64}')
    run = work / "run"
    (run / "sub").mkdir(parents=True)
    torch.save(m.state_dict(), run / "a.pth")
    (run / "sub" / "notes.txt").write_text("hello")
    with torch.no_grad():
        m.weight.add_(0.01)
    safetensors.torch.save_file(m.state_dict(), str(work / "model2.safetensors"))


def test_cli_workflow(tmp_path, work):
    _ckpts(work)
    repo = tmp_path / "repo"
    assert "Initialized" in run_cli("init", repo).stdout
    out = run_cli("commit", repo, work / "model.safetensors", work / "config.json", "-m", "first")
    assert "[main " in out.stdout and "first" in out.stdout
    # a directory's contents land at the root with relative paths; --to puts them below DEST
    run_cli("commit", repo, str(work / "run") + "/")
    run_cli("commit", repo, work / "run", "--to", "runs/r1")
    ls = run_cli("ls", repo, "main", "-r").stdout
    for p in ("model.safetensors", "config.json", "a.pth", "sub/notes.txt", "runs/r1/a.pth",
              "runs/r1/sub/notes.txt"):
        assert p in ls, ls
    import shutil
    shutil.copy(work / "model2.safetensors", work / "model.safetensors")
    run_cli("commit", repo, work / "model.safetensors")
    log = run_cli("log", repo, "--oneline").stdout.splitlines()
    assert len(log) == 5 and "Update model.safetensors" in log[0]
    show = run_cli("show", repo, "main:model.safetensors").stdout
    assert "weight" in show and "F32" in show and "[32, 64]" in show
    diff = run_cli("diff", repo, "main~1", "main").stdout
    assert "M model.safetensors" in diff and "weight" in diff and "cos=" in diff
    stats = run_cli("stats", repo).stdout
    assert "logical bytes" in stats and "ratio" in stats
    assert "consistent" in run_cli("fsck", repo).stdout
    run_cli("export", repo, "main:model.safetensors", tmp_path / "out.safetensors")
    assert sha256_file(tmp_path / "out.safetensors") == sha256_file(work / "model2.safetensors")
    run_cli("export", repo, "main:runs", tmp_path / "runs")
    assert sha256_file(tmp_path / "runs" / "r1" / "a.pth") == sha256_file(work / "run" / "a.pth")
    run_cli("branch", repo, "exp-lr", "main~1")
    run_cli("tag", repo, "v1.0", "main", "-m", "release")
    assert "exp-lr" in run_cli("branch", repo).stdout
    assert "v1.0" in run_cli("tag", repo).stdout and "release" in run_cli("tag", repo).stdout
    assert run_cli("ls", repo, "v1.0").returncode == 0


def test_cli_export_of_old_version_is_exact(tmp_path, work):
    _ckpts(work)
    repo = tmp_path / "repo"
    run_cli("init", repo)
    run_cli("commit", repo, work / "model.safetensors")
    first = sha256_file(work / "model.safetensors")
    import shutil
    shutil.copy(work / "model2.safetensors", work / "model.safetensors")
    run_cli("commit", repo, work / "model.safetensors")
    run_cli("export", repo, "main~1:model.safetensors", tmp_path / "old.safetensors")
    assert sha256_file(tmp_path / "old.safetensors") == first


def test_cli_errors_are_one_line(tmp_path, work):
    repo = tmp_path / "repo"
    p = run_cli("log", tmp_path / "nowhere", check=False)
    assert p.returncode != 0 and "not a corafs repository" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    run_cli("init", repo)
    for args in (("show", repo, "nope"), ("commit", repo, work / "missing.pth"),
                 ("branch", repo, "bad~name"), ("export", repo, "main:nothing", tmp_path / "x"),
                 ("init", repo)):
        p = run_cli(*args, check=False)
        assert p.returncode != 0, args
        assert "Traceback" not in p.stderr and p.stderr.startswith("corafs: error:"), p.stderr


def test_cli_reports_unparsed_file(tmp_path, work):
    repo = tmp_path / "repo"
    run_cli("init", repo)
    (work / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
    p = run_cli("commit", repo, work / "broken.safetensors")
    assert "stored as an opaque file" in p.stderr
    run_cli("export", repo, "main:broken.safetensors", tmp_path / "b")
    assert sha256_file(tmp_path / "b") == sha256_file(work / "broken.safetensors")


def test_fsck_names_broken_file(tmp_path, work):
    _ckpts(work)
    repo = tmp_path / "repo"
    run_cli("init", repo)
    run_cli("commit", repo, work / "model.safetensors")
    import glob
    import h5py
    # flip bytes inside the tensor data of the newest pack
    pack = max(glob.glob(str(repo / "objects" / "pack-*.h5")), key=lambda p: __import__("os").path.getsize(p))
    with h5py.File(pack, "r+") as f:
        d = f["data"]
        n = d.shape[0]
        d[n // 2:n // 2 + 64] = 0x55
    p = run_cli("fsck", repo, check=False)
    assert p.returncode != 0
    assert "BROKEN" in p.stdout


def test_doctor_on_a_local_path_says_there_is_nothing_to_probe(tmp_path):
    for path, what in ((tmp_path / "missing", "no such directory yet"),
                       (tmp_path, "a local directory, no repository yet")):
        out = run_cli("doctor", path).stdout
        assert what in out and "no service to probe" in out


def test_mount_refuses_a_cache_it_cannot_work_with(tmp_path):
    """`--cache-size 2048` (meant as MiB, taken as bytes) is refused before anything mounts,
    with the unit named; a size the mount works with passes the check (no FUSE needed)."""
    from corafs.daemon.mount import MIN_CACHE, MountOptions
    repo, mnt = tmp_path / "repo", tmp_path / "mnt"
    mnt.mkdir()
    run_cli("init", repo)
    for size in ("2048", "1M", "63M"):
        p = run_cli("mount", repo, mnt, "--cache-size", size, check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        assert "below what the mount works with" in p.stderr and "in bytes" in p.stderr
        assert not any(mnt.iterdir()) and not os.path.ismount(mnt)
    MountOptions(cache_size=MIN_CACHE).check()
