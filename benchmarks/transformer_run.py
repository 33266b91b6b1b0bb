"""A real fine-tuning run of a small GPT-style transformer (about 24M parameters), saved as a
series of checkpoints: the data several benchmarks measure on.

The model is pretrained briefly (not saved), then fine-tuned with AdamW; every ``every`` steps
its state dict is written as ``model.pth`` (torch.save) and ``model.safetensors``, in fp32 and
in bf16, one directory per checkpoint. Checkpoints are cached under ``--out`` by their settings,
so a second benchmark on the same settings trains nothing.

  python benchmarks/transformer_run.py --out /tmp/corafs-ckpts [--checkpoints 10] [--every 8]
"""
from __future__ import annotations

import argparse
import json
import os

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab=8192, d=512, layers=6, heads=8, ctx=128):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf")), 1)
        x = self.tok(idx) + self.pos(torch.arange(t))
        for b in self.blocks:
            x = b(x, mask)
        return self.head(self.ln(x))


def _data(vocab: int, n: int, ctx: int, seed: int) -> torch.Tensor:
    """Token streams with structure to learn (a noisy order-2 Markov chain)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, vocab, (vocab,), generator=g)
    x = torch.empty(n, ctx + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for i in range(1, ctx + 1):
        nxt = table[x[:, i - 1]]
        noise = torch.randint(0, vocab, (n,), generator=g)
        x[:, i] = torch.where(torch.rand(n, generator=g) < 0.8, nxt, noise)
    return x


def generate(out: str, checkpoints: int = 10, every: int = 8, pretrain: int = 30,
             lr: float = 5e-5, seed: int = 0, freeze: bool = False) -> list[dict[str, str]]:
    """Train and save; return one dict per checkpoint: kind-file -> path
    (``fp32/model.pth``, ``fp32/model.safetensors``, ``bf16/...``). Cached. ``freeze``: the
    embeddings and the first half of the blocks are frozen during the fine-tune (a partial
    fine-tune: their tensors stay identical from checkpoint to checkpoint)."""
    from safetensors.torch import save_file

    key = f"gpt24m-c{checkpoints}-e{every}-p{pretrain}-lr{lr}-s{seed}" + ("-frozen" if freeze else "")
    root = os.path.join(out, key)
    done = os.path.join(root, "done.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    model = GPT()
    data = _data(8192, 512, 128, seed)

    def steps(opt, n):
        for _ in range(n):
            b = data[torch.randint(0, data.shape[0], (8,))]
            logits = model(b[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               b[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    steps(torch.optim.AdamW(model.parameters(), lr=1e-3), pretrain)
    if freeze:
        for m in [model.tok, model.pos, *model.blocks[:len(model.blocks) // 2]]:
            for p in m.parameters():
                p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    series = []
    for c in range(checkpoints):
        steps(opt, every)
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        files = {}
        for kind, conv in (("fp32", lambda t: t), ("bf16", lambda t: t.to(torch.bfloat16))):
            d = os.path.join(root, f"{c:02d}", kind)
            os.makedirs(d, exist_ok=True)
            conv_sd = {k: conv(v).contiguous() for k, v in sd.items()}
            torch.save(conv_sd, os.path.join(d, "model.pth"))
            save_file(conv_sd, os.path.join(d, "model.safetensors"))
            files[f"{kind}/model.pth"] = os.path.join(d, "model.pth")
            files[f"{kind}/model.safetensors"] = os.path.join(d, "model.safetensors")
        series.append(files)
    with open(done, "w") as f:
        json.dump(series, f)
    return series


def parameters() -> int:
    return sum(p.numel() for p in GPT().parameters())


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/corafs-ckpts")
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--every", type=int, default=8, help="training steps between checkpoints")
    ap.add_argument("--freeze", action="store_true", help="freeze the first half of the model")
    a = ap.parse_args()
    import time
    t = time.perf_counter()
    s = generate(a.out, a.checkpoints, a.every, freeze=a.freeze)
    print(f"{parameters() / 1e6:.1f}M parameters, {len(s)} checkpoints in "
          f"{time.perf_counter() - t:.0f} s: {os.path.dirname(s[0]['fp32/model.pth'])}")
