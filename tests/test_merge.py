"""Weight-space merge (issue 11, item 1), on real torch and safetensors checkpoints: every
strategy checked against torch arithmetic on the originals, per dtype."""
import os

import pytest
import safetensors
import safetensors.torch
import torch

from conftest import run_cli, sha256_file
import corafs
from corafs.core.merge import MergeConflict
from mountutil import mounted, needs_fuse, wait_for

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                torch.float8_e5m2, torch.float64]


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for dt in FLOAT_DTYPES:
        name = str(dt).split(".")[1]
        sd[f"w_{name}"] = (torch.randn(64, 32, generator=g) * 3).to(dt)
    sd["steps"] = torch.arange(16)
    sd["frozen"] = torch.randn(128, generator=g)
    return sd


def _perturb(sd, seed, keys):
    g = torch.Generator().manual_seed(seed)
    out = dict(sd)
    for k in keys:
        out[k] = (sd[k].float() + torch.randn(sd[k].shape, generator=g) * 0.5).to(sd[k].dtype)
    return out


def _save(sd, d, tag):
    d.mkdir(exist_ok=True)
    torch.save(sd, d / f"{tag}.pth")
    safetensors.torch.save_file(sd, str(d / f"{tag}.safetensors"))


@pytest.fixture
def diverged(repo, work):
    """base -> ours (main) and theirs (exp): float tensors changed on both sides, one tensor
    on each side only, config changed on theirs only."""
    base = _state(0)
    floats = [k for k in base if k.startswith("w_")]
    ours = _perturb(base, 1, floats)
    theirs = _perturb(base, 2, floats + ["frozen"])
    ours["steps"] = base["steps"] + 1                      # ours only
    for tag, sd in (("base", base), ("ours", ours), ("theirs", theirs)):
        _save(sd, work, tag)
    (work / "config.json").write_text('{"lr": 1}')

    def commit(branch, tag, msg, cfg=None):
        files = {"model.pth": str(work / f"{tag}.pth"),
                 "model.safetensors": str(work / f"{tag}.safetensors")}
        if cfg:
            (work / "config.json").write_text(cfg)
            files["config.json"] = str(work / "config.json")
        return repo.commit(branch, files, message=msg).commit
    commit("main", "base", "base", '{"lr": 1}')
    repo.create_branch("exp")
    commit("main", "ours", "ours")
    commit("exp", "theirs", "theirs", '{"lr": 2}')
    return repo, base, ours, theirs


def _expected(ours, theirs, strategy, alpha=0.5):
    out = {}
    for k in ours:
        o, t = ours[k], theirs[k]
        if not k.startswith("w_"):
            continue
        wide = torch.float64 if o.dtype == torch.float64 else torch.float32
        if strategy == "average":
            r = (o.to(wide) + t.to(wide)) / 2
        else:
            r = alpha * o.to(wide) + (1 - alpha) * t.to(wide)
        out[k] = r.to(o.dtype)
    return out


def _bits(t):
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize("strategy", ["average", "weighted"])
def test_average_and_weighted_match_torch_per_dtype(diverged, strategy):
    repo, base, ours, theirs = diverged
    res = repo.merge("exp", strategy=strategy, alpha=0.3)
    want = _expected(ours, theirs, strategy, 0.3)
    c = repo.commit_obj(res.commit)
    assert len(c.parents) == 2 and c.parents[1] == repo.head("exp")
    with corafs.open(repo, "main:model.pth") as f:
        got = torch.load(f, weights_only=True)
    st = corafs.open(repo, "main:model.safetensors").read()
    got_st = safetensors.torch.load(st)
    for k, w in want.items():
        assert torch.equal(_bits(got[k]), _bits(w)), (strategy, k)
        assert torch.equal(_bits(got_st[k]), _bits(w)), (strategy, k)
    assert torch.equal(got["steps"], ours["steps"])            # one side only: that side
    assert torch.equal(got["frozen"], theirs["frozen"])
    assert repo.read_file("main:config.json") == b'{"lr": 2}'
    assert repo.fsck().ok


def test_merged_files_load_with_safe_open_and_weights_only(diverged, tmp_path):
    repo, *_ = diverged
    repo.merge("exp", strategy="average")
    repo.export("main:model.safetensors", str(tmp_path / "m.safetensors"))
    repo.export("main:model.pth", str(tmp_path / "m.pth"))
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert set(f.keys()) == set(_state(0))
    torch.load(tmp_path / "m.pth", weights_only=True)            # CRCs right, pickle intact
    m = repo.get_meta(repo.entry(repo.head("main"), "model.safetensors")["id"])
    assert m["format"] == "safetensors"


def test_ours_theirs_and_fail(diverged):
    repo, base, ours, theirs = diverged
    head = repo.head("main")
    with pytest.raises(MergeConflict) as e:
        repo.merge("exp", strategy="fail")
    assert repo.head("main") == head                              # nothing written
    listed = "\n".join(e.value.conflicts)
    for k in ours:
        if k.startswith("w_"):
            assert f"model.pth:{k}" in listed and f"model.safetensors:{k}" in listed
    assert "config.json" not in listed and "steps" not in listed
    repo.create_branch("try-theirs", "main")
    repo.merge("exp", into="try-theirs", strategy="theirs")
    back = repo.load_tensors("try-theirs:model.safetensors", framework="torch")
    assert torch.equal(_bits(back["w_float32"]), _bits(theirs["w_float32"]))
    assert torch.equal(back["steps"], ours["steps"])
    repo.merge("exp", strategy="ours")
    back = repo.load_tensors("main:model.safetensors", framework="torch")
    assert torch.equal(_bits(back["w_bfloat16"]), _bits(ours["w_bfloat16"]))
    assert torch.equal(back["frozen"], theirs["frozen"])


def test_integer_or_shape_changes_on_both_sides_conflict(repo, work):
    base = {"i": torch.arange(8), "w": torch.randn(4)}
    _save(base, work, "b")
    repo.commit("main", {"m.safetensors": str(work / "b.safetensors")})
    repo.create_branch("exp")
    _save({"i": torch.arange(8) + 1, "w": torch.randn(4)}, work, "o")
    repo.commit("main", {"m.safetensors": str(work / "o.safetensors")})
    _save({"i": torch.arange(8) + 2, "w": torch.randn(5)}, work, "t")
    repo.commit("exp", {"m.safetensors": str(work / "t.safetensors")})
    with pytest.raises(MergeConflict) as e:
        repo.merge("exp", strategy="average")
    text = "\n".join(e.value.conflicts)
    assert "m.safetensors:i: I64 values differ" in text and "m.safetensors:w: F32[4]" in text


def test_fast_forward_and_up_to_date(repo, work):
    (work / "a").write_text("1")
    repo.commit("main", {"a": str(work / "a")})
    repo.create_branch("exp")
    (work / "a").write_text("2")
    cid = repo.commit("exp", {"a": str(work / "a")}).commit
    res = repo.merge("exp")
    assert res.fast_forward and repo.head("main") == cid
    assert repo.merge("exp").up_to_date
    assert repo.reflog("main")[0]["action"].startswith("merge exp: fast-forward")


def test_criss_cross_history_merges(repo, work):
    def put(branch, name, text):
        (work / name).write_text(text)
        return repo.commit(branch, {name: str(work / name)}, message=f"{branch} {name}").commit
    put("main", "shared", "0")
    repo.create_branch("exp")
    b1 = put("main", "a", "main 1")
    c1 = put("exp", "b", "exp 1")
    repo.merge("exp", strategy="fail")                   # M1: main gets b
    repo.merge(b1, into="exp", strategy="fail")           # M2: exp gets a (criss-cross)
    put("main", "a", "main 2")
    put("exp", "b", "exp 2")
    base = repo.merge_base("main", "exp")
    assert base in (b1, c1)                               # the newer of the two best bases
    res = repo.merge("exp", strategy="fail")
    assert repo.read_file("main:a") == b"main 2" and repo.read_file("main:b") == b"exp 2"
    assert len(repo.commit_obj(res.commit).parents) == 2


def test_cli_merge_and_log(tmp_path, work):
    r = tmp_path / "r"
    run_cli("init", r)
    base = _state(0)
    _save(base, work, "b")
    run_cli("commit", r, work / "b.safetensors", "-m", "base")
    run_cli("branch", r, "exp")
    _save(_perturb(base, 1, ["w_float32"]), work, "b")
    run_cli("commit", r, work / "b.safetensors")
    _save(_perturb(base, 2, ["w_float32"]), work, "b")
    run_cli("commit", r, work / "b.safetensors", "-b", "exp")
    p = run_cli("merge", r, "exp", check=False)
    assert p.returncode == 1 and "b.safetensors:w_float32" in p.stderr
    p = run_cli("merge", r, "exp", "--strategy", "weighted", "--alpha", "0.25")
    assert "weighted 0.25" in p.stdout and "b.safetensors:w_float32" in p.stdout
    log = run_cli("log", r).stdout
    assert "Merge:" in log and "Merge exp into main (weighted)" in log


@needs_fuse
@pytest.mark.mount
def test_a_merge_is_seen_by_a_running_mount(diverged, tmp_path):
    repo, base, ours, theirs = diverged
    with mounted(repo.path, tmp_path / "mnt") as m:
        before = sha256_file(f"{m}/main/model.safetensors")
        res = repo.merge("exp", strategy="average")
        want = repo.entry(res.commit, "model.safetensors")["sha256"]
        assert want != before
        assert wait_for(lambda: sha256_file(f"{m}/main/model.safetensors") == want, timeout=10)
        hist = sorted(os.listdir(f"{m}/@history/main"))
        assert hist[-1].endswith(res.commit[:8])
