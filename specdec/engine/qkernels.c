/* specdec's CPU kernels for quantized models: a weight-only quantized GEMM and, around it, the rest of
 * a Llama-family decoder layer (RMSNorm, RoPE, the KV-cache write, attention, SiLU gating), so that one
 * call runs every layer of a forward (specdec/engine/qkernels.py binds them; lean_numpy.py drives them).
 *
 * The GEMM: y[m, n] (+)= sum_k x[m, k] * W[n, k].
 *
 * W is stored as llama.cpp / GGUF blocks of 32 weights along k (row n = K/32 consecutive blocks):
 *   Q4_1 (20 bytes): fp16 d, fp16 m, 16 bytes of nibbles; byte j holds element j (low nibble) and
 *                    element j + 16 (high nibble); w = d * q + m.
 *   Q8_0 (34 bytes): fp16 d, 32 int8; w = d * q.
 * x and y are float32. Each block is decoded to float32 once per group of rows (tile) and used for
 * every row of the tile.
 *
 * Exactness (what the engine relies on):
 *  - The weights are exactly the fp32 weights a dequantizer produces: d * q is exact in float32 (an
 *    11-bit by at most 8-bit product), so fma(q, d, m) == d * q + m rounded once, as gguf's NumPy
 *    dequantizer (and so transformers) computes it.
 *  - Every output element is summed in ONE fixed order whatever M, the tile or the code path: an
 *    8-lane accumulator, lane l taking k = 32 b + 8 g + l for blocks b then groups g in order (fused
 *    multiply-adds), then the lanes added in the fixed tree of hsum8(). So a row's result does not
 *    depend on the other rows or on how many rows share the call, bit for bit; the portable C path
 *    below mirrors the AVX2 path operation for operation (fmaf), so both give the same bits.
 * Build: -O3 [-march=native] -ffp-contract=off (no compiler-chosen contractions; every fusion here is
 * an explicit fma). QGEMM_PORTABLE forces the portable path (tests compare the two).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(QGEMM_PORTABLE)
#define QGEMM_AVX2 1
#include <immintrin.h>
#else
#define QGEMM_AVX2 0
#endif

#define QK 32
#define Q4_1_BYTES 20
#define Q8_0_BYTES 34
#define KIND_Q4_1 0
#define KIND_Q8_0 1
#define ABI_VERSION 8
/* rows a float-activation tile computes at once (see ALL_TILES): 8 with AVX-512's pairs, else 5 */
/* AVX-512 F + DQ: 8-lane vectors two to a 512-bit register (the float GEMM's column pairs, the attention):
 * the same lanes, sums and order as the AVX2 code, so the same bits (tested against the portable build) */
#if QGEMM_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
#define QGEMM_AVX512 1
#else
#define QGEMM_AVX512 0
#endif

#if QGEMM_AVX512
#define MAX_TILE_ROWS 8
#else
#define MAX_TILE_ROWS 5
#endif

int qgemm_abi_version(void) { return ABI_VERSION; }
int qgemm_simd(void) { return QGEMM_AVX2 ? 8 : 0; }   /* lanes of the vector path, 0 = portable */
/* the Q8-activation GEMM's byte dot products: 2 vpdpbusd (AVX512-VNNI), 1 maddubs + madd, 0 portable */
int qgemm_int_dot(void) {
#if QGEMM_AVX2 && defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return 2;
#else
    return QGEMM_AVX2 ? 1 : 0;
#endif
}

static float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0 && man == 0) {
        bits = sign;
    } else if (exp == 0) {            /* subnormal: normalise */
        int shifts = 0;
        while (!(man & 0x400u)) { man <<= 1; shifts++; }
        bits = sign | ((uint32_t)(113 - shifts) << 23) | ((man & 0x3ffu) << 13);
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float -> IEEE half, round to nearest even (what F16C's vcvtps2ph computes with _MM_FROUND_TO_NEAREST_INT,
 * bit for bit, NumPy's astype(float16) too): overflow to inf, subnormals rounded, NaN kept quiet */
static uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, e = (x >> 23) & 0xffu;
    uint32_t m = x & 0x7fffffu;
    if (e == 0xffu) return (uint16_t)(sign | 0x7c00u | (m ? 0x200u | (m >> 13) : 0));
    const int32_t he = (int32_t)e - 112;            /* the half's biased exponent */
    if (he >= 31) return (uint16_t)(sign | 0x7c00u);
    if (he <= 0) {                                  /* a half subnormal (or zero): m_h = value / 2^-24 */
        if (he < -10) return (uint16_t)sign;        /* below 2^-25: rounds to zero */
        m |= 0x800000u;
        const int shift = 14 - he;
        uint32_t hm = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (hm & 1u))) hm++;
        return (uint16_t)(sign | hm);               /* hm may carry to 0x400: the smallest normal */
    }
    const uint32_t hm = m >> 13, rem = m & 0x1fffu;
    uint32_t h = sign | ((uint32_t)he << 10) | hm;
    if (rem > 0x1000u || (rem == 0x1000u && (hm & 1u))) h++;   /* a carry runs into the exponent: 0x7bff -> inf */
    return (uint16_t)h;
}

/* n floats -> halves (the float16 KV cache's write). portable: the scalar conversion on any build */
static void store_f16(uint16_t *dst, const float *src, int64_t n, int portable) {
    int64_t i = 0;
#if QGEMM_AVX2
    if (!portable)
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(dst + i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    (void)portable;
    for (; i < n; i++) dst[i] = float_to_half(src[i]);
}

/* for the tests: store_f16 on either path */
int f32_to_f16(const float *src, uint16_t *dst, int64_t n, int portable) {
    store_f16(dst, src, n, portable);
    return 0;
}

/* ---- the order-defining pieces, portable form: acc[l] over k = 32 b + 8 g + l, then hsum8 ---- */

static inline float hsum8_scalar(const float a[8]) {
    /* ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)): the AVX2 tree below */
    float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

static inline void decode_scalar(int kind, const uint8_t *blk, float w[QK]) {
    if (kind == KIND_Q4_1) {
        float d = half_to_float(blk), m = half_to_float(blk + 2);
        for (int j = 0; j < 16; j++) {
            w[j] = fmaf((float)(blk[4 + j] & 15), d, m);
            w[j + 16] = fmaf((float)(blk[4 + j] >> 4), d, m);
        }
    } else {
        float d = half_to_float(blk);
        for (int j = 0; j < QK; j++) w[j] = (float)(int8_t)blk[2 + j] * d;
    }
}

static void gemm_scalar(int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw,
                        float *y, int64_t ldy, int64_t M, int64_t N, int64_t K, int accumulate) {
    const int64_t nb = K / QK, bs = kind == KIND_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES;
    float wf[QK];
    for (int64_t n = 0; n < N; n++) {
        for (int64_t m = 0; m < M; m++) {
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            const float *xr = x + m * ldx;
            for (int64_t b = 0; b < nb; b++) {
                decode_scalar(kind, w + n * ldw + b * bs, wf);
                for (int g = 0; g < 4; g++)
                    for (int l = 0; l < 8; l++)
                        acc[l] = fmaf(wf[8 * g + l], xr[b * QK + 8 * g + l], acc[l]);
            }
            float s = hsum8_scalar(acc);
            y[m * ldy + n] = accumulate ? y[m * ldy + n] + s : s;
        }
    }
}

#if QGEMM_AVX2
/* ---- AVX2 + FMA: the same operations, 8 lanes at a time ---- */
/* x from here on in a register, not a memory operand. gcc folds a vector that several queries multiply
 * into each multiply as a load of its own (3 loads of each V vector and each transposed K row for 3
 * queries), and Zen 4 loads one 512-bit vector a cycle, so P V and the transposed scores waited on loads
 * and, past L1, on L2 (bench/RESULTS.md, "A new VM (Zen 4), and a vector loaded once for the queries
 * that share it"). */
#define KEEP_IN_REGISTER(x) __asm__("" : "+v"(x))

/* the rows of the next chunk when `left` rows remain, chunks of at most R: R, and the last two balanced
 * (R + 1 .. 2R - 1 rows split in halves, 6 = 3 + 3 at R = 5), so no chunk is a thin tile */
static inline int64_t chunk_rows(int64_t left, int64_t R) {
    return left <= R ? left : (left < 2 * R ? (left + 1) / 2 : R);
}

static inline float hsum8(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); /* l, l+4 */
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                       /* (0+4)+(2+6), (1+5)+(3+7) */
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

static inline __m256 bcast_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm256_set1_ps(_cvtsh_ss(h));
}

/* the n <= 4 halves at p as the low floats of a vector: one conversion for a block's scales (each half
 * converted on its own took a load, a conversion and a broadcast apiece: a third of a pair's decoding) */
static inline __m128 halves(const uint8_t *p, int n) {
    uint64_t h = 0;
    memcpy(&h, p, 2 * n);
    return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)h));
}

static inline __attribute__((always_inline)) void decode_q4_1(const uint8_t *blk, __m256 w[4]) {
    const __m256 dm = _mm256_castps128_ps256(halves(blk, 2));   /* d, m */
    const __m256 d = _mm256_permutevar8x32_ps(dm, _mm256_setzero_si256()), m = _mm256_permutevar8x32_ps(dm, _mm256_set1_epi32(1));
    const __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 4)));   /* bytes 0-7 */
    const __m256i hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 12)));  /* bytes 8-15 */
    const __m256i low4 = _mm256_set1_epi32(15);
    w[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(lo, low4)), d, m);   /* k 0-7 */
    w[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(hi, low4)), d, m);   /* k 8-15 */
    w[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(lo, 4)), d, m);     /* k 16-23 */
    w[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hi, 4)), d, m);     /* k 24-31 */
}

static inline __attribute__((always_inline)) void decode_q8_0(const uint8_t *blk, __m256 w[4]) {
    const __m256 d = bcast_half(blk);
    for (int g = 0; g < 4; g++)
        w[g] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                   _mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * g)))), d);
}

/* One MT x NT tile of outputs over all of K: MT * NT independent accumulators (enough chains to keep
 * both FMA pipes busy), each block of a column decoded once for the MT rows. MT, NT are constants at
 * every call site, so the loops unroll and the accumulators live in registers. */
static inline __attribute__((always_inline)) void tile(
        int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw, float *y, int64_t ldy,
        int64_t nb, const int MT, const int NT, int accumulate) {
    const int64_t bs = kind == KIND_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES;
    __m256 acc[MAX_TILE_ROWS][8];
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++)
#pragma GCC unroll 8
        for (int j = 0; j < NT; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
#pragma GCC unroll 8
        for (int j = 0; j < NT; j++) {
            __m256 wv[4];
            /* the next tile's blocks, one tile ahead: a tile's rows are short streams (360-960 bytes
             * for K = 576-1536) that the hardware prefetcher picks up too late (what it costs without:
             * bench/RESULTS.md, "Quantized CPU kernels") */
            _mm_prefetch((const char *)(w + (NT + j) * ldw + b * bs), _MM_HINT_T0);
            /* and four tiles ahead into L2: one tile of lead alone left 1-row calls waiting on memory
             * (bench/RESULTS.md, "Integer dot products on Q8 activations") */
            _mm_prefetch((const char *)(w + (4 * NT + j) * ldw + b * bs), _MM_HINT_T1);
            if (kind == KIND_Q4_1) decode_q4_1(w + j * ldw + b * bs, wv);
            else decode_q8_0(w + j * ldw + b * bs, wv);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++)
#pragma GCC unroll 8
                for (int i = 0; i < MT; i++)
                    acc[i][j] = _mm256_fmadd_ps(wv[g], _mm256_loadu_ps(x + i * ldx + b * QK + 8 * g), acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++)
#pragma GCC unroll 8
        for (int j = 0; j < NT; j++) {
            float s = hsum8(acc[i][j]);
            y[i * ldy + j] = accumulate ? y[i * ldy + j] + s : s;
        }
}

#if QGEMM_AVX512
/* AVX-512: two columns side by side in one 512-bit register (column c in the low 8 lanes, c + 1 in the
 * high 8): each block decoded and each product accumulated by the same per-lane operations as the 8-lane
 * tile above, so the same bits (tested against the portable build), at half the instructions. */
/* the scales of blocks b0 and b1, each over its 8 lanes: ONE conversion of their n halves (d, or d and m),
 * then a permute per scale (lanes 0-7: b0's half s, lanes 8-15: b1's) */
static inline __attribute__((always_inline)) __m512 scale2(__m128 h, int n, int s) {
    return _mm512_permutexvar_ps(_mm512_set_epi32(n + s, n + s, n + s, n + s, n + s, n + s, n + s, n + s,
                                                  s, s, s, s, s, s, s, s), _mm512_castps128_ps512(h));
}
static inline __m128 halves2(const uint8_t *b0, const uint8_t *b1, int n) {   /* b0's n halves, then b1's */
    uint32_t h0 = 0, h1 = 0;
    memcpy(&h0, b0, 2 * n);
    memcpy(&h1, b1, 2 * n);
    return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)(((uint64_t)h1 << (16 * n)) | h0)));
}

/* 8 bytes of block b0 at offset o (low lanes) and of block b1 (high lanes), widened to 16 int32 */
static inline __m512i bytes8x2(const uint8_t *b0, const uint8_t *b1, int o, int sign) {
    const __m128i v = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(b0 + o)),
                                         _mm_loadl_epi64((const __m128i *)(b1 + o)));
    return sign ? _mm512_cvtepi8_epi32(v) : _mm512_cvtepu8_epi32(v);
}

static inline __attribute__((always_inline)) void decode2(int kind, const uint8_t *b0, const uint8_t *b1, __m512 w[4]) {
    if (kind == KIND_Q4_1) {
        const __m128 h = halves2(b0, b1, 2);
        const __m512 d = scale2(h, 2, 0), m = scale2(h, 2, 1);
        const __m512i lo = bytes8x2(b0, b1, 4, 0), hi = bytes8x2(b0, b1, 12, 0), low4 = _mm512_set1_epi32(15);
        w[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(lo, low4)), d, m);
        w[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(hi, low4)), d, m);
        w[2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(lo, 4)), d, m);
        w[3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(hi, 4)), d, m);
    } else {
        const __m512 d = scale2(halves2(b0, b1, 1), 1, 0);
        for (int g = 0; g < 4; g++) w[g] = _mm512_mul_ps(_mm512_cvtepi32_ps(bytes8x2(b0, b1, 2 + 8 * g, 1)), d);
    }
}

/* MT rows x NP column pairs of sums out: each half's hsum8 into y (overwritten, or added to) */
static inline __attribute__((always_inline)) void store_pairs(__m512 acc[][4], float *y, int64_t ldy, const int MT,
                                                              const int NP, int accumulate) {
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NP; j++) {
            const float s0 = hsum8(_mm512_castps512_ps256(acc[i][j])), s1 = hsum8(_mm512_extractf32x8_ps(acc[i][j], 1));
            y[i * ldy + 2 * j] = accumulate ? y[i * ldy + 2 * j] + s0 : s0;
            y[i * ldy + 2 * j + 1] = accumulate ? y[i * ldy + 2 * j + 1] + s1 : s1;
        }
}

/* MT rows x NP column pairs (2 NP columns): as tile, two columns to a register */
static inline __attribute__((always_inline)) void tile2(
        int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw, float *y, int64_t ldy,
        int64_t nb, const int MT, const int NP, int accumulate) {
    const int64_t bs = kind == KIND_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES;
    __m512 acc[MAX_TILE_ROWS][4];
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NP; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512 wv[4][4];                          /* the block of every pair first, then the products */
#pragma GCC unroll 4
        for (int j = 0; j < NP; j++) {
            const uint8_t *c0 = w + 2 * j * ldw + b * bs, *c1 = c0 + ldw;
            /* the prefetches of tile, for both columns */
            _mm_prefetch((const char *)(c0 + 2 * NP * ldw), _MM_HINT_T0);
            _mm_prefetch((const char *)(c1 + 2 * NP * ldw), _MM_HINT_T0);
            _mm_prefetch((const char *)(c0 + 8 * NP * ldw), _MM_HINT_T1);
            _mm_prefetch((const char *)(c1 + 8 * NP * ldw), _MM_HINT_T1);
            decode2(kind, c0, c1, wv[j]);
        }
        /* each row's 8 inputs loaded once for the NP pairs and used at once: with the pairs' blocks decoded
         * one after another, the compiler kept every input of the block live across them and spilled the
         * accumulators of 8 rows to the stack (1.34x slower at 8 rows) */
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++)
#pragma GCC unroll 8
            for (int i = 0; i < MT; i++) {
                const __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + i * ldx + b * QK + 8 * g));
#pragma GCC unroll 4
                for (int j = 0; j < NP; j++) acc[i][j] = _mm512_fmadd_ps(wv[j][g], xv, acc[i][j]);
            }
    }
    store_pairs(acc, y, ldy, MT, NP, accumulate);
}

/* A prompt's GEMM (more than 2 MAX_TILE_ROWS rows: a prompt, or a batch's verify): the column block's blocks
 * decoded once into a panel (pair j of columns, block b: panel[(j nb + b) 4 + g], decode2's 4 registers)
 * that every chunk of rows then reads, where tile2 decoded them again for every 8 rows; and a row's 8
 * inputs loaded once for all the tile's pairs, where tile2 loaded them again for each. Tiles of PANEL_MT
 * rows x PANEL_NP pairs (24 accumulators, 6 inputs, 1 weight: 31 of the 32 registers). tile2p is tile2 on
 * a panel, with the same per-lane operations in the same order, so the bits are the same. Measured
 * (bench/RESULTS.md, "A prompt's GEMM on the default path"): SmolLM2's prompts 1.36-1.57x faster, the GEMM
 * at ~0.53 of the core's FMA ceiling (~0.34 before; 4 x 6 and 5 x 5 tiles read the same as 6 x 4); a
 * batch of 4 verifying 5-8 tokens a row 1.19-1.25x. It costs a panel of COLUMN_BLOCK / 2 x K / 32 x 256
 * bytes a call (147 KB at K = 1536, in L2). */
#define PANEL_MT 6
#define PANEL_NP 4
static void decode_panel(int kind, const uint8_t *w, int64_t ldw, int64_t pairs, int64_t nb, __m512 *panel) {
    const int64_t bs = kind == KIND_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES;
    for (int64_t j = 0; j < pairs; j++)
        for (int64_t b = 0; b < nb; b++)
            decode2(kind, w + 2 * j * ldw + b * bs, w + (2 * j + 1) * ldw + b * bs, panel + (j * nb + b) * 4);
}

static inline __attribute__((always_inline)) void tile2p(
        const float *x, int64_t ldx, const __m512 *panel, float *y, int64_t ldy, int64_t nb, const int MT,
        const int NP, int accumulate) {
    __m512 acc[MAX_TILE_ROWS][4];
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NP; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++)
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {             /* each row's 8 inputs loaded once for the NP pairs */
            __m512 xv[MAX_TILE_ROWS];
#pragma GCC unroll 8
            for (int i = 0; i < MT; i++) xv[i] = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + i * ldx + b * QK + 8 * g));
#pragma GCC unroll 4
            for (int j = 0; j < NP; j++) {
                const __m512 wv = panel[(j * nb + b) * 4 + g];
#pragma GCC unroll 8
                for (int i = 0; i < MT; i++) acc[i][j] = _mm512_fmadd_ps(wv, xv[i], acc[i][j]);
            }
        }
    store_pairs(acc, y, ldy, MT, NP, accumulate);
}

/* MT rows (a prompt's chunks: PANEL_MT, the last two balanced) x the panel's pairs, PANEL_NP at a time */
#define PANEL_ROWS(MT) static void panel_rows_##MT(const float *x, int64_t ldx, const __m512 *panel, int64_t pairs, \
        int64_t nb, float *y, int64_t ldy, int accumulate) {                                                 \
        int64_t j = 0;                                                                                       \
        for (; j + PANEL_NP <= pairs; j += PANEL_NP) tile2p(x, ldx, panel + j * nb * 4, y + 2 * j, ldy, nb, MT, PANEL_NP, accumulate); \
        for (; j < pairs; j++) tile2p(x, ldx, panel + j * nb * 4, y + 2 * j, ldy, nb, MT, 1, accumulate);     \
    }
PANEL_ROWS(1) PANEL_ROWS(2) PANEL_ROWS(3) PANEL_ROWS(4) PANEL_ROWS(5) PANEL_ROWS(6) PANEL_ROWS(7) PANEL_ROWS(8)
typedef void (*panel_fn)(const float *, int64_t, const __m512 *, int64_t, int64_t, float *, int64_t, int);
static const panel_fn PANEL_FNS[MAX_TILE_ROWS + 1] = {0, panel_rows_1, panel_rows_2, panel_rows_3, panel_rows_4,
                                                      panel_rows_5, panel_rows_6, panel_rows_7, panel_rows_8};

/* Columns [n0, n1) for MT rows: tiles of NT columns (two to a register: COLUMNS2), single columns at the end. */
#define COLUMNS2(KIND, MT, NT)                                                                         \
    static void columns_##KIND##_##MT(const float *x, int64_t ldx, const uint8_t *w, int64_t ldw,    \
                                      float *y, int64_t ldy, int64_t n0, int64_t n1, int64_t nb,     \
                                      int accumulate) {                                              \
        int64_t n = n0;                                                                              \
        for (; n + NT <= n1; n += NT) tile2(KIND, x, ldx, w + n * ldw, ldw, y + n, ldy, nb, MT, NT / 2, accumulate); \
        for (; n < n1; n++) tile(KIND, x, ldx, w + n * ldw, ldw, y + n, ldy, nb, MT, 1, accumulate);  \
    }
#endif
#define COLUMNS(KIND, MT, NT)                                                                          \
    static void columns_##KIND##_##MT(const float *x, int64_t ldx, const uint8_t *w, int64_t ldw,    \
                                      float *y, int64_t ldy, int64_t n0, int64_t n1, int64_t nb,     \
                                      int accumulate) {                                              \
        int64_t n = n0;                                                                              \
        for (; n + NT <= n1; n += NT) tile(KIND, x, ldx, w + n * ldw, ldw, y + n, ldy, nb, MT, NT, accumulate); \
        for (; n < n1; n++) tile(KIND, x, ldx, w + n * ldw, ldw, y + n, ldy, nb, MT, 1, accumulate);  \
    }
/* rows per tile -> columns per tile: 8-10 accumulators (at least 8 independent FMA chains to cover
 * the FMA latency on two pipes; at most 10 so that they, a block's decoded weights and the constants
 * fit AVX2's 16 registers). With AVX-512 (QGEMM_AVX512) every tile of 1-8 rows holds two columns a register
 * (4, 4, 3, 2, 2, then 2 registers a row: 8, 8, 6, 4 columns a tile; 8 rows x 2 = 16 of the 32 registers),
 * so a verify of up to 8 tokens decodes each block once. One row took the 8-lane tile while a pair's two
 * scales cost 14 instructions (0.92x its step with pairs then); with one conversion for both (scale2) the
 * pairs are the faster there too. */
#if QGEMM_AVX512
#define ALL_TILES(KIND) COLUMNS2(KIND, 1, 8) COLUMNS2(KIND, 2, 8) COLUMNS2(KIND, 3, 6) \
                        COLUMNS2(KIND, 4, 4) COLUMNS2(KIND, 5, 4) COLUMNS2(KIND, 6, 4) \
                        COLUMNS2(KIND, 7, 4) COLUMNS2(KIND, 8, 4)
#else
#define ALL_TILES(KIND) COLUMNS(KIND, 1, 8) COLUMNS(KIND, 2, 4) COLUMNS(KIND, 3, 3) \
                        COLUMNS(KIND, 4, 2) COLUMNS(KIND, 5, 2)
#endif
ALL_TILES(0)
ALL_TILES(1)

typedef void (*columns_fn)(const float *, int64_t, const uint8_t *, int64_t, float *, int64_t,
                           int64_t, int64_t, int64_t, int);
static const columns_fn COLUMN_FNS[2][MAX_TILE_ROWS + 1] = {
#if QGEMM_AVX512
    {0, columns_0_1, columns_0_2, columns_0_3, columns_0_4, columns_0_5, columns_0_6, columns_0_7, columns_0_8},
    {0, columns_1_1, columns_1_2, columns_1_3, columns_1_4, columns_1_5, columns_1_6, columns_1_7, columns_1_8},
#else
    {0, columns_0_1, columns_0_2, columns_0_3, columns_0_4, columns_0_5},
    {0, columns_1_1, columns_1_2, columns_1_3, columns_1_4, columns_1_5},
#endif
};

/* 24 columns (a multiple of every tile width) at a time, every row chunk over them while their blocks are in
 * L1: the weights stream from memory once per call whatever M. */
#define COLUMN_BLOCK 24

static void gemm_avx2(int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw,
                      float *y, int64_t ldy, int64_t M, int64_t N, int64_t K, int accumulate) {
    const int64_t nb = K / QK;
#if QGEMM_AVX512
    __m512 *panel = M > 2 * MAX_TILE_ROWS ? aligned_alloc(64, (COLUMN_BLOCK / 2) * nb * 4 * sizeof(__m512)) : 0;
    if (panel) {                                  /* a prompt: every chunk of rows from one decoded panel */
        for (int64_t n0 = 0; n0 < N; n0 += COLUMN_BLOCK) {
            const int64_t n1 = n0 + COLUMN_BLOCK < N ? n0 + COLUMN_BLOCK : N, pairs = (n1 - n0) / 2;
            decode_panel(kind, w + n0 * ldw, ldw, pairs, nb, panel);
            int64_t mt;
            for (int64_t m0 = 0; m0 < M; m0 += mt) {
                mt = chunk_rows(M - m0, PANEL_MT);
                PANEL_FNS[mt](x + m0 * ldx, ldx, panel, pairs, nb, y + m0 * ldy + n0, ldy, accumulate);
                if (n0 + 2 * pairs < n1)          /* an odd last column: the one-column tile */
                    COLUMN_FNS[kind][mt](x + m0 * ldx, ldx, w, ldw, y + m0 * ldy, ldy, n0 + 2 * pairs, n1, nb, accumulate);
            }
        }
        free(panel);
        return;
    }
#endif
    for (int64_t n0 = 0; n0 < N; n0 += COLUMN_BLOCK) {
        const int64_t n1 = n0 + COLUMN_BLOCK < N ? n0 + COLUMN_BLOCK : N;
        int64_t mt;
        for (int64_t m0 = 0; m0 < M; m0 += mt) {
            mt = chunk_rows(M - m0, MAX_TILE_ROWS);
            COLUMN_FNS[kind][mt](x + m0 * ldx, ldx, w, ldw, y + m0 * ldy, ldy, n0, n1, nb, accumulate);
        }
    }
}
#endif

/* The entry point. x: [M, K] float32 (row stride ldx floats); w: N rows of K/32 blocks (row stride
 * ldw bytes); y: [M, N] float32 (row stride ldy floats), overwritten or (accumulate) added to.
 * Returns 0, or -1 on a bad argument (the Python wrapper checks first; this is the last guard). */
int qgemm(int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw, float *y, int64_t ldy,
          int64_t M, int64_t N, int64_t K, int accumulate) {
    if ((kind != KIND_Q4_1 && kind != KIND_Q8_0) || K % QK || M < 0 || N < 0 || ldx < K || ldy < N)
        return -1;
#if QGEMM_AVX2
    gemm_avx2(kind, x, ldx, w, ldw, y, ldy, M, N, K, accumulate);
#else
    gemm_scalar(kind, x, ldx, w, ldw, y, ldy, M, N, K, accumulate);
#endif
    return 0;
}

/* The portable path on any build (tests compare it with the vector path bit for bit). */
int qgemm_portable(int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw, float *y,
                   int64_t ldy, int64_t M, int64_t N, int64_t K, int accumulate) {
    if ((kind != KIND_Q4_1 && kind != KIND_Q8_0) || K % QK || M < 0 || N < 0 || ldx < K || ldy < N)
        return -1;
    gemm_scalar(kind, x, ldx, w, ldw, y, ldy, M, N, K, accumulate);
    return 0;
}

/* ======================================================================================================
 * The integer-dot GEMM (opt-in: quantize "gguf-q8a" / "q8_0-q8a"): each activation row is rounded per
 * 32-value block to Q8 (q = nearbyint(x / dx), dx = max|x| / 127, fp32, from that row and block alone;
 * sx = dx * sum q, the Q8_1 sum for Q4_1's m term), each block's dot product runs in integers, then
 *   y[m, n] = hsum8(acc), lane l of acc taking the blocks b = 8 g + l, groups g in order:
 *     acc[l] = fma((float) isum_b, dw_b * dx_b, acc[l]),  isum_b = sum_{k<32} qw_b[k] qx_b[k]
 *     Q4_1 only: acc[l] = fma(mw_b, sx_b, acc[l])
 *   (a lane whose block lies past the end, b >= K/32, adds fma(0, 0, .) in both places).
 * One lane per block, so that a row pays per 8 blocks 8 vpdpbusd + 1 convert + 1 multiply + 1 FMA
 * (+1 FMA for Q4_1's m term); a lane per 4 bytes of one block (the weight-only GEMM's order) paid the
 * convert, multiply and FMA per block and row, which set the time of a 5-row verify (bench/RESULTS.md,
 * "One lane per block"). To get there the weights are stored transposed per group of 8 blocks (q8a_pack,
 * once at load: vector t = bytes 4t..4t+3 of each block), and each row's Q8 activations are
 * transposed the same way once per call.
 * isum_b is an exact integer (|isum_b| <= 32 * 128 * 127) whatever instructions sum it (vpdpbusd with
 * AVX512-VNNI, Q8_0 weights taken + 128 as unsigned and 128 times the block's sum of q taken off again;
 * else vpmaddubsw with the sign trick, then vpmaddwd), so the portable path gives the same bits, and a
 * row's result does not depend on the other rows or on how many share the call.
 * It is a different model from the weight-only one (activations rounded to 8 bits): it is opt-in.
 * ==================================================================================================== */

#define Q8A_GROUP 8                                  /* blocks per group: one per float lane */
/* xt's alignment in the scratch: the tile reads each row's slot as 32-byte vectors, and where the slots
 * straddled cache lines (K = 576: xt began 16 bytes past a line) every other load paid for two lines,
 * +18 % on a 5-row column (bench/RESULTS.md, "Rows side by side") */
#define Q8A_ALIGN 64
static int64_t q8a_groups(int64_t K) { return (K / QK + Q8A_GROUP - 1) / Q8A_GROUP; }

/* The layout the integer-dot GEMM reads its weights in (q8a_pack writes it once, at load; the same bytes
 * per row as GGUF's): a row's blocks in groups of 8, a group of r blocks (r = 8, or K/32 mod 8 for the
 * last) holding, lane l = block 8g + l:
 *   Q8_0: 8 vectors of 4r bytes, vector t = bytes 4t..4t+3 of each block's weights; then r fp16 d  (34 r)
 *   Q4_1: 4 vectors of 4r bytes, vector t = elements 4t..4t+3 of each block in the low nibbles and
 *         elements 4t+16..4t+19 in the high ones; then r fp16 d, then r fp16 m                        (20 r)
 * so that a full group loads as 8 transposed vectors and 8 scales without shuffles (a transpose per
 * column and call cost more than the single-row GEMM saved: bench/RESULTS.md, "One lane per block"). */
typedef struct { int64_t q, stride, d, m; } Q8aSpot;   /* byte offsets of a block's lane in its group */

static Q8aSpot q8a_spot(int kind, int64_t nb, int64_t b) {
    const int64_t g = b / Q8A_GROUP, l = b % Q8A_GROUP, r = nb - g * Q8A_GROUP < Q8A_GROUP ? nb - g * Q8A_GROUP : Q8A_GROUP;
    const int64_t at = g * Q8A_GROUP * (kind == KIND_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES);
    const int64_t qbytes = (kind == KIND_Q4_1 ? 16 : 32) * r;
    Q8aSpot s = {at + 4 * l, 4 * r, at + qbytes + 2 * l, at + qbytes + 2 * r + 2 * l};
    return s;
}

/* element k's byte in the packed layout, and (Q4_1) whether it is the high nibble */
static inline int64_t q8a_elem(int kind, Q8aSpot s, int k, int *high) {
    *high = kind == KIND_Q4_1 && k >= 16;
    const int t = kind == KIND_Q4_1 ? (k / 4) % 4 : k / 4;
    return s.q + t * s.stride + k % 4;
}

/* GGUF blocks [N rows, K/32 blocks] (row stride lds bytes) -> the packed layout (row stride ldd), or back
 * (unpack != 0: src packed, dst GGUF). Returns 0, or -1 on a bad argument. */
int q8a_pack(int kind, const uint8_t *src, int64_t lds, uint8_t *dst, int64_t ldd, int64_t N, int64_t K, int unpack) {
    if ((kind != KIND_Q4_1 && kind != KIND_Q8_0) || K % QK || N < 0) return -1;
    const int64_t nb = K / QK, bs = kind == KIND_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES;
    if (lds < nb * bs || ldd < nb * bs) return -1;
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *in = src + n * lds;
        uint8_t *out = dst + n * ldd;
        if (kind == KIND_Q4_1) memset(out, 0, nb * bs);              /* nibbles are or-ed in */
        for (int64_t b = 0; b < nb; b++) {
            const Q8aSpot s = q8a_spot(kind, nb, b);
            const int64_t nat = b * bs;                                /* the GGUF block */
            if (!unpack) {
                memcpy(out + s.d, in + nat, 2);
                if (kind == KIND_Q4_1) memcpy(out + s.m, in + nat + 2, 2);
            } else {
                memcpy(out + nat, in + s.d, 2);
                if (kind == KIND_Q4_1) memcpy(out + nat + 2, in + s.m, 2);
            }
            for (int k = 0; k < QK; k++) {
                int high;
                const int64_t at = q8a_elem(kind, s, k, &high);
                if (kind == KIND_Q8_0) {
                    if (!unpack) out[at] = in[nat + 2 + k];
                    else out[nat + 2 + k] = in[at];
                } else {
                    const int64_t gb = nat + 4 + k % 16;              /* GGUF: byte k mod 16, high for k >= 16 */
                    const int v = unpack ? (high ? in[at] >> 4 : in[at] & 15) : (k >= 16 ? in[gb] >> 4 : in[gb] & 15);
                    if (!unpack) out[at] |= (uint8_t)(high ? v << 4 : v);
                    else out[gb] |= (uint8_t)(k >= 16 ? v << 4 : v);
                }
            }
        }
    }
    return 0;
}

/* bytes of scratch qgemm_q8a needs for M rows of width K: qx [M, K] int8 and dx, sx [M, K/32] fp32 (as
 * quantize_rows_q8 writes them), then the vector path's transposed copy: xt [M, G, 8, 32] bytes and
 * dxp, sxp [M, 8 G] fp32 and xb [M, 8 G] int32, zeros past the last block (G = K/32 / 8 rounded up),
 * xt starting on the first 64-byte boundary after sx (Q8A_ALIGN bytes of slack) */
int64_t q8a_scratch_bytes(int64_t M, int64_t K) {
    const int64_t nb = K / QK, G = q8a_groups(K);
    return M * K + 2 * M * nb * (int64_t)sizeof(float) + Q8A_ALIGN + M * G * 8 * QK + 3 * M * G * 8 * (int64_t)sizeof(float);
}

/* x [M, K] -> qx [M, K] int8, dx, sx [M, K/32] (each row and block alone; one code for both paths) */
int quantize_rows_q8(const float *x, int64_t ldx, int64_t M, int64_t K, int8_t *qx, float *dx, float *sx) {
    const int64_t nb = K / QK;
    for (int64_t m = 0; m < M; m++)
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + m * ldx + b * QK;
            float amax = 0.0f;
            for (int j = 0; j < QK; j++) { const float a = fabsf(xb[j]); amax = a > amax ? a : amax; }
            const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            int s = 0;
            for (int j = 0; j < QK; j++) {
                const int v = (int)nearbyintf(xb[j] * id);    /* |v| <= 127: x * id <= 127 (+ ulps) */
                qx[m * K + b * QK + j] = (int8_t)v;
                s += v;
            }
            dx[m * nb + b] = d;
            sx[m * nb + b] = d * (float)s;
        }
    return 0;
}

static void gemm_q8a_scalar(int kind, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w,
                            int64_t ldw, float *y, int64_t ldy, int64_t M, int64_t N, int64_t K, int accumulate) {
    const int64_t nb = K / QK, G = q8a_groups(K);
    int qw[QK];
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++) {
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t g = 0; g < G; g++)
                for (int l = 0; l < Q8A_GROUP; l++) {
                    const int64_t b = g * Q8A_GROUP + l;
                    if (b >= nb) {                   /* past the end: what the vector path's zero lanes add */
                        acc[l] = fmaf(0.0f, 0.0f, acc[l]);
                        if (kind == KIND_Q4_1) acc[l] = fmaf(0.0f, 0.0f, acc[l]);
                        continue;
                    }
                    const uint8_t *col = w + n * ldw;
                    const int8_t *xq = qx + m * K + b * QK;
                    const Q8aSpot sp = q8a_spot(kind, nb, b);
                    for (int k = 0; k < QK; k++) {
                        int high;
                        const uint8_t v = col[q8a_elem(kind, sp, k, &high)];
                        qw[k] = kind == KIND_Q4_1 ? (high ? v >> 4 : v & 15) : (int8_t)v;
                    }
                    int is = 0;
                    for (int k = 0; k < QK; k++) is += qw[k] * xq[k];
                    acc[l] = fmaf((float)is, half_to_float(col + sp.d) * dx[m * nb + b], acc[l]);
                    if (kind == KIND_Q4_1) acc[l] = fmaf(half_to_float(col + sp.m), sx[m * nb + b], acc[l]);
                }
            const float s = hsum8_scalar(acc);
            y[m * ldy + n] = accumulate ? y[m * ldy + n] + s : s;
        }
}

#if QGEMM_AVX2
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define Q8A_VNNI 1
#else
#define Q8A_VNNI 0
#endif
/* rows per tile: its accumulators, a group's 8 transposed weight vectors and the temporaries fit the
 * 32 vector registers AVX512VL gives ymm code; AVX2's 16 hold fewer */
#if defined(__AVX512VL__)
#define Q8A_TILE_ROWS 8
#else
#define Q8A_TILE_ROWS 4
#endif

/* A last group of r = 1, 2 or 4 blocks is read densely: its 8 vectors of 4r bytes are r full vectors
 * (lane j of vector u: bytes 4t..4t+3 of block l, 8u + j = t r + l), r dot products instead of 8, then
 * the lanes j = l mod r added (integers: exact). SmolLM2's width 576 is 18 blocks: 2 groups and r = 2. */
static inline int dense_tail(int64_t r) { return r == 1 || r == 2 || r == 4; }

/* the rows' Q8 activations as the tile reads them, per row and group a 256-byte slot: xt[m][g] holds
 * vector t = bytes 4t..4t+3 of blocks 8g .. 8g+7 (lane l: block 8g+l), zeros past the last block; a
 * dense last group (dense_tail) holds the packed weights' order instead: byte 4 r t + 4 l + j = byte
 * 4t + j of block l. dxp / sxp: the blocks' scales in the same lanes (zero past the last block); xb:
 * -128 times the sum of each block's q, what the VNNI tile takes off after multiplying Q8_0 weights
 * + 128 (vpdpbusd multiplies unsigned by signed bytes: sum (w + 128) q = sum w q + 128 sum q, exactly).
 * Written by quantize_rows_q8's rounding, 8 lanes at a time: the same values (amax by max, exact in any
 * order and skipping NaN as the scalar compare does; d = amax / 127 and its inverse in scalar; q = x * id
 * rounded to nearest even, as nearbyintf in the default rounding mode; the block sum in integers), put
 * straight into the slots. Rounding, then transposing, in scalar C cost ~41 ns a block: ~0.6 ms of a
 * 5-token SmolLM2 verify (bench/RESULTS.md, "Rows side by side"). */
static void q8a_quantize_rows(const float *x, int64_t ldx, int64_t M, int64_t K, uint8_t *xt, float *dxp, float *sxp,
                              int32_t *xb) {
    const int64_t nb = K / QK, G = q8a_groups(K);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            const int64_t r = nb - g * Q8A_GROUP < Q8A_GROUP ? nb - g * Q8A_GROUP : Q8A_GROUP;
            const int dense = r < Q8A_GROUP && dense_tail(r);
            uint8_t *slot = xt + (m * G + g) * 8 * 32;
            const int64_t at = (m * G + g) * Q8A_GROUP;
            if (r < Q8A_GROUP) {
                memset(slot, 0, 8 * 32);
                for (int l = (int)r; l < Q8A_GROUP; l++) { xb[at + l] = 0; dxp[at + l] = sxp[at + l] = 0.0f; }
            }
            for (int l = 0; l < r; l++) {
                const float *xq = x + m * ldx + (g * Q8A_GROUP + l) * QK;
                __m256 v[4];
                __m256 amax = _mm256_setzero_ps();
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++) {
                    v[u] = _mm256_loadu_ps(xq + 8 * u);
                    amax = _mm256_max_ps(_mm256_andnot_ps(sign, v[u]), amax);     /* NaN: amax kept */
                }
                __m128 h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
                h = _mm_max_ps(h, _mm_movehl_ps(h, h));
                h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
                const float d = _mm_cvtss_f32(h) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
                const __m256 vid = _mm256_set1_ps(id);
                __m256i q[4];
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++)
                    q[u] = _mm256_cvttps_epi32(_mm256_round_ps(_mm256_mul_ps(v[u], vid),
                                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
                s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
                const int32_t sum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1))));
                /* the 32 values as bytes in order: packs interleave the 128-bit halves, the permute undoes it */
                const __m256i w16a = _mm256_packs_epi32(q[0], q[1]), w16b = _mm256_packs_epi32(q[2], q[3]);
                const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w16a, w16b),
                                                              _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                uint32_t words[8];
                _mm256_storeu_si256((__m256i *)words, b);
                for (int t = 0; t < 8; t++)                   /* bytes 4t..4t+3 of block l */
                    memcpy(slot + (dense ? 4 * r * t + 4 * l : 32 * t + 4 * l), &words[t], 4);
                xb[at + l] = -128 * sum;
                dxp[at + l] = d;
                sxp[at + l] = d * (float)sum;
            }
        }
}

/* the r < 8 fp16 scales that end at `end`, in the low lanes of a vector, zeros above: one 16-byte load
 * that ends there (at least 16 bytes of the group's weights lie before the scales) and a byte shuffle.
 * A copy through a stack array cost a store-forwarding stall, or for r unknown at compile time a call
 * to memcpy that spilled every vector register: a last group of 1-4 blocks cost more than a full one
 * (bench/RESULTS.md, "Where in the tile"). */
static inline __attribute__((always_inline)) __m128i load_halves(const uint8_t *end, int r) {
    const __m128i lane = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i from = _mm_add_epi8(lane, _mm_set1_epi8((char)(16 - 2 * r)));        /* byte i + 16 - 2r */
    const __m128i drop = _mm_andnot_si128(_mm_cmplt_epi8(lane, _mm_set1_epi8((char)(2 * r))),
                                          _mm_set1_epi8((char)0x80));                       /* i >= 2r: zero */
    return _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(end - 16)), _mm_or_si128(from, drop));
}

/* one group of a packed column, r blocks (r <= 8): into w, the vectors one row's dot products take,
 * and into dw / mw lane l block l's scale / minimum (zero for l >= r). Returns how many vectors:
 * 8 (w[t] lane l = bytes 4t..4t+3 of block l; Q4_1: its nibbles as bytes; lanes >= r zero), or r for
 * a dense last group (dense_tail: w[u] lane j = bytes 4t..4t+3 of block l, 8u + j = t r + l) */
static inline __attribute__((always_inline)) int load_group(int kind, const uint8_t *p, const int r,
                                                            __m256i w[8], __m256 *dw, __m256 *mw) {
    const int qbytes = (kind == KIND_Q4_1 ? 16 : 32) * r;
    const __m256i low4 = _mm256_set1_epi8(15);
    int nv = 8;
    __m128i dh, mh = _mm_setzero_si128();
    if (r == Q8A_GROUP) {
        if (kind == KIND_Q4_1) {
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 32 * t));
                w[t] = _mm256_and_si256(v, low4);
                w[t + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
            }
            mh = _mm_loadu_si128((const __m128i *)(p + qbytes + 16));
        } else {
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) w[t] = _mm256_loadu_si256((const __m256i *)(p + 32 * t));
        }
        dh = _mm_loadu_si128((const __m128i *)(p + qbytes));
    } else {
        if (dense_tail(r)) {                          /* r vectors, in the order the rows' slots hold */
            nv = r;
            if (kind == KIND_Q8_0) {
                for (int u = 0; u < r; u++) w[u] = _mm256_loadu_si256((const __m256i *)(p + 32 * u));
            } else if (r == 1) {                      /* 16 bytes: elements 0-15 low, 16-31 high */
                const __m128i t = _mm_loadu_si128((const __m128i *)p);
                w[0] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), low4);
            } else {                                  /* r / 2 vectors: low nibbles t < 4, high t >= 4 */
                for (int v = 0; v < r / 2; v++) {
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(p + 32 * v));
                    w[v] = _mm256_and_si256(x, low4);
                    w[r / 2 + v] = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
                }
            }
        } else {                                      /* 4r-byte vectors, lanes >= r masked off */
            const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            if (kind == KIND_Q4_1) {
                for (int t = 0; t < 4; t++) {
                    const __m256i v = _mm256_maskload_epi32((const int *)(p + 4 * r * t), mask);
                    w[t] = _mm256_and_si256(v, low4);
                    w[t + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                }
            } else {
                for (int t = 0; t < 8; t++) w[t] = _mm256_maskload_epi32((const int *)(p + 4 * r * t), mask);
            }
        }
        dh = load_halves(p + qbytes + 2 * r, r);
        if (kind == KIND_Q4_1) mh = load_halves(p + qbytes + 4 * r, r);
    }
    *dw = _mm256_cvtph_ps(dh);
    *mw = kind == KIND_Q4_1 ? _mm256_cvtph_ps(mh) : _mm256_setzero_ps();
    return nv;
}

/* the unsigned operands of a group's byte dot products, from its weights w: Q4_1 nibbles as they are;
 * Q8_0 w + 128 (VNNI: the sum of the activations times 128 comes off afterwards, xb) or |w| (AVX2: the
 * sign trick, the row's bytes taking w's sign; pairs of |w| x stay within maddubs' int16) */
static inline __attribute__((always_inline)) void unsigned_operands(int kind, const __m256i *w, const int nv, __m256i *aw) {
#pragma GCC unroll 8
    for (int u = 0; u < nv; u++)
        aw[u] = kind == KIND_Q4_1 ? w[u]
#if Q8A_VNNI
                                  : _mm256_xor_si256(w[u], _mm256_set1_epi8((char)0x80));
#else
                                  : _mm256_sign_epi8(w[u], w[u]);
#endif
}

/* one byte dot product of the group's operand aw (w: its signed weights) and the row's vector x, added
 * to s lane by lane (integers: exact in any order) */
static inline __attribute__((always_inline)) __m256i dot_add(int kind, __m256i s, __m256i w, __m256i aw, __m256i x) {
#if Q8A_VNNI
    (void)w;
    (void)kind;
    return _mm256_dpbusd_epi32(s, aw, x);
#else
    if (kind == KIND_Q8_0) x = _mm256_sign_epi8(x, w);                                    /* x * sign(w) */
    return _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(aw, x), _mm256_set1_epi16(1)));
#endif
}

/* independent sums per row: enough that the tile's MT * CHAINS(MT) chains cover vpdpbusd's latency at
 * its throughput (4 cycles x 2 per cycle on Zen 4: 8 in flight) */
#define CHAINS(MT) ((MT) == 1 ? 8 : (MT) == 2 ? 4 : (MT) <= 5 ? 2 : 1)
/* a dense last group's lane sums: lane l < r = sum of lanes j = l mod r, lanes >= r zero (r = 1, 2, 4) */
static inline __m256i fold_lanes(__m256i s, int r) {
    s = _mm256_add_epi32(s, _mm256_permute2x128_si256(s, s, 0x01));
    if (r <= 2) s = _mm256_add_epi32(s, _mm256_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    if (r == 1) s = _mm256_add_epi32(s, _mm256_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm256_and_si256(s, _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* the scratch a row's group reads: its slot of Q8 bytes and the offset of its lanes in dxp / sxp / xb */
typedef struct { const uint8_t *xt; const float *dxp, *sxp; const int32_t *xb; int64_t G; } Q8aRows;

/* acc += the group's block sums times their scales (+ Q4_1's m term), in the order the header defines */
static inline __attribute__((always_inline)) __m256 scale_add(int kind, __m256i is, __m256 dw, __m256 mw,
                                                              const Q8aRows *x, int64_t at, __m256 acc) {
#if Q8A_VNNI
    if (kind == KIND_Q8_0) is = _mm256_add_epi32(is, _mm256_loadu_si256((const __m256i *)(x->xb + at)));
#endif
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, _mm256_loadu_ps(x->dxp + at)), acc);
    if (kind == KIND_Q4_1) acc = _mm256_fmadd_ps(mw, _mm256_loadu_ps(x->sxp + at), acc);
    return acc;
}

/* one group (r blocks) of one column for the MT rows of the tile. The vector u of every row before
 * vector u + 1 of any: consecutive dot products then feed different sums, so the out-of-order window
 * need not hold a row's whole chain to keep the integer units busy. A 5-row group is bound by the two
 * pipes that run vpdpbusd, FMA and multiply alike (Zen 4): 40 dot products + 5 x 3 scale operations,
 * 27.5 cycles at best; it takes ~35 (row by row it took 0-7 % more: bench/RESULTS.md, "Rows side by
 * side"). */
static inline __attribute__((always_inline)) void group_q8a(int kind, const uint8_t *p, const int r,
                                                            const Q8aRows *x, int64_t g, const int MT, __m256 *acc) {
    __m256i w[8], aw[8];
    __m256 dw, mw;
    const int nv = load_group(kind, p, r, w, &dw, &mw), C = CHAINS(MT);
    unsigned_operands(kind, w, nv, aw);
    __m256i s[8][8];                                  /* [row][chain]: MT x C used */
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) s[i][c] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int u = 0; u < nv; u++)
#pragma GCC unroll 8
        for (int i = 0; i < MT; i++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(x->xt + (i * x->G + g) * 8 * 32 + 32 * u));
            s[i][u % C] = dot_add(kind, s[i][u % C], w[u], aw[u], xv);
        }
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++) {
#pragma GCC unroll 8
        for (int h = C / 2; h >= 1; h /= 2)           /* a tree: C is 1, 2, 4 or 8 */
#pragma GCC unroll 8
            for (int c = 0; c < h; c++) s[i][c] = _mm256_add_epi32(s[i][c], s[i][c + h]);
        __m256i is = s[i][0];
        if (nv < 8) is = fold_lanes(is, r);
        acc[i] = scale_add(kind, is, dw, mw, x, (i * x->G + g) * Q8A_GROUP, acc[i]);
    }
}

/* the columns 8 ahead into L1 and 32 ahead into L2 (a column: one row of W, ldw contiguous bytes): one
 * column of work is short, and the hardware prefetcher alone leaves a 1-row call waiting on memory */
static inline __attribute__((always_inline)) void prefetch_row(const uint8_t *col, int64_t ldw) {
    for (int64_t o = 0; o < ldw + 63; o += 64) {
        _mm_prefetch((const char *)(col + 8 * ldw + o), _MM_HINT_T0);
        _mm_prefetch((const char *)(col + 32 * ldw + o), _MM_HINT_T1);
    }
}

static inline __attribute__((always_inline)) void store_rows(const __m256 *acc, float *y, int64_t ldy, const int MT,
                                                             int accumulate) {
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++) {
        const float s = hsum8(acc[i]);
        y[i * ldy] = accumulate ? y[i * ldy] + s : s;
    }
}

/* MT rows x one column over all of K: the full groups, then the last group of RT blocks (RT = 0: none;
 * RT < 0: nb mod 8 blocks, not known when compiled) */
static inline __attribute__((always_inline)) void tile_q8a(
        int kind, const Q8aRows *x, int64_t nb, const uint8_t *w, int64_t ldw, float *y, int64_t ldy,
        const int MT, int accumulate, const int RT) {
    const int64_t bs = kind == KIND_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES, full = nb / Q8A_GROUP;
    __m256 acc[8];                                    /* MT <= 8 (every instance is compiled; R picks) */
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++) acc[i] = _mm256_setzero_ps();
    prefetch_row(w, ldw);
    for (int64_t g = 0; g < full; g++) group_q8a(kind, w + g * Q8A_GROUP * bs, Q8A_GROUP, x, g, MT, acc);
    if (RT) group_q8a(kind, w + full * Q8A_GROUP * bs, RT > 0 ? RT : (int)(nb - full * Q8A_GROUP), x, full, MT, acc);
    store_rows(acc, y, ldy, MT, accumulate);
}

#if Q8A_VNNI && defined(__AVX512F__)
/* Two columns at once in 512-bit registers (AVX512-VNNI machines): each 256-bit half runs exactly the
 * code above for one column (the same integer sums, the same float operations per lane in the same
 * order, so the same bits: tested against the portable path), and one zmm vpdpbusd does both columns'
 * dot products for a row, one zmm and / shift unpacks both columns' nibbles, and the row's activation
 * vector is broadcast to both halves by its load. Why: on the 2-core Xeon (AVX512-VNNI) a zmm vpdpbusd
 * issues about as often as a ymm one (a scratch loop: 239 -> 448 G int8 MACs/s), and a verify's rows
 * are compute-bound once the weights sit in the last-level cache. Measured (bench/RESULTS.md, "A draft
 * without a model"): SmolLM2's 5-token gguf-q8a step 12.2 -> 11.0 ms, its 1-token step unchanged; the
 * Q4_1 GEMMs 1.03-1.07x at 5 rows, 1.09-1.18x at 8, within +-5 % at 1-2 rows. It is not 2x: the tile is
 * not bound by the dot products alone (loads, scales, the last group). A last group is read per column
 * (load_group) and paired. */
#define Q8A_PAIRS 1
static inline __m512i pair_i(__m256i a, __m256i b) { return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1); }
static inline __m512 pair_f(__m256 a, __m256 b) {
    return _mm512_castsi512_ps(pair_i(_mm256_castps_si256(a), _mm256_castps_si256(b)));
}
static inline __m512 bcast8_ps(const float *p) {
    return _mm512_castsi512_ps(_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)));
}

/* fold_lanes on both halves: lane l < r of each = the sum of its lanes j = l mod r, lanes >= r zero */
static inline __m512i fold_lanes2(__m512i s, int r) {
    s = _mm512_add_epi32(s, _mm512_shuffle_i64x2(s, s, _MM_SHUFFLE(2, 3, 0, 1)));
    if (r <= 2) s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, (_MM_PERM_ENUM)_MM_SHUFFLE(1, 0, 3, 2)));
    if (r == 1) s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, (_MM_PERM_ENUM)_MM_SHUFFLE(2, 3, 0, 1)));
    const __mmask16 low = (__mmask16)((1u << r) - 1u);
    return _mm512_maskz_mov_epi32((__mmask16)(low | (low << 8)), s);
}

/* group_q8a for the columns at pa (low half) and pb (high half) */
static inline __attribute__((always_inline)) void group2_q8a(int kind, const uint8_t *pa, const uint8_t *pb,
                                                             const int r, const Q8aRows *x, int64_t g, const int MT,
                                                             __m512 *acc) {
    __m512i aw[8];
    __m512 dw, mw;
    int nv = 8;
    const int C = CHAINS(MT);
    if (r == Q8A_GROUP) {                             /* a full group: both columns' bytes in one register */
        const int qbytes = (kind == KIND_Q4_1 ? 16 : 32) * r;
        if (kind == KIND_Q4_1) {
            const __m512i low4 = _mm512_set1_epi8(15);
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                const __m512i v = pair_i(_mm256_loadu_si256((const __m256i *)(pa + 32 * t)),
                                         _mm256_loadu_si256((const __m256i *)(pb + 32 * t)));
                aw[t] = _mm512_and_si512(v, low4);
                aw[t + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
            }
            mw = _mm512_cvtph_ps(_mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(pa + qbytes + 16))),
                _mm_loadu_si128((const __m128i *)(pb + qbytes + 16)), 1));
        } else {
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                aw[t] = _mm512_xor_si512(pair_i(_mm256_loadu_si256((const __m256i *)(pa + 32 * t)),
                                                _mm256_loadu_si256((const __m256i *)(pb + 32 * t))),
                                         _mm512_set1_epi8((char)0x80));
            mw = _mm512_setzero_ps();
        }
        dw = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(
            _mm_loadu_si128((const __m128i *)(pa + qbytes))), _mm_loadu_si128((const __m128i *)(pb + qbytes)), 1));
    } else {                                          /* the last group: each column as tile_q8a reads it */
        __m256i wa[8], wb[8], awa[8], awb[8];
        __m256 dwa, mwa, dwb, mwb;
        nv = load_group(kind, pa, r, wa, &dwa, &mwa);
        load_group(kind, pb, r, wb, &dwb, &mwb);
        unsigned_operands(kind, wa, nv, awa);
        unsigned_operands(kind, wb, nv, awb);
#pragma GCC unroll 8
        for (int u = 0; u < nv; u++) aw[u] = pair_i(awa[u], awb[u]);
        dw = pair_f(dwa, dwb);
        mw = pair_f(mwa, mwb);
    }
    __m512i s[8][8];                                  /* [row][chain]: MT x C used */
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) s[i][c] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int u = 0; u < nv; u++)
#pragma GCC unroll 8
        for (int i = 0; i < MT; i++) {
            const __m512i xv = _mm512_broadcast_i64x4(
                _mm256_loadu_si256((const __m256i *)(x->xt + (i * x->G + g) * 8 * 32 + 32 * u)));
            s[i][u % C] = _mm512_dpbusd_epi32(s[i][u % C], aw[u], xv);
        }
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++) {
#pragma GCC unroll 8
        for (int h = C / 2; h >= 1; h /= 2)
#pragma GCC unroll 8
            for (int c = 0; c < h; c++) s[i][c] = _mm512_add_epi32(s[i][c], s[i][c + h]);
        __m512i is = s[i][0];
        if (nv < 8) is = fold_lanes2(is, r);
        const int64_t at = (i * x->G + g) * Q8A_GROUP;
        if (kind == KIND_Q8_0)
            is = _mm512_add_epi32(is, _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->xb + at))));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, bcast8_ps(x->dxp + at)), acc[i]);
        if (kind == KIND_Q4_1) acc[i] = _mm512_fmadd_ps(mw, bcast8_ps(x->sxp + at), acc[i]);
    }
}

/* tile_q8a for the columns w (y[0]) and w + ldw (y[1]) */
static inline __attribute__((always_inline)) void tile2_q8a(
        int kind, const Q8aRows *x, int64_t nb, const uint8_t *w, int64_t ldw, float *y, int64_t ldy,
        const int MT, int accumulate, const int RT) {
    const int64_t bs = kind == KIND_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES, full = nb / Q8A_GROUP;
    __m512 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++) acc[i] = _mm512_setzero_ps();
    prefetch_row(w, ldw);
    prefetch_row(w + ldw, ldw);
    for (int64_t g = 0; g < full; g++)
        group2_q8a(kind, w + g * Q8A_GROUP * bs, w + ldw + g * Q8A_GROUP * bs, Q8A_GROUP, x, g, MT, acc);
    if (RT)
        group2_q8a(kind, w + full * Q8A_GROUP * bs, w + ldw + full * Q8A_GROUP * bs,
                   RT > 0 ? RT : (int)(nb - full * Q8A_GROUP), x, full, MT, acc);
#pragma GCC unroll 8
    for (int i = 0; i < MT; i++) {
        const float a = hsum8(_mm512_castps512_ps256(acc[i]));
        const float b = hsum8(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(acc[i]), 1)));
        y[i * ldy] = accumulate ? y[i * ldy] + a : a;
        y[i * ldy + 1] = accumulate ? y[i * ldy + 1] + b : b;
    }
}
#define TILE2 tile2_q8a
#else
#define Q8A_PAIRS 0
#define TILE2(...) ((void)0)
#endif

/* the columns n0 .. n1 - 1 for MT rows, one instance per dense last-group size (none: K = 256 k; 1 block:
 * 544; 2: 576, SmolLM2's; 4: 640) so that the column loop holds no branch on it and the last group's
 * loops unroll, and one for the masked sizes (3, 5, 6, 7 blocks). A 1-row column at K = 576 took 1.2x
 * as long when the last group's size was read per column. */
#define COLUMNS_RT(KIND, MT, NAME, RT)                                                                 \
    static void q8a_columns_##KIND##_##MT##_##NAME(const Q8aRows *x, int64_t nb, const uint8_t *w,        \
                                                   int64_t ldw, float *y, int64_t ldy, int64_t n0,        \
                                                   int64_t n1, int accumulate) {                          \
        int64_t n = n0;                                                                               \
        if (Q8A_PAIRS)                                                                                \
            for (; n + 1 < n1; n += 2) TILE2(KIND, x, nb, w + n * ldw, ldw, y + n, ldy, MT, accumulate, RT); \
        for (; n < n1; n++) tile_q8a(KIND, x, nb, w + n * ldw, ldw, y + n, ldy, MT, accumulate, RT);         \
    }
#define COLUMNS_Q8A(KIND, MT)                                                                          \
    COLUMNS_RT(KIND, MT, r0, 0) COLUMNS_RT(KIND, MT, r1, 1) COLUMNS_RT(KIND, MT, r2, 2) COLUMNS_RT(KIND, MT, r4, 4)     \
    COLUMNS_RT(KIND, MT, rn, -1)                                                                      \
    static void q8a_columns_##KIND##_##MT(const Q8aRows *x, int64_t nb, const uint8_t *w, int64_t ldw,    \
                                          float *y, int64_t ldy, int64_t n0, int64_t n1, int accumulate) { \
        switch (nb % Q8A_GROUP) {                                                                     \
        case 0: q8a_columns_##KIND##_##MT##_r0(x, nb, w, ldw, y, ldy, n0, n1, accumulate); break;       \
        case 1: q8a_columns_##KIND##_##MT##_r1(x, nb, w, ldw, y, ldy, n0, n1, accumulate); break;       \
        case 2: q8a_columns_##KIND##_##MT##_r2(x, nb, w, ldw, y, ldy, n0, n1, accumulate); break;       \
        case 4: q8a_columns_##KIND##_##MT##_r4(x, nb, w, ldw, y, ldy, n0, n1, accumulate); break;       \
        default: q8a_columns_##KIND##_##MT##_rn(x, nb, w, ldw, y, ldy, n0, n1, accumulate);             \
        }                                                                                             \
    }
#define ALL_TILES_Q8A(KIND) COLUMNS_Q8A(KIND, 1) COLUMNS_Q8A(KIND, 2) COLUMNS_Q8A(KIND, 3) COLUMNS_Q8A(KIND, 4) \
                            COLUMNS_Q8A(KIND, 5) COLUMNS_Q8A(KIND, 6) COLUMNS_Q8A(KIND, 7) COLUMNS_Q8A(KIND, 8)
ALL_TILES_Q8A(0)
ALL_TILES_Q8A(1)

typedef void (*q8a_columns_fn)(const Q8aRows *, int64_t, const uint8_t *, int64_t, float *, int64_t, int64_t,
                               int64_t, int);
static const q8a_columns_fn Q8A_COLUMN_FNS[2][9] = {
    {0, q8a_columns_0_1, q8a_columns_0_2, q8a_columns_0_3, q8a_columns_0_4, q8a_columns_0_5, q8a_columns_0_6,
     q8a_columns_0_7, q8a_columns_0_8},
    {0, q8a_columns_1_1, q8a_columns_1_2, q8a_columns_1_3, q8a_columns_1_4, q8a_columns_1_5, q8a_columns_1_6,
     q8a_columns_1_7, q8a_columns_1_8},
};

static void gemm_q8a_avx2(int kind, const Q8aRows *x, const uint8_t *w, int64_t ldw, float *y, int64_t ldy,
                          int64_t M, int64_t N, int64_t K, int accumulate) {
    const int64_t nb = K / QK, R = Q8A_TILE_ROWS;
    for (int64_t n0 = 0; n0 < N; n0 += COLUMN_BLOCK) {
        const int64_t n1 = n0 + COLUMN_BLOCK < N ? n0 + COLUMN_BLOCK : N;
        int64_t mt;
        for (int64_t m0 = 0; m0 < M; m0 += mt) {
            mt = chunk_rows(M - m0, R);
            const Q8aRows rows = {x->xt + m0 * x->G * 8 * QK, x->dxp + m0 * x->G * Q8A_GROUP,
                                  x->sxp + m0 * x->G * Q8A_GROUP, x->xb + m0 * x->G * Q8A_GROUP, x->G};
            Q8A_COLUMN_FNS[kind][mt](&rows, nb, w, ldw, y + m0 * ldy, ldy, n0, n1, accumulate);
        }
    }
}
#endif

static int q8a_entry(int portable, int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw, float *y,
                     int64_t ldy, int64_t M, int64_t N, int64_t K, int accumulate, void *scratch) {
    if ((kind != KIND_Q4_1 && kind != KIND_Q8_0) || K % QK || M < 0 || N < 0 || ldx < K || ldy < N || !scratch)
        return -1;
    const int64_t nb = K / QK;
    int8_t *qx = (int8_t *)scratch;
    float *dx = (float *)((uint8_t *)scratch + M * K), *sx = dx + M * nb;   /* M * K: a multiple of 32 */
#if QGEMM_AVX2
    if (!portable) {
        const int64_t G = q8a_groups(K);
        uint8_t *xt = (uint8_t *)(((uintptr_t)(sx + M * nb) + Q8A_ALIGN - 1) & ~(uintptr_t)(Q8A_ALIGN - 1));
        float *dxp = (float *)(xt + M * G * 8 * QK), *sxp = dxp + M * G * Q8A_GROUP;
        int32_t *xb = (int32_t *)(sxp + M * G * Q8A_GROUP);
        q8a_quantize_rows(x, ldx, M, K, xt, dxp, sxp, xb);        /* = quantize_rows_q8 + q8a_transpose_rows */
        const Q8aRows rows = {xt, dxp, sxp, xb, G};
        gemm_q8a_avx2(kind, &rows, w, ldw, y, ldy, M, N, K, accumulate);
        return 0;
    }
#endif
    (void)portable;
    quantize_rows_q8(x, ldx, M, K, qx, dx, sx);
    gemm_q8a_scalar(kind, qx, dx, sx, w, ldw, y, ldy, M, N, K, accumulate);
    return 0;
}

/* qgemm's arguments and `scratch` (q8a_scratch_bytes(M, K) bytes): y (+)= Q8(x) W^T as above */
int qgemm_q8a(int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw, float *y, int64_t ldy,
              int64_t M, int64_t N, int64_t K, int accumulate, void *scratch) {
    return q8a_entry(0, kind, x, ldx, w, ldw, y, ldy, M, N, K, accumulate, scratch);
}

int qgemm_q8a_portable(int kind, const float *x, int64_t ldx, const uint8_t *w, int64_t ldw, float *y,
                       int64_t ldy, int64_t M, int64_t N, int64_t K, int accumulate, void *scratch) {
    return q8a_entry(1, kind, x, ldx, w, ldw, y, ldy, M, N, K, accumulate, scratch);
}

/* ======================================================================================================
 * The greedy head: the weight-only head's argmax (quantize gguf / q8_0, temperature 0) at about the
 * Q8-activation head's cost. A greedy step needs one id per position, not V exact logits, and on an
 * 8-token verify the float head is multiply-add bound (SmolLM2 on the Zen 4 VM: 5.4 ms against 2.8 ms
 * for the integer-dot head over the same blocks; bench/RESULTS.md, "The greedy head").
 *
 * Given z = Q8(x) W^T (qgemm_q8a over the head), for one position x:
 *   |y_n - z_n| <= c * sum_b l1[n, b] * dx_b  =: e_n        y = the float head's logits (qgemm), exactly
 * where l1[n, b] = sum_k |W[n, 32 b + k]| (a Q8_0 block: |d| * sum |q|, exact in float32), dx_b = the
 * activation block's scale (max |x| / 127, as quantize_rows_q8) and
 *   c = 0.5 + 2e-4 + 127 (1 + 2u) (gamma(K + nb + 8) + gamma(nb + 8)),  gamma(n) = n u / (1 - n u), u = 2^-24:
 *   0.5 dx_b (+ 2e-4 for x * (1/dx) and its rounding) bounds each activation's rounding error, and a sum
 *   of n rounded products is within gamma(n) sum |terms| of the exact one, in any order (both heads'
 *   float sums; sum |W x| <= 127 (1 + 2u) sum_b l1 dx_b). So with j0 = argmax z and L = z_j0 - e_j0 <= y_j0,
 *   every n with z_n + e_n < L has y_n < y_j0: only the others (the candidates) can hold the maximum.
 *   Their exact logits come from qgemm on their rows alone (bitwise the full head's: each output element
 *   is summed in one fixed order whatever N), and the first of their maxima is the full row's argmax.
 * A row's bound is only computed where z_n >= L - cap, cap = c * sum_b max_n l1[n, b] dx_b >= every e_n:
 * most rows are dismissed by one compare. On SmolLM2 the candidates number median 2, at most 29 of 49152
 * over 1164 positions of Spec-Bench answers (bench/RESULTS.md, "The greedy head").
 * Bounds and thresholds are summed in double (the float compares err toward keeping a row).
 * ok[m] = 0 where the precondition fails (a non-finite activation or z, or |x| so large that a logit
 * could overflow): the caller computes that position's float logits instead.
 * x [M, K] (ldx floats), z [M, N] (ldz floats), w: the head's rows in the GGUF layout (ldw bytes), l1 [N, K/32],
 * l1max [K/32]; row_l1 = max_n sum_b l1[n, b]. Rows n >= n_valid are never chosen.
 * Returns 0 (ids [M], ok [M], checked[m] = rows recomputed exactly), or -1 on a bad argument. */
static double rounding_gamma(double n) { const double u = 0x1p-24; return n * u / (1.0 - n * u); }

static int64_t first_max(const float *z, int64_t n, float *zmax, int *bad) {
    float mx = -INFINITY;
    int nan = 0;
    int64_t i = 0;
#if QGEMM_AVX512
    __m512 vm = _mm512_set1_ps(-INFINITY);
    __mmask16 un = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(z + i);
        un |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vm = _mm512_max_ps(vm, v);
    }
    mx = _mm512_reduce_max_ps(vm);
    nan = un != 0;
#endif
    for (; i < n; i++) {
        nan |= isnan(z[i]);
        mx = z[i] > mx ? z[i] : mx;
    }
    *bad = nan || !isfinite(mx);
    *zmax = mx;
    int64_t j = 0;
#if QGEMM_AVX512
    for (const __m512 v = _mm512_set1_ps(mx); j + 16 <= n; j += 16) {
        const __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(z + j), v, _CMP_EQ_OQ);
        if (k) return j + __builtin_ctz(k);
    }
#endif
    for (; j < n; j++)
        if (z[j] == mx) return j;
    return 0;
}

/* head_argmax's test of row n (z_n >= thr already): its bound, and where it may hold the maximum its
 * exact logit, kept if it is the first largest so far. Returns 0, or -1 on a non-finite exact logit. */
typedef struct { const float *x; int64_t ldx; const uint8_t *w; int64_t ldw; const float *l1; const double *dx;
                 int64_t nb, K; double c, L; float zmax; int64_t best, checked; float yb; } HeadScan;

static int head_row(HeadScan *h, const float *zm, int64_t n) {
    double e = 0.0;
    for (int64_t b = 0; b < h->nb; b++) e += (double)h->l1[n * h->nb + b] * h->dx[b];
    const double slack = 0x1p-40 * (fabs((double)zm[n]) + fabs((double)h->zmax));   /* the double sums' rounding */
    if ((double)zm[n] + h->c * e + slack < h->L) return 0;
    float y;
    qgemm(KIND_Q8_0, h->x, h->ldx, h->w + n * h->ldw, h->ldw, &y, 1, 1, 1, h->K, 0);
    h->checked++;
    if (!isfinite(y)) return -1;
    if (h->best < 0 || y > h->yb) h->best = n, h->yb = y;
    return 0;
}

int head_argmax(int kind, const float *x, int64_t ldx, const float *z, int64_t ldz, const uint8_t *w, int64_t ldw,
                const float *l1, const float *l1max, double row_l1, int64_t M, int64_t N, int64_t n_valid,
                int64_t K, int64_t *ids, int32_t *ok, int64_t *checked) {
    if (kind != KIND_Q8_0 || K % QK || K < QK || M < 0 || N < 1 || n_valid < 1 || n_valid > N || ldx < K
        || ldz < N || !(row_l1 >= 0.0) || !isfinite(row_l1))
        return -1;
    const int64_t nb = K / QK;
    const double c = 0.5 + 2e-4 + 127.0 * (1.0 + 0x1p-23)
                     * (rounding_gamma((double)(K + nb + 8)) + rounding_gamma((double)(nb + 8)));
    double *dx = (double *)malloc((size_t)nb * sizeof(double));
    if (!dx) return -1;
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * ldx, *zm = z + m * ldz;
        ok[m] = 0, ids[m] = -1, checked[m] = 0;
        int finite = 1;
        float top = 0.0f;
        for (int64_t b = 0; b < nb; b++) {                      /* quantize_rows_q8's scales */
            float amax = 0.0f;
            for (int j = 0; j < QK; j++) {
                const float a = fabsf(xm[b * QK + j]);
                finite &= a <= 3.4e38f;                         /* not inf, not NaN */
                amax = a > amax ? a : amax;
            }
            dx[b] = (double)(amax / 127.0f);
            top = amax > top ? amax : top;
        }
        if (!finite || (double)top * row_l1 * 1.01 >= 3.0e38) continue;
        int bad;
        float zmax;
        const int64_t j0 = first_max(zm, n_valid, &zmax, &bad);
        if (bad) continue;
        double e0 = 0.0, cap = 0.0;
        for (int64_t b = 0; b < nb; b++) {
            e0 += (double)l1[j0 * nb + b] * dx[b];
            cap += (double)l1max[b] * dx[b];
        }
        const double L = (double)zmax - c * e0;
        const float thr = nextafterf((float)(L - c * cap), -INFINITY);   /* <= L - cap */
        HeadScan h = {xm, ldx, w, ldw, l1, dx, nb, K, c, L, zmax, -1, 0, 0.0f};
        int err = 0;
        int64_t n = 0;                                          /* rows in order: the first maximum wins */
#if QGEMM_AVX512
        for (const __m512 vt = _mm512_set1_ps(thr); n + 16 <= n_valid && !err; n += 16)
            for (__mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(zm + n), vt, _CMP_GE_OQ); k && !err; k &= k - 1)
                err = head_row(&h, zm, n + __builtin_ctz(k));
#endif
        for (; n < n_valid && !err; n++)
            if (zm[n] >= thr) err = head_row(&h, zm, n);
        checked[m] = h.checked;
        if (err || h.best < 0) continue;
        const int64_t best = h.best;
        ids[m] = best, ok[m] = 1;
    }
    free(dx);
    return 0;
}

/* ======================================================================================================
 * The rest of a layer. Portable C whose reductions keep ONE order (8 lanes over the index, then the
 * hsum8 tree; or a plain left-to-right sum): the compiler vectorises the lane loops but may not
 * reorder a float sum (no -ffast-math), so every build computes the same bits for a row whatever the
 * other rows, the number of tokens in the forward, or where padding and holes sit in the cache.
 * ==================================================================================================== */

/* 8 float lanes (GCC / Clang vector extension: one AVX register where there is one, else narrower
 * registers or scalars; each lane's arithmetic is plain IEEE float either way, so the order is the code's) */
typedef float v8f __attribute__((vector_size(32)));

static inline v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* 8 halves as 8 floats (exact: every half is a float) */
static inline v8f load8_f16(const uint16_t *p) {
    v8f v;
#if QGEMM_AVX2
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    memcpy(&v, &f, sizeof v);
#else
    float f[8];
    for (int l = 0; l < 8; l++) f[l] = half_to_float((const uint8_t *)(p + l));
    memcpy(&v, f, sizeof v);
#endif
    return v;
}

/* element `off` of a KV buffer and the 7 after it: float32 or, with H16 (a constant at every call site),
 * float16. The arithmetic after the load is the same either way, so a float16 cache computes what a float32
 * cache holding the same (rounded) values computes, bit for bit. */
static inline v8f load8_kv(const void *base, int64_t off, const int H16) {
    return H16 ? load8_f16((const uint16_t *)base + off) : load8((const float *)base + off);
}

static inline float hsum_v8(v8f a) {
    float l[8];
    memcpy(l, &a, sizeof l);
    return hsum8_scalar(l);
}

#if QGEMM_AVX2
/* hsum8 of 8 vectors at once: [hsum8(a[0]), ..., hsum8(a[7])], each by the same tree as hsum8
 * (s_l = a_l + a_{l+4}; (s_0 + s_2) + (s_1 + s_3)), in 12 shuffles and adds instead of 8 x 5 */
static inline __m256 hsum8x8(const __m256 a[8]) {
    __m256 w[4];                                    /* w[j] = [s of a[j] | s of a[j+4]] */
    for (int j = 0; j < 4; j++)
        w[j] = _mm256_add_ps(_mm256_permute2f128_ps(a[j], a[j + 4], 0x20),
                             _mm256_permute2f128_ps(a[j], a[j + 4], 0x31));
    const __m256 z01 = _mm256_add_ps(_mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm256_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 z23 = _mm256_add_ps(_mm256_shuffle_ps(w[2], w[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                     _mm256_shuffle_ps(w[2], w[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_shuffle_ps(z01, z23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm256_shuffle_ps(z01, z23, _MM_SHUFFLE(3, 1, 3, 1)));
}
#endif

/* sum_i a[i] b[i]: lane l takes i = 8 t + l (multiply, then add: no fusion), then the hsum8 tree */
static inline float dot_lanes(const float *a, const float *b, int64_t n) {
    v8f acc = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc += load8(a + i) * load8(b + i);
    float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(tail, &acc, sizeof tail);
    for (int l = 0; i + l < n; l++) tail[l] += a[i + l] * b[i + l];
    return hsum8_scalar(tail);
}

/* exp(x) for the softmax (x <= 0) and SiLU: Cephes' expf polynomial (~1 ulp), exactly 0 below -87 so
 * that a masked column (score + float32 min) adds exactly nothing. Elementwise: the same bits for an
 * element in a vector body or a scalar tail. */
static inline float exp_fixed(float x) {
    const float big = 12582912.0f;                            /* 1.5 * 2^23: adding it rounds to an integer */
    float xc = x > 88.0f ? 88.0f : (x < -87.0f ? -87.0f : x);
    float n = (xc * 1.44269504088896341f + big) - big;        /* round(x / ln 2) */
    float r = fmaf(n, -0.693359375f, xc);
    r = fmaf(n, 2.12194440e-4f, r);                           /* x - n ln 2 in two parts */
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    float y = fmaf(p, r * r, r) + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, 4);
    return x < -87.0f ? 0.0f : y * scale;
}

#if QGEMM_AVX512
/* exp_fixed on 16 lanes, operation for operation (the same bits; tested against the portable build): the
 * compiler vectorised exp_fixed's loop 8 lanes at a time with masked selects, ~1.7 cycles an element,
 * ~11 % of an 8-token verify's attention at 1000 columns */
static inline __m512 exp16(__m512 x) {
    const __m512 big = _mm512_set1_ps(12582912.0f);
    /* x > 88 ? 88 : (x < -87 ? -87 : x), NaN kept: vminps / vmaxps return their second operand when
     * either is NaN or the compare fails */
    const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-87.0f), _mm512_min_ps(_mm512_set1_ps(88.0f), x));
    const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)), big), big);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ),
                               _mm512_mul_ps(y, _mm512_castsi512_ps(e)));
}
#endif

/* y[c] = exp_fixed(x[c] - sub) for c < n (in place when y == x); portable: the scalar code on any build */
static void exp_shifted(const float *x, float sub, float *y, int64_t n, int portable) {
    int64_t c = 0;
#if QGEMM_AVX512
    if (!portable)
        for (; c + 16 <= n; c += 16) _mm512_storeu_ps(y + c, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + c), _mm512_set1_ps(sub))));
#endif
    for (; c < n; c++) y[c] = exp_fixed(x[c] - sub);
}

/* for the tests: the softmax's exp on either path */
int exp_floats(const float *x, float *y, int64_t n, int portable) {
    exp_shifted(x, 0.0f, y, n, portable);
    return 0;
}

/* out[m] = x[m] / rms(x[m]) * g (g may be NULL), each row alone */
int rmsnorm_rows(const float *x, int64_t ldx, const float *g, float eps, float *out, int64_t ldo,
                 int64_t M, int64_t d) {
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * ldx;
        float *o = out + m * ldo;
        const float r = 1.0f / sqrtf(dot_lanes(xr, xr, d) / (float)d + eps);
        if (g)
            for (int64_t i = 0; i < d; i++) o[i] = (xr[i] * r) * g[i];
        else
            for (int64_t i = 0; i < d; i++) o[i] = xr[i] * r;
    }
    return 0;
}

/* AVX-512: the attention's 8-lane vectors two to a register (the same lanes, sums and order: the same bits,
 * at half the instructions; tested against the portable build) */
#if QGEMM_AVX512
/* 16 floats of a KV row from element `off` (float32, or float16 with H16) */
static inline __m512 load16_kv(const void *base, int64_t off, const int H16) {
    return H16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + off)))
               : _mm512_loadu_ps((const float *)base + off);
}

/* 8 floats of KV row element `off` (low half) and of element `off2` (high half) */
static inline __m512 load8x2_kv(const void *base, int64_t off, int64_t off2, const int H16) {
    if (H16) {
        const uint16_t *h = (const uint16_t *)base;
        return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(h + off))),
                                                       _mm_loadu_si128((const __m128i *)(h + off2)), 1));
    }
    const float *f = (const float *)base;
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(f + off)), _mm256_loadu_ps(f + off2), 1);
}
#endif

/* Rows [r, r + n) of a head's K or V (D elements of es bytes a row) asked for into L2 ahead of their use.
 * A verify's attention at a long context otherwise waits on memory: its scores stream K and its P V
 * streams V, each in 4 KB pages that the hardware prefetcher does not run past. So the scores' column loop
 * asks for the V rows the P V will read, and every group's P V loop for the K rows of the head attended
 * next (attention_block's `Kn`): 1.07-1.46x a head at 1 and 8 tokens, 256-1024 columns (bench/RESULTS.md,
 * "A verify's attention without waiting on memory"). A hint only: the arithmetic, and so the bits, are
 * unchanged. */
static inline __attribute__((always_inline)) void prefetch_kv_rows(const void *base, int64_t r, int64_t n, int64_t D,
                                                                   const int H16) {
    const char *p = (const char *)base + r * D * (H16 ? 2 : 4), *e = p + n * D * (H16 ? 2 : 4);
    for (; p < e; p += 64) __builtin_prefetch(p, 0, 2);
}

/* the scores of NQ queries (i0 ..) against 8 columns of K: each K vector loaded once for the NQ queries
 * (the queries of a KV head share its K: G heads x S tokens), the same products and sums in the same
 * order per lane as one query at a time */
static inline __attribute__((always_inline)) void scores_8(const float *qs, int64_t ldq, int64_t G, int64_t i0,
        const int NQ, const void *K, int64_t D, const int DV, const float *mask, int64_t L, int64_t c,
        float scale, float *P, const int H16) {
    v8f acc[3][8];
    const float *q[3];
    for (int a = 0; a < NQ; a++) {
        q[a] = qs + ((i0 + a) / G) * ldq + ((i0 + a) % G) * D;
        for (int j = 0; j < 8; j++) acc[a][j] = (v8f){0, 0, 0, 0, 0, 0, 0, 0};
    }
#if QGEMM_AVX512
    {                           /* columns c + 2p and c + 2p + 1 side by side in one register */
        __m512 aw[3][4];
        for (int a = 0; a < NQ; a++)
            for (int p = 0; p < 4; p++) aw[a][p] = _mm512_setzero_ps();
        for (int t = 0; t < DV; t++) {
            __m512 qw[3];
            for (int a = 0; a < NQ; a++) qw[a] = _mm512_broadcast_f32x8(_mm256_loadu_ps(q[a] + 8 * t));
            for (int p = 0; p < 4; p++) {
                const __m512 kw = load8x2_kv(K, (c + 2 * p) * D + 8 * t, (c + 2 * p + 1) * D + 8 * t, H16);
                for (int a = 0; a < NQ; a++) aw[a][p] = _mm512_add_ps(aw[a][p], _mm512_mul_ps(qw[a], kw));
            }
        }
        for (int a = 0; a < NQ; a++)
            for (int p = 0; p < 4; p++) {
                const __m256 lo = _mm512_castps512_ps256(aw[a][p]), hi = _mm512_extractf32x8_ps(aw[a][p], 1);
                memcpy(&acc[a][2 * p], &lo, sizeof lo);
                memcpy(&acc[a][2 * p + 1], &hi, sizeof hi);
            }
    }
#else
    for (int t = 0; t < DV; t++) {
        v8f qv[3];
        for (int a = 0; a < NQ; a++) qv[a] = load8(q[a] + 8 * t);
        for (int j = 0; j < 8; j++) {
            const v8f kv = load8_kv(K, (c + j) * D + 8 * t, H16);
            for (int a = 0; a < NQ; a++) acc[a][j] += qv[a] * kv;
        }
    }
#endif
    for (int a = 0; a < NQ; a++) {
        float *pr = P + (i0 + a) * L + c;
        const float *mr = mask + ((i0 + a) / G) * L + c;
#if QGEMM_AVX2
        __m256 h[8];
        for (int j = 0; j < 8; j++) h[j] = (__m256)acc[a][j];
        _mm256_storeu_ps(pr, _mm256_add_ps(_mm256_mul_ps(hsum8x8(h), _mm256_set1_ps(scale)), _mm256_loadu_ps(mr)));
#else
        for (int j = 0; j < 8; j++) pr[j] = hsum_v8(acc[a][j]) * scale + mr[j];
#endif
    }
}

#if QGEMM_AVX512
/* A verify's scores with the columns in the lanes. scores_8 keeps a query's 8 lane sums of a column in one
 * register and then pays a shuffle tree per column to add them up (hsum8x8), plus an insert per pair of K
 * rows: ~13 vector operations a (query, column) for 8 multiply-adds. Here a chunk of 16 K rows is transposed
 * once (kt[8 t + l]: the 16 rows' element 8 t + l, rows c .. c + 7 in lanes 0-7), and each query then sums
 * its lane l over t for the 16 columns at once in register p[l]: the same products added in the same order
 * from zero, then hsum8's tree (p_l + p_{l+4}, then (s0 + s2) + (s1 + s3)) as 7 adds of whole registers, so
 * the same bits. The transpose (4 shuffles a row element) is shared by every query of the KV head, so this
 * pays from TRANSPOSED_QUERIES queries (8 tokens of SmolLM2's 3 heads a KV head). */
static inline __attribute__((always_inline)) void transpose16(const void *K, int64_t D, const int DV, int64_t c,
                                                              __m512 *kt, const int H16) {
    const __m512i lo = _mm512_set_epi32(27, 26, 25, 24, 11, 10, 9, 8, 19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i hi = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 23, 22, 21, 20, 7, 6, 5, 4);
    for (int t = 0; t < DV; t++) {           /* the 8 x 8 transpose of 256-bit registers, in each half */
        __m512 r[8], u[8], v[8];
        for (int i = 0; i < 8; i++) r[i] = load8x2_kv(K, (c + i) * D + 8 * t, (c + i + 8) * D + 8 * t, H16);
        for (int i = 0; i < 8; i += 2) {
            u[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            u[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
            v[i] = _mm512_shuffle_ps(u[i], u[i + 2], 0x44);
            v[i + 1] = _mm512_shuffle_ps(u[i], u[i + 2], 0xEE);
            v[i + 2] = _mm512_shuffle_ps(u[i + 1], u[i + 3], 0x44);
            v[i + 3] = _mm512_shuffle_ps(u[i + 1], u[i + 3], 0xEE);
        }
        for (int l = 0; l < 4; l++) {
            kt[8 * t + l] = _mm512_permutex2var_ps(v[l], lo, v[l + 4]);
            kt[8 * t + l + 4] = _mm512_permutex2var_ps(v[l], hi, v[l + 4]);
        }
    }
}

/* the scores of NQ queries (i0 ..) against the 16 columns c .. c + 15 that kt holds (transpose16) */
static inline __attribute__((always_inline)) void scores_16t(const float *qs, int64_t ldq, int64_t G, int64_t i0,
        const int NQ, const __m512 *kt, const int DV, const float *mask, int64_t L, int64_t c, float scale, float *P) {
    const int64_t D = 8 * DV;
    const float *q[3];
    __m512 p[3][8];
    for (int a = 0; a < NQ; a++) {
        q[a] = qs + ((i0 + a) / G) * ldq + ((i0 + a) % G) * D;
        for (int l = 0; l < 8; l++) p[a][l] = _mm512_setzero_ps();
    }
    for (int t = 0; t < DV; t++)
        for (int l = 0; l < 8; l++) {
            __m512 k = kt[8 * t + l];
            KEEP_IN_REGISTER(k);
            for (int a = 0; a < NQ; a++) p[a][l] = _mm512_add_ps(p[a][l], _mm512_mul_ps(_mm512_set1_ps(q[a][8 * t + l]), k));
        }
    for (int a = 0; a < NQ; a++) {
        const __m512 s0 = _mm512_add_ps(p[a][0], p[a][4]), s1 = _mm512_add_ps(p[a][1], p[a][5]);
        const __m512 s2 = _mm512_add_ps(p[a][2], p[a][6]), s3 = _mm512_add_ps(p[a][3], p[a][7]);
        const __m512 sum = _mm512_add_ps(_mm512_add_ps(s0, s2), _mm512_add_ps(s1, s3));
        _mm512_storeu_ps(P + (i0 + a) * L + c, _mm512_add_ps(_mm512_mul_ps(sum, _mm512_set1_ps(scale)),
                                                             _mm512_loadu_ps(mask + ((i0 + a) / G) * L + c)));
    }
}
#endif

/* the outputs t0 .. t0 + TB vectors of NQ queries (i0 ..): sum over every column c in order of P[i, c] V[c]
 * (each lane from zero, as one query at a time summed it), then / sums[i]. The sums stay in registers
 * over all columns and each V vector is loaded once for the NQ queries. The first tile (t0 == 0) also
 * sums each query's softmax numerators, one add per column in column order: a hidden column adds exactly
 * 0 wherever it sits, so the sum, like every output, is the same whatever holes or padding the row's
 * columns hold (an 8-lane sum over columns 8k + l is not: a hole moves the later columns to other lanes).
 * The add chain runs beside the tile's vector work, which takes longer per column than its latency.
 * n: the columns summed (its group's visible end, group_end); L: P's row stride. Kn: the K of the head
 * attended next, whose rows 0 .. n are asked for into L2 (prefetch_kv_rows), or NULL. */
static inline __attribute__((always_inline)) void pv_tile(const float *P, int64_t L, int64_t n, int64_t i0,
        const int NQ, const void *V, int64_t D, const int t0, const int TB, int64_t G, float *sums, float *os,
        int64_t ldo, const void *Kn, const int H16) {
    float s[3] = {0.0f, 0.0f, 0.0f};
    const int own = t0 == 0;                      /* this tile sums the numerators; later tiles read them */
#if QGEMM_AVX512
    if (TB % 2 == 0) {      /* two output vectors in one 512-bit register: each lane's sum in the same order */
        __m512 ow[3][4];
        for (int a = 0; a < NQ; a++)
            for (int t = 0; t < TB / 2; t++) ow[a][t] = _mm512_setzero_ps();
        __m128 sx[3];       /* the sums in lane 0 of a vector register: as plain floats gcc paired two of
                             * them through a general register, a ~9-cycle chain a column */
        for (int a = 0; a < NQ; a++) sx[a] = _mm_setzero_ps();
        for (int64_t c = 0; c < n; c++) {
            __m512 pw[3], vw[4];
            if (Kn) prefetch_kv_rows(Kn, c, 1, D, H16);
            for (int t = 0; t < TB / 2; t++) {
                vw[t] = load16_kv(V, c * D + 8 * (t0 + 2 * t), H16);
                KEEP_IN_REGISTER(vw[t]);
            }
            for (int a = 0; a < NQ; a++) {
                pw[a] = _mm512_set1_ps(P[(i0 + a) * L + c]);
                if (own) sx[a] = _mm_add_ss(sx[a], _mm512_castps512_ps128(pw[a]));
            }
            for (int t = 0; t < TB / 2; t++)
                for (int a = 0; a < NQ; a++) ow[a][t] = _mm512_add_ps(ow[a][t], _mm512_mul_ps(pw[a], vw[t]));
        }
        for (int a = 0; a < NQ; a++) {
            if (own) sums[i0 + a] = _mm_cvtss_f32(sx[a]);
            float *o = os + ((i0 + a) / G) * ldo + ((i0 + a) % G) * D + 8 * t0;
            const __m512 sw = _mm512_set1_ps(sums[i0 + a]);
            for (int t = 0; t < TB / 2; t++) _mm512_storeu_ps(o + 16 * t, _mm512_div_ps(ow[a][t], sw));
        }
        return;
    }
#endif
    v8f ov[3][8];
    for (int a = 0; a < NQ; a++)
        for (int t = 0; t < TB; t++) ov[a][t] = (v8f){0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t c = 0; c < n; c++) {
        v8f pv[3];
        if (Kn) prefetch_kv_rows(Kn, c, 1, D, H16);
        for (int a = 0; a < NQ; a++) {
            const float pc = P[(i0 + a) * L + c];
            if (own) s[a] += pc;
            pv[a] = (v8f){pc, pc, pc, pc, pc, pc, pc, pc};
        }
        for (int t = 0; t < TB; t++) {
            v8f vv = load8_kv(V, c * D + 8 * (t0 + t), H16);
#if QGEMM_AVX2
            KEEP_IN_REGISTER(vv);
#endif
            for (int a = 0; a < NQ; a++) ov[a][t] += pv[a] * vv;
        }
    }
    for (int a = 0; a < NQ; a++) {
        if (own) sums[i0 + a] = s[a];
        float *o = os + ((i0 + a) / G) * ldo + ((i0 + a) % G) * D + 8 * t0;
        const float sa = sums[i0 + a];
        const v8f sv = {sa, sa, sa, sa, sa, sa, sa, sa};
        for (int t = 0; t < TB; t++) {
            const v8f r = ov[a][t] / sv;
            memcpy(o + 8 * t, &r, sizeof(v8f));
        }
    }
}

/* the furthest visible end of the NQ queries i .. (ends: per token) */
static inline int64_t group_end(const int64_t *ends, int64_t G, int64_t i, const int NQ) {
    int64_t n = 0;
    for (int a = 0; a < NQ; a++) n = ends[(i + a) / G] > n ? ends[(i + a) / G] : n;
    return n;
}

/* the scores of NQ queries (i0 ..) in the columns [c, n) one at a time (a group's last n % 8 columns) */
static inline __attribute__((always_inline)) void scores_tail(const float *qs, int64_t ldq, int64_t G, int64_t i0,
        const int NQ, const void *K, const int DV, const float *mask, int64_t L, int64_t c, int64_t n, float scale,
        float *P, const int H16) {
    const int64_t D = 8 * DV;
    for (; c < n; c++)
        for (int a = 0; a < NQ; a++) {
            const int64_t i = i0 + a;
            const float *q = qs + (i / G) * ldq + (i % G) * D;
            v8f acc = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int t = 0; t < DV; t++) acc += load8(q + 8 * t) * load8_kv(K, c * D + 8 * t, H16);
            P[i * L + c] = hsum_v8(acc) * scale + mask[(i / G) * L + c];
        }
}

/* the softmax numerators of NQ queries' scores in [0, n), then their outputs (pv_tile sums the numerators) */
static inline __attribute__((always_inline)) void softmax_pv(int64_t i0, const int NQ, const void *V, int64_t G,
        int64_t L, int64_t n, const int DV, float *P, float *sums, float *os, int64_t ldo, const void *Kn,
        const int H16) {
    for (int a = 0; a < NQ; a++) {
        float *pr = P + (i0 + a) * L, m8[8], mx = -INFINITY;
        for (int l = 0; l < 8; l++) m8[l] = -INFINITY;
        int64_t c = 0;                            /* the max: any order gives its value */
#if QGEMM_AVX2
        __m256 mv = _mm256_set1_ps(-INFINITY);
        for (; c + 8 <= n; c += 8) mv = _mm256_max_ps(_mm256_loadu_ps(pr + c), mv);   /* p > m ? p : m */
        _mm256_storeu_ps(m8, mv);
#else
        for (; c + 8 <= n; c += 8)
            for (int l = 0; l < 8; l++) m8[l] = pr[c + l] > m8[l] ? pr[c + l] : m8[l];
#endif
        for (; c < n; c++) mx = pr[c] > mx ? pr[c] : mx;
        for (int l = 0; l < 8; l++) mx = m8[l] > mx ? m8[l] : mx;
        exp_shifted(pr, mx, pr, n, 0);
    }
    for (int t0 = 0; t0 < DV; t0 += 8)            /* up to 64 outputs at a time */
        pv_tile(P, L, n, i0, NQ, V, 8 * DV, t0, DV - t0 < 8 ? DV - t0 : 8, G, sums, os, ldo, t0 ? 0 : Kn, H16);
}

/* the scores of NQ queries (i0 ..) in [c, n) and their softmax and outputs: one group from its column c on */
static inline __attribute__((always_inline)) void finish_group(const float *qs, int64_t ldq, int64_t G, int64_t i0,
        const int NQ, const void *K, const void *V, int64_t L, int64_t c, int64_t n, const int DV, const float *mask,
        float scale, float *P, float *sums, float *os, int64_t ldo, const void *Kn, const int H16) {
    scores_tail(qs, ldq, G, i0, NQ, K, DV, mask, L, c, n, scale, P, H16);
    softmax_pv(i0, NQ, V, G, L, n, DV, P, sums, os, ldo, Kn, H16);
}

/* one group from its scores to its outputs (a prompt's order, attend_group), up to its visible end */
static inline __attribute__((always_inline)) void whole_group(const float *qs, int64_t ldq, int64_t G, int64_t i0,
        const int NQ, const void *K, const void *V, int64_t L, const int64_t *ends, const int DV, const float *mask,
        float scale, float *P, float *sums, float *os, int64_t ldo, const int H16) {
    const int64_t n = group_end(ends, G, i0, NQ);
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) scores_8(qs, ldq, G, i0, NQ, K, 8 * DV, DV, mask, L, c, scale, P, H16);
    finish_group(qs, ldq, G, i0, NQ, K, V, L, c, n, DV, mask, scale, P, sums, os, ldo, 0, H16);
}

#define HIDDEN_BELOW (-1e30f)
/* ends[r] for each of the M mask rows [M, L]: one past the last column whose mask is above HIDDEN_BELOW
 * (a hidden column's mask is float32 min: its weight is exactly 0, see attend_group), or L for a row
 * with no visible column (a pad token: every column is summed, as without ends, and nothing reads it) */
static void visible_ends(const float *mask, int64_t M, int64_t L, int64_t *ends) {
    for (int64_t r = 0; r < M; r++) {
        const float *m = mask + r * L;
        int64_t e = L;
        while (e > 0 && m[e - 1] < HIDDEN_BELOW) e--;
        ends[r] = e ? e : L;
    }
}

#define PHASED_TOKENS 16                     /* the most tokens a forward scores in the column-chunk order */
#define PHASED_GROUPS 64                     /* and the most groups (3 queries each) it holds ends for */
/* the fewest queries (of a KV head, in whole groups of 3) for which its K is transposed 16 columns at a time
 * (scores_16t): the transpose's 256 shuffles a chunk are shared by 8 groups or more. At 6-15 queries (2-5
 * tokens of SmolLM2's 3 heads a KV head) scores_8 was 1.1-1.6x faster at 256-1024 columns, at 18-21 up to
 * 1.07x, at 24 within noise (bench/RESULTS.md, "A verify's attention without waiting on memory"). */
#define TRANSPOSED_QUERIES 24
/* Attention of the Q = G * S queries that share one KV head (G query heads x S tokens of one row)
 * against its columns [0, L): softmax(q K^T * scale + mask) V for each query.
 * Order, the same for every query whatever Q, L or the layout: a score is the 8-lane dot product of
 * q and a key row (multiply, then add, over lanes l = 8 t + l; Zen4 runs them on its two multiply and
 * two add pipes, so fused multiply-adds measured no faster and their longer latency chain slower)
 * reduced by the hsum8 tree; the softmax sum and every output element run left to right over the
 * columns (the sum inside pv_tile's first tile, where its add chain hides behind the tile's vector work).
 * What each cost: bench/RESULTS.md, "One lane per block" and "Holes moved the softmax sum".
 * A hidden column's weight is exactly 0 (exp_fixed), and adding 0 changes no sum, so padding and holes
 * anywhere leave the result unchanged. (A sum kept in 8 lanes over the columns 8 k + l did not: a hole
 * moves every later column to the next lane, and the lanes then pair other partial sums.)
 * The same fact lets a query stop at its visible end (ends[s], visible_ends): the columns after it would
 * add exactly 0 to every sum and cannot hold the max. A prompt's token s sees start + s + 1 of the
 * forward's L columns, so a prefill scores half the matrix, not all of it. Queries go 3 at a time (a
 * group: the G heads of a token first), a group to the furthest end of its queries.
 * Two loop orders, the same arithmetic per query. Up to PHASED_TOKENS tokens (a decode step or a verify:
 * few queries, many columns) the scores go column chunk by chunk over every group, so that each K row
 * comes from memory once for all the queries (from TRANSPOSED_QUERIES queries on AVX-512, 16 K rows
 * transposed once for all of them: scores_16t), then each group's softmax and P V. A longer forward (a
 * prompt) runs each group from its scores to its outputs before the next, so that its rows of P stay in
 * L1 (all of P for a 1000-token prompt is 12 MB): that order made a 1200-token prefill 1.3x faster, but a
 * 5-token verify at 2500 columns 4-10 % slower where it was tried (each group then loads every K row), so
 * verifies keep the chunk order (bench/RESULTS.md, "A prompt's attention").
 * DV = D / 8 (a constant at each call site: q, o and a row live in registers); D % 8 == 0, D <= 256.
 * q(i) / o(i): query i = s * G + g at qs + s * ldq + g * D, o likewise (ldo); mask row of query i:
 * mask + s * L. ends: [S], each token's visible end. P: [Q, L] scratch; sums: [Q] scratch. */
static inline __attribute__((always_inline)) void attend_group(
        const float *qs, int64_t ldq, int64_t G, int64_t S, const void *K, const void *V, int64_t L,
        const int DV, const float *mask, const int64_t *ends, float scale, float *P, float *sums, float *os,
        int64_t ldo, const void *Kn, const int H16) {
    const int64_t D = 8 * DV, Q = G * S, Q3 = Q - Q % 3;
    if (S <= PHASED_TOKENS && Q3 <= 3 * PHASED_GROUPS) {
        int64_t n3[PHASED_GROUPS];                 /* each group's end */
        for (int64_t i = 0; i < Q3; i += 3) n3[i / 3] = group_end(ends, G, i, 3);
#if QGEMM_AVX512
        const int T = Q3 >= TRANSPOSED_QUERIES;    /* whole 16-column chunks transposed (scores_16t) */
        __m512 kt[8 * DV];
#else
        const int T = 0;
#endif
        for (int64_t c = 0; c + 8 <= L; c += 8) {
            const int64_t c16 = c - c % 16;        /* the 16-column chunk that holds c */
            prefetch_kv_rows(V, c, 8, D, H16);        /* for the P V below */
            int transposed = 0;
            for (int64_t i = 0; i < Q3; i += 3)
                if (T && c16 + 16 <= n3[i / 3]) {  /* the group's chunk is whole: scored at its start */
#if QGEMM_AVX512
                    if (c == c16) {
                        if (!transposed) transpose16(K, D, DV, c16, kt, H16);
                        transposed = 1;
                        scores_16t(qs, ldq, G, i, 3, kt, DV, mask, L, c16, scale, P);
                    }
#endif
                } else if (c + 8 <= n3[i / 3]) {
                    scores_8(qs, ldq, G, i, 3, K, D, DV, mask, L, c, scale, P, H16);
                }
            for (int64_t i = Q3; i < Q; i++)
                if (c + 8 <= ends[i / G]) scores_8(qs, ldq, G, i, 1, K, D, DV, mask, L, c, scale, P, H16);
        }
        for (int64_t i = 0; i < Q3; i += 3)
            finish_group(qs, ldq, G, i, 3, K, V, L, n3[i / 3] - n3[i / 3] % 8, n3[i / 3], DV, mask, scale, P, sums,
                         os, ldo, Kn, H16);
        for (int64_t i = Q3; i < Q; i++)
            finish_group(qs, ldq, G, i, 1, K, V, L, ends[i / G] - ends[i / G] % 8, ends[i / G], DV, mask, scale, P,
                         sums, os, ldo, Kn, H16);
        return;
    }
    for (int64_t i = 0; i < Q3; i += 3) whole_group(qs, ldq, G, i, 3, K, V, L, ends, DV, mask, scale, P, sums, os, ldo, H16);
    for (int64_t i = Q3; i < Q; i++) whole_group(qs, ldq, G, i, 1, K, V, L, ends, DV, mask, scale, P, sums, os, ldo, H16);
}

/* attend_DV (a float32 cache) and attend16_DV (float16): one compiled body per head size and cache type */
#define ATTEND_D(DV) static void attend_##DV(const float *qs, int64_t ldq, int64_t G, int64_t S,        \
    const void *K, const void *V, int64_t L, const float *mask, const int64_t *ends, float scale, float *P, \
    float *sums, float *os, int64_t ldo, const void *Kn) {                                              \
        attend_group(qs, ldq, G, S, K, V, L, DV, mask, ends, scale, P, sums, os, ldo, Kn, 0); }        \
    static void attend16_##DV(const float *qs, int64_t ldq, int64_t G, int64_t S,                     \
    const void *K, const void *V, int64_t L, const float *mask, const int64_t *ends, float scale, float *P, \
    float *sums, float *os, int64_t ldo, const void *Kn) {                                              \
        attend_group(qs, ldq, G, S, K, V, L, DV, mask, ends, scale, P, sums, os, ldo, Kn, 1); }
ATTEND_D(1) ATTEND_D(2) ATTEND_D(4) ATTEND_D(8) ATTEND_D(12) ATTEND_D(16) ATTEND_D(32)
typedef void (*attend_fn)(const float *, int64_t, int64_t, int64_t, const void *, const void *, int64_t,
                          const float *, const int64_t *, float, float *, float *, float *, int64_t, const void *);

static attend_fn attend_for(int64_t D, int64_t kv16) {   /* NULL: a head size the layer does not run */
    switch (D) {
        case 8: return kv16 ? attend16_1 : attend_1;
        case 16: return kv16 ? attend16_2 : attend_2;
        case 32: return kv16 ? attend16_4 : attend_4;
        case 64: return kv16 ? attend16_8 : attend_8;
        case 96: return kv16 ? attend16_12 : attend_12;
        case 128: return kv16 ? attend16_16 : attend_16;
        case 256: return kv16 ? attend16_32 : attend_32;
        default: return 0;
    }
}

/* ---- one decoder layer, and every layer of a forward in one call ---- */

typedef struct {              /* a quantized matrix W [N, K] (+ bias [N] or NULL) */
    int64_t kind, N, K, ldw;
    const uint8_t *w;
    const float *bias;
    int64_t packed;           /* 1: q8a_pack's layout (the Q8-activation GEMM's), 0: GGUF's */
} QMat;

typedef struct {
    QMat qkv, o, gate_up, down;       /* q|k|v and gate|up fused along N */
    const float *norm1, *norm2;       /* RMSNorm weights [d] */
    void *kbuf, *vbuf;                /* the cache: [B0, Hkv, cap, D], live rows first; float32, or float16
                                         where Step.kv16 (IEEE half, rounded to nearest even on write) */
} Layer;

typedef struct {
    int64_t B, S, d, H, Hkv, D, inter, cap, start, L;
    int64_t act;                      /* 0: float32 activations (qgemm), 1: Q8 activations (qgemm_q8a) */
    double eps, scale;
    const float *rope;                /* [B*S, 2D]: cos | sin with its first half negated (lean.py's table) */
    const float *mask;                /* [B, S, L] additive: 0 visible, float32 min hidden */
    float *work;                      /* layer_work_floats() floats */
    int64_t kv16;                     /* 1: the cache holds float16 (half the bytes a long context streams) */
} Step;

static int64_t widest_input(int64_t d, int64_t H, int64_t D, int64_t inter) {
    int64_t k = d > H * D ? d : H * D;
    return k > inter ? k : inter;
}

/* scratch floats layers_forward() needs: the visible ends of N = B * S tokens (int64, first: aligned),
 * their activations, attention's P and sums, then the Q8 activations of the widest projection input
 * (q8a_scratch_bytes, in floats) */
int64_t layer_work_floats(int64_t N, int64_t S, int64_t d, int64_t H, int64_t Hkv, int64_t D, int64_t inter,
                          int64_t L) {
    return 2 * N + N * d + N * (H + 2 * Hkv) * D + N * H * D + N * 3 * inter + (H / Hkv) * S * (L + 1)
           + (q8a_scratch_bytes(N, widest_input(d, H, D, inter)) + 3) / 4;
}

/* q8: the scratch of qgemm_q8a (Q8 activations), NULL for float32 activations */
static void gemm(const QMat *m, const float *x, int64_t ldx, float *y, int64_t ldy, int64_t M, int accumulate,
                 void *q8) {
    if (q8) qgemm_q8a((int)m->kind, x, ldx, m->w, m->ldw, y, ldy, M, m->N, m->K, accumulate, q8);
    else qgemm((int)m->kind, x, ldx, m->w, m->ldw, y, ldy, M, m->N, m->K, accumulate);
    if (m->bias)
        for (int64_t r = 0; r < M; r++)
            for (int64_t n = 0; n < m->N; n++) y[r * ldy + n] += m->bias[n];
}

/* RoPE on one head in place: x * cos + roll(x, D/2) * signed_sin, as lean.py computes it */
static void rope_head(float *x, const float *cs, int64_t D, float *tmp) {
    const int64_t h = D / 2;
    for (int64_t i = 0; i < D; i++) tmp[i] = x[i];
    for (int64_t i = 0; i < D; i++) x[i] = tmp[i] * cs[i] + tmp[(i + h) % D] * cs[D + i];
}

/* next: the layer after ly (NULL for the last): its first head's K is the one after ly's last */
static void attention_block(const Layer *ly, const Layer *next, const Step *st, const int64_t *ends, float *qkv,
                            float *o, float *p) {
    const int64_t B = st->B, S = st->S, H = st->H, Hkv = st->Hkv, D = st->D, G = H / Hkv;
    const int64_t W = (H + 2 * Hkv) * D, cap = st->cap;
    float tmp[1024];
    for (int64_t n = 0; n < B * S; n++) {           /* RoPE on q and k, then K/V into the cache */
        const int64_t b = n / S, c = st->start + n % S;
        float *row = qkv + n * W;
        for (int64_t h = 0; h < H + Hkv; h++) rope_head(row + h * D, st->rope + n * 2 * D, D, tmp);
        for (int64_t h = 0; h < Hkv; h++) {
            const int64_t at = ((b * Hkv + h) * cap + c) * D;
            if (st->kv16) {
                store_f16((uint16_t *)ly->kbuf + at, row + (H + h) * D, D, 0);
                store_f16((uint16_t *)ly->vbuf + at, row + (H + Hkv + h) * D, D, 0);
            } else {
                memcpy((float *)ly->kbuf + at, row + (H + h) * D, D * sizeof(float));
                memcpy((float *)ly->vbuf + at, row + (H + Hkv + h) * D, D * sizeof(float));
            }
        }
    }
    const attend_fn fn = attend_for(D, st->kv16);
    const int64_t es = st->kv16 ? 2 : 4;          /* bytes an element of the cache takes */
    for (int64_t b = 0; b < B; b++)
        for (int64_t kv = 0; kv < Hkv; kv++) {
            const int64_t at = (b * Hkv + kv) * cap * D * es;
            const int last = b == B - 1 && kv == Hkv - 1;   /* the head after: this layer's next, or next's first */
            const void *Kn = !last ? (const char *)ly->kbuf + at + cap * D * es : next ? next->kbuf : 0;
            fn(qkv + b * S * W + kv * G * D, W, G, S, (const char *)ly->kbuf + at, (const char *)ly->vbuf + at, st->L,
               st->mask + b * S * st->L, ends + b * S, (float)st->scale, p, p + G * S * st->L,
               o + b * S * H * D + kv * G * D, H * D, Kn);
        }
}

/* SiLU(g) * u for each row of gu = [g | u] */
static void silu_mul(const float *gu, int64_t M, int64_t I, float *out) {
    for (int64_t r = 0; r < M; r++)
        for (int64_t i = 0; i < I; i++) {
            const float g = gu[r * 2 * I + i];
            out[r * I + i] = g / (1.0f + exp_fixed(-g)) * gu[r * 2 * I + I + i];
        }
}

/* x [B*S, d] in place through `n` layers. Returns 0, or -1 on a bad argument. */
int layers_forward(const Layer *layers, int64_t n, const Step *st, float *x) {
    const int64_t N = st->B * st->S, d = st->d, H = st->H, Hkv = st->Hkv, D = st->D, I = st->inter;
    if (!attend_for(D, 0) || H % Hkv || st->start + st->S > st->cap || st->L > st->cap || st->act < 0 || st->act > 1
        || st->kv16 < 0 || st->kv16 > 1) return -1;
    for (int64_t i = 0; i < n; i++)               /* each GEMM reads its own layout */
        if (layers[i].qkv.packed != st->act || layers[i].o.packed != st->act || layers[i].gate_up.packed != st->act
            || layers[i].down.packed != st->act) return -1;
    int64_t *ends = (int64_t *)st->work;          /* the mask is every layer's: its ends are found once */
    visible_ends(st->mask, N, st->L, ends);
    float *h = st->work + 2 * N, *qkv = h + N * d, *o = qkv + N * (H + 2 * Hkv) * D, *gu = o + N * H * D,
          *act = gu + N * 2 * I, *p = act + N * I;
    void *q8 = st->act ? (void *)(p + (H / Hkv) * st->S * (st->L + 1)) : 0;
    for (int64_t i = 0; i < n; i++) {
        const Layer *ly = layers + i;
        rmsnorm_rows(x, d, ly->norm1, (float)st->eps, h, d, N, d);
        gemm(&ly->qkv, h, d, qkv, (H + 2 * Hkv) * D, N, 0, q8);
        attention_block(ly, i + 1 < n ? ly + 1 : 0, st, ends, qkv, o, p);
        gemm(&ly->o, o, H * D, x, d, N, 1, q8);
        rmsnorm_rows(x, d, ly->norm2, (float)st->eps, h, d, N, d);
        gemm(&ly->gate_up, h, d, gu, 2 * I, N, 0, q8);
        silu_mul(gu, N, I, act);
        gemm(&ly->down, act, I, x, d, N, 1, q8);
    }
    return 0;
}
