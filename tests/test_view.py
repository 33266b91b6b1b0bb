"""The mount tree as a model, without FUSE; and the operations class called directly."""
import errno
import os

import pyfuse3
import pytest
import trio

from corafs.errors import NotFound
from corafs.fuse import Operations
from corafs.view import ROOT_INODE, MountView
from corafs.view.model import history_name


def _write(work, name, data: bytes):
    p = work / name
    p.write_bytes(data)
    return str(p)


@pytest.fixture
def populated(repo, work):
    repo.commit("main", {"a.bin": _write(work, "a", b"one"), "d/b.txt": _write(work, "b", b"bee")})
    repo.commit("main", {"a.bin": _write(work, "a", b"two")})
    repo.create_tag("v1", "main~1")
    repo.create_branch("exp", "main~1")
    return repo


def names(view, inode):
    return [n for n, _ in view.listdir(inode)]


def test_root_and_special_dirs(populated):
    v = MountView(populated)
    assert names(v, ROOT_INODE) == ["exp", "main", "@tags", "@commits", "@history"]
    tags = v.lookup(ROOT_INODE, "@tags")
    assert names(v, tags.inode) == ["v1"]
    commits = v.lookup(ROOT_INODE, "@commits")
    assert set(names(v, commits.inode)) == populated.all_commits()


def test_branch_tag_revision_and_prefix_lookups(populated):
    v = MountView(populated)
    main = v.lookup(ROOT_INODE, "main")
    assert names(v, main.inode) == ["a.bin", "d"]
    f = v.lookup(main.inode, "a.bin")
    assert v.open_reader(f.inode).read(0, 10) == b"two" and f.size == 3
    old = v.lookup(ROOT_INODE, "main~1")
    assert v.open_reader(v.lookup(old.inode, "a.bin").inode).read(0, 10) == b"one"
    assert v.lookup(ROOT_INODE, "main^").commit == old.commit
    tag = v.lookup(v.lookup(ROOT_INODE, "@tags").inode, "v1")
    assert tag.commit == old.commit
    commits = v.lookup(ROOT_INODE, "@commits")
    pre = v.lookup(commits.inode, old.commit[:8])
    assert pre.commit == old.commit
    with pytest.raises(NotFound):
        v.lookup(commits.inode, old.commit[:5])          # prefixes need >= 6 hex digits
    with pytest.raises(NotFound):
        v.lookup(ROOT_INODE, "nope")
    d = v.lookup(main.inode, "d")
    assert v.open_reader(v.lookup(d.inode, "b.txt").inode).read(1, 10) == b"ee"


def test_history_entries(populated):
    v = MountView(populated)
    h = v.lookup(v.lookup(ROOT_INODE, "@history").inode, "main")
    entries = v.listdir(h.inode)
    hist = populated.first_parent_history("main")
    assert [n for n, _ in entries] == [history_name(i + 1, c.time_ns, c.id) for i, c in enumerate(hist)]
    assert entries[0][0].startswith("0001-")
    assert entries[-1][1].target == f"../../@commits/{hist[-1].id}".encode()


def test_stable_inodes_and_xattrs(populated):
    v1, v2 = MountView(populated), MountView(populated)
    a = v1.lookup(v1.lookup(ROOT_INODE, "main").inode, "a.bin")
    b = v2.lookup(v2.lookup(ROOT_INODE, "main").inode, "a.bin")
    assert a.inode == b.inode                              # stable across mounts
    x = v1.xattrs(a.inode)
    assert x["user.corafs.commit"] == populated.head("main").encode()
    assert len(x["user.corafs.sha256"]) == 64


def test_branch_move_gives_new_file_inode_and_invalidations(populated, work):
    v = MountView(populated)
    main = v.lookup(ROOT_INODE, "main")
    old = v.lookup(main.inode, "a.bin")
    reader = v.open_reader(old.inode)
    populated.commit("main", {"a.bin": _write(work, "a", b"three")})
    todo = v.refresh()
    assert ("entry", main.inode, "a.bin") in todo and ("inode", main.inode) in todo
    new = v.lookup(main.inode, "a.bin")
    assert new.inode != old.inode
    assert v.open_reader(new.inode).read(0, 10) == b"three"
    assert reader.read(0, 10) == b"two"                  # a pinned reader keeps its version
    assert v.refresh() == []


def test_forget_drops_nodes(populated):
    v = MountView(populated)
    main = v.lookup(ROOT_INODE, "main")
    f = v.lookup(main.inode, "a.bin")
    v.forget(f.inode, 1)
    with pytest.raises(NotFound):
        v.node(f.inode)
    again = v.lookup(main.inode, "a.bin")
    assert again.inode == f.inode


def test_operations_called_directly(populated):
    ops = Operations(MountView(populated))

    async def go():
        attrs = await ops.lookup(ROOT_INODE, b"main", None)
        fattr = await ops.lookup(attrs.st_ino, b"a.bin", None)
        info = await ops.open(fattr.st_ino, os.O_RDONLY, None)
        assert info.keep_cache
        assert await ops.read(info.fh, 0, 100) == b"two"
        await ops.release(info.fh)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(ROOT_INODE, b"missing", None)
        assert e.value.errno == errno.ENOENT
        tags = await ops.lookup(ROOT_INODE, b"@tags", None)
        v1 = await ops.lookup(tags.st_ino, b"v1", None)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.create(v1.st_ino, b"new", 0o644, os.O_WRONLY, None)
        assert e.value.errno == errno.EROFS
        fh = await ops.opendir(ROOT_INODE, None)
        assert len(ops.handles.dir_entries(fh)) == 5
        await ops.releasedir(fh)
        assert await ops.getxattr(fattr.st_ino, b"user.corafs.sha256", None)

    trio.run(go)


def test_operations_corrupt_object_is_eio_only_for_that_file(populated):
    v = MountView(populated)
    ops = Operations(v)
    main = v.lookup(ROOT_INODE, "main")
    f = v.lookup(main.inode, "a.bin")
    oid = populated.get_meta(f.entry["id"])["extents"]["obj"][0]
    path, off, ln = populated.store.extent(oid)         # the object is damaged on disk
    with open(path, "r+b") as fh:
        fh.seek(off)
        damaged = bytes(x ^ 0x5A for x in fh.read(ln))
        fh.seek(off)
        fh.write(damaged)
    populated.cache.clear()

    async def go():
        info = await ops.open(f.inode, os.O_RDONLY, None)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.read(info.fh, 0, 10)
        assert e.value.errno == errno.EIO
        d = v.lookup(main.inode, "d")
        b = v.lookup(d.inode, "b.txt")
        info2 = await ops.open(b.inode, os.O_RDONLY, None)
        assert await ops.read(info2.fh, 0, 10) == b"bee"

    trio.run(go)
