/* Scratch (2026-12-05, stop 33; not a product script): the kernels' attention for a verify: S tokens at the end of L columns, 3 query heads a KV
 * head, D 64, 3 KV heads = one SmolLM2 layer; median of N. gcc -O3 -march=native -ffp-contract=off verify_attention_scratch.c -o a -lm && ./a 8 1000 41
 * (stop 34) a 4th argument NL > 1: NL layers with their own K and V, all timed in a pass, and 64 MB written between passes
 * (the weights' traffic of a step), so that K and V come from memory as in the model: ./a 1 1000 15 30.
 * -DQKF='"old.c"' builds another source. */
#ifndef QKF
#define QKF "../../../specdec/engine/qkernels.c"
#endif
#include QKF
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
    int64_t S = atoll(argv[1]), L = atoll(argv[2]), G = 3, D = 64, H = 3, reps = argc > 3 ? atoll(argv[3]) : 21;
    const int NL = argc > 4 ? atoi(argv[4]) : 1;
    float *qs = malloc(sizeof(float) * S * G * D);
    float **K = malloc(sizeof(float *) * H * NL), **V = malloc(sizeof(float *) * H * NL);
    for (int h = 0; h < H * NL; h++) { K[h] = malloc(sizeof(float) * L * D); V[h] = malloc(sizeof(float) * L * D); }
    char *junk = NL > 1 ? malloc(64 << 20) : 0;
    float *mask = malloc(sizeof(float) * S * L), *P = malloc(sizeof(float) * G * S * L), *sums = malloc(sizeof(float) * G * S);
    float *os = malloc(sizeof(float) * S * G * D * H);
    int64_t *ends = malloc(sizeof(int64_t) * S);
    srand(1);
    for (int64_t i = 0; i < S * G * D; i++) qs[i] = (rand() / (float)RAND_MAX - 0.5f);
    for (int h = 0; h < H * NL; h++) for (int64_t i = 0; i < L * D; i++) { K[h][i] = rand() / (float)RAND_MAX - 0.5f; V[h][i] = rand() / (float)RAND_MAX - 0.5f; }
    for (int64_t s = 0; s < S; s++) for (int64_t c = 0; c < L; c++) mask[s * L + c] = c <= L - S + s ? 0.0f : -3.4028235e38f;
    visible_ends(mask, S, L, ends);
    double t[200];
    for (int r = 0; r < reps; r++) {
        if (junk) for (int64_t i = 0; i < (64 << 20); i += 64) junk[i]++;
        double t0 = now();
        for (int l = 0; l < NL; l++)
            for (int h = 0; h < H; h++)
                attend_8(qs, G * D, G, S, K[l * H + h], V[l * H + h], L, mask, ends, 0.125f, P, sums, os + h * S * G * D, G * D);
        t[r] = (now() - t0) / NL;
    }
    qsort(t, reps, sizeof(double), cmp);
    double med = t[reps / 2];
    double macs = 2.0 * H * G * S * L * D;
    double cs = 0; for (int64_t i = 0; i < S * G * D * H; i++) cs += os[i] * (1 + i % 7);
    printf("S=%ld L=%ld%s: %.3f ms per layer, x30 = %.2f ms, %.1f GMAC/s, checksum %.9g\n", S, L,
           NL > 1 ? " (from memory)" : "", med * 1e3, med * 30e3, macs / med / 1e9, cs);
    return 0;
}
