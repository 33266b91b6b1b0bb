"""Train a small MLP for real (an optimizer stepping on a loss) and save checkpoints as a
training run would: ``ckpt-<step>/model.pth``, ``model.safetensors`` and ``config.json``."""
import argparse
import json
import os

import safetensors.torch
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=512)
    a = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(2048, 128)
    y = (x[:, :10].sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(128, a.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(a.hidden, a.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(a.hidden, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step in range(1, a.steps + 1):
        idx = torch.randint(0, x.shape[0], (128,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0:
            d = os.path.join(a.out, f"ckpt-{step:05d}")
            os.makedirs(d, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "step": step, "loss": float(loss)}, os.path.join(d, "model.pth"))
            safetensors.torch.save_file(model.state_dict(), os.path.join(d, "model.safetensors"))
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump({"hidden": a.hidden, "step": step}, f)
            print(f"step {step}: loss {loss.item():.4f} -> {d}")


if __name__ == "__main__":
    main()
