"""A restricted pickle reader for torch checkpoints.

It interprets the opcode stream (from ``pickletools.genops``) on a symbolic stack: globals
become ``Global`` records, calls become ``Call`` records, nothing is imported and no code runs.
A GLOBAL outside torch's tensor-rebuild set raises ``UnsafePickle`` before anything else
happens, so such a file is stored opaque.
"""
from __future__ import annotations

import dataclasses
import io
import pickletools
from typing import Any

from ..errors import UnsupportedFormat, UnsafePickle

ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"), ("collections", "Counter"),
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._utils", "_rebuild_qtensor"),
    ("torch._utils", "_rebuild_sparse_tensor"), ("torch._utils", "_rebuild_meta_tensor_no_storage"),
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"),
    ("torch._utils", "_rebuild_wrapper_subclass"), ("torch._utils", "_rebuild_nested_tensor"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"), ("torch", "Size"), ("torch", "device"),
    ("torch.serialization", "_get_layout"), ("torch.storage", "UntypedStorage"),
    ("torch.storage", "TypedStorage"), ("torch", "strided"), ("torch", "sparse_coo"),
    ("torch", "per_tensor_affine"), ("torch", "per_channel_affine"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"),
}


def allowed(module: str, name: str) -> bool:
    if (module, name) in ALLOWED_GLOBALS:
        return True
    if module == "torch" and (name.endswith("Storage") or name in _TORCH_DTYPES):
        return True
    return False


_TORCH_DTYPES = {
    "float64", "double", "float32", "float", "float16", "half", "bfloat16", "float8_e4m3fn",
    "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "int64", "long",
    "int32", "int", "int16", "short", "int8", "uint8", "uint16", "uint32", "uint64", "bool",
    "complex64", "cfloat", "complex128", "cdouble", "complex32", "chalf", "qint8", "quint8",
    "qint32", "quint4x2", "bits8", "bits16",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Global:
    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclasses.dataclass(eq=False)
class Call:
    func: Any
    args: tuple
    state: Any = None     # from BUILD
    items: Any = None     # from APPEND(S) / SETITEM(S) on the result (e.g. OrderedDict)


@dataclasses.dataclass(frozen=True, eq=False)
class PersId:
    value: Any


class _Mark:
    pass


_MARK = _Mark()


def read(data: bytes) -> tuple[Any, list[PersId]]:
    """Return the symbolic object tree and every persistent id met, in order."""
    stack: list = []
    memo: dict = {}
    persids: list[PersId] = []

    def pop_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise UnsupportedFormat("pth", "pickle stack has no MARK")

    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            n = op.name
            if n in ("PROTO", "FRAME"):
                continue
            if n == "STOP":
                if len(stack) != 1:
                    raise UnsupportedFormat("pth", "pickle ended with a bad stack")
                return stack[0], persids
            if n == "MARK":
                stack.append(_MARK)
            elif n == "POP":
                stack.pop()
            elif n == "POP_MARK":
                pop_mark()
            elif n == "DUP":
                stack.append(stack[-1])
            elif n in ("NONE",):
                stack.append(None)
            elif n == "NEWTRUE":
                stack.append(True)
            elif n == "NEWFALSE":
                stack.append(False)
            elif n in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
                       "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING",
                       "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
                       "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
                stack.append(arg)
            elif n == "BYTEARRAY8":
                stack.append(bytearray(arg))
            elif n == "EMPTY_DICT":
                stack.append({})
            elif n == "EMPTY_LIST":
                stack.append([])
            elif n == "EMPTY_TUPLE":
                stack.append(())
            elif n == "EMPTY_SET":
                stack.append(set())
            elif n == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif n == "TUPLE1":
                stack[-1:] = [(stack[-1],)]
            elif n == "TUPLE2":
                stack[-2:] = [tuple(stack[-2:])]
            elif n == "TUPLE3":
                stack[-3:] = [tuple(stack[-3:])]
            elif n == "LIST":
                stack.append(list(pop_mark()))
            elif n == "DICT":
                items = pop_mark()
                stack.append(_dict_from(items))
            elif n == "APPEND":
                v = stack.pop()
                _target(stack[-1], list).append(v)
            elif n == "APPENDS":
                items = pop_mark()
                _target(stack[-1], list).extend(items)
            elif n == "SETITEM":
                v = stack.pop()
                k = stack.pop()
                _target(stack[-1], dict)[_key(k)] = v
            elif n == "SETITEMS":
                items = pop_mark()
                _target(stack[-1], dict).update(_dict_from(items))
            elif n == "ADDITEMS":
                items = pop_mark()
                _target(stack[-1], set).update(_key(i) for i in items)
            elif n == "FROZENSET":
                stack.append(frozenset(_key(i) for i in pop_mark()))
            elif n in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif n == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif n in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif n == "GLOBAL":
                module, name = arg.split(" ", 1)
                stack.append(_global(module, name))
            elif n == "STACK_GLOBAL":
                name = stack.pop()
                module = stack.pop()
                if not isinstance(module, str) or not isinstance(name, str):
                    raise UnsupportedFormat("pth", "STACK_GLOBAL with non-string operands")
                stack.append(_global(module, name))
            elif n == "REDUCE":
                args = stack.pop()
                func = stack.pop()
                stack.append(Call(func, tuple(args) if isinstance(args, (tuple, list)) else (args,)))
            elif n == "NEWOBJ":
                args = stack.pop()
                cls = stack.pop()
                stack.append(Call(cls, tuple(args)))
            elif n == "NEWOBJ_EX":
                kwargs = stack.pop()
                args = stack.pop()
                cls = stack.pop()
                stack.append(Call(cls, tuple(args) + (kwargs,)))
            elif n == "BUILD":
                state = stack.pop()
                obj = stack[-1]
                if isinstance(obj, Call):
                    obj.state = state
                else:
                    raise UnsupportedFormat("pth", "BUILD on a plain object")
            elif n in ("BINPERSID", "PERSID"):
                pid = PersId(stack.pop() if n == "BINPERSID" else arg)
                persids.append(pid)
                stack.append(pid)
            else:
                # INST, OBJ, EXT1/2/4 and anything newer: they import or call by other routes
                raise UnsafePickle(f"opcode {n}")
    except (UnsupportedFormat, UnsafePickle):
        raise
    except (ValueError, IndexError, KeyError, TypeError, EOFError, RecursionError,
            OverflowError, AttributeError) as e:
        raise UnsupportedFormat("pth", f"malformed pickle: {type(e).__name__}: {e}") from None
    raise UnsupportedFormat("pth", "pickle has no STOP opcode (truncated)")


def _global(module: str, name: str) -> Global:
    if not allowed(module, name):
        raise UnsafePickle(f"{module}.{name}")
    return Global(module, name)


def _target(obj, kind):
    if isinstance(obj, kind):
        return obj
    if isinstance(obj, Call):   # e.g. OrderedDict() being filled: keep items on the call
        if obj.items is None:
            obj.items = kind()
        return obj.items
    raise UnsupportedFormat("pth", f"cannot add items to {type(obj).__name__}")


_SCALARS = (str, int, float, bool, bytes, type(None), Global)


def _key(k):
    """A dict/set key as the pickle names it, when it is a scalar or a shallow tuple of them.
    Anything else gets a placeholder name: hashing an attacker-built 200,000-deep tuple
    recurses in C without a limit and kills the process (never call hash() on it)."""
    if isinstance(k, _SCALARS):
        return k
    if isinstance(k, tuple) and len(k) <= 64 and all(isinstance(x, _SCALARS) for x in k):
        return k
    return f"<{type(k).__name__} key at {id(k):x}>"


def _dict_from(items: list) -> dict:
    if len(items) % 2:
        raise UnsupportedFormat("pth", "odd number of dict items")
    return {_key(items[i]): items[i + 1] for i in range(0, len(items), 2)}
