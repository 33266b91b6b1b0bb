"""Revision syntax: ``NAME`` (branch, tag, or commit id prefix of >= 4 hex digits), followed by
any number of ``~N``, ``~``, ``^N``, ``^`` as in git. ``REV:PATH`` names a path inside it."""
from __future__ import annotations

import re

from ..errors import InvalidName

_OP = re.compile(r"(~|\^)(\d*)")
_BAD_BRANCH = re.compile(r"[~^:/\\\x00-\x1f\x7f*?\[]")


def split(rev: str) -> tuple[str, list[tuple[str, int]]]:
    """``"main~2^"`` -> ``("main", [("~", 2), ("^", 1)])``."""
    m = re.search(r"[~^]", rev)
    if not m:
        return rev, []
    base, rest = rev[:m.start()], rev[m.start():]
    ops = []
    pos = 0
    while pos < len(rest):
        mm = _OP.match(rest, pos)
        if not mm:
            raise InvalidName(rev, "bad revision suffix")
        ops.append((mm.group(1), int(mm.group(2)) if mm.group(2) else 1))
        pos = mm.end()
    if not base:
        raise InvalidName(rev, "revision has no name before ~ or ^")
    return base, ops


def split_path(spec: str) -> tuple[str, str]:
    """``"main~1:sub/model.pth"`` -> ``("main~1", "sub/model.pth")``; no colon -> path ''."""
    rev, _, path = spec.partition(":")
    return rev, path.strip("/")


def check_ref_name(name: str, what: str = "branch") -> None:
    if not name or name.startswith("@") or name.startswith(".") or name.startswith("-"):
        raise InvalidName(name, f"a {what} name may not be empty or start with '@', '.' or '-'")
    if _BAD_BRANCH.search(name) or name.endswith(".lock") or ".." in name:
        raise InvalidName(name, f"a {what} name may not contain ~ ^ : / or control characters")
    if len(name.encode()) > 200:
        raise InvalidName(name, "too long")


def is_hex_prefix(s: str, minimum: int = 4) -> bool:
    return len(s) >= minimum and all(c in "0123456789abcdef" for c in s)
