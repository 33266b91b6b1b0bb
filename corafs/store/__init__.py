"""Object stores: the interface (``base``), local HDF5 packs (``local``), S3 (``s3``) and the
fault-injecting wrapper (``faults``). This module is the one place that knows which kinds of
store there are: everything above opens a repository's store through :func:`open_store` and
:func:`create_store` and asks it, never the URL, what it can do."""
from __future__ import annotations

import os

from ..config import DEFAULT, Tuning
from ..errors import NotARepository, RepositoryExists
from .base import CONFIG, ObjectStore, ObjectWriter
from .local import LocalStore

__all__ = ["ObjectStore", "ObjectWriter", "LocalStore", "CONFIG", "is_remote", "location",
           "state_dir", "open_store", "create_store", "read_config", "diagnose"]


def is_remote(spec: str) -> bool:
    """Whether ``spec`` names a repository in an object store service (``s3://``)."""
    return isinstance(spec, str) and spec.startswith("s3://")


def location(spec: str) -> str:
    """The canonical name of a repository: its URL, or the absolute path of its directory."""
    return spec if is_remote(spec) else os.path.abspath(spec)


def state_dir(spec: str) -> str:
    """This machine's directory for a repository: the repository itself when it is local, a
    cache directory for a remote one (mount staging, logs, caches live there)."""
    if is_remote(spec):
        from .s3client import local_dir
        return local_dir(spec)
    return os.path.abspath(spec)


def open_store(spec: str, tuning: Tuning = DEFAULT) -> ObjectStore:
    """The store of an existing repository. A local directory without a repository's config
    is refused before anything is written there."""
    if is_remote(spec):
        from .s3 import S3Store
        return S3Store(spec, tuning)
    path = os.path.abspath(spec)
    if not os.path.isfile(os.path.join(path, CONFIG)):
        raise NotARepository(spec)
    return LocalStore(path, tuning)


def create_store(spec: str, tuning: Tuning = DEFAULT) -> ObjectStore:
    """The store of a new repository (its config is written next, by ``create_config``): an
    empty or new directory, or a bucket whose service honours conditional writes."""
    if is_remote(spec):
        from .s3 import S3Store
        store = S3Store(spec, tuning)
        store.check_conditional_writes()
        return store
    path = os.path.abspath(spec)
    if os.path.exists(os.path.join(path, CONFIG)):
        raise RepositoryExists(spec)
    if os.path.isdir(path) and os.listdir(path):
        raise RepositoryExists(f"{spec} (directory is not empty)")
    os.makedirs(path, exist_ok=True)
    return LocalStore.create(path, tuning)


def read_config(spec: str) -> bytes:
    """A repository's config without opening its store where that is cheap (a local file);
    NotARepository where there is none."""
    if not is_remote(spec):
        try:
            with open(os.path.join(spec, CONFIG), "rb") as f:
                return f.read()
        except OSError:
            raise NotARepository(spec) from None
    store = open_store(spec)
    try:
        raw = store.get_config()
    finally:
        store.close()
    if raw is None:
        raise NotARepository(spec)
    return raw


def diagnose(spec: str) -> tuple[str, bool]:
    """What the service holding ``spec`` supports and what corafs will use there (``corafs
    doctor``): the report, and whether corafs can keep atomic refs there. For a remote
    repository the service's conditional writes are probed for real (racing writers, stale
    conditions, under ``probe/`` in the bucket, deleted after)."""
    if not is_remote(spec):
        path = os.path.abspath(spec)
        if os.path.isfile(os.path.join(path, CONFIG)):
            state = "a local repository"
        elif os.path.isdir(path):
            state = "a local directory, no repository yet"
        else:
            state = "no such directory yet"
        return (f"{path}: {state}. Local refs are files moved under a file lock on this "
                "machine; there is no service to probe.", True)
    import json
    from .s3 import S3Store
    from .s3probe import probe
    store = S3Store(spec)
    try:
        rep = probe(store.remote)
        lines = [rep.text(), ""]
        raw = store.get_config()
        if raw is None:
            lines.append("repository: none yet at this prefix (`corafs init` creates one)")
        else:
            fmt = json.loads(raw).get("format")
            refs = store.list_refs()
            heads = sum(1 for r in refs if r.startswith("heads/"))
            if fmt == 1:
                lines.append(f"repository: format 1 ({heads} branch(es)): refs are single "
                             "objects moved with If-Match; the first write by this version "
                             "moves them to generations (format 2), after which older corafs "
                             "versions refuse the repository")
            else:
                lines.append(f"repository: format {fmt} ({heads} branch(es), "
                             f"{len(refs) - heads} tag(s)): refs as generations")
        return "\n".join(lines), rep.usable
    finally:
        store.close()
