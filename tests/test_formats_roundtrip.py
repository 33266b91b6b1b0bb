"""Commit then export is byte-exact (sha256 of the whole file) for every format case, with files
written by the real torch.save and safetensors libraries."""
import collections
import os
import struct

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from conftest import commit_and_export

ALL_TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16,
                    torch.float8_e4m3fn, torch.float8_e5m2, torch.int64, torch.int32,
                    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
                    torch.complex128, torch.uint16, torch.uint32, torch.uint64]


def _rand(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(0, 100, shape, generator=g).to(dtype)


@pytest.mark.smoke
def test_safetensors_every_dtype_metadata_empty_scalar(repo, work, tmp_path):
    tensors = {f"t_{str(d).split('.')[-1]}": _rand((37, 5), d, i)
               for i, d in enumerate(ALL_TORCH_DTYPES) if d not in (torch.complex64, torch.complex128)}
    tensors["empty"] = torch.zeros(0, 3)
    tensors["scalar"] = torch.tensor(3.5)
    tensors["big"] = torch.randn(300, 300)          # several 64 KiB blocks
    path = work / "model.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt", "z": "1", "a": "2"})
    a, b, res = commit_and_export(repo, path, tmp_path)
    assert a == b
    m = repo.get_meta(res.files[0][1].entry["id"])
    assert m["format"] == "safetensors"
    dtypes = {v[1] for v in m["views"]}
    assert {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8",
            "U8", "BOOL", "U16", "U32", "U64"} <= dtypes
    assert {v[0]: v[2] for v in m["views"]}["scalar"] == []


def test_safetensors_header_kept_verbatim(repo, work, tmp_path):
    # a hand-ordered header with odd spacing: rebuilding must not re-serialize it
    data = b"\x00\x01\x02\x03" * 4
    header = b'{"__metadata__": {"b": "2", "a": "1"},   "x": {"dtype":"F32","shape":[4],"data_offsets":[0,16]}}  '
    path = work / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    a, b, res = commit_and_export(repo, path, tmp_path)
    assert a == b and res.files[0][1].entry["format"] == "safetensors"


def test_pth_state_dict_optimizer_scalars(repo, work, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 32)).sum().backward()
    opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7,
            "loss": 0.125, "name": "run-1", "flags": [True, None, (1, 2.5)]}
    path = work / "ckpt.pth"
    torch.save(ckpt, path)
    a, b, res = commit_and_export(repo, path, tmp_path)
    assert a == b
    m = repo.get_meta(res.files[0][1].entry["id"])
    assert m["format"] == "pth"
    names = {v[0] for v in m["views"]}
    assert "model.0.weight" in names and "optimizer.state.0.exp_avg" in names


def test_pth_shared_storage_views_noncontiguous(repo, work, tmp_path):
    base = torch.randn(64, 64)
    emb = torch.nn.Embedding(100, 16)
    sd = collections.OrderedDict(
        base=base, row=base[3], col=base[:, 5], t=base.t(), strided=base[::2, ::3],
        emb=emb.weight, tied=emb.weight,            # tied weights: one storage
        offset_view=base.view(-1)[100:200])
    path = work / "views.pth"
    torch.save(sd, path)
    a, b, res = commit_and_export(repo, path, tmp_path)
    assert a == b
    m = repo.get_meta(res.files[0][1].entry["id"])
    assert len(m["tensors"]) == 2          # two storages
    assert len(m["views"]) == 8


@pytest.mark.smoke
def test_pth_every_dtype(repo, work, tmp_path):
    sd = {str(d): _rand((13, 7), d, i) for i, d in enumerate(ALL_TORCH_DTYPES)}
    sd["scalar"] = torch.tensor(2)
    sd["empty"] = torch.zeros(0)
    path = work / "dtypes.pth"
    torch.save(sd, path)
    a, b, res = commit_and_export(repo, path, tmp_path)
    assert a == b
    m = repo.get_meta(res.files[0][1].entry["id"])
    assert m["format"] == "pth"
    by_name = {v[0]: v[1] for v in m["views"]}
    assert by_name["torch.bfloat16"] == "BF16" and by_name["torch.float8_e4m3fn"] == "F8_E4M3"
    assert by_name["torch.uint16"] == "U16" and by_name["torch.complex64"] == "C64"


@pytest.mark.smoke
def test_pth_loads_back_equal(repo, work, tmp_path):
    sd = {"w": torch.randn(200, 100), "b": torch.randn(100).to(torch.bfloat16)}
    path = work / "m.pth"
    torch.save(sd, path)
    a, b, _ = commit_and_export(repo, path, tmp_path)
    back = torch.load(tmp_path / "exported-m.pth", weights_only=True)
    assert torch.equal(back["w"], sd["w"]) and torch.equal(back["b"], sd["b"])


@pytest.mark.parametrize("case", ["legacy", "truncated", "corrupt_zip", "json", "random",
                                  "empty", "truncated_safetensors", "bad_header"])
def test_opaque_files_byte_exact_with_reason(repo, work, tmp_path, case):
    sd = {"w": torch.randn(100, 100)}
    good = work / "good.pth"
    torch.save(sd, good)
    raw = good.read_bytes()
    st = safetensors.torch.save(sd)
    name, data = {
        "legacy": ("legacy.pth", None),
        "truncated": ("trunc.pth", raw[: len(raw) // 2]),
        "corrupt_zip": ("corrupt.pth", raw[:30] + b"\xff" * 200 + raw[230:]),
        "json": ("config.json", b'{"hidden_size": 16}'),
        "random": ("weights.bin", os.urandom(200_000)),
        "empty": ("empty.pth", b""),
        "truncated_safetensors": ("t.safetensors", st[: len(st) - 100]),
        "bad_header": ("b.safetensors", struct.pack("<Q", 20) + b"{not json at all!!!!" + b"0" * 50),
    }[case]
    path = work / name
    if case == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(data)
    a, b, res = commit_and_export(repo, path, tmp_path)
    assert a == b
    r = res.files[0][1]
    assert r.entry["format"] == "opaque"
    if case in ("legacy", "truncated", "corrupt_zip", "truncated_safetensors", "bad_header"):
        assert r.reason, "the user must be told why the file was not parsed"
    if case == "legacy":
        assert "legacy" in r.reason
    if case == "truncated_safetensors":
        assert "truncated" in r.reason or "outside" in r.reason


def test_large_opaque_chunked_dedup(repo, work, tmp_path):
    payload = os.urandom(300_000)
    p1 = work / "a.bin"
    p1.write_bytes(payload)
    repo.commit("main", {"a.bin": str(p1)})
    before = repo.stats().stored_bytes
    p2 = work / "b.bin"
    p2.write_bytes(payload + b"tail")      # same leading chunks
    a, b, _ = commit_and_export(repo, p2, tmp_path)
    assert a == b
    added = repo.stats().stored_bytes - before
    assert added < 64 << 10, f"identical chunks must be shared, {added} bytes added"


def test_opaque_insertion_mid_file_reuses_the_chunks_around_it(repo, work, tmp_path):
    """Issue 20, item 4: non-tensor bytes are cut by content, so 100 bytes inserted in the
    middle of an opaque file leave every chunk but the one or two around the insertion
    stored already (fixed-size chunks made every later chunk new)."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 600_000, dtype=np.uint8).tobytes()
    p1 = work / "tok.json"
    p1.write_bytes(data)
    repo.commit("main", {"tok.json": str(p1)})
    mid = len(data) // 2
    p2 = work / "tok2.json"
    p2.write_bytes(data[:mid] + os.urandom(100) + data[mid:])
    a, b, res = commit_and_export(repo, p2, tmp_path, name="tok.json")
    assert a == b
    m1 = repo.get_meta(repo.entry(repo.resolve("main~1"), "tok.json")["id"])
    m2 = repo.get_meta(repo.entry(repo.resolve("main"), "tok.json")["id"])
    old = set(m1["extents"]["obj"])
    ext = m2["extents"]
    reused = sum(n for n, o in zip(ext["len"], ext["obj"]) if o in old)
    assert reused >= 0.9 * len(data), (reused, len(data))
    # the chunks are cut by content: every extent maps whole bytes of one stored object
    assert sum(ext["len"]) == len(data) + 100
