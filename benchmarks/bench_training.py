"""A real training run, stored three ways side by side.

A small MLP is trained for real (AdamW stepping on a loss); every N steps its state dict is
saved with torch.save in fp32 and in bf16, and committed in order. A second run freezes the
first half of the layers. Baseline (per the issue): each tensor XOR the same tensor of the
previous checkpoint, byte planes, zstd-3 (first checkpoint: planes + zstd-3), non-tensor bytes
zstd-3. corafs: objects + metadata after committing the run, every checkpoint re-read
byte-exact. Aim: corafs at least 10% smaller than the baseline, losslessly.

  python benchmarks/bench_training.py [--checkpoints 12] [--every 20]
"""
import argparse
import hashlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import WIDTH, nontensor_bytes, planes_zstd, storages  # noqa: E402
from harness import Report, workdir  # noqa: E402

from corafs import Repository  # noqa: E402
from corafs.codecs import reference as transforms  # noqa: E402


def train(out, checkpoints, every, freeze_half, seed=0, lr=3e-5, pretrain=0):
    torch.manual_seed(seed)
    dims = [256, 1024, 1024, 1024, 1024, 10]
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers[:-1])
    if freeze_half:
        lin = [m for m in model if isinstance(m, torch.nn.Linear)]
        for m in lin[: len(lin) // 2]:
            m.requires_grad_(False)
    x = torch.randn(4096, dims[0])
    y = torch.randint(0, dims[-1], (4096,))
    def steps(opt, n):
        for _ in range(n):
            idx = torch.randint(0, x.shape[0], (256,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss

    if pretrain:   # a "pretrained" model to fine-tune: not saved
        steps(torch.optim.AdamW(model.parameters(), lr=1e-3), pretrain)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    paths = {"fp32": [], "bf16": []}
    step = 0
    for c in range(checkpoints):
        loss = steps(opt, every)
        step += every
        sd = model.state_dict()
        for kind, conv in (("fp32", lambda t: t), ("bf16", lambda t: t.to(torch.bfloat16))):
            p = os.path.join(out, f"{kind}-{step:05d}.pth")
            torch.save({k: conv(v) for k, v in sd.items()}, p)
            paths[kind].append(p)
    return paths, float(loss.detach())


def baseline(paths):
    total, prev = 0, None
    for p in paths:
        st = storages(p)
        total += nontensor_bytes(p)
        for name, (dtype, buf) in st.items():
            w = WIDTH.get(dtype, 1)
            if prev is not None and name in prev and prev[name][1].size == buf.size:
                d = transforms.xor_delta(buf, prev[name][1], w) if w in (1, 2, 4, 8) else buf
                total += planes_zstd(d, w, 3)
            else:
                total += planes_zstd(buf, w, 3)
        prev = st
    return total


def corafs_size(paths, repo_path):
    Repository.init(repo_path).close()
    with Repository(repo_path) as r:
        t = time.perf_counter()
        for p in paths:
            r.commit("main", {"model.pth": p}, message=os.path.basename(p))
        el = time.perf_counter() - t
        for i, p in enumerate(reversed(paths)):
            got = hashlib.sha256(r.read_file(f"main~{i}:model.pth")).hexdigest()
            assert got == hashlib.sha256(open(p, "rb").read()).hexdigest(), p
        st = r.stats()
    return st.stored_bytes + st.meta_bytes, st, el


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", type=int, default=12)
    ap.add_argument("--every", type=int, default=10)
    a = ap.parse_args()
    rep = Report("training", checkpoints=a.checkpoints, every=a.every)
    with workdir("train") as tmp:
        regimes = {"fine-tune lr 1e-5": dict(lr=1e-5, pretrain=300),
                   "from scratch lr 3e-5": dict(lr=3e-5, pretrain=0)}
        for rname, kw in regimes.items():
          for freeze in (False, True):
            d = os.path.join(tmp, f"run-{rname}-{freeze}".replace(" ", "_"))
            os.makedirs(d)
            paths, loss = train(d, a.checkpoints, a.every, freeze, **kw)
            for kind in ("fp32", "bf16"):
                naive = sum(os.path.getsize(p) for p in paths[kind])
                base = baseline(paths[kind])
                mine, st, el = corafs_size(paths[kind], os.path.join(d, f"repo-{kind}"))
                label = f"{rname} {kind}{' frozen' if freeze else ''}"
                rep.row(f"{label}: stored", mine / 1e6, "MB", baseline=base / 1e6,
                        baseline_what="XOR vs previous, planes, zstd-3", aim="ratio <= 0.90",
                        naive_mb=naive / 1e6, compression=naive / mine, deltas=st.deltas,
                        keyframes=st.keyframes, ingest_mb_s=naive / 1e6 / el)
    rep.done(f"{a.checkpoints} checkpoints, {a.every} AdamW steps apart; 'frozen': first half "
             "of the layers frozen; every checkpoint re-read byte-exact")


if __name__ == "__main__":
    main()
