"""Repository semantics: commits, trees, refs, revisions, log, merge-base, concurrency."""
import threading

import pytest
import torch

from corafs import Repository
from corafs.errors import AmbiguousRevision, InvalidName, NotFound, RefExists, RepositoryExists
from conftest import SMALL, sha256_bytes


def _write(work, name, data: bytes):
    p = work / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return str(p)


def test_new_repository_has_empty_default_branch(repo):
    assert repo.branches().keys() == {"main"}
    assert repo.listdir(repo.head("main")) == {}
    with pytest.raises(RepositoryExists):
        Repository.init(repo.path)


def test_commit_ids_are_sha256_of_canonical_bytes(repo, work):
    import hashlib
    from corafs.core.objects import canonical
    cid = repo.commit("main", {"a.txt": _write(work, "a", b"x")}).commit
    assert hashlib.sha256(canonical(repo.get_meta(cid))).hexdigest() == cid


def test_nested_trees_to_and_deletes(repo, work):
    c1 = repo.commit("main", {"sub/dir/a.txt": _write(work, "a", b"A"),
                              "b.txt": _write(work, "b", b"B")}).commit
    assert set(repo.listdir(c1)) == {"sub", "b.txt"}
    assert repo.read_file("main:sub/dir/a.txt") == b"A"
    c2 = repo.commit("main", deletes=["sub/dir/a.txt"], mkdirs=["empty"]).commit
    assert repo.listdir(c2)["empty"]["kind"] == "dir"
    assert repo.listdir(c2, "sub/dir") == {}
    assert repo.read_file(f"{c1}:b.txt") == b"B"
    # unchanged content: no new commit
    assert repo.commit("main", {"b.txt": _write(work, "b", b"B")}).commit is None


@pytest.mark.smoke
def test_revisions(repo, work):
    ids = [repo.head("main")]
    for i in range(4):
        ids.append(repo.commit("main", {"f": _write(work, "f", bytes([i]))}).commit)
    assert repo.resolve("main") == ids[-1]
    assert repo.resolve("main~2") == ids[-3]
    assert repo.resolve("main^") == ids[-2]
    assert repo.resolve("main^^") == ids[-3]
    assert repo.resolve("main~1^") == ids[-3]
    assert repo.resolve(ids[2][:10]) == ids[2]
    assert repo.resolve(ids[2]) == ids[2]
    repo.create_tag("v1", "main~1", message="release")
    assert repo.resolve("v1") == ids[-2]
    assert repo.resolve("v1~1") == ids[-3]
    assert repo.tag_info("v1")["message"] == "release"
    with pytest.raises(NotFound):
        repo.resolve("main~10")
    with pytest.raises(NotFound):
        repo.resolve("nope")
    # an ambiguous prefix: commit (cheaply: a symlink entry) until two commit ids share their
    # first 4 hex digits (about 320 commits by the birthday bound), then resolve that prefix
    seen: dict[str, str] = {}
    for i in range(5000):
        cid, _ = repo.commit_changes("main", {"x": {"kind": "link", "target": str(i)}}, f"c{i}")
        if cid[:4] in seen:
            break
        seen[cid[:4]] = cid
    else:
        pytest.fail("no two commit ids shared a 4-digit prefix")
    with pytest.raises(AmbiguousRevision):
        repo.resolve(cid[:4])
    assert repo.resolve(cid[:16]) == cid


def test_branch_names_validated(repo):
    for bad in ["@x", "a~b", "a^b", "a:b", "a/b", "", ".hidden"]:
        with pytest.raises(InvalidName):
            repo.create_branch(bad)
    repo.create_branch("exp-lr")
    with pytest.raises(RefExists):
        repo.create_branch("exp-lr")
    repo.delete_branch("exp-lr")
    assert "exp-lr" not in repo.branches()


def test_log_and_merge_base(repo, work):
    base = repo.commit("main", {"f": _write(work, "f", b"0")}).commit
    repo.create_branch("exp", "main")
    a = repo.commit("main", {"f": _write(work, "f", b"1")}).commit
    b = repo.commit("exp", {"g": _write(work, "g", b"2")}).commit
    assert repo.merge_base("main", "exp") == base
    assert [c.id for c in repo.log("exp")][:2] == [b, base]
    assert repo.is_ancestor(base, a) and not repo.is_ancestor(a, b)
    hist = repo.first_parent_history("main")
    assert hist[-1].id == a and hist[0].message == "Initialize repository"


@pytest.mark.smoke
def test_concurrent_writers_never_lose_a_commit(tmp_path, work):
    path = str(tmp_path / "r")
    Repository.init(path, tuning=SMALL).close()
    errors = []

    def writer(k):
        try:
            with Repository(path, tuning=SMALL) as r:
                for i in range(5):
                    r.commit("main", {f"w{k}/f{i}": _write(work, f"w{k}-{i}", f"{k}-{i}".encode())})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    with Repository(path) as r:
        assert len(r.log("main")) == 21
        for k in range(4):
            for i in range(5):
                assert r.read_file(f"main:w{k}/f{i}") == f"{k}-{i}".encode()


def test_deltas_against_previous_version_bit_exact(repo, work):
    w = torch.randn(256, 256)
    shas = []
    for step in range(6):
        w = w + torch.randn_like(w) * 1e-3
        p = work / "m.pth"
        torch.save({"w": w.clone(), "b": w[0].clone().to(torch.bfloat16)}, p)
        shas.append(sha256_bytes(p.read_bytes()))
        repo.commit("main", {"m.pth": str(p)})
    assert repo.wait_reencode(60)          # history becomes deltas after the commits
    st = repo.stats()
    assert st.deltas > 0
    for i, sha in enumerate(reversed(shas)):
        assert sha256_bytes(repo.read_file(f"main~{i}:m.pth")) == sha
    assert repo.fsck().ok


def test_reference_found_by_name_in_parent_and_by_similarity(repo, work):
    import safetensors.torch
    torch.manual_seed(0)
    sd = {"enc.weight": torch.randn(256, 256), "dec.weight": torch.randn(256, 256)}
    safetensors.torch.save_file(sd, str(work / "a.safetensors"))
    repo.commit("main", {"a.safetensors": str(work / "a.safetensors")})
    # same tensor names in a differently named file: found by name in the parent commit
    tuned = {k: v + torch.randn_like(v) * 1e-4 for k, v in sd.items()}
    safetensors.torch.save_file(tuned, str(work / "b.safetensors"))
    repo.commit("main", {"other.safetensors": str(work / "b.safetensors")})
    first = repo.get_meta(repo.entry(repo.head("main"), "a.safetensors")["id"])["tensors"]
    m = repo.get_meta(repo.entry(repo.head("main"), "other.safetensors")["id"])
    # the reference is recorded as the tensor this one replaces (head-first re-encoding
    # turns the reference into deltas against it when it is no longer held)
    assert {repo.tensor_manifest(t["id"]).get("prev") for t in m["tensors"]} == \
        {t["id"] for t in first}
    # renamed tensors on a new branch: found by the similarity index
    repo.create_branch("exp", repo.log("main")[-1].id)     # the empty initial commit
    renamed = {"renamed." + k: v + torch.randn_like(v) * 1e-4 for k, v in sd.items()}
    safetensors.torch.save_file(renamed, str(work / "c.safetensors"))
    repo.commit("exp", {"c.safetensors": str(work / "c.safetensors")})
    m = repo.get_meta(repo.entry(repo.head("exp"), "c.safetensors")["id"])
    prevs = {repo.tensor_manifest(t["id"]).get("prev") for t in m["tensors"]}
    assert prevs and prevs <= {t["id"] for t in first} | {
        t["id"] for t in repo.get_meta(repo.entry(repo.head("main"),
                                                  "other.safetensors")["id"])["tensors"]}
    # the file a.safetensors is still held by main's head: it is not turned into deltas
    assert repo.wait_reencode(30)
    for t in first:
        for b in repo.tensor_manifest(t["id"])["blocks"]:
            assert not repo.block_header(b[0]).is_delta
    assert sha256_bytes(repo.read_file("exp:c.safetensors")) == sha256_bytes(
        (work / "c.safetensors").read_bytes())
    # unrelated random tensors of the same shape are not taken as references
    from corafs.core import simindex
    a = simindex.fingerprint(torch.randn(4096).numpy().view("uint8"), "F32")
    b = simindex.fingerprint(torch.randn(4096).numpy().view("uint8"), "F32")
    assert simindex.distance(a, b) > simindex.MAX_DISTANCE


def test_similarity_index_rebuilt_when_missing(repo, work):
    import os
    import safetensors.torch
    sd = {"w": torch.randn(128, 128)}
    safetensors.torch.save_file(sd, str(work / "a.safetensors"))
    repo.commit("main", {"a.safetensors": str(work / "a.safetensors")})
    os.unlink(repo.simindex.path)
    from corafs import Repository
    r2 = Repository(repo.path, tuning=repo.tuning)
    fp = r2.tensor_manifest(repo.get_meta(repo.entry(repo.head("main"), "a.safetensors")["id"])["tensors"][0]["id"])["fp"]
    assert r2.simindex.nearest("F32", 128 * 128 * 4, int(fp, 16)) is not None


@pytest.mark.smoke
def test_delta_chains_bounded_reads_exact(tmp_path, work):
    import dataclasses
    from corafs.core.stats import chain_depth
    tuning = dataclasses.replace(SMALL, max_delta_depth=3)
    r = Repository.init(str(tmp_path / "r"), tuning=tuning)
    r.background_reencode = False
    w = torch.randn(128, 256)
    shas = []
    for step in range(10):
        w = w + torch.randn_like(w) * 1e-4
        p = work / "m.pth"
        torch.save({"w": w.clone()}, p)
        shas.append(sha256_bytes(p.read_bytes()))
        r.commit("main", {"m.pth": str(p)})
        r.reencode()
    depths, codecs_used, memo = [], set(), {}
    for c in r.log("main"):
        for path, e in r.walk(c.id):
            for t in r.get_meta(e["id"])["tensors"]:
                for oid, _depth, _codec in r.tensor_manifest(t["id"])["blocks"]:
                    depths.append(chain_depth(r, oid, memo))
                    codecs_used.add(r.block_header(oid).codec)
    assert max(depths) == 3
    assert "osub2-planes-zstd" in codecs_used or "osub-planes-zstd" in codecs_used
    for i, sha in enumerate(reversed(shas)):
        assert sha256_bytes(r.read_file(f"main~{i}:m.pth")) == sha
    assert r.fsck().ok
    r.close()
