"""Issue 11 (in part): loading without a mount, the reflog, committing from training code."""
import os

import numpy as np
import pytest
import safetensors.torch
import torch

from conftest import run_cli, sha256_bytes, sha256_file
import corafs
from corafs.errors import NotFound


@pytest.fixture
def ckpts(repo, work):
    torch.manual_seed(0)
    sd = {"w": torch.randn(300, 200), "b": torch.randn(200).to(torch.bfloat16),
          "steps": torch.arange(10), "f8": torch.randn(64).to(torch.float8_e4m3fn)}
    pth, st = work / "m.pth", work / "m.safetensors"
    torch.save(sd, pth)
    safetensors.torch.save_file(sd, str(st))
    repo.commit("main", {"m.pth": str(pth), "m.safetensors": str(st)})
    return sd, pth, st


def test_open_gives_a_file_object_torch_and_safetensors_load(repo, ckpts):
    sd, pth, st = ckpts
    with corafs.open(repo, "main:m.pth") as f:
        back = torch.load(f, weights_only=True)
    assert all(torch.equal(back[k].view(torch.uint8), sd[k].view(torch.uint8)) for k in sd)
    with corafs.open(repo.path, "main:m.safetensors") as f:   # by path: opens and closes
        assert sha256_bytes(f.read()) == sha256_file(st)
        f.seek(-16, os.SEEK_END)
        assert f.tell() == os.path.getsize(st) - 16 and len(f.read()) == 16
    loaded = safetensors.torch.load(corafs.open(repo, "main:m.safetensors").read())
    assert torch.equal(loaded["w"], sd["w"])


def test_open_reads_history_byte_exact_with_blocks_decoded_in_parallel(repo, work):
    """corafs.open decodes a read's blocks on the repository's pool and ahead along the read
    plan: every read, whole or at random offsets, of a delta-encoded old version is exact,
    and the blocks were decoded by more than one thread."""
    import threading
    rng = np.random.default_rng(4)
    w = rng.standard_normal(600 * 1024, dtype=np.float32)       # ~38 blocks of 64 KiB
    srcs = []
    for v in range(3):
        w = w + (rng.standard_normal(w.size, dtype=np.float32) * 1e-3)
        p = work / f"v{v}.safetensors"
        safetensors.torch.save_file({"w": torch.from_numpy(w.copy())}, str(p))
        repo.commit("main", {"m.safetensors": str(p)})
        srcs.append(p.read_bytes())
    repo.wait_reencode()
    threads = set()
    real = repo.decoder._decode
    repo.decoder._decode = lambda *a: threads.add(threading.get_ident()) or real(*a)
    repo.cache.clear()
    with corafs.open(repo, "main~2:m.safetensors") as f:
        assert sha256_bytes(f.read()) == sha256_bytes(srcs[0])
        for off in rng.integers(0, len(srcs[0]), 20):
            f.seek(int(off))
            assert f.read(100_000) == srcs[0][int(off):int(off) + 100_000]
    assert len(threads) > 1


def test_load_tensors_decodes_only_what_it_returns(repo, work):
    rng = np.random.default_rng(1)
    tensors = {f"t{i}": torch.from_numpy(rng.standard_normal(64 * 1024, dtype=np.float32))
               for i in range(16)}                      # 16 x 256 KiB, 4 blocks each (SMALL)
    p = work / "big.safetensors"
    safetensors.torch.save_file(tensors, str(p))
    repo.commit("main", {"big.safetensors": str(p)})
    repo.cache.clear()
    before = repo.decoder.decoded_bytes
    got = repo.load_tensors("main:big.safetensors", names=["t7"])
    decoded = repo.decoder.decoded_bytes - before
    assert np.array_equal(got["t7"], tensors["t7"].numpy())
    assert decoded < os.path.getsize(p) * 0.10, decoded
    with pytest.raises(NotFound):
        repo.load_tensors("main:big.safetensors", names=["nope"])


def test_load_tensors_every_dtype_with_torch(repo, ckpts):
    sd, _pth, _st = ckpts
    for spec in ("main:m.pth", "main:m.safetensors"):
        got = repo.load_tensors(spec, framework="torch")
        for k in sd:
            assert got[k].dtype == sd[k].dtype and \
                torch.equal(got[k].view(torch.uint8), sd[k].view(torch.uint8)), (spec, k)
    with pytest.raises(corafs.CorafsError, match="framework='torch'"):
        repo.load_tensors("main:m.safetensors", names=["b"])     # numpy has no bf16


def test_reflog_records_every_move_and_undeletes(tmp_path, work):
    repo = tmp_path / "r"
    run_cli("init", repo)
    (work / "a").write_text("1")
    run_cli("commit", repo, work / "a", "-m", "one")
    run_cli("branch", repo, "exp")
    (work / "a").write_text("2")
    run_cli("commit", repo, work / "a", "-b", "exp", "-m", "two")
    with corafs.Repository(str(repo)) as r:
        two = r.head("exp")
    run_cli("branch", repo, "-d", "exp")                    # a mistake
    run_cli("branch", repo, "exp", "--undelete")
    with corafs.Repository(str(repo)) as r:
        assert r.head("exp") == two
    run_cli("branch", repo, "exp", "main", "--force")       # a reset
    out = run_cli("reflog", repo, "exp").stdout.splitlines()
    assert [ln.split(": ", 1)[1].split("  (")[0] for ln in out] == [
        "reset: moving to main", "branch: undeleted", "branch: deleted", "commit: two",
        "branch: created from main"], out
    assert "corafs branch" in out[0] and "--force" in out[0]
    with corafs.Repository(str(repo)) as r:
        assert r.resolve("exp@{1}") == two                   # where exp was one move ago
        e = r.reflog("exp")[0]
        assert e["old"] == two and e["new"] == r.head("main") and e["author"]
        assert two in r.reflog_roots()                       # kept alive for gc
        assert two not in r.reflog_roots(now_ns=e["time_ns"] + int(91 * 86400e9))


def test_save_state_dict_from_a_loop(repo):
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        repo.save_state_dict("run", "model.safetensors", model.state_dict(),
                             message=f"step {step} loss={loss.item():.3f}",
                             meta={"step": step, "loss": loss.detach()})
    repo.save_state_dict("run", "model.pth", {"model": model.state_dict(), "step": 3})
    log = repo.log("run")
    assert log[1].message.startswith("step 2 loss=")
    assert log[1].meta["step"] == 2 and isinstance(log[1].meta["loss"], float)   # a tensor in
    assert log[0].meta == {}                                  # no metadata: none recorded
    back = repo.load_tensors("run:model.safetensors", framework="torch")
    assert torch.equal(back["weight"], model.state_dict()["weight"])
    with corafs.open(repo, "run:model.pth") as f:
        assert torch.load(f, weights_only=True)["step"] == 3
    assert not [f for f in os.listdir(os.path.join(repo.path, "objects")) if "state-" in f]


def test_trainer_callback_commits_every_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    from transformers import (BertConfig, BertForSequenceClassification, Trainer,
                              TrainingArguments)
    from corafs.integrations import TrainerCallback
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        vocab_size=99, max_position_embeddings=32, num_labels=2))

    class Data(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randint(0, 99, (n, 16), generator=g)
            self.y = (self.x[:, 0] > 50).long()

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.y[i]}

    repo_path = str(tmp_path / "repo")
    corafs.Repository.init(repo_path).close()
    cb = TrainerCallback(repo_path, branch="bert-run")
    args = TrainingArguments(str(tmp_path / "out"), max_steps=6, save_steps=2, eval_steps=2,
                             eval_strategy="steps", save_strategy="steps",
                             per_device_train_batch_size=8, learning_rate=1e-3,
                             load_best_model_at_end=True, metric_for_best_model="loss",
                             report_to=[], use_cpu=True, logging_steps=1, save_total_limit=None)
    trainer = Trainer(model=model, args=args, train_dataset=Data(64, 0),
                      eval_dataset=Data(16, 1), callbacks=[cb])
    trainer.train()
    with corafs.Repository(repo_path) as r:
        log = r.log("bert-run")
        msgs = [c.message for c in log]
        assert [m.split(":")[0] for m in msgs[:3]] == ["step 6", "step 4", "step 2"], msgs
        assert "loss=" in msgs[0] and "eval_loss=" in msgs[0]
        meta = log[0].meta                                # the same numbers, as data
        assert meta["step"] == 6 and meta["epoch"] > 0 and isinstance(meta["eval_loss"], float)
        assert [c.meta["step"] for c in log[:3]] == [6, 4, 2]
        for i, step in enumerate((6, 4, 2)):            # every checkpoint loads back equal
            ckpt = tmp_path / "out" / f"checkpoint-{step}"
            for name in ("model.safetensors", "trainer_state.json"):
                assert sha256_bytes(r.read_file(f"bert-run~{i}:{name}")) == \
                    sha256_file(ckpt / name), (step, name)
        best = trainer.state.best_model_checkpoint
        assert best and r.tags()["bert-run-best"] == cb.commits[os.path.abspath(best)]
        assert os.path.basename(best) in r.tag_info("bert-run-best")["message"]
