"""The ``corafs`` command. Argument parsing, progress bars and exit codes only: every command
is a thin call into ``corafs.Repository`` (or the mount daemon)."""
from __future__ import annotations

import argparse
import os
import stat
import sys
from contextlib import contextmanager

from tqdm import tqdm

from .. import __version__
from ..core import Repository
from ..errors import CorafsError
from . import fmt


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

    sp = cmd("log", cmd_log, "show commit history")
    sp.add_argument("repo")
    sp.add_argument("rev", nargs="?")
    sp.add_argument("-n", "--max-count", type=int)
    sp.add_argument("--oneline", action="store_true")

    sp = cmd("show", cmd_show, "show a commit, a directory or a checkpoint's tensors")
    sp.add_argument("repo")
    sp.add_argument("spec", metavar="REV[:PATH]")

    sp = cmd("ls", cmd_ls, "list a directory of a revision")
    sp.add_argument("repo")
    sp.add_argument("spec", metavar="REV[:DIR]", nargs="?")
    sp.add_argument("-r", "--recursive", action="store_true")

    sp = cmd("export", cmd_export, "write a file or directory of a revision to local disk")
    sp.add_argument("repo")
    sp.add_argument("spec", metavar="REV[:PATH]")
    sp.add_argument("dest")

    sp = cmd("branch", cmd_branch, "list, create, reset, delete or undelete branches")
    sp.add_argument("repo")
    sp.add_argument("name", nargs="?")
    sp.add_argument("rev", nargs="?")
    sp.add_argument("-d", "--delete", metavar="NAME")
    sp.add_argument("-f", "--force", action="store_true",
                    help="move NAME to REV even if it exists (a reset; the reflog keeps the old)")
    sp.add_argument("--undelete", action="store_true",
                    help="recreate NAME where it pointed when it was deleted (from the reflog)")

    sp = cmd("merge", cmd_merge, "three-way merge of a revision into a branch, per file and "
                                 "per tensor (weight averaging)")
    sp.add_argument("repo")
    sp.add_argument("source", metavar="SOURCE", help="branch, tag or revision to merge")
    sp.add_argument("--into", metavar="BRANCH", help="branch to merge into (default branch)")
    sp.add_argument("--strategy", default="fail",
                    choices=["ours", "theirs", "fail", "average", "weighted"],
                    help="for tensors changed on both sides (default: fail, listing them)")
    sp.add_argument("--alpha", type=float, default=0.5,
                    help="weighted: alpha*ours + (1-alpha)*theirs (default 0.5)")
    sp.add_argument("-m", "--message")
    sp.add_argument("--author")

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

    sp = cmd("reflog", cmd_reflog, "every move of a branch (or tag): commits, resets, "
                                   "deletions, with time, author and command")
    sp.add_argument("repo")
    sp.add_argument("ref", nargs="?", help="branch (default: the default branch) or tags/NAME")
    sp.add_argument("-n", "--max-count", type=int)

    sp = cmd("tag", cmd_tag, "list, create or delete tags")
    sp.add_argument("repo")
    sp.add_argument("name", nargs="?")
    sp.add_argument("rev", nargs="?")
    sp.add_argument("-m", "--message", default="")
    sp.add_argument("-d", "--delete", metavar="NAME")

    sp = cmd("diff", cmd_diff, "compare two revisions, per file and per tensor")
    sp.add_argument("repo")
    sp.add_argument("rev1")
    sp.add_argument("rev2")
    sp.add_argument("--files-only", action="store_true")

    sp = cmd("stats", cmd_stats, "storage accounting")
    sp.add_argument("repo")

    sp = cmd("config", cmd_config, "show or change the repository's settings (author, "
                                   "reflog expiry, delta depth, how new versions are stored)")
    sp.add_argument("repo")
    sp.add_argument("key", nargs="?", help="a setting (none: list them all)")
    sp.add_argument("value", nargs="?", help="its new value (none: print the current one)")
    sp.add_argument("--unset", metavar="KEY", help="return KEY to its default")

    for name, helptext in (("gc", "delete what no branch, tag, recent reflog entry or staged "
                                   "change reaches, and repack"),
                           ("repack", "consolidate packs and drop duplicate encodings")):
        sp = cmd(name, cmd_gc, helptext)
        sp.add_argument("repo")
        sp.add_argument("-n", "--dry-run", action="store_true", help="report, change nothing")
        sp.add_argument("--grace", type=float, default=None,
                        help="seconds: packs younger than this are left alone and all they "
                             "hold is kept (default: 0 on a local repository, whose writers "
                             "hold the gc lock; 900 on S3, where a writer on another machine "
                             "may be uploading)")
        if name == "repack":
            sp.add_argument("--reencode", action="store_true",
                            help="first re-encode the whole history with the current scheme "
                                 "(a repository written by an older corafs, or with forward "
                                 "deltas); needs room for the history stored whole meanwhile")
        if name == "gc":
            sp.add_argument("--expire-reflog", metavar="DAYS", default=None,
                            help="reflog entries older than this keep nothing alive "
                                 "('now' frees a deleted branch at once; default: "
                                 "reflog_expire_days of corafs.json, 90)")

    sp = cmd("fsck", cmd_fsck, "verify every object and every file's sha256")
    sp.add_argument("repo")
    sp.add_argument("--repair", action="store_true",
                    help="remove leftovers of interrupted writes whose writer is gone, and "
                         "fetch missing or corrupt objects from the remotes that have them")

    _add_mount_commands(cmd)
    return p


def _add_mount_commands(cmd) -> None:
    try:
        from . import mount_cmds
    except ImportError:   # the mount is optional at import time (pyfuse3 missing)
        return
    mount_cmds.add(cmd)


@contextmanager
def progress(total: int, desc: str):
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
                              lossy=a.lossy, on_progress=upd, entries=links)
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
        _reencode(repo)


def _reencode(repo) -> None:
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


def cmd_log(a):
    with open_repo(a.repo) as repo:
        for c in repo.log(a.rev, a.max_count):
            if a.oneline:
                print(f"{c.id[:12]} {c.message}{' [lossy]' if c.lossy else ''}")
                continue
            print(f"commit {c.id}")
            if len(c.parents) > 1:
                print("Merge:  " + " ".join(p[:12] for p in c.parents))
            print(f"Author: {c.author}")
            print(f"Date:   {fmt.when(c.time_ns)}")
            if c.lossy:
                print("Lossy:  yes (some tensors were stored with a lossy codec)")
            print(f"\n    {c.message}\n")


def cmd_show(a):
    with open_repo(a.repo) as repo:
        cid, path, e = repo.resolve_path(a.spec)
        c = repo.commit_obj(cid)
        if not path:
            print(f"commit {c.id}\nAuthor: {c.author}\nDate:   {fmt.when(c.time_ns)}")
            if c.lossy:
                print("Lossy:  yes")
            print(f"\n    {c.message}\n")
            for p, fe in repo.walk(cid):
                if fe["kind"] == "file":
                    print(f"{fmt.size(fe['size']):>12}  {fe['format']:<12} {p}")
            return
        if e["kind"] == "dir":
            for p, fe in repo.walk(cid, path):
                if fe["kind"] == "file":
                    print(f"{fmt.size(fe['size']):>12}  {fe['format']:<12} {p}")
            return
        if e["kind"] == "link":
            print(f"{path} -> {e.get('target')}  (symbolic link)")
            return
        _show_file(repo, path, e)


def _show_file(repo, path, e):
    m = repo.get_meta(e["id"])
    print(f"file    {path}\nsize    {e['size']} ({fmt.size(e['size'])})\nsha256  {e['sha256']}")
    print(f"format  {m['format']}")
    if m.get("reason"):
        print(f"note    {m['reason']}")
    if m.get("lossy"):
        print(f"lossy   yes ({m['lossy']}): reads return the approximated tensors; "
              "sha256 is theirs")
    if not m.get("tensors"):
        return
    how = {}
    memo: dict = {}
    for t in m["tensors"]:
        tm = repo.tensor_manifest(t["id"])
        how[t["name"]] = _stored_as(repo, tm, memo)
    spans = m["tensors"]
    print(f"\n{'tensor':<48} {'dtype':<8} {'shape':<20} {'bytes':>10}  stored as")
    for name, dtype, shp, span, _off in m["views"]:
        if span >= 0:
            nbytes = spans[span]["nbytes"]
            stored = how.get(spans[span]["name"], "")
            if spans[span]["name"] != name:
                stored = f"view of {spans[span]['name']}"
        else:
            nbytes, stored = 0, "empty"
        print(f"{name:<48} {dtype:<8} {fmt.shape(shp):<20} {fmt.size(nbytes):>10}  {stored}")


def _stored_as(repo, tm: dict, memo: dict) -> str:
    """How a tensor's blocks are stored now (from their headers): keyframe, delta, reverse
    delta or floating root, the codecs, and the longest chain a read decodes through."""
    from ..core.stats import chain_depth
    kinds, names, depth = set(), set(), 0
    for b in tm["blocks"]:
        h = repo.block_header(b[0])
        names.add(h.codec)
        kinds.add("floating root" if h.floating else "reverse delta" if h.reverse
                  else "delta" if h.is_delta else "keyframe")
        depth = max(depth, chain_depth(repo, b[0], memo))
    return f"{'+'.join(sorted(kinds))} ({','.join(sorted(names))})" + \
        (f" depth {depth}" if depth else "")


def cmd_ls(a):
    with open_repo(a.repo) as repo:
        cid, path, e = repo.resolve_path(a.spec or repo.default_branch)
        if e["kind"] == "file":
            print(f"{fmt.size(e['size']):>12}  {path}")
            return
        if a.recursive:
            for p, fe in repo.walk(cid, path):
                print(f"{_ls_size(fe):>12}  {p}{_ls_link(fe)}")
            return
        for name, fe in sorted(repo.listdir(cid, path).items()):
            print(f"{_ls_size(fe):>12}  {name}{'/' if fe['kind'] == 'dir' else ''}{_ls_link(fe)}")


def _ls_size(e: dict) -> str:
    return {"dir": "dir", "link": "link"}.get(e["kind"]) or fmt.size(e.get("size"))


def _ls_link(e: dict) -> str:
    return f" -> {e.get('target')}" if e["kind"] == "link" else ""


def cmd_export(a):
    with open_repo(a.repo) as repo:
        cid, path, e = repo.resolve_path(a.spec)
        total = e.get("size", 0) if e["kind"] != "dir" else sum(
            fe["size"] for _, fe in repo.walk(cid, path) if fe["kind"] == "file")
        with progress(total, "export") as upd:
            written = repo.export(a.spec, a.dest, upd)
        print(f"exported {len(written)} file(s), {fmt.size(total)}, sha256 verified")


def cmd_branch(a):
    with open_repo(a.repo) as repo:
        if a.delete:
            old = repo.head(a.delete)
            repo.delete_branch(a.delete)
            print(f"deleted branch {a.delete} (was {old[:12]}; "
                  f"`corafs branch {a.repo} {a.delete} --undelete` brings it back)")
        elif a.name and a.undelete:
            cid = repo.undelete_branch(a.name)
            print(f"restored branch {a.name} at {cid[:12]}")
        elif a.name and a.force:
            if not a.rev:
                raise CorafsError("--force needs a revision to move the branch to")
            old = repo.store.get_ref(f"heads/{a.name}")
            cid = repo.reset_branch(a.name, a.rev)
            print(f"branch {a.name} moved to {cid[:12]}"
                  + (f" (was {old[:12]})" if old else " (created)"))
        elif a.name:
            cid = repo.create_branch(a.name, a.rev)
            print(f"created branch {a.name} at {cid[:12]}")
        else:
            for name, cid in sorted(repo.branches().items()):
                mark = "*" if name == repo.default_branch else " "
                print(f"{mark} {name:<24} {cid[:12]} {repo.commit_obj(cid).message}")


def cmd_gc(a):
    collect = a.command_name == "gc"
    expire = None
    if collect and a.expire_reflog is not None:
        expire = 0.0 if a.expire_reflog == "now" else float(a.expire_reflog) * 86400.0
    with open_repo(a.repo) as repo:
        if getattr(a, "reencode", False) and not a.dry_run:
            h = repo.reencode_history()
            r = h.reencode
            print(f"re-encoded the history of {h.commits} commit(s): {h.reset} block(s) "
                  f"written whole, then {r.blocks} re-encoded ({r.anchors} closing a run), "
                  f"{fmt.size(r.bytes_before)} -> {fmt.size(r.bytes_after)}")
        with progress(0, a.command_name) as upd:
            rep = repo.repack(collect, a.grace, a.dry_run, expire, upd)
        verb = "would free" if rep.dry_run else "freed"
        print(f"{rep.packs_rewritten} pack(s) rewritten, {rep.objects_dropped} object(s) "
              f"dropped; {verb} {fmt.size(max(0, rep.bytes_before - rep.bytes_after))} "
              f"({fmt.size(rep.bytes_before)} -> {fmt.size(rep.bytes_after)}); "
              f"packs {rep.packs_before} -> {rep.packs_after}")
        if rep.young_kept:
            print(f"{rep.young_kept} pack(s) younger than {fmt.duration(rep.grace)} kept "
                  f"({fmt.size(rep.young_bytes)}), with objects nothing reaches: a writer "
                  f"on another machine may still be using them; --grace 0 collects them now")


def cmd_merge(a):
    with open_repo(a.repo) as repo:
        into = a.into or repo.default_branch
        res = repo.merge(a.source, into, a.strategy, a.alpha, a.message, a.author)
        if res.up_to_date:
            print(f"{into} already contains {a.source}")
        elif res.fast_forward:
            print(f"fast-forward {into} to {res.commit[:12]}")
        else:
            c = repo.commit_obj(res.commit)
            print(f"[{into} {c.id[:12]}] {c.message}")
            for where, how in sorted(res.tensors.items()):
                print(f"  {how:<12} {where}")
            print(f" {len(res.files)} checkpoint(s) merged per tensor, "
                  f"{len(res.tensors)} tensor(s) combined")
        sys.stdout.flush()
        _reencode(repo)


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


def cmd_reflog(a):
    with open_repo(a.repo) as repo:
        ref = a.ref or repo.default_branch
        name = ref if "/" in ref else f"heads/{ref}"
        entries = repo.reflog(name)
        if not entries:
            raise CorafsError(f"no reflog for {ref}")
        short = name.split("/", 1)[1]
        for i, e in enumerate(entries[:a.max_count] if a.max_count else entries):
            new = (e.get("new") or "0" * 12)[:12]
            print(f"{new} {short}@{{{i}}}: {e.get('action')}  "
                  f"({fmt.when(e.get('time_ns', 0))}, {e.get('author')}; {e.get('command')})")


def cmd_tag(a):
    with open_repo(a.repo) as repo:
        if a.delete:
            repo.delete_tag(a.delete)
            print(f"deleted tag {a.delete}")
        elif a.name:
            cid = repo.create_tag(a.name, a.rev, a.message)
            print(f"tagged {cid[:12]} as {a.name}")
        else:
            for name, cid in sorted(repo.tags().items()):
                msg = repo.tag_info(name).get("message") or repo.commit_obj(cid).message
                print(f"{name:<24} {cid[:12]} {msg}")


def cmd_diff(a):
    with open_repo(a.repo) as repo:
        changes = repo.diff(a.rev1, a.rev2, tensors=not a.files_only)
        if not changes:
            print("no differences")
        for fc in changes:
            mark = {"added": "A", "removed": "D", "changed": "M"}[fc.status]
            print(f"{mark} {fc.path}  ({fmt.size(fc.old_size)} -> {fmt.size(fc.new_size)})")
            for t in fc.tensors:
                if t.status == "changed":
                    print(f"    ~ {t.name:<44} {t.dtype:<6} {fmt.shape(t.shape):<16} "
                          f"|d|={t.l2:.6g}  cos={t.cosine:.6f}")
                else:
                    sign = {"added": "+", "removed": "-", "retyped": "!"}[t.status]
                    print(f"    {sign} {t.name:<44} {t.dtype:<6} {fmt.shape(t.shape)}"
                          f"{'  (dtype or size changed)' if t.status == 'retyped' else ''}")


def cmd_stats(a):
    with open_repo(a.repo) as repo:
        s = repo.stats()
        rows = [
            ("commits", s.commits), ("file versions", s.file_versions),
            ("logical bytes", f"{s.logical_bytes}  ({fmt.size(s.logical_bytes)})"),
            ("after dedup", f"{s.dedup_bytes}  ({fmt.size(s.dedup_bytes)})"),
            ("after delta+compression", f"{s.stored_bytes}  ({fmt.size(s.stored_bytes)})"),
            ("metadata", f"{s.meta_bytes}  ({fmt.size(s.meta_bytes)})"),
            ("on disk", f"{s.disk_bytes}  ({fmt.size(s.disk_bytes)})"),
            ("ratio (logical / on disk)", f"{s.ratio:.2f}x"),
            ("data objects", f"{s.objects} ({s.keyframes} keyframes, {s.deltas} deltas, "
                             f"{s.reverse_deltas} of them reverse, {s.floating_roots} "
                             f"floating roots)"),
            ("delta depth", f"max {s.max_depth}, mean {s.mean_depth:.1f}; branch heads and "
                            f"tags max {s.head_max_depth}"),
            ("re-encoding queued", f"{s.pending_jobs} commit(s)" +
             (f", {s.held_jobs} set aside (see `corafs status`)" if s.held_jobs else "")),
            ("codecs", ", ".join(f"{k}={v}" for k, v in sorted(s.codecs.items())) or "-"),
        ]
        for k, v in rows:
            print(f"{k:<26} {v}")


def cmd_config(a):
    from ..core import settings
    with open_repo(a.repo) as repo:
        if a.unset is not None:
            if a.key is not None:
                raise CorafsError("usage: corafs config REPO [KEY [VALUE] | --unset KEY]")
            v = repo.set_config(a.unset, None)
        elif a.key is None:
            for key, s in settings.SETTINGS.items():
                v = settings.value(repo.config, key)
                mark = "" if repo.config.get(key) is not None else "  (default)"
                print(f"{key:<20} {'-' if v is None else v}{mark}")
                print(f"{'':<20} {s.help}")
            return
        elif a.value is not None:
            v = repo.set_config(a.key, a.value)
        else:
            v = settings.value(repo.config, a.key)
        print("-" if v is None else v)


def _staging_garbage(repo_path: str, repair: bool, repaired: list) -> list:
    """Spool files of the mount's staging area that no journal row refers to, while no mount
    runs: what an interrupted write through the mount left behind."""
    try:
        from ..daemon import MountLock
        from ..view.staging import orphan_spools
    except ImportError:
        return []
    if MountLock(repo_path).holder():
        return []
    out = []
    for p, n in orphan_spools(repo_path):
        if repair:
            try:
                os.unlink(p)
                repaired.append((p, n))
                continue
            except OSError:
                pass
        out.append((p, n, False))
    return out


def cmd_fsck(a):
    with open_repo(a.repo) as repo:
        with progress(0, "fsck") as upd:
            rep = repo.fsck(upd, repair=a.repair)
        if a.repair and not rep.ok:
            from ..core import remote
            got = remote.refetch(repo, rep.problems, lambda m: print(m))
            if got:
                repo.decoder.cache.clear()
                repo.store.refresh()
                repaired = rep.repaired
                with progress(0, "fsck") as upd:
                    rep = repo.fsck(upd)
                rep.repaired = repaired + rep.repaired
        print(f"checked {rep.commits} commits, {rep.files} file versions "
              f"({fmt.size(rep.bytes_checked)}), {rep.objects} objects")
        garbage = list(rep.garbage) + _staging_garbage(repo.path, a.repair, rep.repaired)
        for path, n in rep.repaired:
            print(f"removed  {os.path.relpath(path, repo.path)}  ({fmt.size(n)}, left by an "
                  "interrupted write)")
        for path, n, alive in garbage:
            why = ("being written by a running corafs process" if alive else
                   "left by an interrupted write; removed by the next write, the next mount "
                   "or `corafs fsck --repair`")
            print(f"garbage  {os.path.relpath(path, repo.path)}  ({fmt.size(n)}, {why})")
        if rep.requeued:
            print(f"requeued {rep.requeued} re-encoding job(s) that had been set aside")
        for h in rep.held:
            print(f"held     re-encoding of what commit {h.commit[:12]} replaced was set aside: "
                  f"{h.reason}")
        if rep.ok:
            print("repository is consistent")
            return 0
        for what, problem in rep.problems:
            print(f"BROKEN {what}: {problem}")
        print(f"{len(rep.problems)} problem(s) found", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
