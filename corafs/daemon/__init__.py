"""Mount daemon lifecycle."""
from .mount import MountLock, MountOptions, mount, umount

__all__ = ["MountLock", "MountOptions", "mount", "umount"]
