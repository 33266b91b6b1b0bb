"""Trees: nested directories of file entries. Editing a tree rewrites only the directories on
the paths that change (copy-on-write)."""
from __future__ import annotations

from typing import Iterator, Optional

from ..errors import CorafsError, NotFound

#: value in a change set meaning "remove this path"
DELETE = None
#: value in a change set meaning "an empty directory here"
MKDIR = {"kind": "dir"}


def split_path(path: str) -> list[str]:
    parts = [p for p in path.strip("/").split("/") if p]
    for p in parts:
        if p in (".", ".."):
            raise CorafsError(f"invalid path component {p!r} in {path!r}")
    return parts


def lookup(repo, tree_id: str, path: str) -> dict:
    """The entry at ``path`` (``{"kind": "dir", "id": tree_id}`` for the root)."""
    entry = {"kind": "dir", "id": tree_id}
    for part in split_path(path):
        if entry["kind"] != "dir":
            raise NotFound("path", path)
        entries = repo.get_meta(entry["id"])["entries"]
        if part not in entries:
            raise NotFound("path", path)
        entry = entries[part]
    return entry


def walk(repo, tree_id: str, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """Every file below ``tree_id`` as ``(path, entry)``, sorted, depth first."""
    for name, e in sorted(repo.get_meta(tree_id)["entries"].items()):
        p = f"{prefix}{name}"
        if e["kind"] == "dir":
            yield p + "/", e
            yield from walk(repo, e["id"], p + "/")
        else:
            yield p, e


def apply(repo, writer, tree_id: Optional[str], changes: dict[str, Optional[dict]]) -> str:
    """A new tree: ``tree_id`` with ``changes`` (path -> entry, MKDIR or DELETE) applied."""
    entries = dict(repo.get_meta(tree_id)["entries"]) if tree_id else {}
    here: dict[str, Optional[dict]] = {}
    below: dict[str, dict[str, Optional[dict]]] = {}
    for path, entry in changes.items():
        parts = split_path(path)
        if not parts:
            raise CorafsError("cannot replace the root of a tree")
        if len(parts) == 1:
            here[parts[0]] = entry
        else:
            below.setdefault(parts[0], {})["/".join(parts[1:])] = entry
    for name, entry in here.items():
        if entry is DELETE:
            entries.pop(name, None)
        elif entry.get("kind") == "dir" and "id" not in entry:
            if name not in entries or entries[name]["kind"] != "dir":
                entries[name] = {"kind": "dir", "id": repo.put_meta(writer, _empty())}
        else:
            entries[name] = entry
    for name, sub in below.items():
        cur = entries.get(name)
        sub_id = cur["id"] if cur is not None and cur["kind"] == "dir" else None
        if sub_id is None and all(v is DELETE for v in sub.values()):
            continue
        entries[name] = {"kind": "dir", "id": apply(repo, writer, sub_id, sub)}
    return repo.put_meta(writer, {"type": "tree", "entries": entries})


def _empty() -> dict:
    return {"type": "tree", "entries": {}}


def empty_tree() -> dict:
    return _empty()
