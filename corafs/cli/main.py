"""The ``corafs`` command. Argument parsing, progress bars and exit codes only: every command
is a thin call into ``corafs.Repository`` (or the mount daemon)."""
from __future__ import annotations

import argparse
import os
import stat
import sys

from .. import __version__
from ..core import Repository, commitmeta
from ..errors import CorafsError
from . import fmt, history_cmds, maint_cmds, remote_cmds, viz_cmds
from .common import open_repo, progress, reencode_after


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "endpoint_url", None):
        os.environ["CORAFS_S3_ENDPOINT_URL"] = args.endpoint_url   # a mount daemon inherits it
    try:
        code = args.func(args) or 0
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `corafs log REPO | head`: the reader has what it wanted; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except CorafsError as e:
        print(f"corafs: error: {e}", file=sys.stderr)
        return e.exit_code
    except FileNotFoundError as e:
        print(f"corafs: error: no such file or directory: {e.filename}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"corafs: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("corafs: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corafs", description="Version-controlled checkpoint store.")
    p.add_argument("--version", action="version", version=f"corafs {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    def cmd(name, func, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func, command_name=name)
        sp.add_argument("--endpoint-url", metavar="URL",
                        help="S3-compatible service for s3:// repositories (default: AWS, or "
                             "AWS_ENDPOINT_URL); credentials come from the usual AWS "
                             "environment variables and config files")
        return sp

    sp = cmd("init", cmd_init, "create a repository")
    sp.add_argument("repo")
    sp.add_argument("--default-branch", default="main")
    sp.add_argument("--author", help="author recorded in commits (default: user@host)")

    sp = cmd("commit", cmd_commit, "commit files or directories to a branch")
    sp.add_argument("repo")
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("-b", "--branch", help="branch to commit to (default: the default branch)")
    sp.add_argument("-m", "--message", help="commit message (default: generated)")
    sp.add_argument("--to", default="", metavar="DEST", help="directory in the branch to put them")
    sp.add_argument("--author")
    sp.add_argument("--lossy", choices=["int8", "int16", "sparse", "per-axis"],
                    help="opt-in lossy delta codec for float tensors of this commit "
                         "(never the default; the commit and files are marked lossy)")
    sp.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="metadata in the commit (repeatable): --meta loss=0.123 --meta step=400; "
                         "numbers where they parse as numbers, short strings otherwise")

    for group in (history_cmds, remote_cmds, maint_cmds, viz_cmds):
        group.add(cmd)
    _add_mount_commands(cmd)
    return p


def _add_mount_commands(cmd) -> None:
    try:
        from . import mount_cmds
    except ImportError:   # the mount is optional at import time (pyfuse3 missing)
        return
    mount_cmds.add(cmd)


# -- commands ---------------------------------------------------------------------------------
def cmd_init(a):
    repo = Repository.init(a.repo, a.default_branch, a.author)
    print(f"Initialized empty corafs repository in {repo.url} (branch {repo.default_branch})")
    repo.close()


def _collect(paths, to):
    """What to commit: regular files (dest -> local path), symlinks inside directories as
    link entries (never followed: a link to /etc/passwd is a link, not its content), and the
    special files skipped, with why. A path named on the command line is followed."""
    files, links, skipped = {}, {}, []
    for p in paths:
        if os.path.isdir(p):
            _scan_dir(p, "", to, files, links, skipped)
        elif os.path.exists(p):
            if not stat.S_ISREG(os.stat(p).st_mode):
                raise CorafsError(f"{p} is not a regular file or a directory")
            files[_join(to, os.path.basename(p.rstrip("/")))] = p
        else:
            raise FileNotFoundError(2, "No such file or directory", p)
    return files, links, skipped


def _scan_dir(root, rel, to, files, links, skipped):
    with os.scandir(os.path.join(root, rel) if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        r = f"{rel}/{e.name}" if rel else e.name
        if e.is_symlink():
            links[_join(to, r)] = {"kind": "link", "target": os.readlink(e.path)}
        elif e.is_dir(follow_symlinks=False):
            _scan_dir(root, r, to, files, links, skipped)
        elif e.is_file(follow_symlinks=False):
            files[_join(to, r)] = e.path
        else:
            mode = e.stat(follow_symlinks=False).st_mode
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special")
            skipped.append((e.path, f"{kind}: only files, directories and symlinks are "
                                     "versioned"))


def _join(a, b):
    a = "/".join(p for p in a.split("/") if p not in ("", "."))
    return f"{a}/{b}" if a else b


def cmd_commit(a):
    with open_repo(a.repo) as repo:
        branch = a.branch or repo.default_branch
        files, links, skipped = _collect(a.paths, a.to)
        for path, why in skipped:
            print(f"note: skipped {path} ({why})", file=sys.stderr)
        total = sum(os.path.getsize(p) for p in files.values())
        with progress(total, "ingest") as upd:
            res = repo.commit(branch, files, message=a.message, author=a.author,
                              lossy=a.lossy, on_progress=upd, entries=links,
                              meta=commitmeta.parse_pairs(a.meta))
        for dest, r in res.files:
            if r.reason:
                print(f"note: {dest} stored as an opaque file ({r.reason})", file=sys.stderr)
        if res.commit is None:
            print(f"nothing to commit on {branch}: files are identical to its head")
            return 0
        c = repo.commit_obj(res.commit)
        new = sum(r.new_bytes for _, r in res.files)
        print(f"[{branch} {c.id[:12]}] {c.message}")
        print(f" {len(files)} file(s){f', {len(links)} symlink(s)' if links else ''}, "
              f"{fmt.size(total)} in, {fmt.size(new)} new in the store")
        sys.stdout.flush()
        reencode_after(repo)


if __name__ == "__main__":
    sys.exit(main())
