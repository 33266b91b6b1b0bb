"""What the command modules share: opening a repository for a command, the progress bar."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from ..core import Repository
from ..errors import CorafsError
from . import fmt


@contextmanager
def progress(total: int, desc: str):
    from tqdm import tqdm      # here: most commands show no progress, and it costs 18 ms
    bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
               file=sys.stderr, disable=None, leave=False)
    try:
        yield bar.update
    finally:
        bar.close()


def open_repo(path: str) -> Repository:
    repo = Repository(path)
    # commands that commit run the head-first re-encoding themselves, after their output
    repo.background_reencode = False
    return repo


def reencode_after(repo) -> None:
    """The commit is visible already: now turn what it replaced into reverse deltas (the
    head-first step). Interrupted, it stays queued for the next command or mount."""
    try:
        rep = repo.reencode()
    except KeyboardInterrupt:
        print("note: re-encoding of the previous version interrupted; it stays queued",
              file=sys.stderr)
        return
    except (CorafsError, OSError) as e:
        # the commit has landed: this command succeeded; the job stays queued for the next
        print(f"warning: re-encoding of the previous version failed ({e}); it stays queued "
              "and is retried by the next command", file=sys.stderr)
        return
    if rep.held:
        print(f"warning: {rep.held} re-encoding job(s) set aside: some stored blocks could not "
              "be read (`corafs status` says which; `corafs fsck` checks the repository)",
              file=sys.stderr)
    if rep.blocks or rep.compressed:
        print(f" previous version re-encoded: {rep.blocks} block(s) as deltas, "
              f"{rep.compressed} compressed, "
              f"{fmt.size(rep.bytes_before)} -> {fmt.size(rep.bytes_after)}")
