"""The object-store interface. Small on purpose: a content-addressed byte store with ranged
reads and batched durable writes, plus refs with compare-and-swap. Local HDF5 packs and S3 both
implement it; the repository's config is kept by it too. Fault injection is a wrapper store
(``faults``); the decoded-block cache sits above, in the Repository; retries sit below, in the
S3 client (botocore's standard mode, which knows which requests are safe to repeat, plus
Retry-After: ``s3client``), where a wrapper could not tell a lost race from a lost reply."""
from __future__ import annotations

import abc
from typing import Callable, Iterable, Iterator, Optional

#: the repository's config, kept by its store (the file in a local repository's directory,
#: the key at the root of a bucket's prefix)
CONFIG = "corafs.json"


class ObjectWriter(abc.ABC):
    """A batch of new objects. Nothing is visible to readers (or durable) before ``commit``;
    ``abort`` (or a crash) leaves no trace except garbage a later fsck reports."""

    @abc.abstractmethod
    def put(self, oid: str, data) -> None:
        """Add one object (bytes-like). Putting an id twice is harmless."""

    @abc.abstractmethod
    def has(self, oid: str) -> bool:
        """Whether ``oid`` is already in this batch."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make every object of the batch durable and visible."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the batch."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class ObjectStore(abc.ABC):
    """Content-addressed objects (ids are lowercase hex strings) and named refs."""

    #: machines share this store with no lock between them (S3): gc deletes in two phases,
    #: and only what is older than a grace period (a writer elsewhere may be using it)
    shared_by_machines: bool = False

    def claim(self):
        """Context manager: while held, a gc in any process of this machine waits before it
        deletes anything. A writer holds it from its first object until the objects are
        reachable from a root (a ref, the staging journal), so that a gc needs no grace
        period to spare them. Stores shared by machines rely on the grace period instead."""
        import contextlib
        return contextlib.nullcontext()

    # -- objects -------------------------------------------------------------------------
    #: this machine's directory for the repository (the repository itself when local)
    state_dir: str

    # -- the repository's config ------------------------------------------------------------
    #: the repository format a new repository in this store is written with
    layout_format = 1

    @abc.abstractmethod
    def get_config(self) -> Optional[bytes]:
        """The config's bytes, or None when there is none."""

    @abc.abstractmethod
    def create_config(self, data: bytes) -> bool:
        """Write the config unless one exists (atomically); False when it does."""

    @abc.abstractmethod
    def update_config(self, change: Callable[[dict], dict]) -> dict:
        """Replace the config with ``change(config)`` and return it; a concurrent change is
        read again and ``change`` applied to it, never overwritten."""

    @abc.abstractmethod
    def has(self, oid: str) -> bool: ...

    @abc.abstractmethod
    def get(self, oid: str):
        """The whole object as a bytes-like object; raises MissingObject."""

    @abc.abstractmethod
    def get_range(self, oid: str, offset: int, length: int):
        """``length`` bytes of the object from ``offset`` (ranged read)."""

    @abc.abstractmethod
    def size_of(self, oid: str) -> int: ...

    @abc.abstractmethod
    def writer(self, gc_lock: bool = True) -> ObjectWriter:
        """A new batch. It holds the gc lock shared (``claim``) while it writes, unless
        ``gc_lock`` is False (gc's own copies: gc holds the lock itself)."""

    @abc.abstractmethod
    def ids(self) -> Iterator[str]:
        """Every object id in the store."""

    @abc.abstractmethod
    def stored_bytes(self) -> int:
        """Bytes the store occupies (files on disk, or object sizes remotely)."""

    def verify(self) -> Iterable[tuple[str, str]]:
        """Yield ``(what, problem)`` for damage found at the container level (pack files)."""
        return ()

    # -- refs ----------------------------------------------------------------------------
    @abc.abstractmethod
    def get_ref(self, name: str) -> Optional[str]: ...

    @abc.abstractmethod
    def cas_ref(self, name: str, expected: Optional[str], new: Optional[str]) -> None:
        """Set ``name`` to ``new`` if it currently holds ``expected`` (None: absent), atomically.
        ``new=None`` deletes. Raises RefConflict otherwise."""

    @abc.abstractmethod
    def list_refs(self, prefix: str = "") -> dict[str, str]: ...

    def sweep_refs(self) -> int:
        """Delete superseded records of ref moves, where the store keeps them (gc); how many."""
        return 0

    def append_reflog(self, ref: str, line: str) -> None:
        """Record one move of ``ref`` (a JSON line); stores without a reflog ignore it."""

    def read_reflog(self, ref: str) -> list[str]:
        """The recorded moves of ``ref``, oldest first."""
        return []

    def reflog_refs(self) -> list[str]:
        return []

    def lease(self, name: str, blocking: bool = True):
        """Context manager: hold the repository-wide lock ``name`` against every other holder
        (processes, or machines for a shared remote store). Yields whether it was taken
        (always, when blocking)."""
        raise NotImplementedError

    def read_block(self, oid: str):
        """A data object's payload for decoding: bytes, or a read-only buffer over memory
        the store filled (the local store reads large blocks with O_DIRECT when the tuning
        asks for it)."""
        return self.get(oid)

    def plan_fetch(self, oids) -> list[list[str]]:
        """``oids`` in groups worth fetching with one request each (``fetch_many``); a store
        whose reads are local fetches nothing ahead: each object alone."""
        return [[oid] for oid in oids]

    def fetch_many(self, oids: list[str]) -> None:
        """Fetch a group from ``plan_fetch`` at once into the store's caches (remote stores)."""

    def refresh(self) -> None:
        """Take in what other writers stored since the index was loaded (new packs, newer
        copies of objects)."""

    # -- local temporaries (capabilities every store declares; a remote one keeps none) --
    def token(self):
        """This process's writer token (``fsutil.WriterToken``): the name its temporary files
        carry, so that the next writer removes them if this process dies; None for a store
        that keeps no local files."""
        return None

    def temp_path(self, stem: str) -> Optional[str]:
        """A path for a temporary file of this process's (named by its token, removed by the
        next writer if this process dies), or None: then the caller picks one itself."""
        return None

    def temporaries(self) -> list[tuple[str, int, bool]]:
        """(path, size, whether a live writer owns it) of the temporary files interrupted
        writes left (fsck lists them as garbage)."""
        return []

    def clean_temporaries(self) -> list[tuple[str, int]]:
        """Remove the temporaries of writers that are gone; (path, size) of each."""
        return []

    # -- packs (repack and gc) ----------------------------------------------------------
    @abc.abstractmethod
    def packs(self) -> dict[str, dict]:
        """Pack name -> {"bytes", "mtime", "table"} of every pack."""

    @abc.abstractmethod
    def location(self, oid: str) -> Optional[tuple]:
        """(pack, offset, length) of the copy of ``oid`` that reads use, or None."""

    def close(self) -> None:
        pass
