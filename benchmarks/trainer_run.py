"""A real ``transformers.Trainer`` fine-tune whose checkpoint directories are committed to a
corafs repository by ``corafs.integrations.TrainerCallback`` as the Trainer saves them: each
``checkpoint-N`` holds ``model.safetensors``, ``optimizer.pt`` (AdamW moments), ``scheduler.pt``,
``rng_state.pth``, ``trainer_state.json``, ``training_args.bin`` and the configs.

  python benchmarks/trainer_run.py --out /tmp/corafs-trainer [--checkpoints 10]
"""
from __future__ import annotations

import argparse
import os

import torch


def run(out: str, repo_path: str, checkpoints: int = 10, every: int = 10, seed: int = 0,
        tuning=None) -> list[str]:
    """Train, committing every checkpoint to ``repo_path`` (made here); return the checkpoint
    directories in order."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from corafs import Repository
    from corafs.integrations import TrainerCallback

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=8192, n_positions=128, n_embd=384, n_layer=4, n_head=6,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 8192, (8192,), generator=g)
    x = torch.empty(512, 128, dtype=torch.long)
    x[:, 0] = torch.randint(0, 8192, (512,), generator=g)
    for i in range(1, 128):
        noise = torch.randint(0, 8192, (512,), generator=g)
        x[:, i] = torch.where(torch.rand(512, generator=g) < 0.8, table[x[:, i - 1]], noise)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return x.shape[0]

        def __getitem__(self, i):
            return {"input_ids": x[i], "labels": x[i]}

    class Held(Data):                      # the eval set: the last 64 sequences
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return super().__getitem__(x.shape[0] - 64 + i)

    args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, learning_rate=3e-4,
                             max_steps=checkpoints * every, save_steps=every, logging_steps=every,
                             save_strategy="steps", eval_strategy="steps", eval_steps=every,
                             per_device_eval_batch_size=16, report_to=[], use_cpu=True,
                             seed=seed, disable_tqdm=True)
    Repository.init(repo_path).close()
    repo = Repository(repo_path, tuning=tuning) if tuning is not None else Repository(repo_path)
    try:
        repo.background_reencode = False
        cb = TrainerCallback(repo, branch="main")
        Trainer(model=model, args=args, train_dataset=Data(), eval_dataset=Held(),
                callbacks=[cb]).train()
        repo.reencode()
    finally:
        repo.close()
    return [os.path.join(out, f"checkpoint-{(i + 1) * every}") for i in range(checkpoints)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/corafs-trainer")
    ap.add_argument("--checkpoints", type=int, default=10)
    a = ap.parse_args()
    dirs = run(os.path.join(a.out, "run"), os.path.join(a.out, "repo"), a.checkpoints)
    print("\n".join(sorted(os.listdir(dirs[-1]))))
