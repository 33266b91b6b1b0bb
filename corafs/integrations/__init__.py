"""Committing from training code, through the Python API (no mount, no FUSE needed).

* ``TrainerCallback`` for ``transformers.Trainer``: every checkpoint the Trainer saves becomes a
  commit on a branch (message: step and the metrics logged since the last save; the same as
  the commit's metadata, with step and epoch, for ``corafs log --meta`` and plots); with
  ``load_best_model_at_end`` the best checkpoint's commit is tagged.
* ``LightningCallback`` for PyTorch Lightning: every checkpoint Lightning writes (through
  ``ModelCheckpoint`` or ``trainer.save_checkpoint``) becomes a commit on a branch, with the
  step, epoch and logged metrics as the commit's metadata; the best ``ModelCheckpoint``
  checkpoint's commit is tagged at the end of ``fit``.
* ``Repository.save_state_dict(branch, name, state_dict)`` for hand-written loops.

transformers, lightning and torch are imported only here, and only when used.
Each lives in its own module and is imported on first use, so importing one (or the fsspec
filesystem, ``corafs.integrations.fsspec_fs``) never imports the others' frameworks.
"""
from __future__ import annotations

_WHERE = {"TrainerCallback": "transformers_cb", "LightningCallback": "lightning_cb",
          "CorafsFileSystem": "fsspec_fs"}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'corafs.integrations' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


__all__ = ["TrainerCallback", "LightningCallback", "CorafsFileSystem"]
