"""Repository settings (``corafs config``): checked when set and when read, stored in
corafs.json, and in force for every process that opens the repository."""
import dataclasses
import json

import numpy as np
import pytest
import safetensors.numpy

from conftest import run_cli, sha256_bytes, sha256_file
from corafs import Repository
from corafs.config import DEFAULT
from corafs.core.stats import chain_depth
from corafs.errors import CorafsError


def _version(path, w, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(1 << 16, dtype=np.float32) if w is None else \
        w + rng.standard_normal(w.size, dtype=np.float32) * 1e-3
    safetensors.numpy.save_file({"w": w.reshape(-1, 256)}, str(path))
    return w


def _blocks(repo, spec):
    _cid, _path, e = repo.resolve_path(spec)
    return [b[0] for t in repo.get_meta(e["id"])["tensors"]
            for b in repo.tensor_manifest(t["id"])["blocks"]]


def _cli_series(repo, work, n):
    """Commit ``n`` versions with the CLI (which finishes its re-encoding before it exits);
    {commit id: sha256}."""
    want, w = {}, None
    for v in range(n):
        p = work / "model.safetensors"
        w = _version(p, w, v)
        run_cli("commit", repo, p, "-m", f"v{v}")
        with Repository(str(repo)) as r:
            want[r.head("main")] = sha256_file(p)
    return want


def _max_depths(repo, want):
    memo = {}
    return [max(chain_depth(repo, b, memo) for b in _blocks(repo, f"{c}:model.safetensors"))
            for c in want]


def test_config_cli_sets_checks_lists_and_unsets(tmp_path):
    repo = tmp_path / "r"
    run_cli("init", repo)
    listing = run_cli("config", repo).stdout
    for key in ("author", "reflog_expire_days", "max_delta_depth", "head_codec"):
        assert key in listing
    assert f"max_delta_depth      {DEFAULT.max_delta_depth}  (default)" in listing
    assert run_cli("config", repo, "max_delta_depth", "3").stdout.strip() == "3"
    assert run_cli("config", repo, "max_delta_depth").stdout.strip() == "3"
    assert json.loads((repo / "corafs.json").read_text())["max_delta_depth"] == 3
    # bad keys and values are refused with what is expected, and change nothing
    for args, says in ((("max_delta_depth", "0"), "a whole number from 1 to 64"),
                       (("max_delta_depth", "two"), "a whole number from 1 to 64"),
                       (("head_codec", "lz4"), "one of auto, raw, planes-zstd"),
                       (("reflog_expire_days", "-1"), "0 or more"),
                       (("colour", "red"), "unknown setting 'colour'")):
        p = run_cli("config", repo, *args, check=False)
        assert p.returncode != 0 and says in p.stderr, (args, p.stderr)
    assert json.loads((repo / "corafs.json").read_text())["max_delta_depth"] == 3
    assert run_cli("config", repo, "--unset", "max_delta_depth").stdout.strip() == \
        str(DEFAULT.max_delta_depth)
    cfg = json.loads((repo / "corafs.json").read_text())
    assert "max_delta_depth" not in cfg and cfg["format"] == 1
    # the author setting is the commits' author
    run_cli("config", repo, "author", "Ada <ada@example.org>")
    p = tmp_path / "c.json"
    p.write_text("{}")
    run_cli("commit", repo, p, env={"CORAFS_AUTHOR": ""})
    assert "Ada <ada@example.org>" in run_cli("log", repo).stdout


def test_a_bad_value_edited_into_corafs_json_is_a_clear_error(tmp_path):
    repo = tmp_path / "r"
    Repository.init(str(repo)).close()
    cfg = json.loads((repo / "corafs.json").read_text())
    cfg["max_delta_depth"] = "deep"
    (repo / "corafs.json").write_text(json.dumps(cfg))
    with pytest.raises(CorafsError, match="max_delta_depth: 'deep' is not valid"):
        Repository(str(repo))
    p = run_cli("log", repo, check=False)
    assert p.returncode != 0 and "max_delta_depth" in p.stderr and "Traceback" not in p.stderr


def test_delta_depth_setting_bounds_the_chains_of_cli_commits(tmp_path, work):
    """The same six versions: chains grow to 5 by default, to at most 2 with the setting;
    every version stays byte-exact."""
    runs = {}
    for name, depth in (("default", None), ("shallow", "2")):
        repo = tmp_path / name
        run_cli("init", repo)
        if depth:
            run_cli("config", repo, "max_delta_depth", depth)
        (work / name).mkdir()
        want = _cli_series(repo, work / name, 6)
        with Repository(str(repo)) as r:
            runs[name] = _max_depths(r, want)
            for cid, sha in want.items():
                assert sha256_bytes(r.read_file(f"{cid}:model.safetensors")) == sha
            assert r.fsck().ok
            runs[name + " closed"] = r.stats().floating_roots
    assert max(runs["default"]) == 5, runs
    assert max(runs["shallow"]) <= 2 and runs["shallow"][-1] == 0, runs
    # the shallow repository's runs had to close (on a floating root and anchors against
    # it); the default's one run of five did not
    assert runs["shallow closed"] > 0 and runs["default closed"] == 0, runs


def test_head_codec_setting_applies_from_the_next_commit(tmp_path, work):
    repo = tmp_path / "r"
    run_cli("init", repo)
    w = None
    codecs = []
    for v, head in enumerate(("raw", "planes-zstd")):
        run_cli("config", repo, "head_codec", head)
        p = work / "model.safetensors"
        w = _version(p, w, v)
        run_cli("commit", repo, p)
        with Repository(str(repo)) as r:
            codecs.append({r.block_header(b).codec for b in _blocks(r, "main:model.safetensors")})
            assert sha256_bytes(r.read_file("main:model.safetensors")) == sha256_file(p)
    assert codecs == [{"raw"}, {"planes-zstd"}]


def test_settings_override_the_tuning_a_process_opens_with(tmp_path):
    """The mount daemon opens the repository with its own tuning (threads, direct reads):
    the repository's encoding settings still win, and unsetting one restores the caller's."""
    repo = Repository.init(str(tmp_path / "r"))
    try:
        repo.set_config("max_delta_depth", "2")
        repo.set_config("head_codec", "planes-zstd")
        assert repo.tuning.max_delta_depth == 2
    finally:
        repo.close()
    mine = dataclasses.replace(DEFAULT, workers=3, direct_reads=True, max_delta_depth=5)
    with Repository(str(tmp_path / "r"), tuning=mine) as r:
        assert (r.tuning.max_delta_depth, r.tuning.head_codec) == (2, "planes-zstd")
        assert (r.tuning.workers, r.tuning.direct_reads) == (3, True)
        assert r.set_config("max_delta_depth", None) == DEFAULT.max_delta_depth
        assert r.tuning.max_delta_depth == 5 and r.tuning.head_codec == "planes-zstd"
        with pytest.raises(CorafsError, match="unknown setting"):
            r.set_config("block_size", "1")


def test_a_long_lived_repository_takes_up_changed_settings_at_its_next_commit(tmp_path, work):
    """As a running mount daemon does: a setting changed by another process applies from the
    next commit (head codec) and the next re-encoding job (delta depth); a bad value edited in
    meanwhile leaves the settings in force and commits go on."""
    path = tmp_path / "r"
    repo = Repository.init(str(path))
    try:
        repo.background_reencode = False
        run_cli("config", path, "head_codec", "planes-zstd")
        run_cli("config", path, "max_delta_depth", "2")
        want, w = {}, None
        for v in range(5):
            p = work / "model.safetensors"
            w = _version(p, w, v)
            want[repo.commit("main", {"model.safetensors": str(p)}).commit] = sha256_file(p)
            assert {repo.block_header(b).codec
                    for b in _blocks(repo, "main:model.safetensors")} == {"planes-zstd"}
            repo.reencode()
        assert max(_max_depths(repo, want)) <= 2
        cfg = json.loads((path / "corafs.json").read_text())
        (path / "corafs.json").write_text(json.dumps({**cfg, "head_codec": "fast"}))
        p = work / "model.safetensors"
        _version(p, w, 9)
        cid = repo.commit("main", {"model.safetensors": str(p)}).commit
        assert sha256_bytes(repo.read_file(f"{cid}:model.safetensors")) == sha256_file(p)
        assert repo.tuning.head_codec == "planes-zstd"
    finally:
        repo.close()
