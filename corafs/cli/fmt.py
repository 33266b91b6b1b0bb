"""Formatting helpers for the CLI."""
from __future__ import annotations

import datetime


def size(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def when(time_ns: int) -> str:
    t = datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.timezone.utc).astimezone()
    return t.strftime("%Y-%m-%d %H:%M:%S %z")


def shape(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]"


def duration(seconds: float) -> str:
    """``900`` -> ``15 min``; ``45`` -> ``45 s``; ``7200`` -> ``2 h``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
