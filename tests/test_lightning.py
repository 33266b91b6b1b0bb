"""LightningCallback with a real ``lightning.Trainer`` fit on CPU: every checkpoint Lightning
writes is a commit with the step, epoch and logged metrics as metadata, the .ckpt files are
parsed (tensors dedup and delta-encode), the best ModelCheckpoint checkpoint is tagged, and a
fit resumes from the committed checkpoint through corafs.open and through a mount."""
import os

import pytest
import torch

import corafs
from conftest import sha256_bytes, sha256_file
from mountutil import mounted, needs_fuse

L = pytest.importorskip("lightning")


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 2))

    def training_step(self, batch, _i):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 16, generator=g)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


class _Epochs(L.pytorch.callbacks.Callback):
    def __init__(self):
        self.started = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.started.append(trainer.current_epoch)


def _fit(tmp_path, repo, epochs=3, ckpt_path=None, with_callback=True):
    from corafs.integrations import LightningCallback
    torch.manual_seed(0)
    mc = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), monitor="val_loss",
                                             save_top_k=2, save_last=False)
    cbs = [_Epochs(), mc] + ([LightningCallback(repo, branch="lit")] if with_callback else [])
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=cbs,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    model = Tiny()
    trainer.fit(model, _data(0), _data(1), ckpt_path=ckpt_path)
    return trainer, mc, cbs[-1] if with_callback else cbs[0]


@pytest.mark.smoke
def test_every_lightning_checkpoint_is_a_commit_with_its_metrics(tmp_path):
    repo_path = str(tmp_path / "repo")
    corafs.Repository.init(repo_path).close()
    trainer, mc, cb = _fit(tmp_path, repo_path)
    with corafs.Repository(repo_path) as r:
        log = r.log("lit")[:-1]                            # less the initial empty commit
        assert len(log) == 3 and [c.meta["epoch"] for c in log] == [2, 1, 0]
        for c in log:
            assert c.meta["step"] == (c.meta["epoch"] + 1) * 4
            assert isinstance(c.meta["val_loss"], float) and c.meta["file"].endswith(".ckpt")
        newest = r.log("lit")[0]
        kept = os.path.join(mc.dirpath, newest.meta["file"])
        if os.path.exists(kept):                           # top-2: the newest may be gone
            assert sha256_bytes(r.read_file("lit:model.ckpt")) == sha256_file(kept)
        e = r.entry(r.head("lit"), "model.ckpt")
        assert e["format"] == "pth"                        # parsed: tensors, not opaque bytes
        assert len(r.get_meta(e["id"])["tensors"]) >= 4
        best = r.tags()["lit-best"]
        assert best == cb.commits[os.path.abspath(mc.best_model_path)]
        assert r.commit_obj(best).meta["val_loss"] == pytest.approx(float(mc.best_model_score))
        r.reencode()              # the callback's repository re-encodes in the background
        assert r.stats().deltas > 0                        # consecutive saves as deltas
        with corafs.open(r, "lit-best:model.ckpt") as f:   # loads through the API
            ck = torch.load(f, weights_only=False, map_location="cpu")
        assert ck["global_step"] == r.commit_obj(best).meta["step"]


@needs_fuse
@pytest.mark.mount
def test_a_fit_resumes_from_a_committed_checkpoint_through_the_mount(tmp_path):
    repo_path = str(tmp_path / "repo")
    corafs.Repository.init(repo_path).close()
    _fit(tmp_path / "a", repo_path, epochs=2)
    with corafs.Repository(repo_path) as r:
        first = r.log("lit")[0].id
    with mounted(repo_path, tmp_path / "mnt") as m:
        trainer, _mc, epochs = _fit(tmp_path / "b", repo_path, epochs=4,
                                    ckpt_path=f"{m}/@commits/{first}/model.ckpt",
                                    with_callback=False)
    assert epochs.started == [2, 3]                        # resumed after the second epoch
    assert trainer.global_step == 16
