/* exp by the Cephes polynomial core/blocks/fast_math.py evaluates with MLX's ops, for the C kernels that include
   this file (its text goes before theirs: core/cpu_kernels.py). exp(x) = 2**n * 2**f, n = round(x log2(e)),
   f in [-1/2, 1/2], for x in [LOWEST, HIGHEST] (the caller clamps). The scalar and the AVX-512 forms do the same
   operations in the same order (built -ffp-contract=off), so they give the same bits. */
#include <stdint.h>
#include <string.h>

static const float LOG2_E = 1.4426950408889634f, ROUND = 12582912.0f, LOWEST = -87.0f, HIGHEST = 88.0f;
static const float C0 = 1.0f, C1 = 6.931472028550421e-1f, C2 = 2.402264791363012e-1f, C3 = 5.550332471162809e-2f,
                   C4 = 9.618437357674640e-3f, C5 = 1.339887440266574e-3f, C6 = 1.535336188319500e-4f;

static inline float exp_scalar(float x) {
    float n = (x * LOG2_E + ROUND) - ROUND;
    int32_t bits = ((int32_t)n + 127) << 23;
    float power, f = x * LOG2_E - n, f2 = f * f;
    memcpy(&power, &bits, 4);
    float p = (C0 + C1 * f) + f2 * (C2 + C3 * f) + (f2 * f2) * ((C4 + C5 * f) + C6 * f2);
    return p * power;
}

#ifdef HAS_AVX512_FORMS
__attribute__((target("avx512f"), always_inline)) static inline __m512 exp16(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(LOG2_E), round = _mm512_set1_ps(ROUND);
    __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, log2e), round), round);
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 f = _mm512_sub_ps(_mm512_mul_ps(x, log2e), n), f2 = _mm512_mul_ps(f, f);
    __m512 low = _mm512_add_ps(_mm512_set1_ps(C0), _mm512_mul_ps(_mm512_set1_ps(C1), f));
    __m512 mid = _mm512_mul_ps(f2, _mm512_add_ps(_mm512_set1_ps(C2), _mm512_mul_ps(_mm512_set1_ps(C3), f)));
    __m512 high = _mm512_mul_ps(_mm512_mul_ps(f2, f2), _mm512_add_ps(_mm512_add_ps(_mm512_set1_ps(C4),
                                _mm512_mul_ps(_mm512_set1_ps(C5), f)), _mm512_mul_ps(_mm512_set1_ps(C6), f2)));
    return _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(low, mid), high), _mm512_castsi512_ps(bits));
}
#endif
