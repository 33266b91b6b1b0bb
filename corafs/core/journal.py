"""The staging journal: what a mount has changed in its branches and not committed yet, kept
transactionally on disk (sqlite3 in WAL mode) so that a crash loses nothing that was closed.

One row per path where a branch's live tree differs from the commit it is based on (see
``corafs.view.live``): a tree entry, a deletion, a new directory, or a staged file (its spool
and state). A change costs one small transaction whatever the number of staged files; a commit
replaces a branch's rows in one transaction. Rows that record a file as committable (durable
or ingested) are written with ``synchronous=FULL``; the rest with ``NORMAL`` (a power loss can
lose the last few renames, as on a local disk, never make a torn file committable).

The journal lives with the repository (``staging/journal.db``), not with a mount: gc asks it
for the objects it keeps alive (:func:`roots`) without knowing its tables.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from typing import Iterable, Optional

from ..errors import CorafsError

#: where a repository keeps its journal, relative to its root
PATH = os.path.join("staging", "journal.db")

SCHEMA = """
CREATE TABLE IF NOT EXISTS base (branch TEXT PRIMARY KEY, commit_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    branch TEXT NOT NULL, path TEXT NOT NULL, row TEXT NOT NULL,
    PRIMARY KEY (branch, path));
"""


class Journal:
    """Every write is one ``BEGIN IMMEDIATE`` ... ``COMMIT``; a statement that fails inside
    (disk full, an I/O error) rolls the transaction back, so the connection never stays inside
    a transaction that would make every later change fail."""

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.lock = threading.Lock()
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                      check_same_thread=False, isolation_level=None)
            return
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- writing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self, durable: bool):
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` under the lock, ``synchronous=FULL`` when
        ``durable``; rolled back if anything inside fails."""
        with self.lock:
            if durable:
                self.db.execute("PRAGMA synchronous=FULL")
            try:
                cur = self.db.cursor()
                cur.execute("BEGIN IMMEDIATE")
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            finally:
                if durable:
                    self._normal()

    def update(self, branch: str, base: str, clear: Iterable[str], rows: dict[str, dict],
               durable: bool = False) -> None:
        """Delete the rows at (and below) each path of ``clear``, then write ``rows``."""
        with self._transaction(durable) as cur:
            cur.execute("INSERT OR REPLACE INTO base VALUES (?, ?)", (branch, base))
            for p in clear:   # two statements: an OR here would scan the whole table
                cur.execute("DELETE FROM rows WHERE branch = ? AND path = ?", (branch, p))
                cur.execute("DELETE FROM rows WHERE branch = ? AND path >= ? AND path < ?",
                            (branch, p + "/", p + "0"))
            cur.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?)",
                            [(branch, p, json.dumps(r)) for p, r in rows.items()])

    def replace(self, branch: str, base: Optional[str], rows: dict[str, dict]) -> None:
        """All rows of ``branch`` at once (after a commit); base None forgets the branch."""
        with self._transaction(durable=True) as cur:
            cur.execute("DELETE FROM rows WHERE branch = ?", (branch,))
            if base is None:
                cur.execute("DELETE FROM base WHERE branch = ?", (branch,))
            else:
                cur.execute("INSERT OR REPLACE INTO base VALUES (?, ?)", (branch, base))
                cur.executemany("INSERT INTO rows VALUES (?, ?, ?)",
                                [(branch, p, json.dumps(r)) for p, r in rows.items()])

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass       # sqlite rolled back on its own (an I/O error may do so)

    def _normal(self) -> None:
        try:
            self.db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            pass           # not worth hiding the error that brought us here

    # -- reading --------------------------------------------------------------------------------
    def load(self) -> dict[str, tuple[str, dict[str, dict]]]:
        """branch -> (base commit, {path: row}); only branches with rows."""
        with self.lock:
            bases = dict(self.db.execute("SELECT branch, commit_id FROM base"))
            out: dict[str, tuple[str, dict[str, dict]]] = {}
            for branch, path, row in self.db.execute(
                    "SELECT branch, path, row FROM rows ORDER BY branch, path"):
                out.setdefault(branch, (bases.get(branch, ""), {}))[1][path] = json.loads(row)
            return out


def read_rows(staging_dir: str) -> dict[str, tuple[str, dict[str, dict]]]:
    """The journal's rows without opening it for writing (``corafs status``)."""
    path = os.path.join(staging_dir, "journal.db")
    if not os.path.exists(path):
        return {}
    try:
        j = Journal(path, readonly=True)
    except sqlite3.Error:
        return {}
    try:
        return j.load()
    except sqlite3.Error:
        return {}
    finally:
        j.close()


def row_ids(row: dict) -> list[str]:
    """Object ids a row refers to: its tree entry, and the last synced version of a staged file
    (what recovery falls back to when the spool is lost). The row kinds are written by
    ``corafs.view.live``; this is the one place that reads ids out of them."""
    return [e["id"] for e in (row.get("entry"), row.get("synced")) if e and e.get("id")]


def roots(repo_path: str) -> list[str]:
    """gc's root provider: every commit a branch's staged changes are based on, and every
    object a staged row refers to. A journal that cannot be read stops gc rather than let it
    collect staged data."""
    path = os.path.join(repo_path, PATH)
    if not os.path.exists(path):
        return []
    try:
        j = Journal(path, readonly=True)
        try:
            with j.lock:
                out = [cid for (cid,) in j.db.execute("SELECT commit_id FROM base")]
                for (row,) in j.db.execute("SELECT row FROM rows"):
                    out.extend(row_ids(json.loads(row)))
        finally:
            j.close()
    except (sqlite3.Error, ValueError) as e:
        raise CorafsError(f"cannot read the staging journal ({e}): not collecting") from None
    return out
