"""``corafs log``, ``show``, ``ls``, ``export``, ``branch``, ``merge``, ``reflog``, ``tag``, ``diff``:
reading history and moving refs."""
from __future__ import annotations

import sys

from ..core import commitmeta
from ..errors import CorafsError
from . import fmt
from .common import open_repo, progress, reencode_after


def add(cmd) -> None:
    sp = cmd("log", cmd_log, "show commit history")
    sp.add_argument("repo")
    sp.add_argument("rev", nargs="?")
    sp.add_argument("-n", "--max-count", type=int)
    sp.add_argument("--oneline", action="store_true")
    sp.add_argument("--meta", nargs="?", const="", metavar="KEYS",
                    help="a table of the commits' metadata, one column per key (all keys, or "
                         "the comma-separated KEYS)")

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
    sp.add_argument("--by", metavar="KEY:min|max",
                    help="tag the commit of REV's history (a branch: all its commits) with the "
                         "smallest (min) or largest (max) metadata value KEY, e.g. "
                         "--by eval_loss:min")
    sp.add_argument("-f", "--force", action="store_true", help="move the tag if it exists")

    sp = cmd("diff", cmd_diff, "compare two revisions, per file and per tensor")
    sp.add_argument("repo")
    sp.add_argument("rev1")
    sp.add_argument("rev2")
    sp.add_argument("--files-only", action="store_true")


def cmd_log(a):
    with open_repo(a.repo) as repo:
        if a.meta is not None:
            return _log_meta(repo, a)
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
            if c.meta:
                print("Meta:   " + "  ".join(f"{k}={_val(v)}" for k, v in sorted(c.meta.items())))
            print(f"\n    {c.message}\n")


def _val(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _log_meta(repo, a) -> None:
    """One row per commit, one column per metadata key (step first, then the rest sorted)."""
    commits = repo.log(a.rev, a.max_count)
    keys = [k for k in a.meta.split(",") if k] if a.meta else \
        sorted({k for c in commits for k in c.meta}, key=lambda k: (k != "step", k != "epoch", k))
    cols = [[_val(c.meta[k]) if k in c.meta else "-" for k in keys] for c in commits]
    widths = [max([len(k)] + [len(r[i]) for r in cols]) for i, k in enumerate(keys)]
    print("commit        date              " + "  ".join(f"{k:>{w}}" for k, w in zip(keys, widths))
          + "  message")
    for c, row in zip(commits, cols):
        print(f"{c.id[:12]}  {fmt.when(c.time_ns)[:16]:<16}  "
              + "  ".join(f"{v:>{w}}" for v, w in zip(row, widths))
              + f"  {c.message.splitlines()[0] if c.message else ''}")


def cmd_show(a):
    with open_repo(a.repo) as repo:
        cid, path, e = repo.resolve_path(a.spec)
        c = repo.commit_obj(cid)
        if not path:
            print(f"commit {c.id}\nAuthor: {c.author}\nDate:   {fmt.when(c.time_ns)}")
            if c.lossy:
                print("Lossy:  yes")
            if c.meta:
                print("Meta:   " + "  ".join(f"{k}={_val(v)}" for k, v in sorted(c.meta.items())))
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
        reencode_after(repo)


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
            rev = a.rev
            if a.by:
                commits = [c.id for c in repo.log(a.rev)]
                rev = commitmeta.select(repo, commits, a.by)
                key = commitmeta.parse_by(a.by)[0]
                print(f"{a.by}: {rev[:12]} ({key}={_val(repo.commit_obj(rev).meta[key])}, "
                      f"of {len(commits)} commits)")
            cid = repo.create_tag(a.name, rev, a.message, force=a.force)
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

