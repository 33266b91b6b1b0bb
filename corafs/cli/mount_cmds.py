"""``corafs mount`` / ``corafs umount``."""
from __future__ import annotations

import os
import re
import sys

from ..errors import CorafsError


def parse_size(s: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", s)
    if not m:
        raise CorafsError(f"bad size {s!r} (use e.g. 512M, 2G)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def add(cmd) -> None:
    sp = cmd("mount", cmd_mount, "mount a repository as a filesystem")
    sp.add_argument("repo")
    sp.add_argument("mountpoint")
    sp.add_argument("-f", "--foreground", action="store_true", help="stay attached")
    sp.add_argument("--cache-size", default="512M",
                    help="bytes of decoded blocks kept in memory (default 512M)")
    sp.add_argument("--disk-cache-size", metavar="SIZE",
                    help="s3:// repositories: bytes of fetched objects kept on this machine's "
                         "disk (default 10G, or CORAFS_CACHE_SIZE)")
    sp.add_argument("--read-ahead-kb", type=int, default=1024,
                    help="kernel read-ahead for the mount (default 1024; 0 leaves it)")
    sp.add_argument("--log", help="daemon log file (default REPO/logs/mount.log)")
    sp.add_argument("--commit-delay", type=float, default=1.0,
                    help="seconds of quiet before staged writes become a commit (default 1)")
    sp.add_argument("--author", help="author of the mount's commits (default: repository's)")
    sp.add_argument("--allow-other", action="store_true",
                    help="let other users read the mount (permissions are checked by the kernel)")
    sp.add_argument("--max-file-size", default="256G",
                    help="largest file accepted in a branch (default 256G; EFBIG beyond)")
    sp.add_argument("--unmount-timeout", type=float, default=30.0,
                    help="seconds unmount may spend storing closed files; the rest stays "
                         "staged for the next mount (default 30)")
    sp.add_argument("--debug", action="store_true")

    sp = cmd("umount", cmd_umount, "unmount (fusermount3 -u works too)")
    sp.add_argument("mountpoint")

    sp = cmd("status", cmd_status, "mount state, staged changes, files kept after a crash")
    sp.add_argument("repo")


def cmd_mount(a):
    from ..daemon import MountOptions, mount
    if a.disk_cache_size:
        parse_size(a.disk_cache_size)                    # a bad size fails here
        os.environ["CORAFS_CACHE_SIZE"] = a.disk_cache_size   # the daemon inherits it
    opts = MountOptions(foreground=a.foreground, cache_size=parse_size(a.cache_size),
                        read_ahead_kb=a.read_ahead_kb, debug=a.debug, log_file=a.log,
                        commit_delay=a.commit_delay, author=a.author,
                        allow_other=a.allow_other, max_file_size=parse_size(a.max_file_size),
                        unmount_timeout=a.unmount_timeout)
    mount(a.repo, a.mountpoint, opts)
    if not a.foreground:
        print(f"mounted {a.repo} at {a.mountpoint}")


def cmd_umount(a):
    from ..daemon import umount
    rep = umount(a.mountpoint)
    if rep.failures:
        print("background work failed while mounted (details in the mount log):",
              file=sys.stderr)
        for line in rep.failures:
            print(f"  {line}", file=sys.stderr)
    if rep.staged:
        print(f"unmounted {a.mountpoint}, but {len(rep.staged)} change(s) are not committed; "
              "the next mount retries them (`corafs status` shows them):", file=sys.stderr)
        for line in rep.staged:
            print(f"  {line}", file=sys.stderr)
    if rep.staged or rep.failing:
        return 1


def cmd_status(a):
    from ..core import Repository, headfirst
    from ..core.repository import state_dir
    from ..daemon import MountLock
    from ..view import health
    from ..view.staging import status_lines
    with Repository(a.repo) as repo:
        held = headfirst.held(repo)
    holder = MountLock(a.repo).holder()
    print(f"mounted: {holder}" if holder else "not mounted")
    for h in held:
        print(f"held     re-encoding of what commit {h.commit[:12]} replaced is set aside: "
              f"{h.reason}")
    root = state_dir(a.repo)
    failing = health.failing_lines(os.path.join(root, "staging"), mounted=bool(holder))
    for line in failing:
        print(line)
    lines = status_lines(root)
    for line in lines:
        print(line)
    if not lines:
        print("nothing staged")
