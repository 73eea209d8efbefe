/* A quantized layer's product on the CPU, its weight dequantized inside the product, one tile at a time.

   y (m x n) = x (m x k) @ W.T, where W (n x k) is MLX's affine layout: each row's codes packed little-end
   first (2, 4 or 8 bits), one scale and one offset per group of `group` codes, W = code * scale + offset.
   The output is cut into one block per thread (a share of its columns, and of its rows when the columns
   alone would leave a thread too narrow a share). Each thread walks its block in tiles of `tile_rows`
   weight rows by `tile_inputs` inputs: it dequantizes the tile into a buffer of its own (small enough
   to stay in the cache) and adds the tile's product into its block with a one-thread BLAS sgemm. No
   thread holds more than one dense tile, and no dense copy of the weight is ever made.

   Built by core/quant/tile_kernel.py with the system C compiler, -ffp-contract=off: the code times the
   scale is rounded before the offset is added, as MLX's own dequantize rounds it. */

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*sgemm_fn)(int order, int transa, int transb, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
enum { SCALES_F32 = 0, SCALES_F16 = 1, SCALES_BF16 = 2 };
#define MAX_THREADS 64
#define MAX_TILE_GROUPS 256 /* a tile's groups along its inputs */
#define MIN_COLUMNS 256 /* a thread's narrowest share of columns before rows are shared out too */

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 31) {
        bits = sign | 0x7f800000 | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else { /* subnormal: normalize */
        exponent = 113;
        while (!(mantissa & 0x400)) {
            mantissa <<= 1;
            exponent--;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

static float scalar_at(const void *values, int kind, size_t index) {
    if (kind == SCALES_F32) return ((const float *)values)[index];
    uint16_t half = ((const uint16_t *)values)[index];
    if (kind == SCALES_F16) return half_to_float(half);
    uint32_t bits = (uint32_t)half << 16;
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

/* One tile row: `groups` groups of `group` codes from `codes`, each times its scale plus its offset. */
typedef void (*row_fn)(const uint8_t *codes, const float *scales, const float *offsets, int groups, int group,
                       float *out);

static void row_scalar_8(const uint8_t *codes, const float *scales, const float *offsets, int groups, int group,
                         float *out) {
    for (int g = 0; g < groups; g++, codes += group, out += group) {
        for (int i = 0; i < group; i++) {
            float scaled = (float)codes[i] * scales[g];
            out[i] = scaled + offsets[g];
        }
    }
}

static void row_scalar_4(const uint8_t *codes, const float *scales, const float *offsets, int groups, int group,
                         float *out) {
    for (int g = 0; g < groups; g++, codes += group / 2, out += group) {
        for (int i = 0; i < group / 2; i++) {
            float low = (float)(codes[i] & 15) * scales[g], high = (float)(codes[i] >> 4) * scales[g];
            out[2 * i] = low + offsets[g];
            out[2 * i + 1] = high + offsets[g];
        }
    }
}

static void row_scalar_2(const uint8_t *codes, const float *scales, const float *offsets, int groups, int group,
                         float *out) {
    for (int g = 0; g < groups; g++, codes += group / 4, out += group) {
        for (int i = 0; i < group; i++) {
            float scaled = (float)((codes[i / 4] >> (2 * (i % 4))) & 3) * scales[g];
            out[i] = scaled + offsets[g];
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* 16 codes a step: each 32-bit lane holds the word its code is in, shifted down to the code. */
#define ROW_AVX512(bits, words_per_step, load, lane_words, lane_shifts)                                              \
    __attribute__((target("avx512f"))) static void row_avx512_##bits(                                          \
        const uint8_t *codes, const float *scales, const float *offsets, int groups, int group, float *out) { \
        const __m512i pick = _mm512_setr_epi32 lane_words, shifts = _mm512_setr_epi32 lane_shifts;           \
        const __m512i mask = _mm512_set1_epi32((1 << bits) - 1);                                              \
        for (int g = 0; g < groups; g++) {                                                                    \
            __m512 scale = _mm512_set1_ps(scales[g]), offset = _mm512_set1_ps(offsets[g]);                    \
            for (int i = 0; i < group; i += 16, codes += 4 * words_per_step, out += 16) {                     \
                __m128i words = load;                                                                                               \
                __m512i v = _mm512_permutexvar_epi32(pick, _mm512_castsi128_si512(words));                     \
                v = _mm512_and_si512(_mm512_srlv_epi32(v, shifts), mask);                                     \
                _mm512_storeu_ps(out, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), scale), offset));   \
            }                                                                                                 \
        }                                                                                                     \
    }
ROW_AVX512(8, 4, _mm_loadu_si128((const __m128i *)codes), (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
           (0, 8, 16, 24, 0, 8, 16, 24, 0, 8, 16, 24, 0, 8, 16, 24))
ROW_AVX512(4, 2, _mm_loadl_epi64((const __m128i *)codes), (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
           (0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28))
ROW_AVX512(2, 1, _mm_cvtsi32_si128(*(const int *)codes), (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
           (0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30))
#endif

static row_fn row_function(int bits, int vectors) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (vectors && __builtin_cpu_supports("avx512f")) return bits == 8 ? row_avx512_8 : bits == 4 ? row_avx512_4 : row_avx512_2;
#endif
    return bits == 8 ? row_scalar_8 : bits == 4 ? row_scalar_4 : row_scalar_2;
}

typedef struct {
    const float *x;
    const uint8_t *codes;
    const void *scales, *offsets;
    float *y;
    int m, n, k, bits, group, kind, tile_rows, tile_inputs;
    int row0, row1, column0, column1; /* this thread's block of y */
    sgemm_fn sgemm;
    row_fn dequantize_row;
} block_t;

static void dequantize_tile(const block_t *b, int w0, int w1, int k0, int k1, float *tile) {
    size_t row_bytes = (size_t)b->k * b->bits / 8, groups = (size_t)b->k / b->group;
    int first = k0 / b->group, count = (k1 - k0) / b->group;
    float scales[MAX_TILE_GROUPS], offsets[MAX_TILE_GROUPS];
    for (int w = w0; w < w1; w++) {
        for (int g = 0; g < count; g++) {
            scales[g] = scalar_at(b->scales, b->kind, w * groups + first + g);
            offsets[g] = scalar_at(b->offsets, b->kind, w * groups + first + g);
        }
        b->dequantize_row(b->codes + w * row_bytes + (size_t)k0 * b->bits / 8, scales, offsets, count, b->group,
                          tile + (size_t)(w - w0) * (k1 - k0));
    }
}

static void *run_block(void *argument) {
    const block_t *b = argument;
    int width = b->column1 - b->column0 < b->tile_rows ? b->column1 - b->column0 : b->tile_rows;
    int depth = b->k < b->tile_inputs ? b->k : b->tile_inputs;
    float *tile = malloc((size_t)width * depth * sizeof(float));
    if (tile == NULL) return (void *)1;
    const float *x = b->x + (size_t)b->row0 * b->k;
    float *y = b->y + (size_t)b->row0 * b->n;
    for (int w0 = b->column0; w0 < b->column1; w0 += width) {
        int w1 = w0 + width < b->column1 ? w0 + width : b->column1;
        for (int k0 = 0; k0 < b->k; k0 += depth) {
            int k1 = k0 + depth < b->k ? k0 + depth : b->k;
            dequantize_tile(b, w0, w1, k0, k1, tile);
            b->sgemm(ROW_MAJOR, NO_TRANS, TRANS, b->row1 - b->row0, w1 - w0, k1 - k0, 1.0f, x + k0, b->k, tile,
                     k1 - k0, k0 == 0 ? 0.0f : 1.0f, y + w0, b->n);
        }
    }
    free(tile);
    return NULL;
}

static int share(int total, int parts, int index) { return (int)((long long)total * index / parts); }

/* Returns 0, 1 when a thread's tile could not be allocated, 2 when a thread could not be started.
   tile_inputs must be a multiple of group, and group of 16; vectors = 0 dequantizes with plain C even where
   the CPU has AVX-512 (the same bits). The caller's BLAS must multiply on the calling thread alone. */
int quantized_matmul(const float *x, const uint8_t *codes, const void *scales, const void *offsets, float *y, int m,
                     int n, int k, int bits, int group, int kind, int threads, int tile_rows, int tile_inputs,
                     int vectors, sgemm_fn sgemm) {
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    if (tile_inputs > MAX_TILE_GROUPS * group) tile_inputs = MAX_TILE_GROUPS * group;
    row_fn dequantize_row = row_function(bits, vectors);
    int column_parts = threads;
    while (column_parts > 1 && n / column_parts < MIN_COLUMNS) column_parts--;
    int row_parts = threads / column_parts < m ? threads / column_parts : (m > 0 ? m : 1);
    block_t blocks[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    int count = 0, failed = 0;
    for (int r = 0; r < row_parts; r++) {
        for (int c = 0; c < column_parts; c++) {
            blocks[count++] = (block_t){x, codes, scales, offsets, y, m, n, k, bits, group, kind, tile_rows,
                                        tile_inputs, share(m, row_parts, r), share(m, row_parts, r + 1),
                                        share(n, column_parts, c), share(n, column_parts, c + 1), sgemm,
                                        dequantize_row};
        }
    }
    int started = 1;
    for (; started < count; started++) {
        if (pthread_create(&handles[started], NULL, run_block, &blocks[started]) != 0) {
            failed = 2;
            break;
        }
    }
    if (run_block(&blocks[0]) != NULL) failed = failed ? failed : 1;
    for (int t = 1; t < started; t++) {
        void *result;
        pthread_join(handles[t], &result);
        if (result != NULL) failed = failed ? failed : 1;
    }
    return failed;
}
