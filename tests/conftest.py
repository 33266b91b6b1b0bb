import hashlib
import os
import subprocess
import sys

import pytest

from corafs import Repository
from corafs.config import Tuning

# small blocks so that multi-block tensors, delta chains and chunking are exercised by small files
SMALL = Tuning(block_size=64 << 10, chunk_avg=8 << 10,
               pack_target=4 << 20, block_cache_bytes=16 << 20)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def repo(tmp_path):
    r = Repository.init(str(tmp_path / "repo"), tuning=SMALL)
    yield r
    r.close()


@pytest.fixture
def fresh(tmp_path):
    """A new repository (made by the CLI) and a mountpoint path for it."""
    repo = tmp_path / "repo"
    run_cli("init", repo)
    return repo, tmp_path / "mnt"


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


def run_cli(*args, check=True, env=None, timeout=120):
    """Run the real ``corafs`` entry point in a subprocess (the one CLI runner of the tests;
    ``mountutil.corafs`` is this)."""
    p = subprocess.run([sys.executable, "-m", "corafs", *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"corafs {' '.join(map(str, args))} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def commit_and_export(repo, src, tmp_path, name=None):
    """Commit ``src`` and export it again; return (original sha256, exported sha256, result)."""
    name = name or os.path.basename(src)
    res = repo.commit(repo.default_branch, {name: str(src)})
    out = tmp_path / ("exported-" + name)
    repo.export(f"{repo.default_branch}:{name}", str(out))
    return sha256_file(src), sha256_file(out), res
