/* Scratch (2026-12-05, not a product script): this core's vpdpbusd and vfmadd zmm throughput (12 chains).
 * gcc -O2 -march=native peak_scratch.c -o p && taskset -c 1 ./p  ->  1.81 G/s (116 GMAC/s), 1.90 G/s */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(void) {
    __m512i a[12]; __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(5);
    for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_si512();
    long n = 200000000;
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
        __asm__ volatile("" : "+v"(b));
    }
    t = now() - t;
    int s = 0; for (int i = 0; i < 12; i++) s += _mm512_reduce_add_epi32(a[i]);
    printf("vpdpbusd zmm: %.2f G/s = %.1f GMAC/s (%d)\n", 12.0 * n / t / 1e9, 12.0 * n * 64 / t / 1e9, s);
    __m512 f[12]; __m512 x = _mm512_set1_ps(1.0001f), y = _mm512_set1_ps(0.9999f);
    for (int i = 0; i < 12; i++) f[i] = _mm512_setzero_ps();
    t = now();
    for (long k = 0; k < n; k++) { for (int i = 0; i < 12; i++) f[i] = _mm512_fmadd_ps(x, y, f[i]); __asm__ volatile("" : "+v"(x)); }
    t = now() - t;
    float fs = 0; for (int i = 0; i < 12; i++) fs += _mm512_reduce_add_ps(f[i]);
    printf("vfmadd zmm: %.2f G/s = %.1f GFLOP/s (%f)\n", 12.0 * n / t / 1e9, 12.0 * n * 32 / t / 1e9, fs);
    return 0;
}
