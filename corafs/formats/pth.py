"""``.pth`` from ``torch.save`` (zip format). Records: ``<prefix>/data.pkl``,
``<prefix>/data/<key>`` (storages, stored uncompressed), ``version``, ``byteorder``,
``.data/serialization_id`` and others, all kept verbatim; the storages become tensors.

The pickle is read by ``pickle_reader`` (symbolic, never executed) only to learn each
storage's dtype and the names of the tensors that view it."""
from __future__ import annotations

import struct
import zipfile

from .. import dtypes
from ..errors import UnsupportedFormat
from . import pickle_reader as pr
from .layout import Layout, TensorSpan, View

_LOCAL = struct.Struct("<IHHHHHIIIHH")
#: the largest data.pkl read (decompressed). Real checkpoints' pickles are kilobytes to a few
#: megabytes; a larger one (or a zip bomb) is stored opaque. Parsing costs about 10x this.
MAX_PICKLE = 16 << 20
_REBUILD = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"}


def looks_like(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


def parse(f, size: int) -> Layout:
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except Exception as e:  # zipfile raises many types on hostile input
        raise UnsupportedFormat("pth", f"not a readable zip archive: {e}") from None
    pkl = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if not pkl:
        raise UnsupportedFormat("pth", "zip archive has no <name>/data.pkl record")
    prefix = pkl[0].filename[:-len("data.pkl")]
    if pkl[0].file_size > MAX_PICKLE:
        raise UnsupportedFormat("pth", f"data.pkl is {pkl[0].file_size} bytes, more than the "
                                       f"{MAX_PICKLE >> 20} MiB parsed")
    try:
        with zf.open(pkl[0]) as fh:           # bounded: the declared size may lie
            data = fh.read(MAX_PICKLE + 1)
    except Exception as e:  # bad deflate, encryption, unknown compression, truncation...
        raise UnsupportedFormat("pth", f"cannot read data.pkl: {type(e).__name__}: {e}") \
            from None
    if len(data) > MAX_PICKLE:
        raise UnsupportedFormat("pth", f"data.pkl inflates to more than {MAX_PICKLE >> 20} MiB")
    root, persids = pr.read(data)

    # storage key -> dtype name, from the persistent ids ('storage', type, key, location, numel)
    storage_dtype: dict[str, str] = {}
    for pid in persids:
        v = pid.value
        if not (isinstance(v, tuple) and len(v) >= 3 and v[0] == "storage"):
            raise UnsupportedFormat("pth", f"unknown persistent id {v!r}")
        key = str(v[2])
        typ = v[1]
        if isinstance(typ, pr.Global) and typ.name in dtypes.TORCH_STORAGE:
            storage_dtype.setdefault(key, dtypes.TORCH_STORAGE[typ.name])

    views: list[tuple[str, str, str, tuple, int, tuple]] = []   # name, key, dtype, shape, off, stride
    _walk(root, "", views, storage_dtype, set())

    by_name = {i.filename: i for i in infos}
    layout = Layout("pth", size)
    span_of: dict[str, int] = {}
    keys = sorted({str(p.value[2]) for p in persids}, key=_natural)
    first_name = {}
    for name, key, *_ in views:
        first_name.setdefault(key, name)
    for key in keys:
        info = by_name.get(f"{prefix}data/{key}")
        if info is None:
            raise UnsupportedFormat("pth", f"storage record data/{key} is missing")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size == 0:
            continue   # compressed storages stay verbatim bytes
        off = _data_offset(f, info)
        if off + info.file_size > size:
            raise UnsupportedFormat("pth", f"storage data/{key} lies past the end (truncated?)")
        dt = storage_dtype.get(key, "U8")
        item = dtypes.lookup(dt).itemsize
        if info.file_size % item:
            dt, item = "U8", 1
        layout.spans.append(TensorSpan(first_name.get(key, f"storage:{key}"), dt,
                                       (info.file_size // item,), off, info.file_size))
        span_of[key] = len(layout.spans) - 1
    for name, key, dt, shape, soff, stride in views:
        layout.views.append(View(name, dt, shape, span_of.get(key, -1), soff, stride))
    try:
        layout.sort_spans()
    except ValueError as e:
        raise UnsupportedFormat("pth", str(e)) from None
    return layout


def _natural(k: str):
    return (0, int(k)) if k.isdigit() else (1, k)


def _data_offset(f, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    head = f.read(_LOCAL.size)
    if len(head) < _LOCAL.size:
        raise UnsupportedFormat("pth", f"local header of {info.filename} is truncated")
    fields = _LOCAL.unpack(head)
    if fields[0] != 0x04034B50:
        raise UnsupportedFormat("pth", f"bad local header for {info.filename}")
    return info.header_offset + _LOCAL.size + fields[9] + fields[10]


def _walk(obj, path, out, storage_dtype, seen) -> None:
    if id(obj) in seen:
        return
    if isinstance(obj, pr.Call):
        t = _tensor(obj, storage_dtype)
        if t is not None:
            out.append((path or "<root>",) + t)
            return
        seen.add(id(obj))
        for i, a in enumerate(obj.args):
            _walk(a, path, out, storage_dtype, seen)
        if obj.items is not None:
            _walk(obj.items, path, out, storage_dtype, seen)
        if obj.state is not None:
            _walk(obj.state, path, out, storage_dtype, seen)
    elif isinstance(obj, dict):
        seen.add(id(obj))
        for k, v in obj.items():
            _walk(v, f"{path}.{k}" if path else str(k), out, storage_dtype, seen)
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for i, v in enumerate(obj):
            _walk(v, f"{path}.{i}" if path else str(i), out, storage_dtype, seen)


def _tensor(call: pr.Call, storage_dtype):
    """(key, dtype, shape, storage_offset, stride) of a tensor-rebuild call, else None."""
    f = call.func
    if not isinstance(f, pr.Global):
        return None
    if f.name in ("_rebuild_parameter", "_rebuild_parameter_with_state") and call.args:
        inner = call.args[0]
        return _tensor(inner, storage_dtype) if isinstance(inner, pr.Call) else None
    if f.name == "_rebuild_from_type_v2" and len(call.args) >= 3:
        inner = call.args[2]
        if isinstance(inner, tuple) and inner and isinstance(inner[0], pr.Call):
            return _tensor(inner[0], storage_dtype)
    if f.name not in _REBUILD or len(call.args) < 4:
        return None
    storage, soff, shape, stride = call.args[:4]
    if not isinstance(storage, pr.PersId):
        return None
    key = str(storage.value[2])
    dt = storage_dtype.get(key)
    if f.name == "_rebuild_tensor_v3" and len(call.args) >= 7 and isinstance(call.args[6], pr.Global):
        dt = dtypes.TORCH_DTYPE.get(call.args[6].name, dt)
        if dt is not None:
            storage_dtype.setdefault(key, dt)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else ()
    stride = tuple(stride) if isinstance(stride, (tuple, list)) else None
    return key, dt or "U8", shape, int(soff) if isinstance(soff, int) else 0, stride
