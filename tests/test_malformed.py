"""Malformed checkpoints never hurt the repository (issue 8, item 9): deep nesting, lying sizes,
bombs, hostile zip records. Each is committed through the CLI and through the mount: no crash,
no traceback, stored byte-exact as an opaque file with the reason told, memory under the bound
documented in docs/formats.md."""
import io
import os
import struct
import subprocess
import sys
import zipfile

import pytest

from conftest import sha256_bytes, sha256_file
from corafs import Repository
from mountutil import corafs, mounted, needs_fuse, wait_for

#: a valid pickle, only hostile: parsed (no tensors) rather than refused; the others are broken
VALID = {"deep_tuple_key.pth"}
#: peak RSS of a `corafs commit` or a mount daemon ingesting any of these (docs/formats.md)
MEMORY_BOUND = 700 << 20


def _pickle_zip(pkl: bytes, compress=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def _deep_tuple_key(depth):
    # {(((("x",),),)...): None}: hashing the key recurses in C
    return b"\x80\x02}" + b"X\x01\x00\x00\x00x" + b"\x85" * depth + b"N" + b"s" + b"."


def _deep_list(depth):
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _deep_dict(depth):
    # {} then depth times (MARK "k" {}), then depth SETITEMS: each dict holds the next
    return b"\x80\x02" + b"}" + (b"(X\x01\x00\x00\x00k}" * depth) + b"u" * depth + b"."


def _safetensors(header: bytes, data: bytes = b"\0" * 16) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _patched_zip(mutate) -> bytes:
    raw = bytearray(_pickle_zip(b"\x80\x02}q\x00.", zipfile.ZIP_DEFLATED))
    mutate(raw)
    return bytes(raw)


def _set_flag(raw, bit):
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        i = raw.find(sig)
        off = 6 if sig == b"PK\x03\x04" else 8
        flags = struct.unpack_from("<H", raw, i + off)[0]
        struct.pack_into("<H", raw, i + off, flags | bit)


def _set_method(raw, method):
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        i = raw.find(sig)
        struct.pack_into("<H", raw, i + off, method)


def _bad_deflate(raw):
    i = raw.find(b"PK\x03\x04")
    n = struct.unpack_from("<H", raw, i + 26)[0] + struct.unpack_from("<H", raw, i + 28)[0]
    start = i + 30 + n
    raw[start:start + 4] = b"\xff\xff\xff\xff"


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=True) as f:
            zero = b"\0" * (1 << 20)
            for _ in range(256):               # 256 MiB inflated, ~250 KB stored
                f.write(zero)
    return buf.getvalue()


def cases():
    good_st = _safetensors(b'{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}')
    return {
        "deep_tuple_key.pth": _pickle_zip(_deep_tuple_key(200_000)),
        "deep_list.pth": _pickle_zip(_deep_list(100_000)),
        "deep_dict.pth": _pickle_zip(_deep_dict(100_000)),
        "encrypted.pth": _patched_zip(lambda r: _set_flag(r, 0x1)),
        "unknown_compression.pth": _patched_zip(lambda r: _set_method(r, 99)),
        "bad_deflate.pth": _patched_zip(_bad_deflate),
        "bomb.pth": _bomb(),
        "truncated.pth": _pickle_zip(b"\x80\x02}q\x00.")[:-30],
        "garbage.pth": b"PK\x03\x04" + os.urandom(5000),
        "dtype_list.safetensors": _safetensors(
            b'{"t":{"dtype":["F32"],"shape":[4],"data_offsets":[0,16]}}'),
        "dtype_int.safetensors": _safetensors(
            b'{"t":{"dtype":7,"shape":[4],"data_offsets":[0,16]}}'),
        "shape_infinity.safetensors": _safetensors(
            b'{"t":{"dtype":"F32","shape":[Infinity],"data_offsets":[0,16]}}'),
        "shape_negative.safetensors": _safetensors(
            b'{"t":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}'),
        "deep_header.safetensors": _safetensors(
            b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "lying_length.safetensors": struct.pack("<Q", 1 << 40) + b'{"t":{}}',
        "lying_offsets.safetensors": _safetensors(
            b'{"t":{"dtype":"F32","shape":[4000],"data_offsets":[0,16000]}}'),
        "truncated.safetensors": good_st[:-5],
        "overlap.safetensors": _safetensors(
            b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
            b'"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}'),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("malformed")
    out = {}
    for name, data in cases().items():
        p = d / name
        p.write_bytes(data)
        out[name] = p
    return out


def test_cli_commits_every_malformed_file_opaque_and_byte_exact(files, tmp_path):
    repo = tmp_path / "repo"
    corafs("init", repo)
    for name, path in files.items():
        p = subprocess.Popen([sys.executable, "-m", "corafs", "commit", str(repo), str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{name}: {out}\n{err}"
        assert "Traceback" not in err and "Traceback" not in out, f"{name}: {err}"
        if name not in VALID:
            assert "opaque" in out + err, f"{name}: the user is not told why: {out}\n{err}"
    with Repository(repo) as r:
        for name, path in files.items():
            e = r.entry(r.head("main"), name)
            assert e["format"] == "opaque" or name in VALID, name
            assert sha256_bytes(r.read_file(f"main:{name}")) == sha256_file(path), name
        assert r.fsck().ok


def test_cli_memory_stays_bounded_on_a_bomb(files, tmp_path):
    repo = tmp_path / "repo"
    corafs("init", repo)
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run([sys.executable, '-m', 'corafs', 'commit', sys.argv[1], "
            "sys.argv[2]], capture_output=True)\n"
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    for name in ("bomb.pth", "deep_tuple_key.pth", "deep_header.safetensors"):
        p = subprocess.run([sys.executable, "-c", code, str(repo), str(files[name])],
                           capture_output=True, text=True, timeout=300)
        rc, kib = map(int, p.stdout.split())
        assert rc == 0, (name, p.stderr)
        assert kib * 1024 < MEMORY_BOUND, f"{name}: peak RSS {kib // 1024} MiB"


@needs_fuse
@pytest.mark.mount
def test_mount_stores_every_malformed_file_and_keeps_running(files, tmp_path):
    repo, mnt = tmp_path / "repo", tmp_path / "mnt"
    corafs("init", repo)
    with mounted(repo, mnt, "--commit-delay", "0.3", "--cache-size", "64M") as m:
        pid = int(os.getxattr(m, "user.corafs.pid"))
        os.makedirs(f"{m}/main/fuzz")
        for name, path in files.items():
            subprocess.run(["cp", str(path), f"{m}/main/fuzz/{name}"], check=True)
        assert wait_for(lambda: "nothing staged" in corafs("status", repo).stdout, timeout=120)
        with open(f"/proc/{pid}/status") as f:
            hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM"))
        assert hwm * 1024 < MEMORY_BOUND, f"daemon peak RSS {hwm // 1024} MiB"
        for name, path in files.items():                 # read back through the mount
            assert sha256_file(f"{m}/main/fuzz/{name}") == sha256_file(path), name
    log = open(f"{repo}/logs/mount.log").read()
    assert "Traceback" not in log, log[-3000:]
    with Repository(repo) as r:
        for name, path in files.items():
            assert sha256_bytes(r.read_file(f"main:fuzz/{name}")) == sha256_file(path), name
