"""Metadata on commits: what a training run logged when it saved (step, epoch, loss, eval
metrics, learning rate), as key-value data in the commit object, so its id covers it.

Values are numbers or short strings. A number that is not finite (a diverged loss) is kept as
the string ``"nan"``, ``"inf"`` or ``"-inf"``: canonical JSON has no spelling for it, and a
run's history should say what happened rather than refuse the commit. Commits made before
metadata existed have none and read as before.

``select(repo, commits, "eval_loss:min")`` picks the commit with the smallest value of a key:
``corafs tag REPO best --by eval_loss:min main``.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Optional, Union

from ..errors import CorafsError, NotFound

Value = Union[int, float, str, bool]

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$")
MAX_KEYS = 64
MAX_STR = 256


def check(meta: Optional[dict]) -> dict:
    """A copy of ``meta`` as it is stored, or a CorafsError naming what is wrong."""
    if not meta:
        return {}
    if not isinstance(meta, dict):
        raise CorafsError("commit metadata must be a mapping of names to values")
    if len(meta) > MAX_KEYS:
        raise CorafsError(f"commit metadata: {len(meta)} keys (at most {MAX_KEYS})")
    out: dict[str, Value] = {}
    for k, v in meta.items():
        if not isinstance(k, str) or not KEY.match(k):
            raise CorafsError(f"commit metadata: bad key {k!r} (letters, digits, _ . : / -; "
                              "at most 64, not starting with a digit)")
        out[k] = _value(k, v)
    return out


def _value(k: str, v) -> Value:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        v = v.item()                                   # numpy / torch scalars
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        if len(v) > MAX_STR:
            raise CorafsError(f"commit metadata: {k} is {len(v)} characters (at most "
                              f"{MAX_STR}: a short string, not a document)")
        return v
    raise CorafsError(f"commit metadata: {k} must be a number or a short string, "
                      f"not {type(v).__name__}")


def parse_pairs(pairs: Iterable[str]) -> dict:
    """``["loss=0.123", "step=400", "note=warmup"]`` (the CLI's ``--meta``): numbers where
    they parse as numbers, strings otherwise."""
    out: dict[str, Value] = {}
    for p in pairs:
        k, sep, raw = p.partition("=")
        if not sep:
            raise CorafsError(f"--meta {p!r}: expected KEY=VALUE")
        out[k.strip()] = parse_value(raw.strip())
    return check(out)


def parse_value(raw: str) -> Value:
    for conv in (int, float):
        try:
            v = conv(raw)
            return v
        except ValueError:
            continue
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def number(v) -> Optional[float]:
    """A value as a float for plots and selection (non-finite strings included), else None."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return None


def parse_by(spec: str) -> tuple[str, str]:
    """``eval_loss:min`` -> ("eval_loss", "min")."""
    key, sep, how = spec.rpartition(":")
    if not sep or how not in ("min", "max") or not key:
        raise CorafsError(f"--by {spec!r}: expected KEY:min or KEY:max")
    return key, how


def select(repo, commits: Iterable[str], spec: str) -> str:
    """The commit among ``commits`` whose metadata ``key`` is smallest (``key:min``) or
    largest (``key:max``); ties go to the newest (the first given). NaN never wins."""
    key, how = parse_by(spec)
    best: Optional[tuple[float, str]] = None
    for cid in commits:
        x = number(repo.commit_obj(cid).meta.get(key))
        if x is None or math.isnan(x):
            continue
        if best is None or (x < best[0] if how == "min" else x > best[0]):
            best = (x, cid)
    if best is None:
        raise NotFound("commit with metadata", key)
    return best[1]


def from_trainer_log(entries: Iterable[dict], step: Optional[int] = None,
                     epoch: Optional[float] = None) -> dict:
    """Metadata from a trainer's log entries (transformers' ``state.log_history``): the latest
    value of each logged number, plus ``step`` and ``epoch``."""
    out: dict[str, Value] = {}
    for e in entries:
        for k, v in e.items():
            if k in ("step", "epoch"):
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and KEY.match(k):
                out[k] = v
    if step is not None:
        out["step"] = int(step)
    if epoch is not None:
        out["epoch"] = float(epoch)
    return check(out)
