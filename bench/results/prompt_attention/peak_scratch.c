/* Scratch (2026-12-05, not a product script): this core's vpdpbusd and vfmadd zmm throughput, 12 independent
 * chains in registers (inline asm: no spills), 10^8 iterations each.
 * gcc -O2 -march=native peak_scratch.c -o p && taskset -c 1 ./p */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
#define R12(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
int main(void) {
    const long n = 100000000;
    double t = now();
    for (long k = 0; k < n; k++)
        __asm__ volatile(
#define DP(i) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #i "\n\t"
            R12(DP)
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
    t = now() - t;
    printf("vpdpbusd zmm: %.2f G/s = %.0f G int8 multiply-adds/s\n", 12.0 * n / t / 1e9, 12.0 * n * 64 / t / 1e9);
    t = now();
    for (long k = 0; k < n; k++)
        __asm__ volatile(
#define FM(i) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #i "\n\t"
            R12(FM)
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");
    t = now() - t;
    printf("vfmadd231ps zmm: %.2f G/s = %.0f G float multiply-adds/s\n", 12.0 * n / t / 1e9, 12.0 * n * 16 / t / 1e9);
    return 0;
}
