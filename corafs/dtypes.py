"""Canonical tensor dtypes (the safetensors spellings) and what the codecs need to know of them."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    kind: str       # 'f' float, 'i' signed int, 'u' unsigned int, 'b' bool, 'c' complex
    #: width in bytes of one float lane (complex numbers are two float lanes); 0 if not float
    lane: int = 0

    @property
    def is_float(self) -> bool:
        return self.lane > 0


_TABLE = [
    DType("F64", 8, "f", 8), DType("F32", 4, "f", 4), DType("F16", 2, "f", 2),
    DType("BF16", 2, "f", 2), DType("F8_E4M3", 1, "f", 1), DType("F8_E5M2", 1, "f", 1),
    DType("F8_E4M3FNUZ", 1, "f", 1), DType("F8_E5M2FNUZ", 1, "f", 1), DType("F8_E8M0", 1, "f", 1),
    DType("C64", 8, "c", 4), DType("C128", 16, "c", 8), DType("C32", 4, "c", 2),
    DType("I64", 8, "i"), DType("I32", 4, "i"), DType("I16", 2, "i"), DType("I8", 1, "i"),
    DType("U64", 8, "u"), DType("U32", 4, "u"), DType("U16", 2, "u"), DType("U8", 1, "u"),
    DType("BOOL", 1, "b"),
]
BY_NAME = {d.name: d for d in _TABLE}


def lookup(name: str) -> DType:
    """Known dtypes by name; an unknown one (a future sub-byte format, say) is treated as bytes."""
    return BY_NAME.get(name) or DType(name, 1, "u")


#: torch storage class names (``torch.FloatStorage``) and dtype names (``torch.float32``).
TORCH_STORAGE = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
    "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64", "ComplexDoubleStorage": "C128",
}
TORCH_DTYPE = {
    "float64": "F64", "double": "F64", "float32": "F32", "float": "F32", "float16": "F16",
    "half": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0", "int64": "I64", "long": "I64", "int32": "I32", "int": "I32",
    "int16": "I16", "short": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16",
    "uint32": "U32", "uint64": "U64", "bool": "BOOL", "complex64": "C64", "cfloat": "C64",
    "complex128": "C128", "cdouble": "C128", "complex32": "C32", "chalf": "C32",
}
