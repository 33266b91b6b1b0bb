"""Identical tensors are stored once across files, commits and branches (store accounting)."""
import safetensors.torch
import torch


def _model(seed):
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(128, 128, generator=g) for i in range(6)}


def test_unchanged_tensors_stored_once(repo, work):
    sd = _model(0)
    p = work / "model.safetensors"
    safetensors.torch.save_file(sd, str(p))
    repo.commit("main", {"model.safetensors": str(p)})
    s1 = repo.stats()
    objs1 = set(repo.store.ids())

    sd["layer3.weight"] = torch.randn(128, 128)          # one tensor of six changes
    safetensors.torch.save_file(sd, str(p))
    repo.commit("main", {"model.safetensors": str(p)})
    s2 = repo.stats()
    one_tensor = 128 * 128 * 4
    # after dedup, only the changed tensor's bytes (plus a small header chunk) are new
    assert s2.dedup_bytes - s1.dedup_bytes < one_tensor + 4096
    assert s2.logical_bytes == 2 * s1.logical_bytes
    new = set(repo.store.ids()) - objs1
    tensor_blocks = [o for o in new if len(o) == 32]
    assert len(tensor_blocks) <= 1 + 1 + one_tensor // repo.tuning.block_size + 1

    # the same model on another branch under another name adds no tensor data at all
    repo.create_branch("exp", "main~1")
    q = work / "copy.safetensors"
    safetensors.torch.save_file(_model(0), str(q))
    before = s2.dedup_bytes
    repo.commit("exp", {"renamed.safetensors": str(q)})
    assert repo.stats().dedup_bytes - before < 4096


def test_identical_tensor_across_formats(repo, work):
    t = torch.randn(200, 200)
    torch.save({"w": t}, work / "a.pth")
    safetensors.torch.save_file({"w": t}, str(work / "a.safetensors"))
    repo.commit("main", {"a.pth": str(work / "a.pth")})
    before = repo.stats().dedup_bytes
    repo.commit("main", {"a.safetensors": str(work / "a.safetensors")})
    assert repo.stats().dedup_bytes - before < 4096
