"""The fsspec filesystem (protocol ``corafs``, registered by entry point): the mount's layout,
lazy seekable reads, writes that commit, a transaction that is one commit, pandas reading and
writing through fsspec URLs, and DCP's FsspecWriter/FsspecReader on a branch."""
import hashlib

import fsspec
import numpy as np
import pytest

import corafs
from conftest import sha256_bytes
from corafs.integrations.fsspec_fs import CorafsFileSystem


@pytest.fixture
def fs(repo, work):
    import safetensors.numpy
    rng = np.random.default_rng(0)
    for step in range(3):
        p = work / "model.safetensors"
        safetensors.numpy.save_file({"w": rng.standard_normal((256, 256), dtype=np.float32),
                                     "b": np.full(256, step, np.float32)}, str(p))
        repo.commit("main", {"model.safetensors": str(p), "config.json": str(p)},
                    message=f"step {step}")
    repo.create_tag("v1", "main~1")
    yield CorafsFileSystem(repo=repo, skip_instance_cache=True)


@pytest.mark.smoke
def test_registered_and_laid_out_like_the_mount(fs, repo):
    assert fsspec.get_filesystem_class("corafs") is CorafsFileSystem
    assert fs.ls("", detail=False) == ["main", "@tags", "@commits"]
    assert fs.ls("@tags", detail=False) == ["@tags/v1"]
    info = fs.info("main/model.safetensors")
    head = repo.head("main")
    assert info["type"] == "file" and info["commit"] == head
    assert info["sha256"] == sha256_bytes(repo.read_file("main:model.safetensors"))
    assert info["size"] == len(repo.read_file("main:model.safetensors"))
    for path, rev in (("main~2/model.safetensors", "main~2"),
                      ("@tags/v1/model.safetensors", "main~1"),
                      (f"@commits/{head}/model.safetensors", "main")):
        assert fs.cat(path) == repo.read_file(f"{rev}:model.safetensors"), path
    assert fs.cat_file("main/config.json", 10, 20) == repo.read_file("main:config.json")[10:20]
    data = repo.read_file("main:model.safetensors")
    assert fs.cat_ranges(["main/model.safetensors"] * 2, [0, 100], [8, 200]) == \
        [data[0:8], data[100:200]]
    with fs.open("main~1/model.safetensors") as f:            # seekable, lazy
        f.seek(-16, 2)
        assert f.read() == repo.read_file("main~1:model.safetensors")[-16:]
    with pytest.raises(FileNotFoundError):
        fs.info("main/absent.bin")
    with pytest.raises(FileNotFoundError):
        fs.ls("nobranch")
    with pytest.raises(PermissionError):                       # history is read-only
        fs.pipe_file("main~1/x.bin", b"x")


def test_a_write_is_a_commit_and_a_transaction_one_commit(fs, repo):
    before = repo.head("main")
    fs.pipe_file("main/metrics.json", b'{"loss": 0.5}')
    assert repo.read_file("main:metrics.json") == b'{"loss": 0.5}'
    assert repo.commit_obj(repo.head("main")).parents == (before,)
    one = repo.head("main")
    with fs.transaction:
        with fs.open("main/a/one.bin", "wb") as f:
            f.write(b"1" * 1000)
        fs.pipe_file("main/a/two.bin", b"2")
        fs.rm("main/config.json")
        assert repo.head("main") == one                        # nothing until the end
    c = repo.commit_obj(repo.head("main"))
    assert c.parents == (one,)
    assert sorted(p for p, e in repo.walk(c.id) if e["kind"] == "file") == \
        ["a/one.bin", "a/two.bin", "metrics.json", "model.safetensors"]
    with pytest.raises(ValueError):
        with fs.transaction:
            fs.pipe_file("main/lost.bin", b"x")
            raise ValueError("abandoned")
    assert "lost.bin" not in repo.listdir(repo.head("main"))   # discarded, never committed
    fs.mv("main/a/two.bin", "main/b.bin")
    assert repo.read_file("main:b.bin") == b"2" and fs.exists("main/b.bin")
    assert not fs.exists("main/a/two.bin")


def test_pandas_through_fsspec_urls(repo, monkeypatch):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"step": [10, 20, 30], "loss": [0.9, 0.5, 0.4]})
    opts = {"repo": repo.path}
    df.to_csv("corafs://main/metrics.csv", index=False, storage_options=opts)
    back = pd.read_csv("corafs://main/metrics.csv", storage_options=opts)
    assert back.equals(df)
    monkeypatch.setenv("CORAFS_REPO", repo.path)                 # a bare URL
    with fsspec.open("corafs://main/metrics.csv", "rt") as f:
        assert pd.read_csv(f)["loss"].tolist() == [0.9, 0.5, 0.4]
    with corafs.Repository(repo.path) as r:
        assert r.log("main")[0].message.startswith("Add metrics.csv")


def test_dcp_save_and_load_through_fsspec(repo):
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
    torch.manual_seed(0)
    state = {"model": {"w": torch.randn(64, 64), "b": torch.randn(64)}, "step": 100}
    fs = fsspec.filesystem("corafs", repo=repo.path)
    url = "corafs://main/step-100"
    dcp.save(state, storage_writer=FsspecWriter(url, repo=repo.path), no_dist=True)
    names = sorted(p for p, _ in repo.walk(repo.head("main")))
    assert "step-100/.metadata" in names and any(n.endswith(".distcp") for n in names)
    target = {"model": {"w": torch.zeros(64, 64), "b": torch.zeros(64)}, "step": 0}
    dcp.load(target, storage_reader=FsspecReader(url, repo=repo.path), no_dist=True)
    assert torch.equal(target["model"]["w"], state["model"]["w"])
    assert target["step"] == 100
    digest = hashlib.sha256(fs.cat("main/step-100/.metadata")).hexdigest()
    assert digest == sha256_bytes(repo.read_file("main:step-100/.metadata"))
