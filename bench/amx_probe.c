/* Does AMX-INT8 make the Q8-activation Q4_1 GEMM's extra rows cheaper? A probe, not a kernel of specdec.
 *
 * specdec's gguf-q8a GEMM (specdec/engine/qkernels.c) sums each Q4_1 block's 32 int8 x nibble products
 * exactly in integers, then scales the block's sum in float (d_w * d_x, plus the m term). On a verify of
 * 5 tokens the rows beyond the first cost ~1 ms each on SmolLM2 (in-loop, bench/RESULTS.md), bound by the
 * dot products and the per-block scale work alike. AMX's TDPBSUD multiplies a tile of up to 16 rows by
 * 16 columns in one instruction, but it sums a whole tile row: with a scale per 32-element block, every
 * block needs its own tile (K = 32), its own store of the int32 results and its own float pass.
 * This probe measures that design against qgemm_q8a on the same weights and activations:
 *   layout   per 16 columns and block, 320 bytes: 256 bytes of nibbles in the B tile's order (byte i =
 *            row i / 64, column (i % 64) / 4, element i % 4; low nibble elements 0-15, high 16-31), then
 *            16 fp16 d, 16 fp16 m (as many bytes as GGUF's blocks);
 *   phases   per 16 columns: unpack every block's nibbles to a 512-byte B tile in L1; then per block zero
 *            a C tile, load A (the rows' Q8 block, M x 32) and B, TDPBSUD, store C; then per block and
 *            row acc = fma(float(C), d_w * d_x, acc), acc = fma(m_w, s_x, acc) (one chain per output,
 *            bit-compared with a scalar reference of that order). Two groups of columns are in flight so
 *            that a group's tile stores land before its float pass reads them.
 *   --skip   unpack | tile | float: leave one phase out (results wrong; times what the others cost).
 * Build and run through bench/amx_probe.py (the same compiler flags as specdec's kernels). Linux only:
 * AMX needs arch_prctl(ARCH_REQ_XCOMP_PERM) first; prints {"amx": false} where it is refused. */
#include "qkernels.c"
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define UNIT 320
#define MAXNB 64
typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) TileConfig;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

static void pack(const uint8_t *src, int64_t N, int64_t K, uint8_t *dst) {        /* GGUF Q4_1 [N, K] */
    const int64_t nb = K / 32;
    memset(dst, 0, (N / 16) * nb * UNIT);
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = src + (n * nb + b) * 20;
            uint8_t *u = dst + ((n / 16) * nb + b) * UNIT;
            const int c = (int)(n % 16);
            for (int k = 0; k < 32; k++) {
                const int q = k < 16 ? blk[4 + k] & 15 : blk[4 + k - 16] >> 4, kk = k % 16;
                u[(kk / 4) * 64 + c * 4 + kk % 4] |= (uint8_t)(k < 16 ? q : q << 4);
            }
            memcpy(u + 256 + 2 * c, blk, 2);
            memcpy(u + 288 + 2 * c, blk + 2, 2);
        }
}

static void reference(const uint8_t *w, int64_t N, int64_t K, const int8_t *qx, const float *dx, const float *sx,
                      int64_t M, float *y) {
    const int64_t nb = K / 32;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *u = w + ((n / 16) * nb + b) * UNIT;
                const int c = (int)(n % 16);
                int is = 0;
                for (int k = 0; k < 32; k++) {
                    const int kk = k % 16, v = u[(kk / 4) * 64 + c * 4 + kk % 4];
                    is += (k < 16 ? v & 15 : v >> 4) * qx[m * K + b * 32 + k];
                }
                acc = fmaf((float)is, half_to_float(u + 256 + 2 * c) * dx[m * nb + b], acc);
                acc = fmaf(half_to_float(u + 288 + 2 * c), sx[m * nb + b], acc);
            }
            y[m * N + n] = acc;
        }
}

static void floats(const uint8_t *u, int64_t nb, const int32_t (*cb)[256], const float *dx, const float *sx,
                   int64_t M, float *y, int64_t ldy) {
    __m512 acc[16];
    for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, u += UNIT) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(u + 256)));
        const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(u + 288)));
        for (int m = 0; m < M; m++) {
            const __m512 is = _mm512_cvtepi32_ps(_mm512_load_si512(cb[b] + 16 * m));
            acc[m] = _mm512_fmadd_ps(is, _mm512_mul_ps(dw, _mm512_set1_ps(dx[m * nb + b])), acc[m]);
            acc[m] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx[m * nb + b]), acc[m]);
        }
    }
    for (int m = 0; m < M; m++) _mm512_storeu_ps(y + m * ldy, acc[m]);
}

static void gemm_amx(const uint8_t *w, int64_t N, int64_t K, const int8_t *qx, const float *dx, const float *sx,
                     int64_t M, float *y, int skip) {
    const int64_t nb = K / 32, groups = N / 16;
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    cfg.rows[0] = (uint8_t)M; cfg.colsb[0] = 64;                     /* C: M x 16 int32 */
    cfg.rows[1] = (uint8_t)M; cfg.colsb[1] = 32;                     /* A: the rows' Q8 block, M x 32 */
    cfg.rows[2] = 8; cfg.colsb[2] = 64;                              /* B: 8 x (16 columns x 4 bytes) */
    _tile_loadconfig(&cfg);
    static __attribute__((aligned(64))) uint8_t bt[2][MAXNB][512];
    static __attribute__((aligned(64))) int32_t cb[2][MAXNB][256];
    const __m512i low4 = _mm512_set1_epi8(15);
    for (int64_t g = 0; g <= groups; g++) {
        const int cur = (int)(g & 1);
        if (g < groups && skip != 1) {                               /* unpack group g */
            const uint8_t *u = w + g * nb * UNIT;
            for (int64_t b = 0; b < nb; b++, u += UNIT) {
                _mm_prefetch((const char *)(u + 8 * UNIT), _MM_HINT_T0);
                for (int t = 0; t < 4; t++) {
                    const __m512i v = _mm512_loadu_si512(u + 64 * t);
                    _mm512_store_si512(bt[cur][b] + 64 * t, _mm512_and_si512(v, low4));
                    _mm512_store_si512(bt[cur][b] + 256 + 64 * t, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
                }
            }
        }
        if (g < groups && skip != 2)                                 /* tiles of group g */
            for (int64_t b = 0; b < nb; b++) {
                _tile_zero(0);
                _tile_loadd(1, qx + b * 32, K);
                _tile_loadd(2, bt[cur][b], 64);
                _tile_dpbsud(0, 1, 2);
                _tile_stored(0, cb[cur][b], 64);
            }
        if (g >= 1 && skip != 3)                                     /* floats of group g - 1 */
            floats(w + (g - 1) * nb * UNIT, nb, (const int32_t (*)[256])cb[cur ^ 1], dx, sx, M, y + (g - 1) * 16, N);
    }
    _tile_release();
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: amx_probe N K M [skip: 0 none, 1 unpack, 2 tile, 3 float] [reps]\n");
        return 2;
    }
    const int64_t N = atoll(argv[1]), K = atoll(argv[2]), M = atoll(argv[3]), nb = K / 32;
    const int skip = argc > 4 ? atoi(argv[4]) : 0, reps = argc > 5 ? atoi(argv[5]) : 2000;
    if (N % 16 || K % 32 || nb > MAXNB || M < 1 || M > 16) {
        fprintf(stderr, "amx_probe: N a multiple of 16, K of 32, K <= 2048, M in 1..16\n");
        return 2;
    }
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) {
        printf("{\"amx\": false}\n");
        return 0;
    }
    srand(1);
    uint8_t *w = malloc(N * nb * 20), *wa = aligned_alloc(64, (N / 16) * nb * UNIT), *wq = malloc(N * nb * 20);
    for (int64_t i = 0; i < N * nb * 20; i++) w[i] = (uint8_t)rand();
    for (int64_t i = 0; i < N * nb; i++) {                           /* scales ~1e-2, minima ~-1e-2 */
        uint16_t h = (uint16_t)(0x2000 + (rand() & 0x3ff)); memcpy(w + i * 20, &h, 2);
        h = (uint16_t)(0xa000 + (rand() & 0x3ff)); memcpy(w + i * 20 + 2, &h, 2);
    }
    float *x = malloc(M * K * 4);
    for (int64_t i = 0; i < M * K; i++) x[i] = rand() / (float)RAND_MAX - 0.5f;
    pack(w, N, K, wa);
    q8a_pack(KIND_Q4_1, w, nb * 20, wq, nb * 20, N, K, 0);
    int8_t *qx = malloc(M * K);
    float *dx = malloc(M * nb * 4), *sx = malloc(M * nb * 4);
    float *ref = malloc(M * N * 4), *got = malloc(M * N * 4), *q8a = malloc(M * N * 4);
    void *scratch = malloc(q8a_scratch_bytes(M, K));
    quantize_rows_q8(x, K, M, K, qx, dx, sx);
    reference(wa, N, K, qx, dx, sx, M, ref);
    gemm_amx(wa, N, K, qx, dx, sx, M, got, 0);
    int differ = 0;
    for (int64_t i = 0; i < M * N; i++) differ += ref[i] != got[i];
    double best_q8a = 1e9, best_amx = 1e9;
    for (int r = 0; r < 7; r++) {                                    /* interleaved, best of 7 */
        double t0 = now();
        for (int i = 0; i < reps; i++) qgemm_q8a(KIND_Q4_1, x, K, wq, nb * 20, q8a, N, M, N, K, 0, scratch);
        const double a = (now() - t0) / reps;
        t0 = now();
        for (int i = 0; i < reps; i++) {
            quantize_rows_q8(x, K, M, K, qx, dx, sx);
            gemm_amx(wa, N, K, qx, dx, sx, M, got, skip);
        }
        const double b = (now() - t0) / reps;
        best_q8a = a < best_q8a ? a : best_q8a;
        best_amx = b < best_amx ? b : best_amx;
    }
    printf("{\"amx\": true, \"N\": %ld, \"K\": %ld, \"M\": %ld, \"skip\": %d, \"differ_from_reference\": %d, "
           "\"q8a_us\": %.2f, \"amx_us\": %.2f}\n", (long)N, (long)K, (long)M, skip, skip ? -1 : differ,
           best_q8a * 1e6, best_amx * 1e6);
    return 0;
}
