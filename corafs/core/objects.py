"""Object identities and the encoding of metadata objects.

* data objects (tensor blocks, chunks of non-tensor bytes): id = xxh3-128 of the decoded bytes;
* tensor manifests: id = xxh3-128 of ``"tensor" dtype shape`` + the tensor's bytes;
* metadata (commits, trees, file recipes, tags): id = sha256 of canonical JSON; stored as
  ``b"CM\\x01" + zstd(json)`` and verified against the id on every read.
"""
from __future__ import annotations

import hashlib
import json

import xxhash

from ..codecs import zstd
from ..errors import CorruptObject

META_MAGIC = b"CM\x01"


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def meta_id(canon: bytes) -> str:
    return hashlib.sha256(canon).hexdigest()


def encode_meta(canon: bytes, level: int) -> bytes:
    return META_MAGIC + zstd.compress(canon, level)


def decode_meta(oid: str, payload) -> dict:
    mv = memoryview(payload)
    if bytes(mv[:3]) != META_MAGIC:
        raise CorruptObject(oid, "not a metadata object")
    try:
        canon = zstd.decompress(mv[3:], 1 << 31)
    except Exception as e:  # zstd raises its own error type
        raise CorruptObject(oid, f"cannot decompress: {e}") from None
    if meta_id(canon) != oid:
        raise CorruptObject(oid, "content does not match its sha256 id")
    return json.loads(canon)


def decode_tensor_manifest(tid: str, payload) -> dict:
    """A tensor manifest (its id is the tensor's, so it is checked where tensors are read)."""
    mv = memoryview(payload)
    if bytes(mv[:3]) != META_MAGIC:
        raise CorruptObject(tid, "not a tensor manifest")
    try:
        return json.loads(zstd.decompress(mv[3:], 1 << 31))
    except Exception as e:
        raise CorruptObject(tid, f"cannot decode the tensor manifest: {e}") from None


def data_id(buf) -> str:
    if memoryview(buf).nbytes < (256 << 10):
        return xxhash.xxh3_128_hexdigest(buf)
    # the same hash; python-xxhash's update() releases the GIL, its one-shot function does
    # not (two threads hashing 64 MiB: 43 ms against 56 ms), and a block's hash otherwise
    # stalls the mount's reply thread
    h = xxhash.xxh3_128()
    h.update(buf)
    return h.hexdigest()


def tensor_hasher(dtype: str, shape) -> "xxhash.xxh3_128":
    h = xxhash.xxh3_128()
    h.update(f"tensor\0{dtype}\0{list(shape)}\0".encode())
    return h
