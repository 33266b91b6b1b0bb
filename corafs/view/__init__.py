"""The mount tree as a pure model (no pyfuse3): tested without a mount, used by corafs.fuse."""
from .model import ROOT_INODE, MountView, Node

__all__ = ["MountView", "Node", "ROOT_INODE"]
