"""Chunk reuse of files corafs does not parse (issue 20, item 4): after an insertion in the
middle of a file, how many of the new version's bytes are stored already?

Side by side in one run, on the same two versions of each file:
  * corafs (content-defined chunks, FastCDC, ``Tuning.chunk_avg``): measured on a real
    repository, from the two versions' recipes;
  * fixed-size chunks of 4 MiB (what corafs did before) and of the same average size as the
    content-defined ones, hashed the same way.

Files: a 2-4 MB tokenizer-like JSON (the size MusicFS reports 99.1% reuse on after a 100-byte
edit), a real 24M-parameter checkpoint saved in torch's legacy (non-zip) format, which corafs
stores opaque, and 64 MB of incompressible bytes. Each gets 100 bytes inserted at its middle.

  python benchmarks/bench_cdc.py [--ckpts /tmp/corafs-ckpts]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import xxhash

sys.path.insert(0, os.path.dirname(__file__))

from corafs import Repository  # noqa: E402
from corafs.config import Tuning  # noqa: E402
from harness import Report, checkpoints_dir, workdir  # noqa: E402


def tokenizer_json(n_bytes: int, seed: int) -> bytes:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab, i = {}, 0
    while True:
        w = "".join(rng.choice(letters) for _ in range(rng.randint(2, 12)))
        vocab[("\u0120" if rng.random() < 0.4 else "") + w] = i
        i += 1
        if i % 1000 == 0 and len(json.dumps(vocab)) > n_bytes:
            break
    merges = [f"{a} {b}" for a, b in zip(list(vocab)[::2], list(vocab)[1::2])]
    return json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab,
                                                   "merges": merges}}, indent=2).encode()


def legacy_checkpoint(ckpts: str) -> bytes:
    import io
    import torch
    sys.path.insert(0, os.path.dirname(__file__))
    from transformer_run import generate
    series = generate(ckpts, 10)
    sd = torch.load(series[-1]["fp32/model.pth"], weights_only=True)
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def fixed_reuse(a: bytes, b: bytes, size: int) -> float:
    seen = {xxhash.xxh3_128_digest(a[i:i + size]) for i in range(0, len(a), size)}
    reused = sum(len(b[i:i + size]) for i in range(0, len(b), size)
                 if xxhash.xxh3_128_digest(b[i:i + size]) in seen)
    return reused / len(b)


def corafs_reuse(a: bytes, b: bytes, work: str, tuning: Tuning) -> tuple[float, float, str]:
    repo = Repository.init(os.path.join(work, "repo"), tuning=tuning)
    try:
        paths = []
        for n, data in (("v1", a), ("v2", b)):
            p = os.path.join(work, n)
            with open(p, "wb") as f:
                f.write(data)
            paths.append(p)
        t = time.perf_counter()
        repo.commit("main", {"f.bin": paths[0]})
        secs = time.perf_counter() - t
        repo.commit("main", {"f.bin": paths[1]})
        m1 = repo.get_meta(repo.entry(repo.resolve("main~1"), "f.bin")["id"])
        m2 = repo.get_meta(repo.entry(repo.resolve("main"), "f.bin")["id"])
        old = set(m1["extents"]["obj"])
        ext = m2["extents"]
        reused = sum(n for n, o in zip(ext["len"], ext["obj"]) if o in old)
        assert repo.read_file("main:f.bin") == b
        return reused / len(b), len(a) / secs / 1e6, m2["format"]
    finally:
        repo.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpts", default=checkpoints_dir())
    a = ap.parse_args()
    files = {
        "tokenizer.json": tokenizer_json(1_000_000, 0),
        "legacy torch .bin (real, opaque)": legacy_checkpoint(a.ckpts),
        "random (64 MB)": random.Random(1).randbytes(64 << 20),
    }
    t = Tuning()
    rep = Report("cdc", chunk_avg=t.chunk_avg)
    for name, data in files.items():
        mid = len(data) // 2
        b = data[:mid] + random.Random(2).randbytes(100) + data[mid:]
        with workdir("cdc") as w:
            cdc, speed, fmt = corafs_reuse(data, b, w, t)
        f4 = fixed_reuse(data, b, 4 << 20)
        fa = fixed_reuse(data, b, t.chunk_avg)
        rep.row(f"{name} ({len(data) / 1e6:.1f} MB, {fmt}): bytes reused after an insertion",
                cdc, "share", baseline=f4, baseline_what="fixed 4 MiB chunks",
                ratio=cdc / f4 if f4 else float("inf"), fixed_chunk_avg=fa, ingest_mb_s=speed)
    rep.done(f"chunk_avg {t.chunk_avg >> 10} KiB; 100 bytes inserted at the middle of each file")


if __name__ == "__main__":
    main()
