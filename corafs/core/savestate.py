"""``Repository.save_state_dict``: commit a state dict from a training loop without writing the
checkpoint anywhere else first (a temporary file inside the repository is ingested and
removed). torch/safetensors are imported only when this is called."""
from __future__ import annotations

import os
import uuid
from typing import Optional


def save_state_dict(repo, branch: str, name: str, state_dict, message: Optional[str] = None,
                    author: Optional[str] = None, meta: Optional[dict] = None):
    """Save ``state_dict`` as ``name`` on ``branch`` (``.safetensors`` via safetensors, any
    other name via ``torch.save``) and commit it, with ``meta`` (what the loop logged: step,
    loss, ...) in the commit. Returns the CommitResult."""
    store = repo.store
    # a temporary the next writer removes if we are killed, where the store keeps files
    tmp = store.temp_path(f"state-{uuid.uuid4().hex[:8]}") or \
        os.path.join(repo.path, f".state-{uuid.uuid4().hex}.tmp")
    try:
        if name.endswith(".safetensors"):
            import safetensors.torch
            safetensors.torch.save_file(dict(state_dict), tmp)
        else:
            import torch
            torch.save(state_dict, tmp)
        if branch not in repo.branches():
            repo.create_branch(branch)
        return repo.commit(branch, {name: tmp}, message=message, author=author, meta=meta)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
