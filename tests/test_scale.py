"""At the size users work at: a 1 GiB checkpoint copied into a mount, loaded back with
torch.load(mmap=True) from the branch and from history, a fine-tuned version beside it.
Slow (a minute or more on 2 cores): ``make test-all`` runs it, the default suite does not."""
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import sha256_file
from corafs import Repository
from mountutil import mounted, needs_fuse, settled, wait_for

pytestmark = [needs_fuse, pytest.mark.mount, pytest.mark.slow]


def _log(repo):
    with Repository(repo) as r:
        return [c.id for c in r.log("main")]


def test_a_1gib_checkpoint_through_the_mount_and_its_history(fresh, tmp_path):
    repo, mnt = fresh
    rng = np.random.default_rng(7)
    sd = {f"layer.{i}.weight": torch.from_numpy(
        rng.standard_normal((1024, 1024), dtype=np.float32)) for i in range(256)}   # 1 GiB
    v1 = tmp_path / "v1.pth"
    torch.save(sd, v1)
    first = {k: sd[k].clone() for k in ("layer.0.weight", "layer.255.weight")}
    for i in range(0, 256, 8):                                  # a fine-tuning step
        sd[f"layer.{i}.weight"] += 1e-3 * torch.from_numpy(
            rng.standard_normal((1024, 1024), dtype=np.float32))
    v2 = tmp_path / "v2.pth"
    torch.save(sd, v2)
    with mounted(repo, mnt, "--commit-delay", "0.2") as m:
        shutil.copyfile(v1, f"{m}/main/model.pth")
        assert wait_for(lambda: len(_log(repo)) == 2 and settled(repo), timeout=300)
        shutil.copyfile(v2, f"{m}/main/model.pth")
        assert wait_for(lambda: len(_log(repo)) == 3 and settled(repo), timeout=300)
    old = _log(repo)[1]
    with mounted(repo, mnt) as m:                    # a fresh mount: nothing decoded yet
        assert sha256_file(f"{m}/main/model.pth") == sha256_file(v2)
        assert sha256_file(f"{m}/@commits/{old}/model.pth") == sha256_file(v1)
        back = torch.load(f"{m}/@commits/{old}/model.pth", mmap=True, weights_only=True)
        assert all(torch.equal(back[k], v) for k, v in first.items())
        head = torch.load(f"{m}/main/model.pth", mmap=True, weights_only=True)
        assert all(torch.equal(head[k], sd[k]) for k in sd)
        del back, head
    stored = sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(repo)
                 for f in fs if not f.endswith(".log"))
    assert stored < 1.5 * os.path.getsize(v1)        # the second version is not a second copy
