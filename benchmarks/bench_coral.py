"""Coral's published benchmark, reproduced (seeded), lossless.

Two bases (SmallCNN, MediumMLP); per base 5 variants ``base + randn_like(p) * s`` with
s = 0.001, 0.01, 0.05, 0.05, 0.05 and 3 exact copies: 18 models saved with torch.save; naive
size = the sum of the .pth files. Side by side: Coral's claim (1.91x, not bit-exact), the simple
lossless reference (exact dedup + integer-mapped deltas against the base + byte planes + zstd),
and corafs (every checkpoint exported again with its original sha256).

  python benchmarks/bench_coral.py
"""
import hashlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import WIDTH, nontensor_bytes, planes_zstd, storages  # noqa: E402
from harness import Report, workdir  # noqa: E402

from corafs import Repository  # noqa: E402
from corafs.codecs import transforms  # noqa: E402


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(2048, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def medium_mlp():
    return torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 10))


def make_models(out):
    torch.manual_seed(42)
    paths = []
    for bname, ctor in (("smallcnn", SmallCNN), ("mediummlp", medium_mlp)):
        base = ctor().state_dict()
        p = os.path.join(out, f"{bname}_base.pth")
        torch.save(base, p)
        paths.append((bname, p, None))
        for i, s in enumerate([0.001, 0.01, 0.05, 0.05, 0.05]):
            sd = {k: v + torch.randn_like(v) * s for k, v in base.items()}
            p = os.path.join(out, f"{bname}_var{i}_{s}.pth")
            torch.save(sd, p)
            paths.append((bname, p, f"{bname}_base"))
        for i in range(3):
            p = os.path.join(out, f"{bname}_copy{i}.pth")
            torch.save({k: v.clone() for k, v in base.items()}, p)
            paths.append((bname, p, f"{bname}_base"))
    return paths


def reference_size(paths):
    """Exact dedup, integer-mapped (ordered, subtract, zigzag) deltas against the base, byte
    planes, zstd-3; non-tensor bytes zstd-compressed."""
    seen = set()
    total = 0
    bases = {}
    for bname, p, base in paths:
        st = storages(p)
        total += nontensor_bytes(p)
        if base is None:
            bases[bname] = st
        for name, (dtype, buf) in st.items():
            h = hashlib.sha256(buf.tobytes()).digest()
            if h in seen:
                continue
            seen.add(h)
            w = WIDTH.get(dtype, 1)
            ref = bases[bname].get(name) if base else None
            if ref is not None and ref[1].size == buf.size and w > 1:
                d = transforms.sub_delta(buf.copy(), ref[1].copy(), w)
                total += min(planes_zstd(d, w, 3), planes_zstd(buf, w, 3))
            else:
                total += planes_zstd(buf, w, 3)
    return total


def main():
    rep = Report("coral")
    with workdir("coral") as tmp:
        paths = make_models(tmp)
        naive = sum(os.path.getsize(p) for _, p, _ in paths)
        ref = reference_size(paths)
        repo_path = os.path.join(tmp, "repo")
        Repository.init(repo_path).close()
        t = time.perf_counter()
        with Repository(repo_path) as r:
            for bname, p, base in paths:
                r.create_branch(bname) if bname not in r.branches() else None
                r.commit(bname, {"model.pth": p}, message=os.path.basename(p))
            # every checkpoint back, byte-exact
            for bname in ("smallcnn", "mediummlp"):
                mine = [p for b, p, _ in paths if b == bname]
                for i, p in enumerate(reversed(mine)):
                    got = hashlib.sha256(r.read_file(f"{bname}~{i}:model.pth")).hexdigest()
                    want = hashlib.sha256(open(p, "rb").read()).hexdigest()
                    assert got == want, f"{p} did not come back byte-exact"
            st = r.stats()
        elapsed = time.perf_counter() - t
        stored = st.stored_bytes + st.meta_bytes
        rep.row("Coral, published claim (not bit-exact)", 1.91, "x")
        rep.row("Coral default, as run (not bit-exact)", 1.6, "x")
        rep.row("corafs, objects + metadata (bit-exact, sha256-checked)", naive / stored, "x",
                baseline=naive / ref, baseline_what="lossless reference (dedup + int deltas + "
                "planes + zstd-3)", aim=">= 1.85x", keyframes=st.keyframes, deltas=st.deltas,
                seconds=elapsed)
        rep.row("corafs, whole repository on disk (HDF5 packs, indexes)",
                naive / st.disk_bytes, "x")
    rep.done(f"18 models, naive size {naive / 1e6:.2f} MB (sum of the .pth files); "
             "compression = naive / stored")


if __name__ == "__main__":
    main()
