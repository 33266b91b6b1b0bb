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
