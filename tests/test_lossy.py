"""Opt-in lossy codecs: never the default, marked in log/show, sha256 of what reads return."""
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from corafs import codecs
from corafs.codecs import lossy
from conftest import run_cli, sha256_bytes, sha256_file


@pytest.mark.parametrize("option", list(lossy.BY_OPTION))
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_lossy_codec_deterministic_and_close(option, dtype):
    rng = np.random.default_rng(0)
    b = rng.standard_normal(10_000).astype(np.float32)
    n = b + rng.standard_normal(b.size).astype(np.float32) * 1e-3
    conv = {"F32": lambda x: x.view(np.uint8), "F16": lambda x: x.astype(np.float16).view(np.uint8),
            "BF16": lambda x: (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)}[dtype]
    base, new = conv(b), conv(n)
    payload, approx, name, depth = codecs.encode_lossy_block(new, dtype, option, 3, base, "x" * 32, 0)
    out = codecs.decode_block(payload, lambda _: base)
    assert out.tobytes() == approx.tobytes()          # reads return exactly the recorded bytes
    err = np.abs(lossy.to_f32(out, dtype) - lossy.to_f32(new, dtype)).max()
    assert err < {"F32": 5e-3, "F16": 1e-2, "BF16": 5e-2}[dtype], err   # about one ulp of |x|<4
    assert len(payload) < new.size


def test_lossy_commit_marked_and_consistent(repo, work, tmp_path):
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    p = work / "m.safetensors"
    safetensors.torch.save_file({"w": w, "step": torch.tensor([1])}, str(p))
    repo.commit("main", {"m.safetensors": str(p)})
    safetensors.torch.save_file({"w": w + torch.randn_like(w) * 1e-3, "step": torch.tensor([2])}, str(p))
    original = sha256_file(p)
    res = repo.commit("main", {"m.safetensors": str(p)}, lossy="int8")
    c = repo.commit_obj(res.commit)
    assert c.lossy
    entry = res.files[0][1].entry
    data = repo.read_file("main:m.safetensors")
    assert sha256_bytes(data) == entry["sha256"] != original      # sha256 of what reads return
    back = safetensors.torch.load(data)
    assert torch.allclose(back["w"], w, atol=0.02) and back["step"].item() == 2
    assert repo.fsck().ok
    assert "[lossy]" in run_cli("log", repo.path, "--oneline").stdout
    assert "lossy" in run_cli("show", repo.path, "main:m.safetensors").stdout
    # lossless stays the default
    safetensors.torch.save_file({"w": w * 2, "step": torch.tensor([3])}, str(p))
    res = repo.commit("main", {"m.safetensors": str(p)})
    assert not repo.commit_obj(res.commit).lossy
    assert sha256_bytes(repo.read_file("main:m.safetensors")) == sha256_file(p)
