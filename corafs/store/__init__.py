"""Object stores: the interface, local HDF5 packs (and, later, S3 and wrappers)."""
from .base import ObjectStore, ObjectWriter
from .local import LocalStore

__all__ = ["ObjectStore", "ObjectWriter", "LocalStore"]
