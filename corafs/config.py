"""Every tuning constant in one place. A Repository carries one ``Tuning``; tests and
benchmarks override fields rather than patching module globals."""
from __future__ import annotations

import dataclasses

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Tuning:
    #: tensors are cut into blocks of this many bytes; each block is encoded on its own so a
    #: read decodes only the blocks it touches.
    block_size: int = 4 * MiB
    #: bytes that are not tensors (opaque files whole; a checkpoint's headers, pickle and zip
    #: records) are cut by content (FastCDC, ``pyfastcdc``) into chunks of this average size
    #: (at least a quarter, at most four times it), so an insertion changes the chunks around
    #: it and no others. 64 KiB: >= 95% of a 2 MB file's bytes are reused after a 100-byte
    #: insertion (benchmarks/bench_cdc.py), at ~150 bytes of index per chunk.
    chunk_avg: int = 64 << 10
    #: a hole of at least this many bytes in a sparse file is stored as one zero object
    #: (never read from the file).
    hole_unit: int = 4 * MiB
    #: a pack file is closed once it holds this many bytes; a commit closes its last pack.
    pack_target: int = 1024 * MiB
    #: zstd level for tensor blocks and chunks. Measured on fp32 byte planes: level 1
    #: compresses as well as 3 (0.638 vs 0.651 of a fine-tune XOR delta) at 1.3x the speed.
    zstd_level: int = 1
    #: zstd level for metadata objects (small JSON).
    meta_zstd_level: int = 9
    #: longest delta chain; a block deeper than this is stored as a keyframe.
    max_delta_depth: int = 8
    #: head-first encoding: a commit stores its new blocks as keyframes, and the blocks they
    #: replace become deltas against them afterwards (in the background), so the newest
    #: version reads fastest. False: forward deltas at ingest (the newest version is the end
    #: of the chain), kept as the baseline the benchmarks compare against.
    head_first: bool = True
    #: how head-first stores the blocks of a new version: "raw" reads at the speed of the
    #: disk (decoding is a copy); they are compressed (or become deltas) once a newer version
    #: replaces them. "planes-zstd" compresses the head too (a smaller store, a decode per
    #: block). "auto": compressed, unless that keeps more than ``head_raw_above`` of the
    #: bytes, then raw. Measured on a fine-tune: fp32 keyframes keep 0.84 (raw costs little,
    #: reads 1.9x faster), bf16 0.68 (raw would cost +24% of the series' store).
    head_codec: str = "auto"
    head_raw_above: float = 0.8
    #: after re-encoding, a pack is rewritten (superseded encodings dropped) once at least
    #: this fraction of its bytes is superseded.
    repack_waste: float = 0.25
    #: ... and packs with less are rewritten, the most superseded first, while all such packs
    #: together hold more than this fraction of the repository's bytes.
    repack_waste_total: float = 0.03
    #: seconds a pack of a repository shared by machines (S3) is spared by gc: a writer on
    #: another machine may be uploading for a commit that will refer to it.
    remote_grace: float = 900.0
    #: a mount stores files smaller than this together, up to ``batch_files`` at a time
    #: (one pack, one fsync), bigger ones one by one.
    batch_file_limit: int = 64 << 20
    batch_files: int = 512
    #: worker threads for hashing / encoding / decoding (numpy and zstd release the GIL).
    workers: int = 2
    #: bytes of decoded blocks kept by a Repository's read cache.
    block_cache_bytes: int = 256 * MiB
    #: open HDF5 pack handles kept at once.
    open_packs: int = 64
    #: read data blocks of at least ``direct_read_min`` bytes with O_DIRECT, past the page
    #: cache. The mount daemon sets it: it keeps decoded blocks itself and the kernel caches
    #: the files it serves, so caching the packs too only costs a copy and page-cache upkeep
    #: (measured: 110 MB of blocks read cold with 73 ms of CPU buffered, 6 ms direct). Its
    #: buffers sit in huge pages (daemon.memory.tune_malloc): into 4 KiB pages a virtio disk
    #: reads O_DIRECT at ~1 GB/s, slower than through the page cache.
    direct_reads: bool = False
    direct_read_min: int = 256 << 10
    #: decode threads of the mount daemon. Measured on 2 cores, cold cat of 512 MB: keyframes
    #: 290 -> 447 MB/s, deltas 220 -> 280 MB/s going from 2 to 4 (reads overlap pack I/O).
    mount_workers: int = 4
    #: the mount daemon's GIL switch interval (s). Many short GIL-free numpy/zstd calls in
    #: several threads convoy behind the default 5 ms; 0.5 ms gave 20-25% on cold reads.
    mount_switch_interval: float = 0.0005
    #: threads that serve the mount's reads (decoding what is not decoded ahead), apart from
    #: the two that serve namespace changes, so a slow decode never delays a create.
    mount_read_threads: int = 4
    #: decode-ahead of a reader (core.reader.ReadAhead): a read within ``prefetch_start`` of
    #: where the last one ended continues the sequence, and up to ``prefetch_bytes`` of the
    #: file's read plan ahead of it are decoded in the worker pool.
    prefetch_start: int = 8 * MiB
    prefetch_bytes: int = 64 * MiB
    #: the largest file a mount accepts (EFBIG past it): the spool lives on the repository's
    #: disk; ``corafs mount --max-file-size`` overrides it.
    max_file_size: int = 256 << 30


DEFAULT = Tuning()
