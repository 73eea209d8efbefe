/* A quantized layer's product on the CPU, its weight dequantized inside the product, one tile at a time.

   y (m x n) = x (m x k) @ W.T, where W (n x k) is MLX's affine layout: each row's codes packed little-end
   first (2, 4 or 8 bits), one scale and one offset per group of `group` codes, W = code * scale + offset.
   The output is cut into blocks of at most `tile_rows` columns (and of rows too, where the columns give
   too few blocks to share out), and each thread takes the next block not yet taken. No dense copy of the
   weight is ever made: a thread dequantizes a part of its block's weight rows at a time into a buffer of its
   own and multiplies it there, in one of two ways:
   - its own products (AVX-512, below): the weight dequantized into the panels the products read, 64 rows by
     256 inputs at a time, which stay in the core's cache. A Klein-4B layer (3072 -> 27648, 768 tokens, 4 bits)
     took 1.00-1.03x the unquantized product's time, where the second way took 1.14-1.17x.
   - a one-thread BLAS sgemm on each tile of `tile_inputs` inputs (other CPUs, or `products` = 0): the tile
     written out (6 MB), then read back and packed again by the sgemm. The blocks are fixed by the caller's
     block count, not by the threads that take them: a BLAS may sum a row in another order when it multiplies
     another number of rows or columns (OpenBLAS's Haswell kernels do), so the same blocks give the same bits,
     however many threads take them.

   Its threads are cpu_threads.h's. Built by core/cpu_kernels.py with the system C compiler, -ffp-contract=off: the
   code times the scale is rounded before the offset is added, as MLX's own dequantize rounds it. */

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*sgemm_fn)(int order, int transa, int transb, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
enum { SCALES_F32 = 0, SCALES_F16 = 1, SCALES_BF16 = 2 };
#define MAX_TILE_GROUPS 256 /* a tile's groups along its inputs */
#define MIN_COLUMNS 256 /* the narrowest block of output columns */

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

#ifdef HAS_AVX512_FORMS
static inline int load_word(const uint8_t *codes) { /* 4 bytes at any alignment */
    int word;
    memcpy(&word, codes, 4);
    return word;
}
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
/* 8 bits: each code a byte, widened to its lane in one instruction. */
__attribute__((target("avx512f"))) static void row_avx512_8(const uint8_t *codes, const float *scales,
                                                            const float *offsets, int groups, int group, float *out) {
    for (int g = 0; g < groups; g++) {
        __m512 scale = _mm512_set1_ps(scales[g]), offset = _mm512_set1_ps(offsets[g]);
        for (int i = 0; i < group; i += 16, codes += 16, out += 16) {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)codes));
            _mm512_storeu_ps(out, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), scale), offset));
        }
    }
}
ROW_AVX512(4, 2, _mm_loadl_epi64((const __m128i *)codes), (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
           (0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28))
ROW_AVX512(2, 1, _mm_cvtsi32_si128(load_word(codes)), (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
           (0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30))
#endif

static row_fn row_function(int bits, int vectors) {
#ifdef HAS_AVX512_FORMS
    if (avx512_here(vectors)) return bits == 8 ? row_avx512_8 : bits == 4 ? row_avx512_4 : row_avx512_2;
#endif
    return bits == 8 ? row_scalar_8 : bits == 4 ? row_scalar_4 : row_scalar_2;
}

typedef struct {
    const float *x;
    const uint8_t *codes;
    const void *scales, *offsets;
    float *y;
    int m, n, k, bits, group, kind, tile_inputs;
    int row_parts, column_blocks, block_width; /* the output's blocks: row_parts x column_blocks */
    int own_products; /* this file's AVX-512 products, not the BLAS's sgemm */
    sgemm_fn sgemm;
    row_fn dequantize_row;
    atomic_int next, done; /* the next block a thread takes; the blocks finished */
} work_t;

static void dequantize_tile(const work_t *b, int w0, int w1, int k0, int k1, float *tile) {
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

/* ---- the own products (AVX-512): the dequantized weight written straight into the panels the product reads ----
   Where OpenBLAS's sgemm multiplies a dequantized tile, the tile is written out to memory, then read back and
   packed again by the sgemm; here the weight is dequantized KC inputs at a time into panels of 32 output columns
   (input-major: one load holds an input's 32 columns; 32 KB a panel, in L1 while it is used), and the input rows,
   MC at a time, into strips of ROWS rows (row-minor), each once per block. ROWS rows by a panel's 32 columns are
   summed a step, in 16 accumulators, into the block's own sums (MC rows by the block's columns, laid out panel by
   panel so that a step's rows are next to each other: the output's own rows are a whole row of the layer apart, and
   at widths such as 27648 they fell into the same cache sets), copied into the output when the inputs are done.
   Each output value is one sum in order over the inputs (stored between KCs as the registers held it), whatever
   the blocks or the threads. */
#define ROWS 8
#define PANEL 32
#define KC 256 /* every group size divides it */
#define COLUMNS 64 /* weight rows dequantized at a time */
#define MC 768

static int rounded(int count, int to) { return (count + to - 1) / to * to; }

#ifdef HAS_AVX512_FORMS
/* 16 rows of 16 floats (rows[i] = row i) become 16 columns: rows[j] lane i = the old rows[i] lane j. */
__attribute__((target("avx512f"), always_inline)) static inline void transpose16(__m512 rows[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(rows[i], rows[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(rows[i], rows[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) { /* u[g + c]'s 128-bit lane L: column 4L + c of rows g..g+3 */
        u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[g]), _mm512_castps_pd(t[g + 2])));
        u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[g]), _mm512_castps_pd(t[g + 2])));
        u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[g + 1]), _mm512_castps_pd(t[g + 3])));
        u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[g + 1]), _mm512_castps_pd(t[g + 3])));
    }
    for (int c = 0; c < 4; c++) { /* the 4 x 4 lanes of u[c], u[4 + c], u[8 + c], u[12 + c], transposed */
        __m512 a = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), b = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
        __m512 d = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), e = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        rows[c] = _mm512_shuffle_f32x4(a, d, 0x88);
        rows[4 + c] = _mm512_shuffle_f32x4(b, e, 0x88);
        rows[8 + c] = _mm512_shuffle_f32x4(a, d, 0xdd);
        rows[12 + c] = _mm512_shuffle_f32x4(b, e, 0xdd);
    }
}

/* Weight rows [w0, w1) at inputs [k0, k1) as panels (zero past w1, to a whole panel); `rows`: 16 x KC floats. */
__attribute__((target("avx512f"))) static void pack_weights(const work_t *b, int w0, int w1, int k0, int k1,
                                                            float *panels, float *rows) {
    int depth = k1 - k0, end = w0 + (w1 - w0 + PANEL - 1) / PANEL * PANEL;
    for (int w = w0; w < end; w += 16) {
        int count = w1 - w < 16 ? (w1 - w > 0 ? w1 - w : 0) : 16;
        if (count > 0) dequantize_tile(b, w, w + count, k0, k1, rows);
        memset(rows + (size_t)count * depth, 0, (size_t)(16 - count) * depth * sizeof(float));
        float *to = panels + (size_t)(w - w0) / PANEL * depth * PANEL + (w - w0) % PANEL;
        for (int i = 0; i < depth; i += 16) {
            __m512 v[16];
            for (int r = 0; r < 16; r++) v[r] = _mm512_loadu_ps(rows + (size_t)r * depth + i);
            transpose16(v);
            for (int r = 0; r < 16; r++) _mm512_storeu_ps(to + (size_t)(i + r) * PANEL, v[r]);
        }
    }
}

/* Rows [0, rows) of x (rows `stride` floats apart), `depth` inputs each, as strips of ROWS rows: x[r][i] at
   strip[i * ROWS + r]; a strip past the last row repeats it. Eight rows of eight inputs are turned at a time. */
__attribute__((target("avx512f"))) static void pack_inputs(const float *x, size_t stride, int rows, int depth,
                                                           float *strips) {
    for (int s = 0; s < rows; s += ROWS, strips += (size_t)depth * ROWS) {
        const float *row[ROWS];
        for (int r = 0; r < ROWS; r++) row[r] = x + (size_t)(s + r < rows ? s + r : rows - 1) * stride;
        for (int i = 0; i < depth; i += 8) {
            __m256 t[ROWS], u[ROWS];
            for (int r = 0; r < ROWS; r += 2) {
                __m256 a = _mm256_loadu_ps(row[r] + i), b = _mm256_loadu_ps(row[r + 1] + i);
                t[r] = _mm256_unpacklo_ps(a, b);
                t[r + 1] = _mm256_unpackhi_ps(a, b);
            }
            for (int g = 0; g < ROWS; g += 4) { /* u[g + c]: inputs c and c + 4 of rows g..g+3 */
                u[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
                u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xee);
                u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
                u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xee);
            }
            float *to = strips + (size_t)i * ROWS;
            for (int c = 0; c < 4; c++) {
                _mm256_storeu_ps(to + c * ROWS, _mm256_permute2f128_ps(u[c], u[4 + c], 0x20));
                _mm256_storeu_ps(to + (c + 4) * ROWS, _mm256_permute2f128_ps(u[c], u[4 + c], 0x31));
            }
        }
    }
}

/* sums[ROWS x 32] (+)= strip (depth x ROWS) . panel (depth x 32); `more`: add to what sums holds. */
__attribute__((target("avx512f"))) static void strip_product(const float *strip, const float *panel, int depth,
                                                             float *sums, int more) {
    __m512 sum[ROWS][2];
    for (int r = 0; r < ROWS; r++) {
        sum[r][0] = more ? _mm512_loadu_ps(sums + r * PANEL) : _mm512_setzero_ps();
        sum[r][1] = more ? _mm512_loadu_ps(sums + r * PANEL + 16) : _mm512_setzero_ps();
    }
    for (int i = 0; i < depth; i++, strip += ROWS, panel += PANEL) {
        __m512 a = _mm512_loadu_ps(panel), b = _mm512_loadu_ps(panel + 16);
        for (int r = 0; r < ROWS; r++) {
            __m512 x = _mm512_set1_ps(strip[r]);
            sum[r][0] = _mm512_fmadd_ps(x, a, sum[r][0]);
            sum[r][1] = _mm512_fmadd_ps(x, b, sum[r][1]);
        }
    }
    for (int r = 0; r < ROWS; r++) {
        _mm512_storeu_ps(sums + r * PANEL, sum[r][0]);
        _mm512_storeu_ps(sums + r * PANEL + 16, sum[r][1]);
    }
}

/* One block of the output, rows [r0, r1) by columns [c0, c1), by the own products; `buffer`: own_buffer_floats. */
__attribute__((target("avx512f"))) static void run_block_own(const work_t *w, int r0, int r1, int c0, int c1,
                                                             float *buffer) {
    float *panels = buffer, *scratch = panels + (size_t)COLUMNS * KC, *strips = scratch + (size_t)16 * KC;
    float *sums = strips + (size_t)MC * KC;
    int step = KC / w->group * w->group;
    for (int m0 = r0; m0 < r1; m0 += MC) {
        int rows = r1 - m0 < MC ? r1 - m0 : MC, padded = rounded(rows, ROWS);
        for (int k0 = 0; k0 < w->k; k0 += step) {
            int k1 = k0 + step < w->k ? k0 + step : w->k, depth = k1 - k0;
            pack_inputs(w->x + (size_t)m0 * w->k + k0, w->k, rows, depth, strips);
            for (int n0 = c0; n0 < c1; n0 += COLUMNS) {
                int n1 = n0 + COLUMNS < c1 ? n0 + COLUMNS : c1;
                pack_weights(w, n0, n1, k0, k1, panels, scratch);
                for (int p = n0; p < n1; p += PANEL) {
                    const float *panel = panels + (size_t)(p - n0) / PANEL * depth * PANEL;
                    float *panel_sums = sums + (size_t)(p - c0) / PANEL * padded * PANEL;
                    for (int s = 0; s < rows; s += ROWS)
                        strip_product(strips + (size_t)s * depth, panel, depth, panel_sums + (size_t)s * PANEL, k0 > 0);
                }
            }
        }
        for (int r = 0; r < rows; r++)
            for (int p = c0; p < c1; p += PANEL)
                memcpy(w->y + (size_t)(m0 + r) * w->n + p, sums + ((size_t)(p - c0) / PANEL * padded + r) * PANEL,
                       (size_t)(c1 - p < PANEL ? c1 - p : PANEL) * sizeof(float));
    }
}
#endif

/* A thread's buffer for the own products: panels, a scratch of 16 dequantized rows, strips, and a block's sums. */
static size_t own_buffer_floats(int block_width) {
    return (size_t)(COLUMNS + 16 + MC) * KC + (size_t)MC * rounded(block_width, PANEL);
}

/* One block of the output: rows [r0, r1) by columns [c0, c1), tile by tile along the inputs. */
static void run_block(const work_t *w, int r0, int r1, int c0, int c1, float *tile) {
    for (int k0 = 0; k0 < w->k; k0 += w->tile_inputs) {
        int k1 = k0 + w->tile_inputs < w->k ? k0 + w->tile_inputs : w->k;
        dequantize_tile(w, c0, c1, k0, k1, tile);
        w->sgemm(ROW_MAJOR, NO_TRANS, TRANS, r1 - r0, c1 - c0, k1 - k0, 1.0f, w->x + (size_t)r0 * w->k + k0, w->k,
                 tile, k1 - k0, k0 == 0 ? 0.0f : 1.0f, w->y + (size_t)r0 * w->n + c0, w->n);
    }
}

static int share(int total, int parts, int index) { return (int)((long long)total * index / parts); }

/* A thread takes the next block not yet taken until none is left: a thread slowed by other work on its core
   takes fewer blocks, instead of the others waiting for its fixed share. */
static void *run_blocks(void *argument) {
    work_t *w = argument;
    int depth = w->k < w->tile_inputs ? w->k : w->tile_inputs;
    size_t floats = w->own_products ? own_buffer_floats(w->block_width) : (size_t)w->block_width * depth;
    float *tile = malloc(floats * sizeof(float));
    if (tile == NULL) return NULL; /* the other threads take its blocks */
    int blocks = w->row_parts * w->column_blocks;
    for (int b; (b = atomic_fetch_add(&w->next, 1)) < blocks;) {
        int r = b / w->column_blocks, c = b % w->column_blocks;
        int c0 = c * w->block_width, c1 = c0 + w->block_width < w->n ? c0 + w->block_width : w->n;
        int r0 = share(w->m, w->row_parts, r), r1 = share(w->m, w->row_parts, r + 1);
#ifdef HAS_AVX512_FORMS
        if (w->own_products) {
            run_block_own(w, r0, r1, c0, c1, tile);
        } else
#endif
            run_block(w, r0, r1, c0, c1, tile);
        atomic_fetch_add(&w->done, 1);
    }
    free(tile);
    return NULL;
}

/* Returns 0, or 1 when no thread could allocate its tile. tile_inputs must be a multiple of group, and group
   of 16; vectors = 0 dequantizes with plain C even where the CPU has AVX-512 (the same bits); products = 1
   multiplies with the own products where the CPU has AVX-512 and a group is at most KC inputs, else with the
   caller's BLAS, which must multiply on the calling thread alone. */
int quantized_matmul(const float *x, const uint8_t *codes, const void *scales, const void *offsets, float *y, int m,
                     int n, int k, int bits, int group, int kind, int threads, int tile_rows, int tile_inputs,
                     int blocks, int share, int vectors, int products, sgemm_fn sgemm) {
    threads = bounded_threads(threads);
    if (tile_inputs > MAX_TILE_GROUPS * group) tile_inputs = MAX_TILE_GROUPS * group;
    /* At least `blocks` blocks where the columns allow (none narrower than MIN_COLUMNS, none wider than
       tile_rows), and a multiple of `share` (the cores) where they allow that too, so that no core is left with
       one block more than the others at the layer's end; the rows are shared out too where the columns alone
       give too few. */
    int wanted = blocks < 1 ? 1 : blocks;
    int column_blocks = (n + tile_rows - 1) / tile_rows;
    int most = n / MIN_COLUMNS > 1 ? n / MIN_COLUMNS : 1;
    if (column_blocks < wanted) column_blocks = wanted < most ? wanted : most;
    if (share > 1 && column_blocks % share != 0 && (column_blocks / share + 1) * share <= most)
        column_blocks = (column_blocks / share + 1) * share;
    int block_width = (n + column_blocks - 1) / column_blocks;
    column_blocks = (n + block_width - 1) / block_width;
    int row_parts = (wanted + column_blocks - 1) / column_blocks;
    row_parts = row_parts < m ? row_parts : (m > 0 ? m : 1);
    work_t work = {x, codes, scales, offsets, y, m, n, k, bits, group, kind, tile_inputs, row_parts, column_blocks,
                   block_width, group <= KC && avx512_here(products), sgemm, row_function(bits, vectors)};
    atomic_init(&work.next, 0);
    atomic_init(&work.done, 0);
    on_threads(run_blocks, &work, threads);
    return atomic_load(&work.done) == row_parts * column_blocks ? 0 : 1;
}
