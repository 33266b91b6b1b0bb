/* corafs's compiled codec kernels: the per-byte loops of block encoding and decoding, fused.
 *
 * A block is stored as byte planes (plane j holds byte j of every element) of either the data
 * itself (a keyframe) or a bit-exact delta against one or two base blocks:
 *
 *   KEY   d = x
 *   XOR   d = x ^ b
 *   SUB   d = zigzag(ord(x) - ord(b))                 (modular, in the element's width)
 *   SUB2  d = zigzag(ord(x) - (2*ord(b) - ord(b2)))   (second order: the extrapolation)
 *
 * where ord() maps sign-magnitude float bits to integers that sort like the floats (an
 * involution: negative values get their magnitude bits flipped) and zigzag folds the sign into
 * the lowest bit, so small updates become small integers with zero high bytes. Everything is
 * unsigned modular arithmetic: every transform is a bijection, NaN payloads, -0.0, infinities
 * and denormals come back exactly.
 *
 * chain() decodes a block and the run of deltas above it: per level, libzstd decompresses the
 * planes, and one pass over memory merges them and undoes the transform (a single block is a
 * chain of one); encode() applies the transform and splits into planes in one pass. The numpy code in corafs/codecs/reference.py
 * defines the same arithmetic and is the test oracle (tests/test_kernels.py).
 *
 * Elements are little-endian (as safetensors and torch store them). Every length is checked
 * before a loop runs; the loops run with the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <zstd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "corafs's kernels read elements as little-endian words: a big-endian build needs byte swaps"
#endif

enum { KIND_KEY = 0, KIND_XOR = 1, KIND_SUB = 2, KIND_SUB2 = 3 };

#define MAX_WIDTH 8

/* ord() is its own inverse: x ^ (all ones but the top bit, when the top bit is set) */
#define DEFINE_WIDTH(W, T)                                                                     \
    static inline T ord##W(T x) { return x ^ ((T)(0 - (x >> (8 * W - 1))) >> 1); }           \
    static inline T load##W(const uint8_t *p, Py_ssize_t i) {                                  \
        T v; memcpy(&v, p + i * W, W); return v;                                               \
    }                                                                                          \
    static inline void store##W(uint8_t *p, Py_ssize_t i, T v) { memcpy(p + i * W, &v, W); } \
    static inline T merge##W(const uint8_t *const *pl, Py_ssize_t i) {                         \
        T z = 0;                                                                               \
        for (int j = 0; j < W; j++) z |= (T)pl[j][i] << (8 * j);                               \
        return z;                                                                              \
    }                                                                                          \
    static inline void split##W(uint8_t *out, Py_ssize_t n, Py_ssize_t i, T d) {              \
        for (int j = 0; j < W; j++) out[(Py_ssize_t)j * n + i] = (uint8_t)(d >> (8 * j));     \
    }                                                                                          \
    static void decode##W(int kind, const uint8_t *const *pl, const uint8_t *b,                \
                          const uint8_t *b2, uint8_t *out, Py_ssize_t n) {                     \
        Py_ssize_t i;                                                                          \
        switch (kind) {                                                                        \
        case KIND_KEY:                                                                         \
            for (i = 0; i < n; i++) store##W(out, i, merge##W(pl, i));                         \
            break;                                                                             \
        case KIND_XOR:                                                                         \
            for (i = 0; i < n; i++) store##W(out, i, merge##W(pl, i) ^ load##W(b, i));         \
            break;                                                                             \
        case KIND_SUB:                                                                         \
            for (i = 0; i < n; i++) {                                                          \
                T z = merge##W(pl, i);                                                         \
                T d = (z >> 1) ^ (T)(0 - (z & 1));                                             \
                store##W(out, i, ord##W((T)(d + ord##W(load##W(b, i)))));                      \
            }                                                                                  \
            break;                                                                             \
        case KIND_SUB2:                                                                        \
            for (i = 0; i < n; i++) {                                                          \
                T z = merge##W(pl, i);                                                         \
                T d = (z >> 1) ^ (T)(0 - (z & 1));                                             \
                T p = (T)((T)(ord##W(load##W(b, i)) << 1) - ord##W(load##W(b2, i)));          \
                store##W(out, i, ord##W((T)(d + p)));                                          \
            }                                                                                  \
            break;                                                                             \
        }                                                                                      \
    }                                                                                          \
    static void encode##W(int kind, const uint8_t *x, const uint8_t *b, const uint8_t *b2,     \
                          uint8_t *out, Py_ssize_t n) {                                        \
        Py_ssize_t i;                                                                          \
        switch (kind) {                                                                        \
        case KIND_KEY:                                                                         \
            for (i = 0; i < n; i++) split##W(out, n, i, load##W(x, i));                        \
            break;                                                                             \
        case KIND_XOR:                                                                         \
            for (i = 0; i < n; i++) split##W(out, n, i, load##W(x, i) ^ load##W(b, i));        \
            break;                                                                             \
        case KIND_SUB:                                                                         \
            for (i = 0; i < n; i++) {                                                          \
                T t = (T)(ord##W(load##W(x, i)) - ord##W(load##W(b, i)));                      \
                split##W(out, n, i, (T)(t << 1) ^ (T)(0 - (t >> (8 * W - 1))));               \
            }                                                                                  \
            break;                                                                             \
        case KIND_SUB2:                                                                        \
            for (i = 0; i < n; i++) {                                                          \
                T p = (T)((T)(ord##W(load##W(b, i)) << 1) - ord##W(load##W(b2, i)));          \
                T t = (T)(ord##W(load##W(x, i)) - p);                                          \
                split##W(out, n, i, (T)(t << 1) ^ (T)(0 - (t >> (8 * W - 1))));               \
            }                                                                                  \
            break;                                                                             \
        }                                                                                      \
    }

DEFINE_WIDTH(1, uint8_t)
DEFINE_WIDTH(2, uint16_t)
DEFINE_WIDTH(4, uint32_t)
DEFINE_WIDTH(8, uint64_t)

/* Widths 2 and 4 (bf16/fp16 and fp32, the hot cases of history), every transform, written so
 * that gcc vectorizes them: plane bytes loaded and widened, no calls, restrict pointers. */
#define DEFINE_FAST(W, T)                                                                      \
    static void fast##W(int kind, const uint8_t *const *pl, const uint8_t *restrict b,         \
                        const uint8_t *restrict b2, uint8_t *restrict out, Py_ssize_t n) {     \
        const uint8_t *restrict p0 = pl[0], *restrict p1 = pl[1];                             \
        const uint8_t *restrict p2 = W > 2 ? pl[2] : NULL, *restrict p3 = W > 2 ? pl[3] : NULL; \
        const T *restrict bb = (const T *)b, *restrict bb2 = (const T *)b2;                  \
        T *restrict o = (T *)out;                                                              \
        const T lowmask = (T)(((T)1 << (8 * W - 1)) - 1);                                      \
        (void)p2; (void)p3;                                                                    \
        switch (kind) {                                                                        \
        case KIND_KEY:                                                                         \
            for (Py_ssize_t i = 0; i < n; i++)                                                 \
                o[i] = FAST_MERGE##W(i);                                                       \
            break;                                                                             \
        case KIND_XOR:                                                                         \
            for (Py_ssize_t i = 0; i < n; i++)                                                 \
                o[i] = (T)(FAST_MERGE##W(i) ^ bb[i]);                                          \
            break;                                                                             \
        case KIND_SUB:                                                                         \
            for (Py_ssize_t i = 0; i < n; i++) {                                               \
                T z = FAST_MERGE##W(i);                                                        \
                T d = (T)((z >> 1) ^ (T)(0 - (z & 1)));                                        \
                T x = bb[i];                                                                   \
                T r = (T)(d + (T)(x ^ ((T)(0 - (x >> (8 * W - 1))) & lowmask)));              \
                o[i] = (T)(r ^ ((T)(0 - (r >> (8 * W - 1))) & lowmask));                       \
            }                                                                                  \
            break;                                                                             \
        case KIND_SUB2:                                                                        \
            for (Py_ssize_t i = 0; i < n; i++) {                                               \
                T z = FAST_MERGE##W(i);                                                        \
                T d = (T)((z >> 1) ^ (T)(0 - (z & 1)));                                        \
                T x = bb[i], y = bb2[i];                                                       \
                T ox = (T)(x ^ ((T)(0 - (x >> (8 * W - 1))) & lowmask));                       \
                T oy = (T)(y ^ ((T)(0 - (y >> (8 * W - 1))) & lowmask));                       \
                T r = (T)(d + (T)((T)(ox << 1) - oy));                                         \
                o[i] = (T)(r ^ ((T)(0 - (r >> (8 * W - 1))) & lowmask));                       \
            }                                                                                  \
            break;                                                                             \
        }                                                                                      \
    }
#define FAST_MERGE2(i) (uint16_t)((uint16_t)p0[i] | ((uint16_t)p1[i] << 8))
#define FAST_MERGE4(i) ((uint32_t)p0[i] | ((uint32_t)p1[i] << 8) | ((uint32_t)p2[i] << 16) |     \
                        ((uint32_t)p3[i] << 24))
DEFINE_FAST(2, uint16_t)
DEFINE_FAST(4, uint32_t)

static int aligned(const void *p, size_t a) { return ((uintptr_t)p % a) == 0; }

static void run_decode(int kind, int w, const uint8_t *const *pl, const uint8_t *b,
                       const uint8_t *b2, uint8_t *out, Py_ssize_t n) {
    /* the fast loops read and write whole elements: aligned buffers only (the generic ones
     * below copy bytes) */
    int ok = aligned(out, w) && (kind < KIND_XOR || aligned(b, w)) &&
             (kind != KIND_SUB2 || aligned(b2, w));
    if (ok && w == 4) {
        fast4(kind, pl, b, b2, out, n);
        return;
    }
    if (ok && w == 2) {
        fast2(kind, pl, b, b2, out, n);
        return;
    }
    switch (w) {
    case 1: decode1(kind, pl, b, b2, out, n); break;
    case 2: decode2(kind, pl, b, b2, out, n); break;
    case 4: decode4(kind, pl, b, b2, out, n); break;
    case 8: decode8(kind, pl, b, b2, out, n); break;
    }
}

static void run_encode(int kind, int w, const uint8_t *x, const uint8_t *b, const uint8_t *b2,
                       uint8_t *out, Py_ssize_t n) {
    switch (w) {
    case 1: encode1(kind, x, b, b2, out, n); break;
    case 2: encode2(kind, x, b, b2, out, n); break;
    case 4: encode4(kind, x, b, b2, out, n); break;
    case 8: encode8(kind, x, b, b2, out, n); break;
    }
}

/* -- argument handling ------------------------------------------------------------------- */
static int bases_needed(int kind) {
    return kind == KIND_KEY ? 0 : kind == KIND_SUB2 ? 2 : 1;
}

static int check_kind_width(int kind, int w) {
    if (kind < KIND_KEY || kind > KIND_SUB2) {
        PyErr_Format(PyExc_ValueError, "unknown transform kind %d", kind);
        return -1;
    }
    if (w != 1 && w != 2 && w != 4 && w != 8) {
        PyErr_Format(PyExc_ValueError, "unsupported element width %d", w);
        return -1;
    }
    return 0;
}

/* Get the base buffers a kind needs, each exactly `len` bytes; NULL for the others. */
static int get_bases(int kind, PyObject *base, PyObject *base2, Py_buffer *vb, Py_buffer *vb2,
                     Py_ssize_t len, int *held) {
    *held = 0;
    int need = bases_needed(kind);
    PyObject *objs[2] = {base, base2};
    Py_buffer *views[2] = {vb, vb2};
    for (int k = 0; k < need; k++) {
        if (objs[k] == Py_None) {
            PyErr_Format(PyExc_ValueError, "this transform needs %d base block(s)", need);
            return -1;
        }
        if (PyObject_GetBuffer(objs[k], views[k], PyBUF_SIMPLE) < 0) return -1;
        (*held)++;
        if (views[k]->len != len) {
            PyErr_Format(PyExc_ValueError, "base block holds %zd bytes, expected %zd",
                         views[k]->len, len);
            return -1;
        }
    }
    return 0;
}

static void release(Py_buffer *views, int count) {
    for (int k = 0; k < count; k++) PyBuffer_Release(&views[k]);
}

PyDoc_STRVAR(encode_doc,
"encode(kind, width, data, base, base2, out)\n--\n\n"
"Apply transform ``kind`` to ``data`` (n*width bytes) against ``base`` (and ``base2``) and\n"
"write the result as ``width`` consecutive byte planes of n bytes into ``out`` (writable,\n"
"n*width bytes). Runs without the GIL.");

static PyObject *k_encode(PyObject *self, PyObject *args) {
    int kind, w;
    PyObject *data, *base, *base2, *out;
    if (!PyArg_ParseTuple(args, "iiOOOO", &kind, &w, &data, &base, &base2, &out)) return NULL;
    if (check_kind_width(kind, w) < 0) return NULL;
    Py_buffer xv, ov, bases[2];
    int held_bases = 0;
    if (PyObject_GetBuffer(data, &xv, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(out, &ov, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&xv);
        return NULL;
    }
    PyObject *result = NULL;
    if (xv.len % w != 0) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not a whole number of %d-byte elements",
                     xv.len, w);
        goto done;
    }
    if (ov.len != xv.len) {
        PyErr_Format(PyExc_ValueError, "output holds %zd bytes, expected %zd", ov.len, xv.len);
        goto done;
    }
    if (get_bases(kind, base, base2, &bases[0], &bases[1], xv.len, &held_bases) < 0) goto done;
    {
        const uint8_t *b = held_bases > 0 ? (const uint8_t *)bases[0].buf : NULL;
        const uint8_t *b2 = held_bases > 1 ? (const uint8_t *)bases[1].buf : NULL;
        Py_BEGIN_ALLOW_THREADS
        run_encode(kind, w, (const uint8_t *)xv.buf, b, b2, (uint8_t *)ov.buf, xv.len / w);
        Py_END_ALLOW_THREADS
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    release(bases, held_bases);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&xv);
    return result;
}

/* -- chain(): a whole delta chain in one call -------------------------------------------- */
#define CHAIN_PAD 1600       /* 25 cache lines: 200 bytes between planes, 1600 between levels */

/* Planes and levels are laid out CHAIN_PAD bytes apart beyond their lengths: streams a power of
 * two apart (planes of 1 MiB, blocks of 4 MiB) would all fall into the same cache sets, and the
 * merge reads 4 planes and a base while writing the output. The planes come first, then up to
 * three intermediate levels (a second-order level reads the two below it); -1 for a size that
 * does not fit in memory. */
static Py_ssize_t chain_stride(Py_ssize_t raw_len) { return (raw_len + 63) / 64 * 64 + CHAIN_PAD; }

static Py_ssize_t chain_scratch(Py_ssize_t raw_len, Py_ssize_t levels) {
    Py_ssize_t ring = levels - 1 < 3 ? levels - 1 : 3;
    if (raw_len < 0 || levels < 1 || raw_len > PY_SSIZE_T_MAX / 8) return -1;
    return (1 + ring) * chain_stride(raw_len);
}

PyDoc_STRVAR(scratch_size_doc,
"scratch_size(raw_len, levels)\n--\n\n"
"The bytes of scratch ``chain`` needs for ``levels`` blocks of ``raw_len`` bytes.");

static PyObject *k_scratch_size(PyObject *self, PyObject *args) {
    Py_ssize_t raw_len, levels;
    if (!PyArg_ParseTuple(args, "nn", &raw_len, &levels)) return NULL;
    Py_ssize_t need = chain_scratch(raw_len, levels);
    if (need < 0) {
        PyErr_Format(PyExc_ValueError, "no scratch for %zd levels of %zd bytes", levels, raw_len);
        return NULL;
    }
    return PyLong_FromSsize_t(need);
}
typedef struct {
    int kind, w;
    int mode[MAX_WIDTH];        /* 0 raw, 1 zstd */
    Py_buffer pv[MAX_WIDTH];
    int held;                   /* planes whose buffer is held */
} Level;

static void release_levels(Level *lv, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) release(lv[i].pv, lv[i].held);
}

/* One level from its tuple (kind, width, ((mode, buffer), ...)); -1 with an exception set. */
static int parse_level(PyObject *item, Level *lv, Py_ssize_t i, Py_ssize_t raw_len) {
    PyObject *planes;
    lv->held = 0;
    if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "iiO", &lv->kind, &lv->w, &planes)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "level %zd is not a (kind, width, planes) tuple", i);
        return -1;
    }
    if (check_kind_width(lv->kind, lv->w) < 0) return -1;
    if (i > 0 && lv->kind == KIND_KEY) {
        PyErr_Format(PyExc_ValueError, "level %zd is a keyframe above the chain's bottom", i);
        return -1;
    }
    if (raw_len % lv->w) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not a whole number of %d-byte elements",
                     raw_len, lv->w);
        return -1;
    }
    PyObject *seq = PySequence_Fast(planes, "planes must be a sequence of (mode, buffer)");
    if (!seq) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != lv->w) {
        PyErr_Format(PyExc_ValueError, "level %zd: %zd planes given for width %d", i,
                     PySequence_Fast_GET_SIZE(seq), lv->w);
        Py_DECREF(seq);
        return -1;
    }
    Py_ssize_t n = raw_len / lv->w;
    for (int j = 0; j < lv->w; j++) {
        PyObject *pj = PySequence_Fast_GET_ITEM(seq, j);
        if (!PyTuple_Check(pj) || !PyArg_ParseTuple(pj, "iy*", &lv->mode[j], &lv->pv[j])) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "level %zd plane %d is not (mode, buffer)", i, j);
            Py_DECREF(seq);
            return -1;
        }
        lv->held++;
        if (lv->mode[j] != 0 && lv->mode[j] != 1) {
            PyErr_Format(PyExc_ValueError, "level %zd plane %d has unknown mode %d", i, j,
                         lv->mode[j]);
            Py_DECREF(seq);
            return -1;
        }
        if (lv->mode[j] == 0 && lv->pv[j].len != n) {
            PyErr_Format(PyExc_ValueError, "level %zd raw plane %d holds %zd bytes, expected %zd",
                         i, j, lv->pv[j].len, n);
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

PyDoc_STRVAR(chain_doc,
"chain(levels, base, base2, out, scratch)\n--\n\n"
"Decode a chain of blocks in one call, bottom level first, into ``out`` (writable, the raw\n"
"length of every level). A level is ``(kind, width, planes)``, each plane ``(mode, buffer)``:\n"
"mode 0 the plane's bytes, mode 1 a zstd frame of them. The bottom level undoes ``kind``\n"
"against ``base`` (and ``base2``), or is a keyframe; every level above undoes its own against\n"
"the level below (a second-order level: the two below, the bottom's ``base`` being the\n"
"second for the level above the bottom). Intermediate levels live in ``scratch`` (writable,\n"
"at least ``scratch_size(raw_len, len(levels))`` bytes; planes are decompressed there too),\n"
"so nothing is allocated per level; ``out`` must not overlap the others. zstd and the\n"
"plane merges run without the GIL; ValueError names the level and plane of a bad frame.");

static PyObject *k_chain(PyObject *self, PyObject *args) {
    PyObject *levels, *base, *base2, *out, *scratch;
    if (!PyArg_ParseTuple(args, "OOOOO", &levels, &base, &base2, &out, &scratch)) return NULL;
    PyObject *seq = PySequence_Fast(levels, "levels must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t L = PySequence_Fast_GET_SIZE(seq);
    if (L < 1 || L > 64) {
        PyErr_Format(PyExc_ValueError, "a chain of %zd levels (1 to 64)", L);
        Py_DECREF(seq);
        return NULL;
    }
    Py_buffer ov, sv, bases[2];
    int held_out = 0, held_scratch = 0, held_bases = 0;
    Py_ssize_t parsed = 0;
    PyObject *result = NULL;
    Level *lv = PyMem_Calloc((size_t)L, sizeof(Level));
    if (!lv) {
        PyErr_NoMemory();
        goto done;
    }
    if (PyObject_GetBuffer(out, &ov, PyBUF_WRITABLE) < 0) goto done;
    held_out = 1;
    Py_ssize_t raw_len = ov.len;
    for (Py_ssize_t i = 0; i < L; i++) {
        int rc = parse_level(PySequence_Fast_GET_ITEM(seq, i), &lv[i], i, raw_len);
        parsed = i + 1;
        if (rc < 0) goto done;
    }
    {
        /* the bottom's bases; a second-order level above a keyframe bottom needs ``base``
         * (the version below the keyframe) as its second */
        int need = bases_needed(lv[0].kind);
        if (need < 1 && L > 1 && lv[1].kind == KIND_SUB2) need = 1;
        if (get_bases(need == 2 ? KIND_SUB2 : need == 1 ? KIND_SUB : KIND_KEY, base, base2,
                      &bases[0], &bases[1], raw_len, &held_bases) < 0)
            goto done;
    }
    Py_ssize_t ring = L - 1 < 3 ? L - 1 : 3;
    if (PyObject_GetBuffer(scratch, &sv, PyBUF_WRITABLE) < 0) goto done;
    held_scratch = 1;
    Py_ssize_t stride = chain_stride(raw_len), need = chain_scratch(raw_len, L);
    if (need < 0 || sv.len < need) {
        PyErr_Format(PyExc_ValueError, "scratch holds %zd bytes, %zd are needed", sv.len, need);
        goto done;
    }
    {
        uint8_t *planes_at = (uint8_t *)sv.buf;
        uint8_t *rbuf[3] = {NULL, NULL, NULL};
        for (Py_ssize_t r = 0; r < ring; r++) rbuf[r] = planes_at + (r + 1) * stride;
        const uint8_t *b0 = held_bases > 0 ? (const uint8_t *)bases[0].buf : NULL;
        const uint8_t *b1 = held_bases > 1 ? (const uint8_t *)bases[1].buf : NULL;
        const char *zerr = NULL;
        Py_ssize_t bad_level = -1, got = 0;
        int bad_plane = -1, nomem = 0;
        Py_BEGIN_ALLOW_THREADS
        ZSTD_DCtx *dctx = ZSTD_createDCtx();
        if (!dctx) nomem = 1;
        for (Py_ssize_t i = 0; dctx && i < L && bad_level < 0; i++) {
            int w = lv[i].w;
            Py_ssize_t n = raw_len / w;
            const uint8_t *pl[MAX_WIDTH];
            for (int j = 0; j < w; j++) {
                if (lv[i].mode[j] == 0) {
                    pl[j] = (const uint8_t *)lv[i].pv[j].buf;
                    continue;
                }
                uint8_t *dst = planes_at + (Py_ssize_t)j * (n + CHAIN_PAD / MAX_WIDTH);
                size_t r = ZSTD_decompressDCtx(dctx, dst, (size_t)n, lv[i].pv[j].buf,
                                               (size_t)lv[i].pv[j].len);
                if (ZSTD_isError(r) || (Py_ssize_t)r != n) {
                    zerr = ZSTD_isError(r) ? ZSTD_getErrorName(r) : NULL;
                    got = ZSTD_isError(r) ? 0 : (Py_ssize_t)r;
                    bad_level = i;
                    bad_plane = j;
                    break;
                }
                pl[j] = dst;
            }
            if (bad_level >= 0) break;
            const uint8_t *b = i == 0 ? b0 : rbuf[(i - 1) % 3];
            const uint8_t *b2 = i == 0 ? b1 : i == 1 ? b0 : rbuf[(i - 2) % 3];
            uint8_t *dst = i == L - 1 ? (uint8_t *)ov.buf : rbuf[i % 3];
            run_decode(lv[i].kind, w, pl, b, b2, dst, n);
        }
        ZSTD_freeDCtx(dctx);
        Py_END_ALLOW_THREADS
        if (nomem) {
            PyErr_NoMemory();
            goto done;
        }
        if (bad_level >= 0) {
            if (zerr)
                PyErr_Format(PyExc_ValueError, "zstd: level %zd plane %d: %s", bad_level,
                             bad_plane, zerr);
            else
                PyErr_Format(PyExc_ValueError, "level %zd plane %d holds %zd bytes, expected %zd",
                             bad_level, bad_plane, got, raw_len / lv[bad_level].w);
            goto done;
        }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (lv) {
        release_levels(lv, parsed);
        PyMem_Free(lv);
    }
    release(bases, held_bases);
    if (held_scratch) PyBuffer_Release(&sv);
    if (held_out) PyBuffer_Release(&ov);
    Py_DECREF(seq);
    return result;
}

/* Builder: a bytes object filled piece by piece before anyone sees it, so a read that spans
 * several decoded blocks is copied once into the bytes it returns (numpy's buffer and then
 * tobytes() was two copies). The bytes object stays private to the builder until take(). */
typedef struct {
    PyObject_HEAD
    PyObject *bytes;    /* NULL once taken */
    Py_ssize_t size;
    Py_ssize_t filled;  /* bytes put so far (pieces never overlap) */
} Builder;

static int Builder_init(Builder *self, PyObject *args, PyObject *kwds) {
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return -1;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "a negative size");
        return -1;
    }
    Py_CLEAR(self->bytes);
    self->bytes = PyBytes_FromStringAndSize(NULL, n);
    if (!self->bytes) return -1;
    self->size = n;
    self->filled = 0;
    return 0;
}

static void Builder_dealloc(Builder *self) {
    Py_XDECREF(self->bytes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(put_doc,
"put(at, src)\n--\n\n"
"Copy the buffer ``src`` into the bytes being built, from offset ``at``. Raises ValueError\n"
"where it would not fit; the copy runs without the GIL.");

static PyObject *Builder_put(Builder *self, PyObject *args) {
    Py_ssize_t at;
    Py_buffer src;
    if (!PyArg_ParseTuple(args, "ny*", &at, &src)) return NULL;
    if (!self->bytes) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "the bytes were already taken");
        return NULL;
    }
    if (at < 0 || at > self->size || src.len > self->size - at) {
        PyErr_Format(PyExc_ValueError, "%zd bytes at %zd do not fit in %zd", src.len, at,
                     self->size);
        PyBuffer_Release(&src);
        return NULL;
    }
    PyObject *keep = self->bytes;       /* alive while the GIL is released */
    Py_INCREF(keep);
    char *dst = PyBytes_AS_STRING(keep) + at;
    Py_BEGIN_ALLOW_THREADS
    memcpy(dst, src.buf, (size_t)src.len);
    Py_END_ALLOW_THREADS
    Py_DECREF(keep);
    self->filled += src.len;
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(take_doc,
"take()\n--\n\n"
"The bytes built (once); ValueError unless pieces of ``size`` bytes in all were put\n"
"(never uninitialized memory).");

static PyObject *Builder_take(Builder *self, PyObject *unused) {
    if (!self->bytes) {
        PyErr_SetString(PyExc_ValueError, "the bytes were already taken");
        return NULL;
    }
    if (self->filled != self->size) {
        PyErr_Format(PyExc_ValueError, "%zd of %zd bytes were put", self->filled, self->size);
        return NULL;
    }
    PyObject *b = self->bytes;
    self->bytes = NULL;
    return b;
}

static PyMethodDef Builder_methods[] = {
    {"put", (PyCFunction)Builder_put, METH_VARARGS, put_doc},
    {"take", (PyCFunction)Builder_take, METH_NOARGS, take_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "corafs.codecs._kernels.Builder",
    .tp_basicsize = sizeof(Builder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Builder(size): a bytes object of size bytes, filled by put(), "
                        "returned by take()"),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Builder_init,
    .tp_dealloc = (destructor)Builder_dealloc,
    .tp_methods = Builder_methods,
};

static PyMethodDef methods[] = {
    {"encode", k_encode, METH_VARARGS, encode_doc},
    {"chain", k_chain, METH_VARARGS, chain_doc},
    {"scratch_size", k_scratch_size, METH_VARARGS, scratch_size_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "corafs.codecs._kernels",
    "corafs's compiled codec kernels (fused byte planes + bit-exact delta transforms).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    if (PyType_Ready(&BuilderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&BuilderType);
    if (PyModule_AddObject(m, "Builder", (PyObject *)&BuilderType) < 0) {
        Py_DECREF(&BuilderType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "KEY", KIND_KEY) < 0 ||
        PyModule_AddIntConstant(m, "XOR", KIND_XOR) < 0 ||
        PyModule_AddIntConstant(m, "SUB", KIND_SUB) < 0 ||
        PyModule_AddIntConstant(m, "SUB2", KIND_SUB2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
