"""The pyfuse3 adapter (the only package that imports pyfuse3)."""
from .ops import Operations

__all__ = ["Operations"]
