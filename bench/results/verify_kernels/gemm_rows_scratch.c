/* Scratch (2026-12-05, stop 33; not a product script): qgemm (the float-activation GEMM) over SmolLM2's 30
 * layers' Q4_1 shapes (qkv 576->960, o 576->576, gate_up 576->3072, down 1536->576), distinct random weights per layer (66 MB: streamed like a
 * step), M rows; median of N passes; prints a hash of every output bit (equal builds: equal hashes).
 * gcc -O3 -march=native -ffp-contract=off gemm_rows_scratch.c -o g -lm && taskset -c 1 ./g 8 21   (M rows, passes) */
#include "../../../specdec/engine/qkernels.c"
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }
static uint16_t rh(void) { float f = 0.001f + (rand() % 1000) * 1e-5f; return float_to_half(f); }
int main(int argc, char **argv) {
    int64_t M = atoll(argv[1]), reps = argc > 2 ? atoll(argv[2]) : 21, NL = 30;
    int64_t shp[4][2] = {{960, 576}, {576, 576}, {3072, 576}, {576, 1536}};
    uint8_t *W[30][4]; float *x = malloc(4 * M * 1536), *y = malloc(4 * M * 3072);
    srand(3);
    for (int64_t i = 0; i < M * 1536; i++) x[i] = rand() / (float)RAND_MAX - 0.5f;
    double macs = 0;
    for (int l = 0; l < NL; l++) for (int j = 0; j < 4; j++) {
        int64_t N = shp[j][0], K = shp[j][1], nb = K / 32; W[l][j] = malloc(N * nb * 20);
        for (int64_t b = 0; b < N * nb; b++) { uint8_t *p = W[l][j] + 20 * b; uint16_t d = rh(), m = rh() ^ 0x8000;
            memcpy(p, &d, 2); memcpy(p + 2, &m, 2); for (int k = 0; k < 16; k++) p[4 + k] = rand(); }
        macs += (double)M * N * K;
    }
    double t[200]; uint64_t h = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        for (int l = 0; l < NL; l++) for (int j = 0; j < 4; j++)
            qgemm(0, x, shp[j][1], W[l][j], shp[j][1] / 32 * 20, y, shp[j][0], M, shp[j][0], shp[j][1], 0);
        t[r] = now() - t0;
        if (r == 0) for (int l = 0; l < NL; l++) for (int j = 0; j < 4; j++) {
            qgemm(0, x, shp[j][1], W[l][j], shp[j][1] / 32 * 20, y, shp[j][0], M, shp[j][0], shp[j][1], 0);
            for (int64_t i = 0; i < M * shp[j][0]; i++) { uint32_t u; memcpy(&u, y + i, 4); h = h * 1000003 + u; } }
    }
    qsort(t, reps, sizeof(double), cmp);
    printf("M=%ld: %.3f ms (30 layers), %.1f GMAC/s, hash %016lx\n", M, t[reps / 2] * 1e3, macs / t[reps / 2] / 1e9, h);
    return 0;
}
