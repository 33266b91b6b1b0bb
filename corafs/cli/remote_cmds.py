"""``corafs remote``, ``push``, ``pull``, ``clone``: other repositories."""
from __future__ import annotations

import os

from ..errors import CorafsError
from . import fmt
from .common import open_repo, progress


def add(cmd) -> None:
    sp = cmd("remote", cmd_remote, "name other repositories (a path or s3://bucket/prefix)")
    sp.add_argument("repo")
    sp.add_argument("action", nargs="?", choices=("add", "remove", "list"), default="list")
    sp.add_argument("name", nargs="?")
    sp.add_argument("url", nargs="?")

    sp = cmd("push", cmd_push, "send a branch to a remote: only objects it lacks, deltas as "
                               "deltas; fast-forward only unless --force")
    sp.add_argument("repo")
    sp.add_argument("remote", help="a remote's name, a path or an s3:// URL")
    sp.add_argument("branch", nargs="?")
    sp.add_argument("-f", "--force", action="store_true",
                    help="move the remote branch even when it is not a fast-forward (it is "
                         "still never overwritten if it moved during the push)")

    sp = cmd("pull", cmd_pull, "fetch a branch from a remote and fast-forward the local one")
    sp.add_argument("repo")
    sp.add_argument("remote", help="a remote's name, a path or an s3:// URL")
    sp.add_argument("branch", nargs="?")
    sp.add_argument("--into", metavar="BRANCH",
                    help="local branch to move (default: the same name); pull into a new one "
                         "and `corafs merge` it when histories diverged")
    sp.add_argument("-f", "--force", action="store_true")

    sp = cmd("clone", cmd_clone, "copy a repository (every branch and tag) into a new local one")
    sp.add_argument("url")
    sp.add_argument("dest")


def _remote_url(repo, name: str) -> str:
    from ..core import remote
    if name.startswith("s3://") or os.sep in name or name in (".", ".."):
        return name
    return remote.url_of(repo, name)


def _transferred(rep, what: str) -> None:
    verb, where = ("sent", "there") if what == "push" else ("received", "here")
    print(f" {rep.objects} object(s), {fmt.size(rep.bytes)} {verb} ({rep.skipped} already "
          f"{where})")


def _report_move(name: str, rep, what: str) -> None:
    if rep.up_to_date:
        print(f"{name} is up to date ({rep.new[:12]})")
    else:
        old = rep.old[:12] if rep.old else "(new branch)"
        print(f"{name}: {old} -> {rep.new[:12]}")
    _transferred(rep, what)


def cmd_remote(a):
    from ..core import remote
    with open_repo(a.repo) as repo:
        if a.action == "add":
            if not a.name or not a.url:
                raise CorafsError("usage: corafs remote REPO add NAME URL")
            remote.add_remote(repo, a.name, a.url)
        elif a.action == "remove":
            if not a.name:
                raise CorafsError("usage: corafs remote REPO remove NAME")
            remote.remove_remote(repo, a.name)
        else:
            for name, url in sorted(remote.remotes(repo).items()):
                print(f"{name}\t{url}")


def cmd_push(a):
    from ..core import remote
    with open_repo(a.repo) as repo:
        url = _remote_url(repo, a.remote)
        branch = a.branch or repo.default_branch
        with progress(0, "push") as upd:
            rep = remote.push(repo, url, branch, a.force, upd)
        _report_move(f"{a.remote} {branch}", rep, "push")


def cmd_pull(a):
    from ..core import remote
    with open_repo(a.repo) as repo:
        url = _remote_url(repo, a.remote)
        with progress(0, "pull") as upd:
            rep = remote.pull(repo, url, a.branch, a.into, a.force, upd)
        _report_move(rep.ref[len("heads/"):], rep, "pull")


def cmd_clone(a):
    from ..core import remote
    with progress(0, "clone") as upd:
        repo, rep = remote.clone(a.url, a.dest, upd)
    try:
        print(f"cloned {a.url} into {repo.path}: {len(repo.branches())} branch(es), "
              f"{len(repo.tags())} tag(s); remote 'origin'")
        _transferred(rep, "pull")
    finally:
        repo.close()

