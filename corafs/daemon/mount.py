"""The mount daemon's lifecycle, in a known order: validate (before daemonizing, so errors reach
the user's terminal), fork, open the repository after the fork (HDF5 and thread pools do not
survive one), the FUSE session (``corafs.fuse.session``: the only pyfuse3 calls), background
tasks (ref polling, signals, read-ahead), then the session's loop. SIGTERM/SIGINT unmount
cleanly. After a crash the mount is *not* unmounted: a dead mount ("Transport endpoint is not
connected") is noticed, an empty directory is not.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

from ..config import DEFAULT
from ..core import Repository
from ..core.repository import state_dir
from ..errors import CorafsError
from . import memory

log = logging.getLogger("corafs.mount")


@dataclasses.dataclass
class MountOptions:
    foreground: bool = False
    commit_delay: float = 1.0
    author: Optional[str] = None
    cache_size: int = 512 << 20
    read_ahead_kb: int = 1024
    refresh_interval: float = 1.0
    debug: bool = False
    log_file: Optional[str] = None
    #: seconds unmount may spend storing closed files; what is left stays staged (journaled)
    #: and the next mount commits it
    unmount_timeout: float = 30.0
    max_file_size: int = DEFAULT.max_file_size
    #: let other users read the mount (FUSE allow_other + default_permissions)
    allow_other: bool = False

    def check(self) -> None:
        """Refuse what the mount cannot work with, before anything starts."""
        if self.cache_size < MIN_CACHE:
            raise CorafsError(
                f"cache size of {self.cache_size} bytes is below what the mount works with "
                f"({MIN_CACHE >> 20}M; a size without a unit is in bytes); 256M or more keeps "
                f"cold reads at full speed")


#: the least ``cache_size``: the read cache's own floor. Below 256M the decode-ahead's blocks
#: are evicted before they are read (a cold torch.load of 512 MB: 64M 0.62-0.68 s, 128M
#: 0.67 s, 256M 0.41-0.43 s, 512M 0.43-0.46 s).
MIN_CACHE = 64 << 20


def check_mountpoint(mountpoint: str) -> str:
    mp = os.path.abspath(mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise CorafsError("/dev/fuse is missing: FUSE is not available on this machine")
    if not os.path.isdir(mp):
        raise CorafsError(f"mountpoint {mp} is not a directory")
    if os.path.ismount(mp):
        raise CorafsError(f"mountpoint {mp} is busy: something is already mounted there")
    if os.listdir(mp):
        raise CorafsError(f"mountpoint {mp} is not empty")
    return mp


class MountLock:
    """One mount per local repository (a second one is refused): a lock held by the daemon for
    its lifetime, with the holder's pid and mountpoint for the error message.

    An open-file-description lock (``F_OFD_SETLK``, Linux 3.15), not ``flock``: ``holder()``
    asks the kernel who holds it (``F_OFD_GETLK``) without taking it, so a ``corafs status``,
    ``fsck`` or second mount that probes at the moment a mount starts cannot make that mount
    fail. The lock belongs to the daemon's descriptor: the kernel drops it however the daemon
    ends, and closing another descriptor of the file does not (as it would a POSIX lock)."""

    _FLOCK = "hhqqixxxx"        # struct flock: l_type, l_whence, l_start, l_len, l_pid

    def __init__(self, repo_path: str):
        self.path = os.path.join(state_dir(repo_path), "staging", "mount.lock")
        self.fd: Optional[int] = None

    @classmethod
    def _request(cls, kind: int) -> bytes:
        import struct
        return struct.pack(cls._FLOCK, kind, os.SEEK_SET, 0, 0, 0)

    def acquire(self, mountpoint: str) -> None:
        import fcntl
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, self._request(fcntl.F_WRLCK))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise CorafsError(f"repository is already mounted ({holder or 'by another process'})"
                              "; one mount per repository") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} at {mountpoint}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def holder(self) -> Optional[str]:
        """Who holds the lock (its pid and mountpoint), or None; never takes the lock."""
        import fcntl
        import struct
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, self._request(fcntl.F_WRLCK))
            if struct.unpack(self._FLOCK, res)[0] == fcntl.F_UNLCK:
                return None
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "by another process"
        finally:
            os.close(fd)


def mount(repo_path: str, mountpoint: str, opts: MountOptions) -> None:
    Repository.check(repo_path)              # an invalid repository fails here, in the caller
    opts.check()
    mp = check_mountpoint(mountpoint)
    holder = MountLock(repo_path).holder()
    if holder:
        raise CorafsError(f"repository is already mounted ({holder}); one mount per repository")
    log_file = opts.log_file or os.path.join(state_dir(repo_path), "logs", "mount.log")
    if opts.foreground:
        _setup_logging(None, opts.debug)
        serve(repo_path, mp, opts, ready_fd=None)
        return
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the daemon
        os.close(r)
        os.setsid()
        code = 0
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            logfd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            _setup_logging(None, opts.debug)
            serve(repo_path, mp, opts, ready_fd=w)
        except BaseException as e:  # report to the waiting parent, then exit
            code = 1
            try:
                os.write(w, f"error: {e}".encode())
            except OSError:
                pass
            log.exception("mount daemon failed")
        finally:
            os._exit(code)
    os.close(w)
    msg = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        msg += chunk
        if msg.startswith(b"ok"):
            break
    os.close(r)
    if not msg.startswith(b"ok"):
        os.waitpid(pid, 0)
        raise CorafsError(msg.decode(errors="replace").removeprefix("error: ") or
                          f"mount daemon exited early (see {log_file})")


def _setup_logging(path, debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    # a dependency deprecating what we call says so in the log (once per call site), long
    # before it removes it; the test suite turns the same warnings into errors
    import warnings
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("default", category=category)
    logging.captureWarnings(True)


def serve(repo_path: str, mp: str, opts: MountOptions, ready_fd: Optional[int]) -> None:
    import trio

    from ..fuse import Operations, session
    from ..view import MountView

    from ..view.health import Health
    from ..view.staging import Staging, status_lines

    sys.setswitchinterval(DEFAULT.mount_switch_interval)
    lock = MountLock(repo_path)
    lock.acquire(mp)
    # --cache-size bounds decoded data held, in-flight decode buffers included
    working = DEFAULT.mount_workers * 4 * DEFAULT.block_size
    memory.tune_malloc(opts.cache_size)
    huge = memory.huge_page_bytes()
    if huge:
        log.info("read cache: %d MiB in huge pages", huge >> 20)
    else:
        log.info("read cache: no huge pages (transparent_hugepage is off?); cold reads of "
                 "raw blocks are slower on disks that split O_DIRECT requests")
    repo = Repository(repo_path, tuning=dataclasses.replace(
        DEFAULT, block_cache_bytes=max(MIN_CACHE, opts.cache_size - working),
        workers=DEFAULT.mount_workers, direct_reads=True))
    for path, n in repo.store.clean_temporaries():   # what a killed writer left
        log.info("removed %s (%d bytes) left by an interrupted write", path, n)
    staging = Staging(repo, os.path.join(repo.path, "staging"), opts.commit_delay, opts.author)
    health = Health(staging.root)
    staging.max_file_size = opts.max_file_size
    view = MountView(repo, staging)
    for line in staging.recover():
        log.warning("recovery: %s", line)
    repo.reencode_in_background()       # head-first work a killed command left queued
    ops = Operations(view)
    session.start(ops, mp, opts.allow_other, opts.debug)
    clean = False
    try:
        trio.run(_main, ops, health, mp, opts, ready_fd)
        clean = True
    finally:
        session.close(unmount=clean)
        if clean:                  # unmount commits at once; a crash leaves the journal
            staging.stop = threading.Event()
            timer = threading.Timer(opts.unmount_timeout, staging.stop.set)
            timer.daemon = True
            timer.start()
            failed: list[BaseException] = []
            for cid in staging.commit_all(on_error=failed.append):
                log.info("committed %s at unmount", cid[:12])
            if failed:
                health.failed("commit", failed[-1])
            elif not staging.pending():
                health.ok("commit")
            timer.cancel()
            for line in status_lines(repo.path):
                log.warning("left staged at unmount: %s", line)
        staging.close()
        repo.close()
        lock.release()
        log.info("unmounted %s", mp)


async def _main(ops, health, mp: str, opts: MountOptions, ready_fd: Optional[int]) -> None:
    import trio

    from ..fuse import session

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals)
        nursery.start_soon(_refresher, ops, health, opts.refresh_interval)
        nursery.start_soon(_ready, mp, opts, ready_fd)
        nursery.start_soon(_committer, ops, health)
        await session.main()
        # background ingests stop now (their threads are abandoned, not waited for); the
        # unmount commit that follows has its own, bounded, time
        ops.staging.stop.set()
        nursery.cancel_scope.cancel()


async def _signals() -> None:
    import trio

    from ..fuse import session

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for sig in sigs:
            log.info("signal %s: unmounting", sig)
            session.stop()
            return


async def _ready(mp: str, opts: MountOptions, ready_fd: Optional[int]) -> None:
    import trio

    # a stat through the mount proves the kernel handshake is done
    st = await trio.to_thread.run_sync(os.stat, mp)
    bdi = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    # read-ahead: 1 MiB doubled cold FUSE throughput (docs/mount.md); max_ratio: FUSE connections may
    # hold only 1% of the dirty-page budget, which throttles writes through the writeback cache
    for name, value in (("read_ahead_kb", opts.read_ahead_kb), ("max_ratio", 40)):
        if not value:
            continue
        try:
            with open(f"{bdi}/{name}", "w") as f:
                f.write(str(value))
        except OSError as e:
            log.info("could not set %s/%s: %s", bdi, name, e)
    log.info("mounted at %s", mp)
    if ready_fd is not None:
        os.write(ready_fd, b"ok")
        os.close(ready_fd)


def _attempt(health, task: str, fn) -> None:
    """Run one background attempt; a failure is recorded (``corafs status`` shows it) and its
    traceback logged once per streak, then a reminder every few minutes, not every retry."""
    try:
        fn()
    except Exception as e:
        if health.failed(task, e):
            log.exception("%s failed; changes stay staged and it is retried", task)
        else:
            note = health.remind(task)
            if note:
                log.error("%s", note)
        raise
    if health.ok(task):
        log.info("%s succeeded again", task)


async def _refresher(ops, health, interval: float) -> None:
    """Poll refs; make the kernel forget what a moved ref changed."""
    import trio

    while True:
        await trio.sleep(interval)
        try:
            await ops.apply_refresh()
        except Exception as e:
            if health.failed("refresh", e):
                log.exception("refresh failed")
        else:
            health.ok("refresh")


async def _committer(ops, health) -> None:
    """Ingest files whose last writer closed; commit branches whose quiet period passed."""
    import trio

    staging = ops.staging
    repo = staging.repo
    seen_err = None                            # the re-encoding failure already recorded
    while True:
        await trio.sleep(0.1)
        try:
            # abandon_on_cancel: at unmount the task leaves the thread (which stops on its own)
            if staging.to_ingest():            # closed files, wherever they are now
                await trio.to_thread.run_sync(_attempt, health, "ingest", staging.ingest_ready,
                                              abandon_on_cancel=True)
            due = staging.due()
            for branch in due:
                await trio.to_thread.run_sync(_attempt, health, "commit",
                                              lambda b=branch: staging.commit(b),
                                              abandon_on_cancel=True)
            if due:
                await ops.apply_refresh()
        except Exception:
            await trio.sleep(1.0)              # logged and recorded by _attempt
        err = repo.reencode_error
        if err is not None and err is not seen_err:     # one record per failed run
            if health.failed("reencode", err):
                log.error("re-encoding of history failed (%s: %s); its jobs stay queued",
                          type(err).__name__, err, exc_info=err)
        elif err is None and seen_err is not None:
            health.ok("reencode")
        seen_err = err


@dataclasses.dataclass
class UnmountReport:
    #: what stays staged (files that could not be stored, or not within the unmount timeout)
    staged: list[str] = dataclasses.field(default_factory=list)
    #: background work that failed while mounted (recovered or not), one line each
    failures: list[str] = dataclasses.field(default_factory=list)
    #: some background work was still failing when the mount ended
    failing: bool = False


def umount(mountpoint: str, timeout: float = 90.0) -> UnmountReport:
    """Unmount and wait for the daemon to finish committing; report what stays staged and
    what background work failed while mounted."""
    mp = os.path.abspath(mountpoint)
    if not os.path.ismount(mp):
        raise CorafsError(f"{mp} is not mounted")
    try:
        pid = int(os.getxattr(mp, "user.corafs.pid"))
    except (OSError, ValueError):
        pid = None
    try:
        repo = os.fsdecode(os.getxattr(mp, "user.corafs.repo"))
    except OSError:
        repo = None
    p = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True)
    if p.returncode != 0:
        raise CorafsError(f"cannot unmount {mp}: {p.stderr.strip() or p.stdout.strip()}")
    deadline = time.monotonic() + timeout
    while pid is not None and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.05)
    if repo is None:
        return UnmountReport()
    from ..view import health
    from ..view.staging import status_lines
    root = os.path.join(repo, "staging")
    return UnmountReport(staged=[ln for ln in status_lines(repo) if ln.startswith("staged")],
                         failures=health.history_lines(root),
                         failing=bool(health.failing_lines(root)))
