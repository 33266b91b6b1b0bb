"""Checkpoint formats: find the tensors in a file without reading them (or running anything).
Rebuilding is splicing, done by the core from the recorded layout."""
from __future__ import annotations

import os

from ..errors import UnsupportedFormat
from . import dcp, pth, safetensors
from .layout import Layout, TensorSpan, View

CHECKPOINT_SUFFIXES = {".safetensors": "safetensors", ".pth": "pth", ".pt": "pth",
                       ".ckpt": "pth", ".bin": "pth", ".tar": "pth", ".distcp": "distcp"}


def detect(f, name: str, size: int) -> Layout:
    """Parse ``f`` as a checkpoint if it is one; otherwise an opaque layout. ``reason`` says why
    a file that was expected to be a checkpoint (by suffix or by its first bytes) was not parsed."""
    f.seek(0)
    head = f.read(16)
    suffix = os.path.splitext(name)[1].lower()
    expected = CHECKPOINT_SUFFIXES.get(suffix)
    candidates = []
    if dcp.looks_like(name):
        candidates.append(dcp)             # torch.save records back to back, not one zip
    elif safetensors.looks_like(head):
        candidates.append(safetensors)
    elif pth.looks_like(head):
        candidates.append(pth)
    reason = None
    for mod in candidates:
        try:
            return mod.parse(f, size)
        except UnsupportedFormat as e:
            reason = str(e)
        except (OSError, MemoryError):
            raise                      # the machine's trouble, not the file's
        except Exception as e:  # any parser failure means "store it opaque", never a crash
            reason = f"not parsed as {mod.__name__.rsplit('.', 1)[-1]}: " \
                     f"{type(e).__name__}: {e}"[:500]
    if reason is None and expected is not None:
        if expected == "pth" and head[:2] == b"\x80\x02":
            reason = "legacy (non-zip) torch.save format: stored as an opaque file"
        elif expected == "safetensors":
            reason = f"not parsed as safetensors: {_why_not_safetensors(head, size)}"
        elif expected == "pth" and suffix != ".bin":
            reason = "not parsed as pth: not a zip archive"
        elif expected == "distcp":
            reason = "not parsed as distcp: empty"
    return Layout("opaque", size, reason=reason)


def _why_not_safetensors(head: bytes, size: int) -> str:
    if len(head) < 8:
        return "file shorter than the 8-byte header length"
    return "does not start with a header length and a JSON header"


__all__ = ["detect", "Layout", "TensorSpan", "View", "UnsupportedFormat"]
