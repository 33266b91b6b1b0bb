"""``LightningCallback`` for PyTorch Lightning (see corafs.integrations)."""
from __future__ import annotations

import os
from typing import Optional

from ..core import Repository, commitmeta

try:                                         # the Lightning callback base, when lightning is here
    from lightning.pytorch.callbacks import Callback as _LBase
except ImportError:                          # pragma: no cover - exercised without lightning
    try:
        from pytorch_lightning.callbacks import Callback as _LBase
    except ImportError:
        _LBase = object


class LightningCallback(_LBase):
    """``Trainer(callbacks=[ModelCheckpoint(...), LightningCallback("./repo", branch="run1")])``

    Every checkpoint file Lightning writes is committed to ``branch`` (created from the default
    branch if missing) under one name, ``name`` (default ``model.ckpt``), so that consecutive
    saves delta-encode against each other and the branch head is always the latest save; the
    file Lightning wrote keeps its own name and place (``ModelCheckpoint``'s top-k files, or
    the path given to ``trainer.save_checkpoint``), which the commit's message and metadata
    (``file``) record. The metadata also holds ``step``, ``epoch`` and every number in
    ``trainer.callback_metrics`` (what ``self.log`` logged). A ``.ckpt`` is a torch zip: its
    tensors are parsed, deduplicated and delta-encoded like a ``.pth``'s. At the end of
    ``fit`` the commit of the best checkpoint of the trainer's ``ModelCheckpoint`` (its
    ``monitor``) is tagged ``best_tag`` (default ``<branch>-best``).

    How: at ``setup`` the strategy's ``CheckpointIO`` is wrapped, so every save goes through
    it (only the global rank 0 process commits), whichever callback or call made it."""

    def __init__(self, repo, branch: str = "main", name: str = "model.ckpt",
                 best_tag: Optional[str] = None, author: Optional[str] = None):
        self.repo = repo if isinstance(repo, Repository) else Repository(repo)
        self.branch = branch
        self.name = name
        self.best_tag = best_tag or f"{branch}-best"
        self.author = author
        self.commits: dict[str, str] = {}        # file Lightning wrote -> commit id
        if branch not in self.repo.branches():
            self.repo.create_branch(branch)

    def setup(self, trainer, pl_module, stage=None):
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, _CommittingIO):
            trainer.strategy.checkpoint_io = _CommittingIO(io, self, trainer)

    def commit_file(self, trainer, path: str) -> Optional[str]:
        if getattr(trainer, "global_rank", 0) != 0:
            return None
        meta = {k: v for k, v in _numbers(getattr(trainer, "callback_metrics", {})).items()
                if commitmeta.KEY.match(k)}
        meta.update(step=int(trainer.global_step), epoch=int(trainer.current_epoch),
                    file=os.path.basename(path))
        logged = ", ".join(f"{k}={v:.4g}" for k, v in sorted(meta.items())
                           if isinstance(v, float))
        msg = f"step {trainer.global_step} ({os.path.basename(path)})" + \
            (f": {logged}" if logged else "")
        res = self.repo.commit(self.branch, {self.name: path}, message=msg, author=self.author,
                               meta=meta)
        cid = res.commit or self.repo.head(self.branch)
        self.commits[os.path.abspath(path)] = cid
        return cid

    def on_fit_end(self, trainer, pl_module):
        if getattr(trainer, "global_rank", 0) != 0:
            return
        ckpt = getattr(trainer, "checkpoint_callback", None)
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        cid = self.commits.get(os.path.abspath(best)) if best else None
        if cid:
            self.repo.create_tag(self.best_tag, cid, force=True,
                                 message=f"best checkpoint ({os.path.basename(best)}, "
                                         f"{getattr(ckpt, 'monitor', None)}="
                                         f"{_number(getattr(ckpt, 'best_model_score', None))})")


try:
    from lightning.fabric.plugins import CheckpointIO as _IOBase
except ImportError:                          # pragma: no cover - exercised without lightning
    _IOBase = object


class _CommittingIO(_IOBase):
    """The strategy's CheckpointIO, committing each file it saved. Everything else is the
    wrapped one's (loading, removing, teardown)."""

    def __init__(self, inner, callback: LightningCallback, trainer):
        self._inner, self._callback, self._trainer = inner, callback, trainer

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self._inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        self._callback.commit_file(self._trainer, os.fspath(path))

    def load_checkpoint(self, path, *args, **kwargs):
        return self._inner.load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path) -> None:
        self._inner.remove_checkpoint(path)     # the file goes; its commit stays in history

    def teardown(self) -> None:
        self._inner.teardown()

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _number(v):
    if v is None:
        return None
    try:
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return None


def _numbers(metrics) -> dict:
    out = {}
    for k, v in dict(metrics).items():
        x = _number(v)
        if x is not None:
            out[str(k)] = x
    return out
