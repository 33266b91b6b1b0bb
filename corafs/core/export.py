"""Export: write a stored file (or a directory of them) to local disk, verifying sha256."""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Optional

from ..errors import CorruptObject


def export(repo, spec: str, dest: str,
           on_progress: Optional[Callable[[int], None]] = None) -> list[str]:
    """Export ``REV[:PATH]`` to ``dest``; returns the files written."""
    cid, path, entry = repo.resolve_path(spec)
    written = []
    if entry["kind"] == "file":
        target = os.path.join(dest, os.path.basename(path)) if os.path.isdir(dest) else dest
        _write(repo, entry, target, f"{spec}", on_progress)
        return [target]
    for rel, e in repo.walk(cid, path):
        target = os.path.join(dest, rel)
        if e["kind"] == "dir":
            os.makedirs(target, exist_ok=True)
            continue
        _write(repo, e, target, f"{cid[:12]}:{path + '/' if path else ''}{rel}", on_progress)
        written.append(target)
    os.makedirs(dest, exist_ok=True)
    return written


def _write(repo, entry: dict, target: str, where: str, on_progress) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    reader = repo.open_file(entry)
    h = hashlib.sha256()
    tmp = f"{target}.corafs-tmp"
    try:
        with open(tmp, "wb") as f:
            for piece in reader.chunks(repo.pool):
                h.update(piece)
                f.write(piece)
                if on_progress:
                    on_progress(len(piece))
        if h.hexdigest() != entry["sha256"]:
            raise CorruptObject(entry["id"], f"{where} rebuilt with a different sha256")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
