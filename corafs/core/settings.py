"""Repository settings: the keys of ``corafs.json`` a user may set (``corafs config``), how
each is checked, and how the encoding ones become the repository's ``Tuning``.

The encoding settings live in the repository's own config, not in a command's options, so
every process that writes to one repository (the CLI, the mount daemon, the Python API, a
second machine sharing an S3 bucket) encodes alike: a mount's background re-encoding and a
``corafs commit`` never disagree on how deep a chain may grow."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

from ..config import DEFAULT, Tuning
from ..errors import CorafsError

HEAD_CODECS = ("auto", "raw", "planes-zstd")


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    #: a value as typed (str) or as read from corafs.json -> the checked value
    check: Callable[[object], object]
    default: object
    help: str
    #: the Tuning field it sets, if any
    tuning: Optional[str] = None


def _text(v):
    if not isinstance(v, str) or not v.strip():
        raise ValueError("a non-empty text")
    return v.strip()


def _days(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError("a number of days") from None
    if not math.isfinite(x) or x < 0:
        raise ValueError("a number of days, 0 or more")
    return int(x) if x == int(x) else x


def _depth(v):
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
        raise ValueError("a whole number from 1 to 64")
    return v


def _head(v):
    if v not in HEAD_CODECS:
        raise ValueError("one of " + ", ".join(HEAD_CODECS))
    return v


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("author", _text, None,
            "author of commits when CORAFS_AUTHOR is not set (default: user@host)"),
    Setting("reflog_expire_days", _days, 90,
            "days a reflog entry keeps the commits it names from gc"),
    Setting("max_delta_depth", _depth, DEFAULT.max_delta_depth,
            "longest delta chain: lower reads old versions faster and stores more",
            "max_delta_depth"),
    Setting("head_codec", _head, DEFAULT.head_codec,
            "how a new version's float blocks are stored: raw reads fastest, planes-zstd "
            "stores least, auto compresses unless that saves under 20%", "head_codec"),
)}


def lookup(key: str) -> Setting:
    s = SETTINGS.get(key)
    if s is None:
        raise CorafsError(f"unknown setting {key!r} (settings: {', '.join(SETTINGS)})")
    return s


def check(key: str, value) -> object:
    """The checked value of ``key`` (a string as typed, or a value read from corafs.json)."""
    s = lookup(key)
    try:
        return s.check(value)
    except ValueError as e:
        raise CorafsError(f"setting {key}: {value!r} is not valid: expected {e}") from None


def value(config: dict, key: str) -> object:
    """The value in force: the config's (checked), else the default."""
    s = lookup(key)
    if config.get(key) is not None:
        return check(key, config[key])
    return s.default


def apply(tuning: Tuning, config: dict) -> Tuning:
    """``tuning`` with the repository's encoding settings in place of its fields. A value
    hand-edited into corafs.json is checked like one set with ``corafs config``."""
    changes = {s.tuning: check(s.key, config[s.key]) for s in SETTINGS.values()
               if s.tuning and config.get(s.key) is not None}
    return dataclasses.replace(tuning, **changes) if changes else tuning
