"""Conformance tests every object store runs (local HDF5 packs now; S3 subclasses this)."""
import os
import threading

import pytest

from corafs.errors import MissingObject, RefConflict
from corafs.store import LocalStore


class StoreConformance:
    def make(self, tmp_path):
        raise NotImplementedError

    def test_put_get_range(self, tmp_path):
        s = self.make(tmp_path)
        with s.writer() as w:
            w.put("aa" * 16, b"hello world")
            w.put("bb" * 16, b"")
            w.put("cc" * 16, bytes(range(256)) * 100)
            assert w.has("aa" * 16)
        assert bytes(s.get("aa" * 16)) == b"hello world"
        assert bytes(s.get("bb" * 16)) == b""
        assert bytes(s.get_range("cc" * 16, 250, 10)) == bytes(range(250, 256)) + bytes(range(4))
        assert s.size_of("cc" * 16) == 25600
        assert {"aa" * 16, "bb" * 16, "cc" * 16} <= set(s.ids())
        with pytest.raises(MissingObject):
            s.get("dd" * 16)

    def test_abort_leaves_nothing(self, tmp_path):
        s = self.make(tmp_path)
        w = s.writer()
        w.put("ee" * 16, b"x" * 1000)
        w.abort()
        assert not s.has("ee" * 16)

    def test_not_visible_before_commit(self, tmp_path):
        s = self.make(tmp_path)
        w = s.writer()
        w.put("ff" * 16, b"y")
        assert not s.has("ff" * 16)
        w.commit()
        assert s.has("ff" * 16)

    def test_refs_compare_and_swap(self, tmp_path):
        s = self.make(tmp_path)
        s.cas_ref("heads/main", None, "1" * 64)
        with pytest.raises(RefConflict):
            s.cas_ref("heads/main", None, "2" * 64)
        with pytest.raises(RefConflict):
            s.cas_ref("heads/main", "3" * 64, "2" * 64)
        s.cas_ref("heads/main", "1" * 64, "2" * 64)
        assert s.get_ref("heads/main") == "2" * 64
        s.cas_ref("tags/v1", None, "4" * 64)
        assert s.list_refs("tags/") == {"tags/v1": "4" * 64}
        s.cas_ref("tags/v1", "4" * 64, None)
        assert s.get_ref("tags/v1") is None

    def test_concurrent_cas_exactly_one_wins(self, tmp_path):
        s = self.make(tmp_path)
        s.cas_ref("heads/x", None, "0" * 64)
        wins = []

        def go(i):
            try:
                s.cas_ref("heads/x", "0" * 64, f"{i + 1:064d}")
                wins.append(i)
            except RefConflict:
                pass

        ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert len(wins) == 1


class TestLocalStore(StoreConformance):
    def make(self, tmp_path):
        return LocalStore.create(str(tmp_path / "store"))

    def test_second_process_sees_new_packs(self, tmp_path):
        a = self.make(tmp_path)
        b = LocalStore(str(tmp_path / "store"))
        with a.writer() as w:
            w.put("ab" * 16, b"data")
        assert bytes(b.get("ab" * 16)) == b"data"

    def test_missing_idx_is_rebuilt(self, tmp_path):
        import glob
        import os
        a = self.make(tmp_path)
        with a.writer() as w:
            w.put("ac" * 16, b"data")
        for p in glob.glob(str(tmp_path / "store" / "objects" / "*.idx")):
            os.unlink(p)
        assert bytes(LocalStore(str(tmp_path / "store")).get("ac" * 16)) == b"data"


def test_an_evicted_pack_handle_is_not_closed_under_a_reader(tmp_path):
    """With room for one open pack, threads reading objects of many packs keep evicting each
    other's handles; a handle must stay open until its last read ends."""
    import threading
    from corafs.config import Tuning
    from corafs.store import LocalStore
    t = Tuning(open_packs=1)
    store = LocalStore.create(str(tmp_path / "s"), t)
    want = {}
    for i in range(8):                                   # 8 packs of one object each
        data = os.urandom(1 << 16)
        oid = f"{i:032x}"
        with store.writer() as w:
            w.put(oid, data)
        want[oid] = data
    errors = []

    def reader(seed):
        import random
        rng = random.Random(seed)
        try:
            for _ in range(300):
                oid = rng.choice(list(want))
                assert bytes(store.get(oid)) == want[oid]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    store.close()


@pytest.mark.parametrize("predicted", ["right", "wrong"])
def test_a_pack_is_written_once_where_hdf5_puts_its_data(tmp_path, monkeypatch, predicted):
    """The spool holds the objects from the offset HDF5 gives a pack's data and becomes the
    pack (HDF5's own bytes copied around them); where the offset was predicted wrong, the data
    is copied into the HDF5 file as before. Either way h5py reads the same pack, no temporary
    is left, and every object reads back."""
    import h5py
    from corafs.store import hdf5pack
    if predicted == "wrong":
        monkeypatch.setattr(hdf5pack, "data_offset", lambda: 4096 + 512)
    objects = {f"{i:02x}" * 16: bytes([i]) * (1000 * i + 7) for i in range(1, 40)}
    made = []
    real = hdf5pack.PackWriter.finish
    monkeypatch.setattr(hdf5pack.PackWriter, "finish",
                        lambda self: (made.append(self), real(self))[1])
    s = LocalStore.create(str(tmp_path / "store"))
    with s.writer() as w:
        for oid, data in objects.items():
            w.put(oid, data)
    assert [p.in_place for p in made] == [predicted == "right"]
    (pack,) = [f for f in os.listdir(s.objdir) if f.endswith(".h5")]
    assert not [f for f in os.listdir(s.objdir) if f.endswith(".tmp")]
    with h5py.File(os.path.join(s.objdir, pack)) as f:
        data = f["data"][:]
        ids = [bytes(x).decode() for x in f["ids"][:]]
        offs, lens = f["offsets"][:], f["lengths"][:]
    assert data.size == sum(map(len, objects.values()))
    for oid, off, ln in zip(ids, offs, lens):
        assert data[off:off + ln].tobytes() == objects[oid]
    s2 = LocalStore(str(tmp_path / "store"))
    assert all(bytes(s2.get(oid)) == d for oid, d in objects.items())


def test_packs_started_at_once_from_threads_all_find_where_the_data_goes(monkeypatch):
    """The first packs of a process may start together (the mount commits and re-encodes on
    threads of their own): the offset is measured once, and measuring it in memory never
    collides with another measurement (HDF5 refuses to create a file open under that name)."""
    from corafs.store import hdf5pack
    monkeypatch.setattr(hdf5pack, "_DATA_AT", [])
    got, errors = [], []
    start = threading.Barrier(8)

    def first():
        start.wait()
        try:
            got.append(hdf5pack.data_offset())
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=first) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 8 and len(set(got)) == 1 and got[0] > 0
