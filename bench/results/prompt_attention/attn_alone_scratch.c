/* Scratch (2026-12-05, not a product script): the kernels' attention alone (attend_8: 3 query heads a KV head,
 * D 64) on random q, K, V over a causal mask, 3 KV heads = one SmolLM2 layer; best of N.
 * gcc -O3 -march=native -ffp-contract=off attn_alone_scratch.c -o a -lm && taskset -c 1 ./a 1200 5 */
#include "../../../specdec/engine/qkernels.c"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv) {
    int64_t S = argc > 1 ? atoll(argv[1]) : 1200, L = S, G = 3, D = 64, H = 3, reps = argc > 2 ? atoll(argv[2]) : 10;
    float *qs = malloc(sizeof(float) * S * G * D), *K = malloc(sizeof(float) * L * D), *V = malloc(sizeof(float) * L * D);
    float *mask = malloc(sizeof(float) * S * L), *P = malloc(sizeof(float) * G * S * L), *sums = malloc(sizeof(float) * G * S);
    float *os = malloc(sizeof(float) * S * G * D);
    int64_t *ends = malloc(sizeof(int64_t) * S);
    srand(1);
    for (int64_t i = 0; i < S * G * D; i++) qs[i] = (rand() / (float)RAND_MAX - 0.5f);
    for (int64_t i = 0; i < L * D; i++) { K[i] = rand() / (float)RAND_MAX - 0.5f; V[i] = rand() / (float)RAND_MAX - 0.5f; }
    for (int64_t s = 0; s < S; s++) for (int64_t c = 0; c < L; c++) mask[s * L + c] = c <= s ? 0.0f : -3.4028235e38f;
    visible_ends(mask, S, L, ends);
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t = now();
        for (int h = 0; h < H; h++) attend_8(qs, G * D, G, S, K, V, L, mask, ends, 0.125f, P, sums, os, G * D);
        t = now() - t; if (t < best) best = t;
    }
    double macs = 0; for (int64_t s = 0; s < S; s++) macs += 2.0 * G * (s + 1) * D;
    printf("S=%ld: %.2f ms per layer (3 kv heads), %.2f GMAC/s causal; x30 layers = %.0f ms\n", S, best * 1e3, H * macs / best / 1e9, best * 30e3);
    return 0;
}
