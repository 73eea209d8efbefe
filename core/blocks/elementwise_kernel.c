/* A denoising step's elementwise passes on every core: the gated activations of the MLP (SwiGLU, tanh-GELU) and
   the per-head RMS norm of queries and keys followed by their rotary embedding.

   MLX's CPU backend runs each elementwise op (or each fused group of them) on one thread. Here each thread takes
   the next chunk of rows not yet taken. Each function reads an input whose rows may be spread apart (a slice of a
   fused projection's columns) and writes rows the caller places (into a column slice of the array the next
   product reads, say). The exp is cephes_exp.h's (included before this text), in AVX-512 where the CPU has it,
   else in plain C: the same bits. Its threads are cpu_threads.h's. Built by core/cpu_kernels.py with the system C
   compiler. */
#include <stdatomic.h>
#include <stddef.h>

#define LANES 16
#define CHUNK_ROWS 8

/* Rows of a (batch, rows, width) array: element (b, r, j) at data[b * batch_stride + r * row_stride + j]. */
typedef struct {
    float *data;
    long batch_stride, row_stride;
} rows_t;

static inline float *row_of(const rows_t *a, int rows, int index) {
    return a->data + (long)(index / rows) * a->batch_stride + (long)(index % rows) * a->row_stride;
}

typedef void (*rows_fn)(const void *job, int first, int last);

typedef struct {
    rows_fn run;
    const void *job;
    int rows;
    atomic_int next;
} pool_t;

static void *take_rows(void *argument) {
    pool_t *p = argument;
    for (int chunk; (chunk = atomic_fetch_add(&p->next, 1)) * CHUNK_ROWS < p->rows;) {
        int first = chunk * CHUNK_ROWS, last = first + CHUNK_ROWS < p->rows ? first + CHUNK_ROWS : p->rows;
        p->run(p->job, first, last);
    }
    return NULL;
}

/* run(job, first, last) over [0, rows) in chunks, on `threads` threads (cpu_threads.h). */
static void over_rows(rows_fn run, const void *job, int rows, int threads) {
    pool_t pool = {.run = run, .job = job, .rows = rows};
    atomic_init(&pool.next, 0);
    on_threads(take_rows, &pool, threads);
}

/* ---- gated activations: out = activation(x[:, :width]) (times x[:, width:] for SwiGLU) ---------------- */

enum { SWIGLU = 0, GELU_TANH = 1 };
static const float GELU_INPUT = 9.5f, GELU_SCALE = -1.5957691216057308f, GELU_CUBE = 0.044715f;

typedef struct {
    rows_t x, value, out; /* value: SwiGLU's second factor (the second half of x's rows, or an array of its own) */
    int rows, width, kind, vectors;
} activation_t;

/* As fast_math.py's compiled functions: SwiGLU (g v) / (1 + exp(-clip(g, -88, 87))); tanh-GELU
   x / (1 + exp(-1.5957... (c + 0.044715 c c c))), c = clip(x, -9.5, 9.5). */
static inline float swiglu_scalar(float g, float v) {
    float c = g < -HIGHEST ? -HIGHEST : g > -LOWEST ? -LOWEST : g;
    return (g * v) / (1.0f + exp_scalar(-c));
}

static inline float gelu_scalar(float x) {
    float c = x < -GELU_INPUT ? -GELU_INPUT : x > GELU_INPUT ? GELU_INPUT : x;
    return x / (1.0f + exp_scalar(GELU_SCALE * (c + ((GELU_CUBE * c) * c) * c)));
}

static void activation_rows_scalar(const activation_t *a, int first, int last) {
    for (int i = first; i < last; i++) {
        const float *x = row_of(&a->x, a->rows, i), *value = a->kind == SWIGLU ? row_of(&a->value, a->rows, i) : NULL;
        float *out = row_of(&a->out, a->rows, i);
        if (a->kind == SWIGLU)
            for (int j = 0; j < a->width; j++) out[j] = swiglu_scalar(x[j], value[j]);
        else
            for (int j = 0; j < a->width; j++) out[j] = gelu_scalar(x[j]);
    }
}

#ifdef HAS_AVX512_FORMS
/* a ^ b bit by bit (AVX-512F has it for integers only) */
__attribute__((target("avx512f"), always_inline)) static inline __m512 xor16(__m512 a, __m512 b) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}

__attribute__((target("avx512f"))) static void activation_rows_avx512(const activation_t *a, int first, int last) {
    const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
    const __m512 low = _mm512_set1_ps(-HIGHEST), high = _mm512_set1_ps(-LOWEST);
    const __m512 gelu_low = _mm512_set1_ps(-GELU_INPUT), gelu_high = _mm512_set1_ps(GELU_INPUT);
    const __m512 gelu_scale = _mm512_set1_ps(GELU_SCALE), cube = _mm512_set1_ps(GELU_CUBE);
    int full = a->width / LANES * LANES;
    for (int i = first; i < last; i++) {
        const float *x = row_of(&a->x, a->rows, i), *value = a->kind == SWIGLU ? row_of(&a->value, a->rows, i) : NULL;
        float *out = row_of(&a->out, a->rows, i);
        for (int j = 0; j < a->width; j += LANES) {
            __mmask16 lanes = j < full ? (__mmask16)0xffff : (__mmask16)((1u << (a->width - full)) - 1);
            __m512 g = _mm512_maskz_loadu_ps(lanes, x + j), y;
            if (a->kind == SWIGLU) {
                __m512 c = _mm512_min_ps(_mm512_max_ps(g, low), high);
                __m512 e = exp16(xor16(c, sign));
                y = _mm512_div_ps(_mm512_mul_ps(g, _mm512_maskz_loadu_ps(lanes, value + j)), _mm512_add_ps(one, e));
            } else {
                __m512 c = _mm512_min_ps(_mm512_max_ps(g, gelu_low), gelu_high);
                __m512 inner = _mm512_add_ps(c, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(cube, c), c), c));
                y = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_mul_ps(gelu_scale, inner))));
            }
            _mm512_mask_storeu_ps(out + j, lanes, y);
        }
    }
}
#endif

static void activation_rows(const void *job, int first, int last) {
    const activation_t *a = job;
#ifdef HAS_AVX512_FORMS
    if (avx512_here(a->vectors)) {
        activation_rows_avx512(a, first, last);
        return;
    }
#endif
    activation_rows_scalar(a, first, last);
}

/* x, value and out are (batch, rows, width) with the strides given (in floats): for SwiGLU x holds the gates and
   value the values (the second half of x's own rows, say); for GELU value is not read. */
int gated_activation(int kind, const float *x, long x_batch, long x_row, const float *value, long value_batch,
                     long value_row, float *out, long out_batch, long out_row, int batch, int rows, int width,
                     int threads, int vectors) {
    activation_t a = {{(float *)x, x_batch, x_row}, {(float *)value, value_batch, value_row}, {out, out_batch, out_row},
                      rows, width, kind, vectors};
    over_rows(activation_rows, &a, batch * rows, threads);
    return 0;
}

/* ---- RMS norm of each head, then its rotary embedding ------------------------------------------------- */

typedef struct {
    rows_t x, out, cos, sin; /* cos and sin: (batch or 1, rows, dim); batch_stride 0 where shared */
    long x_head, out_head;
    const float *weight; /* dim, or NULL */
    int rows, heads, dim, vectors;
    float eps;
} norm_rope_t;

/* y = x / sqrt(mean(x^2) + eps) * weight, the mean taken in LANES partial sums; then each pair (y0, y1) turns to
   (y0 cos - y1 sin, y1 cos + y0 sin) where cos is given. */
static void norm_rope_head_scalar(const norm_rope_t *n, const float *x, float *out, const float *cos,
                                  const float *sin) {
    float sums[LANES] = {0}, total = 0;
    for (int d = 0; d < n->dim; d++) sums[d % LANES] += x[d] * x[d];
    for (int l = 0; l < LANES; l++) total += sums[l];
    float inverse = 1.0f / __builtin_sqrtf(total / (float)n->dim + n->eps);
    for (int d = 0; d < n->dim; d++) out[d] = n->weight ? (x[d] * inverse) * n->weight[d] : x[d] * inverse;
    if (!cos) return;
    for (int d = 0; d + 1 < n->dim; d += 2) {
        float y0 = out[d], y1 = out[d + 1];
        out[d] = y0 * cos[d] + (-y1) * sin[d];
        out[d + 1] = y1 * cos[d + 1] + y0 * sin[d + 1];
    }
}

#ifdef HAS_AVX512_FORMS
/* dim a multiple of LANES: the same operations in the same order as the scalar form. */
__attribute__((target("avx512f"))) static void norm_rope_head_avx512(const norm_rope_t *n, const float *x,
                                                                     float *out, const float *cos, const float *sin) {
    __m512 sums = _mm512_setzero_ps();
    for (int d = 0; d < n->dim; d += LANES) {
        __m512 v = _mm512_loadu_ps(x + d);
        sums = _mm512_add_ps(sums, _mm512_mul_ps(v, v));
    }
    float lane_sums[LANES], total = 0;
    _mm512_storeu_ps(lane_sums, sums);
    for (int l = 0; l < LANES; l++) total += lane_sums[l];
    __m512 inverse = _mm512_set1_ps(1.0f / __builtin_sqrtf(total / (float)n->dim + n->eps));
    /* (-y1, y0) of each pair: the pair swapped, its first lane negated */
    const __m512 negate_first = _mm512_castsi512_ps(_mm512_set_epi32(0, (int)0x80000000, 0, (int)0x80000000, 0,
        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0,
        (int)0x80000000));
    for (int d = 0; d < n->dim; d += LANES) {
        __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + d), inverse);
        if (n->weight) y = _mm512_mul_ps(y, _mm512_loadu_ps(n->weight + d));
        if (cos) {
            __m512 turned = xor16(_mm512_permute_ps(y, 0xB1), negate_first);
            y = _mm512_add_ps(_mm512_mul_ps(y, _mm512_loadu_ps(cos + d)), _mm512_mul_ps(turned, _mm512_loadu_ps(sin + d)));
        }
        _mm512_storeu_ps(out + d, y);
    }
}
#endif

static void norm_rope_rows(const void *job, int first, int last) {
    const norm_rope_t *n = job;
    int vectors = 0;
#ifdef HAS_AVX512_FORMS
    vectors = avx512_here(n->vectors) && n->dim % LANES == 0;
#endif
    for (int i = first; i < last; i++) {
        const float *x = row_of(&n->x, n->rows, i), *cos = NULL, *sin = NULL;
        float *out = row_of(&n->out, n->rows, i);
        if (n->cos.data) {
            cos = row_of(&n->cos, n->rows, i);
            sin = row_of(&n->sin, n->rows, i);
        }
        for (int h = 0; h < n->heads; h++) {
#ifdef HAS_AVX512_FORMS
            if (vectors) {
                norm_rope_head_avx512(n, x + h * n->x_head, out + h * n->out_head, cos, sin);
                continue;
            }
#endif
            norm_rope_head_scalar(n, x + h * n->x_head, out + h * n->out_head, cos, sin);
        }
    }
}

/* x and out: (batch, rows, heads, dim), strides (batch, row, head) in floats, a head's dim values together.
   table: cos then sin, each (batch or 1, rows, dim) with strides (batch, row); NULL cos: the norm alone. */
int norm_rope(const float *x, const long *x_strides, float *out, const long *out_strides, const float *weight,
              const float *cos, const float *sin, const long *table_strides, int batch, int rows, int heads, int dim,
              float eps, int threads, int vectors) {
    norm_rope_t n = {{(float *)x, x_strides[0], x_strides[1]}, {out, out_strides[0], out_strides[1]},
                     {(float *)cos, cos ? table_strides[0] : 0, cos ? table_strides[1] : 0},
                     {(float *)sin, cos ? table_strides[0] : 0, cos ? table_strides[1] : 0},
                     x_strides[2], out_strides[2], weight, rows, heads, dim, vectors, eps};
    over_rows(norm_rope_rows, &n, batch * rows, threads);
    return 0;
}

/* ---- LayerNorm without affine, then modulated: (x - mean) / sqrt(var + eps) * (1 + scale) + shift ------- */

typedef struct {
    rows_t x, out, scale, shift; /* scale, shift: (batch or 1, width); row_stride unused */
    int rows, width, vectors;
    float eps;
} norm_modulate_t;

/* The row's mean and 1 / sqrt(variance + eps), each sum taken in LANES partial sums added in order. */
static void moments(const float *x, int width, float *mean, float *inverse, float eps) {
    float sums[LANES] = {0}, total = 0;
    for (int j = 0; j < width; j++) sums[j % LANES] += x[j];
    for (int l = 0; l < LANES; l++) total += sums[l];
    float m = total / (float)width, squares[LANES] = {0}, spread = 0;
    for (int j = 0; j < width; j++) squares[j % LANES] += (x[j] - m) * (x[j] - m);
    for (int l = 0; l < LANES; l++) spread += squares[l];
    *mean = m;
    *inverse = 1.0f / __builtin_sqrtf(spread / (float)width + eps);
}

static void norm_modulate_rows_scalar(const norm_modulate_t *n, int first, int last) {
    for (int i = first; i < last; i++) {
        const float *x = row_of(&n->x, n->rows, i);
        const float *scale = n->scale.data + (long)(i / n->rows) * n->scale.batch_stride;
        const float *shift = n->shift.data + (long)(i / n->rows) * n->shift.batch_stride;
        float *out = row_of(&n->out, n->rows, i), mean, inverse;
        moments(x, n->width, &mean, &inverse, n->eps);
        for (int j = 0; j < n->width; j++) out[j] = ((x[j] - mean) * inverse) * (1.0f + scale[j]) + shift[j];
    }
}

#ifdef HAS_AVX512_FORMS
/* width a multiple of LANES: the same operations in the same order as the scalar form. */
__attribute__((target("avx512f"))) static void norm_modulate_rows_avx512(const norm_modulate_t *n, int first, int last) {
    const __m512 one = _mm512_set1_ps(1.0f);
    float lane_sums[LANES];
    for (int i = first; i < last; i++) {
        const float *x = row_of(&n->x, n->rows, i);
        const float *scale = n->scale.data + (long)(i / n->rows) * n->scale.batch_stride;
        const float *shift = n->shift.data + (long)(i / n->rows) * n->shift.batch_stride;
        float *out = row_of(&n->out, n->rows, i), total = 0, spread = 0;
        __m512 sums = _mm512_setzero_ps();
        for (int j = 0; j < n->width; j += LANES) sums = _mm512_add_ps(sums, _mm512_loadu_ps(x + j));
        _mm512_storeu_ps(lane_sums, sums);
        for (int l = 0; l < LANES; l++) total += lane_sums[l];
        __m512 mean = _mm512_set1_ps(total / (float)n->width), squares = _mm512_setzero_ps();
        for (int j = 0; j < n->width; j += LANES) {
            __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + j), mean);
            squares = _mm512_add_ps(squares, _mm512_mul_ps(d, d));
        }
        _mm512_storeu_ps(lane_sums, squares);
        for (int l = 0; l < LANES; l++) spread += lane_sums[l];
        __m512 inverse = _mm512_set1_ps(1.0f / __builtin_sqrtf(spread / (float)n->width + n->eps));
        for (int j = 0; j < n->width; j += LANES) {
            __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), mean), inverse);
            y = _mm512_mul_ps(y, _mm512_add_ps(one, _mm512_loadu_ps(scale + j)));
            _mm512_storeu_ps(out + j, _mm512_add_ps(y, _mm512_loadu_ps(shift + j)));
        }
    }
}
#endif

static void norm_modulate_rows(const void *job, int first, int last) {
    const norm_modulate_t *n = job;
#ifdef HAS_AVX512_FORMS
    if (avx512_here(n->vectors) && n->width % LANES == 0) {
        norm_modulate_rows_avx512(n, first, last);
        return;
    }
#endif
    norm_modulate_rows_scalar(n, first, last);
}

/* x and out: (batch, rows, width) with the strides given (in floats); scale and shift: width values a batch item,
   modulation_batch apart (0: one for the whole batch). */
int norm_modulate(const float *x, long x_batch, long x_row, float *out, long out_batch, long out_row,
                  const float *scale, const float *shift, long modulation_batch, int batch, int rows, int width,
                  float eps, int threads, int vectors) {
    norm_modulate_t n = {{(float *)x, x_batch, x_row}, {out, out_batch, out_row},
                         {(float *)scale, modulation_batch, 0}, {(float *)shift, modulation_batch, 0},
                         rows, width, vectors, eps};
    over_rows(norm_modulate_rows, &n, batch * rows, threads);
    return 0;
}
