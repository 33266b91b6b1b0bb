"""Command-line interface (``corafs ...``)."""
from .main import main

__all__ = ["main"]
