"""``TrainerCallback`` for transformers.Trainer (see corafs.integrations)."""
from __future__ import annotations

import os
from typing import Optional

from ..core import Repository, commitmeta

try:                                         # the callback base class, when transformers is here
    from transformers import TrainerCallback as _Base
except ImportError:                          # pragma: no cover - exercised without transformers
    _Base = object


class TrainerCallback(_Base):
    """``Trainer(..., callbacks=[corafs.integrations.TrainerCallback("./repo", branch="run1")])``

    Each saved ``checkpoint-N`` directory is committed to ``branch`` (created from the default
    branch if missing) with its contents at the branch root, so the head is always the latest
    checkpoint and ``@history`` / ``main~k`` hold the earlier ones, delta-encoded against each
    other. ``best_tag``: the tag moved to the best checkpoint's commit at the end of training
    when the Trainer tracks one (``load_best_model_at_end``)."""

    def __init__(self, repo, branch: str = "main", best_tag: Optional[str] = None,
                 author: Optional[str] = None):
        self.repo = repo if isinstance(repo, Repository) else Repository(repo)
        self.branch = branch
        self.best_tag = best_tag or f"{branch}-best"
        self.author = author
        self.commits: dict[str, str] = {}        # checkpoint directory -> commit id
        self._last_logged = 0
        if branch not in self.repo.branches():
            self.repo.create_branch(branch)

    def on_save(self, args, state, control, **kwargs):
        if not getattr(state, "is_world_process_zero", True):
            return control
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(ckpt):
            return control
        files = {}
        for dirpath, _dirs, names in os.walk(ckpt):
            for n in sorted(names):
                full = os.path.join(dirpath, n)
                files[os.path.relpath(full, ckpt).replace(os.sep, "/")] = full
        meta = commitmeta.from_trainer_log(state.log_history[self._last_logged:],
                                           step=state.global_step,
                                           epoch=getattr(state, "epoch", None))
        self._last_logged = len(state.log_history)
        logged = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted(meta.items()) if k not in ("step", "epoch"))
        msg = f"step {state.global_step}" + (f": {logged}" if logged else "")
        res = self.repo.commit(self.branch, files, message=msg, author=self.author, meta=meta)
        self.commits[os.path.abspath(ckpt)] = res.commit or self.repo.head(self.branch)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        best = getattr(state, "best_model_checkpoint", None)
        if best and getattr(state, "is_world_process_zero", True):
            cid = self.commits.get(os.path.abspath(best))
            if cid:
                self.repo.create_tag(self.best_tag, cid, force=True,
                                     message=f"best checkpoint ({os.path.basename(best)})")
        return control
