"""Export: write a stored file (or a directory of them) to local disk, verifying sha256."""
from __future__ import annotations

import hashlib
import os
import stat
import uuid
from typing import Callable, Optional

from ..errors import CorafsError, CorruptObject


def export(repo, spec: str, dest: str,
           on_progress: Optional[Callable[[int], None]] = None) -> list[str]:
    """Export ``REV[:PATH]`` to ``dest``; returns the files written."""
    cid, path, entry = repo.resolve_path(spec)
    written = []
    if entry["kind"] != "dir":
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


def _check_target(target: str) -> None:
    """Export replaces regular files and symlinks only: never a device, FIFO or socket."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "special file"
        raise CorafsError(f"{target} exists and is a {kind}: not replaced")


def _write(repo, entry: dict, target: str, where: str, on_progress) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    _check_target(target)
    # a short temporary name beside the target: a 255-byte name plus a suffix would not fit
    tmp = os.path.join(os.path.dirname(os.path.abspath(target)),
                       f".corafs-{uuid.uuid4().hex[:12]}.tmp")
    if entry["kind"] == "link":
        try:
            os.symlink(entry.get("target", ""), tmp)
            os.replace(tmp, target)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return
    reader = repo.open_file(entry)
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for piece in reader.chunks(repo.pool):
                h.update(piece)
                f.write(piece)
                if on_progress:
                    on_progress(len(piece))
        if h.hexdigest() != entry["sha256"]:
            raise CorruptObject(entry["id"], f"{where} rebuilt with a different sha256")
        os.chmod(tmp, entry.get("mode", 0o644) & 0o7777)
        if entry.get("mtime_ns") is not None:
            os.utime(tmp, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
