"""Mount daemon lifecycle."""
from .mount import MountOptions, mount, umount

__all__ = ["MountOptions", "mount", "umount"]
