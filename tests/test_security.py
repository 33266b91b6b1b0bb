"""A .pth whose pickle would run code is stored byte-exact and its code never runs."""
import io
import os
import pickle
import zipfile

import torch

from conftest import commit_and_export, run_cli
from corafs.formats import pickle_reader
import pytest
from corafs.errors import UnsafePickle


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_pth(path, marker):
    """A real torch.save zip whose data.pkl is replaced by a pickle that calls os.system."""
    buf = io.BytesIO()
    torch.save({"w": torch.randn(10, 10)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"w": _Evil(marker)}, protocol=2)
            dst.writestr(info, data)


def test_malicious_pth_never_runs(repo, work, tmp_path):
    marker = tmp_path / "pwned"
    path = work / "evil.pth"
    _malicious_pth(path, marker)
    a, b, res = commit_and_export(repo, path, tmp_path)
    assert a == b
    assert not marker.exists(), "pickle code ran during commit/export"
    r = res.files[0][1]
    assert r.entry["format"] == "opaque"
    assert "posix.system" in r.reason or "os.system" in r.reason
    # every other command that reads the file must not run it either
    for args in (("show", "main:evil.pth"), ("fsck",), ("stats",), ("diff", "main~1", "main")):
        run_cli(args[0], repo.path, *args[1:])
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    b"cos\nsystem\n(S'true'\ntR.",                      # protocol 0 GLOBAL + REDUCE
    pickle.dumps(_Evil("/tmp/x"), protocol=4),           # STACK_GLOBAL
    b"(i__builtin__\nobject\np0\n.",                     # INST
    b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.",
])
def test_reader_refuses_imports(payload):
    with pytest.raises(UnsafePickle):
        pickle_reader.read(payload)


def test_reader_reads_torch_pickle_symbolically():
    buf = io.BytesIO()
    torch.save({"a": torch.ones(3)}, buf)
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    root, pids = pickle_reader.read(z.read("archive/data.pkl"))
    assert "a" in root and len(pids) == 1
