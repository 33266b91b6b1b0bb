"""The pyfuse3 session: mount options, start, the kernel loop, stop. The daemon
(corafs/daemon/mount.py) drives it and never imports pyfuse3 itself."""
from __future__ import annotations

import os

from ..errors import CorafsError


def start(ops, mp: str, allow_other: bool = False, debug: bool = False) -> None:
    """Mount ``ops`` at ``mp`` (the kernel handshake runs in ``main``); a refusal says why."""
    import pyfuse3

    opts = set(pyfuse3.default_options)
    opts |= {"fsname=corafs", "subtype=corafs"}
    if allow_other:
        opts |= {"allow_other", "default_permissions"}
    if debug:
        opts.add("debug")
    try:
        pyfuse3.init(ops, mp, opts)
    except RuntimeError as e:
        hint = ""
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            hint = ": /dev/fuse is not readable and writable by this user"
        elif allow_other and os.getuid() != 0:
            hint = ": --allow-other needs 'user_allow_other' in /etc/fuse.conf"
        raise CorafsError(f"cannot mount {mp} ({e}){hint}") from None


async def main() -> None:
    """Serve kernel requests until the file system is unmounted or ``stop`` is called."""
    import pyfuse3

    await pyfuse3.main()


def stop() -> None:
    """Make ``main`` return (a signal handler's way to unmount)."""
    import pyfuse3

    pyfuse3.terminate()


def close(unmount: bool) -> None:
    """End the session; ``unmount``: also unmount (after a clean stop)."""
    import pyfuse3

    pyfuse3.close(unmount=unmount)
