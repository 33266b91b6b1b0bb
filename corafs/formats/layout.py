"""What a parser learns about a file: where its tensors lie. Everything else is verbatim bytes."""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass
class TensorSpan:
    """A run of tensor bytes in the file (a safetensors tensor, or a torch storage)."""

    name: str
    dtype: str
    shape: tuple
    offset: int
    nbytes: int


@dataclasses.dataclass
class View:
    """A named tensor as the user sees it (a state-dict entry); for .pth, a view of a storage."""

    name: str
    dtype: str
    shape: tuple
    span: int                 # index into Layout.spans, -1 for a tensor with no bytes
    storage_offset: int = 0   # in elements
    stride: Optional[tuple] = None


@dataclasses.dataclass
class Layout:
    format: str                       # "safetensors", "pth" or "opaque"
    size: int
    spans: list[TensorSpan] = dataclasses.field(default_factory=list)
    views: list[View] = dataclasses.field(default_factory=list)
    #: why a file that looked like a checkpoint was stored opaque (None if it was parsed)
    reason: Optional[str] = None

    def sort_spans(self) -> None:
        """Order spans by offset (keeping views pointing at theirs), then ``check``."""
        order = sorted(range(len(self.spans)), key=lambda i: self.spans[i].offset)
        new_of = {old: new for new, old in enumerate(order)}
        self.spans = [self.spans[i] for i in order]
        for v in self.views:
            if v.span >= 0:
                v.span = new_of[v.span]
        self.check()

    def check(self) -> None:
        """Spans sorted, inside the file and not overlapping (parsers guarantee, we verify)."""
        self.spans.sort(key=lambda s: s.offset)
        end = 0
        for s in self.spans:
            if s.offset < end or s.offset + s.nbytes > self.size or s.nbytes < 0:
                raise ValueError(f"tensor {s.name} overlaps or lies outside the file")
            end = s.offset + s.nbytes
