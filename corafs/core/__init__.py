"""The Repository core: objects, trees, commits, refs, revisions, ingest, read, fsck."""
from .repository import Commit, CommitResult, Repository

__all__ = ["Repository", "Commit", "CommitResult"]
