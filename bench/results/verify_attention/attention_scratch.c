/* Scratch (2026-12-06; not a product script): qkernels.c's attention alone, SmolLM2's shape (3 query heads a
 * KV head, head size 64, float32 cache), S tokens against L columns, over NB heads' K and V (90 = 30 layers x 3
 * KV heads: 46 MB at L = 1024, more than the L3, as in a decode step), each head's K then the next's. Prints the
 * microseconds a head (the best of 3 passes). Built by attention_ab.py from a commit's qkernels.c:
 *   cc -O3 -march=native -ffp-contract=off -DQK_SOURCE='"qk.c"' [-DKN_ARG] attention_scratch.c -lm
 * KN_ARG: the commit's attend_* take the next head's K (a012ef9 on). */
#include QK_SOURCE
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv) {
    const int64_t L = atoi(argv[1]), S = atoi(argv[2]), NB = atoi(argv[3]);
    const int64_t G = 3, D = 64, cap = L + 16, Q = G * S, ldq = (G + 2) * D;   /* q of token s at qs + s (q|k|v) */
    float **K = malloc(NB * sizeof *K), **V = malloc(NB * sizeof *V);
    srand(1);
    for (int64_t b = 0; b < NB; b++) {
        K[b] = aligned_alloc(64, cap * D * 4), V[b] = aligned_alloc(64, cap * D * 4);
        for (int64_t i = 0; i < cap * D; i++) K[b][i] = rand() / (float)RAND_MAX - 0.5f, V[b][i] = rand() / (float)RAND_MAX - 0.5f;
    }
    float *qs = malloc(S * ldq * 4), *mask = malloc(S * L * 4), *P = malloc((Q * (L + 1) + 64) * 4), *os = malloc(S * G * D * 4);
    for (int64_t i = 0; i < S * ldq; i++) qs[i] = rand() / (float)RAND_MAX - 0.5f;
    for (int64_t s = 0; s < S; s++)          /* the last S columns causal, as a verify's */
        for (int64_t c = 0; c < L; c++) mask[s * L + c] = c <= L - S + s ? 0.0f : -3.4028234663852886e38f;
    int64_t ends[64];
    visible_ends(mask, S, L, ends);
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        const double t0 = now();
        for (int64_t b = 0; b < NB; b++)
#ifdef KN_ARG
            attend_8(qs, ldq, G, S, K[b], V[b], L, mask, ends, 0.125f, P, P + Q * L, os, G * D, b + 1 < NB ? K[b + 1] : 0);
#else
            attend_8(qs, ldq, G, S, K[b], V[b], L, mask, ends, 0.125f, P, P + Q * L, os, G * D);
#endif
        const double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    printf("%.2f\n", 1e6 * best / NB);
    return 0;
}
