"""``corafs stats``, ``config``, ``gc``, ``repack``, ``fsck``, ``doctor``: the repository's
upkeep."""
from __future__ import annotations

import os
import sys

from ..errors import CorafsError
from . import fmt
from .common import open_repo, progress


def add(cmd) -> None:
    sp = cmd("stats", cmd_stats, "storage accounting")
    sp.add_argument("repo")

    sp = cmd("doctor", cmd_doctor, "probe the service a repository lives in (s3://...): what "
                                   "its conditional writes do, and what corafs will use")
    sp.add_argument("repo", help="an s3://bucket/prefix URL (a repository there or not), or "
                                 "a local path")

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


def cmd_doctor(a):
    from ..store import diagnose
    text, usable = diagnose(a.repo)
    print(text)
    return 0 if usable else 1


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

