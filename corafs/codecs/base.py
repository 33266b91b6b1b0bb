"""What a codec is: a named, stateless encoder/decoder of one block's body, given its dtype and
(for a delta) the block or blocks it is encoded against. The registry of stored names is in
``corafs.codecs``; the lossless codecs are there, the opt-in lossy ones in ``lossy``."""
from __future__ import annotations

from typing import ClassVar, Optional

import numpy as np

from ..dtypes import DType


class Codec:
    name: ClassVar[str]
    is_delta: ClassVar[bool] = False
    lossy: ClassVar[bool] = False
    #: how many base blocks decoding needs (the block it deltas against, then that one's base)
    bases: ClassVar[int] = 1

    def encode(self, raw: np.ndarray, dt: DType, base: Optional[np.ndarray], level: int) -> bytes:
        raise NotImplementedError

    def decode(self, body, dt: DType, raw_len: int, base: Optional[np.ndarray]) -> np.ndarray:
        raise NotImplementedError
