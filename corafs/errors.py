"""Typed errors. They carry data; only the CLI (and the FUSE error boundary) turn them into
messages, exit codes or errno values."""
from __future__ import annotations


class CorafsError(Exception):
    """Base of every error corafs raises on purpose. ``str(err)`` is a one-line user message."""

    exit_code = 1


class NotARepository(CorafsError):
    def __init__(self, path):
        super().__init__(f"not a corafs repository: {path}")
        self.path = path


class RepositoryExists(CorafsError):
    def __init__(self, path):
        super().__init__(f"a repository already exists at {path}")
        self.path = path


class NotFound(CorafsError):
    """An object, ref, revision or path that does not exist."""

    exit_code = 2

    def __init__(self, what: str, key: str):
        super().__init__(f"{what} not found: {key}")
        self.what = what
        self.key = key


class AmbiguousRevision(CorafsError):
    exit_code = 2

    def __init__(self, prefix: str, matches: list[str]):
        shown = ", ".join(m[:12] for m in matches[:5])
        super().__init__(f"ambiguous revision {prefix!r}: matches {shown}")
        self.prefix = prefix
        self.matches = matches


class InvalidName(CorafsError):
    exit_code = 2

    def __init__(self, name: str, why: str):
        super().__init__(f"invalid name {name!r}: {why}")
        self.name = name


class RefConflict(CorafsError):
    """Compare-and-swap on a ref failed: someone else moved it."""

    exit_code = 3

    def __init__(self, ref: str, expected, actual):
        super().__init__(
            f"ref {ref} moved concurrently (expected {short(expected)}, found {short(actual)})")
        self.ref = ref
        self.expected = expected
        self.actual = actual


class RefExists(CorafsError):
    exit_code = 2

    def __init__(self, ref: str):
        super().__init__(f"{ref} already exists")
        self.ref = ref


class CorruptObject(CorafsError):
    """An object is missing bytes, fails its checksum or cannot be decoded."""

    exit_code = 4

    def __init__(self, oid: str, why: str):
        super().__init__(f"object {oid} is corrupt: {why}")
        self.oid = oid
        self.why = why


class MissingObject(CorruptObject):
    def __init__(self, oid: str):
        super().__init__(oid, "missing from the store")


class UnsupportedFormat(CorafsError):
    """A file could not be parsed as a checkpoint; it is stored opaque. Carries the reason."""

    def __init__(self, fmt: str, why: str):
        super().__init__(f"not parsed as {fmt}: {why}")
        self.fmt = fmt
        self.why = why


class UnsafePickle(UnsupportedFormat):
    def __init__(self, what: str):
        super().__init__("pth", f"pickle would import {what}, outside torch's tensor-rebuild set")
        self.what = what


def short(oid) -> str:
    return "nothing" if oid is None else str(oid)[:12]


class IngestCancelled(CorafsError):
    """An ingest was stopped (the mount is unmounting); nothing of it is committed."""

    def __init__(self):
        super().__init__("ingest cancelled")
