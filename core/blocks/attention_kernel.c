/* softmax(q k^T * scale) v on the CPU, one block of one head's queries at a time.

   The (batch, head, block of queries) items are cut into one run of items a thread: each thread takes the next
   item of its own run, then of the others' (so that a thread slowed by other work on its core takes fewer), and
   packs a head's keys and values once for the blocks of it that it takes. For its block it multiplies the
   queries by the head's keys into a buffer of scores of its own (a few MB at most, so that they are still in
   cache for what follows), turns each row into exp(score - the row's max) and its sum in one pass, multiplies
   the weights by the head's values, and divides each output row by its sum. MLX's CPU ops would write the
   scores out and read them back once for each of those passes, on one thread.

   The two products are this file's own AVX-512 loops where the CPU has AVX-512, a head's width is a multiple
   of 32 and the caller asks for them (a head's keys small enough to stay in a core's cache): 8 rows by 32
   columns a step, the keys in panels of 16 packed once per head. At attention's shapes (256 queries against
   768 keys of 128) they multiply at 180 GFLOP/s a core where OpenBLAS's sgemm, which packs both factors again
   on every call, reached 157-159; they note each row's largest score as they write it, which spares the
   softmax a pass. Elsewhere a one-thread BLAS sgemm multiplies. Each score and each output
   value of the own products is one sum in order over the head's width or the keys, whatever the block or the
   thread.

   The exp is cephes_exp.h's (included before this text), in AVX-512 where the CPU has it, else in plain C:
   the same bits. A
   row's sum is taken in LANES partial sums (score j into sum j % LANES) added in order, by both. Keys
   masked out score MASKED, as fast_math's callers do: a row with every key masked averages the values.

   Its threads are cpu_threads.h's. Built by core/cpu_kernels.py with the system C compiler. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef void (*sgemm_fn)(int order, int transa, int transb, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
#define LANES 16
#define MASKED (-3.0e38f)

/* Row by row (rows `stride` floats apart): each score becomes exp(score - the row's max) in place; totals[r] is
   the row's sum, taken in LANES partial sums (score j into sum j % LANES) then added in order. `tops`: each row's
   max where the caller has it already, or NULL (the plain C form finds it again: the same number). */
typedef void (*softmax_fn)(float *scores, int rows, int columns, int stride, const float *tops, float *totals);

static void softmax_scalar(float *scores, int rows, int columns, int stride, const float *tops, float *totals) {
    (void)tops;
    for (int r = 0; r < rows; r++) {
        float *row = scores + (size_t)r * stride, top = row[0], sums[LANES] = {0};
        for (int j = 1; j < columns; j++) top = row[j] > top ? row[j] : top;
        for (int j = 0; j < columns; j++) {
            float x = row[j] - top;
            row[j] = exp_scalar(x > LOWEST ? x : LOWEST);
            sums[j % LANES] += row[j];
        }
        float total = 0;
        for (int l = 0; l < LANES; l++) total += sums[l];
        totals[r] = total;
    }
}

#ifdef HAS_AVX512_FORMS
__attribute__((target("avx512f"))) static float row_max(const float *row, int full, __mmask16 tail) {
    __m512 top = _mm512_set1_ps(row[0]);
    for (int j = 0; j < full; j += LANES) top = _mm512_max_ps(top, _mm512_loadu_ps(row + j));
    if (tail) top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, row + full));
    return _mm512_reduce_max_ps(top);
}

__attribute__((target("avx512f"))) static void softmax_avx512(float *scores, int rows, int columns, int stride,
                                                              const float *tops, float *totals) {
    const __m512 lowest = _mm512_set1_ps(LOWEST);
    int full = columns / LANES * LANES;
    __mmask16 tail = (__mmask16)((1u << (columns - full)) - 1);
    for (int r = 0; r < rows; r++) {
        float *row = scores + (size_t)r * stride;
        __m512 top_all = _mm512_set1_ps(tops ? tops[r] : row_max(row, full, tail)), sums = _mm512_setzero_ps();
        for (int j = 0; j < columns; j += LANES) {
            __mmask16 lanes = j < full ? (__mmask16)0xffff : tail;
            __m512 e = exp16(_mm512_max_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, row + j), top_all), lowest));
            _mm512_mask_storeu_ps(row + j, lanes, e);
            sums = _mm512_mask_add_ps(sums, lanes, sums, e);
        }
        float lane_sums[LANES], total = 0;
        _mm512_storeu_ps(lane_sums, sums);
        for (int l = 0; l < LANES; l++) total += lane_sums[l];
        totals[r] = total;
    }
}
#endif

static softmax_fn softmax_function(int vectors) {
#ifdef HAS_AVX512_FORMS
    if (avx512_here(vectors)) return softmax_avx512;
#endif
    return softmax_scalar;
}


/* ---- the products in AVX-512: ROWS queries by 32 keys (or output columns) a step, in 16 accumulators ---- */
#define ROWS 8
#define PANEL 16 /* keys in a panel: one vector */

static int rows_padded(int rows) { return (rows + ROWS - 1) / ROWS * ROWS; }
static int panel_count(int keys) { return (keys + PANEL - 1) / PANEL; }

#ifdef HAS_AVX512_FORMS
/* The head's keys (`count` rows of `dim`, `stride` floats apart) as panels: key 16p + i's value d at
   panels[(p * dim + d) * 16 + i], zero past the last key, so that one load holds a dimension of 16 keys. */
static void key_panels(const float *keys, long stride, int count, int dim, float *panels) {
    for (int p = 0; p < panel_count(count); p++)
        for (int i = 0; i < PANEL; i++) {
            int key = PANEL * p + i;
            float *to = panels + (size_t)p * dim * PANEL + i;
            const float *row = keys + (size_t)key * stride;
            for (int d = 0; d < dim; d++) to[(size_t)d * PANEL] = key < count ? row[d] : 0.0f;
        }
}

/* scores = scale * q k^T for `count` queries (`dim` values together, rows `q_stride` floats apart) against `keys`
   keys as panels, into rows_padded(count) rows `stride` floats apart (a whole number of panels; the rows past
   `count` repeat the last query's), and each row's largest score into tops (the softmax's first pass, done here
   while the scores are in registers). */
__attribute__((target("avx512f"))) static void scores_avx512(const float *q, long q_stride, int count,
                                                             const float *panels, int keys, int dim, float scale,
                                                             float *scores, int stride, float *tops) {
    const __m512 factor = _mm512_set1_ps(scale);
    int panels_n = panel_count(keys);
    __mmask16 last = (__mmask16)(keys % PANEL ? (1u << (keys % PANEL)) - 1 : 0xffff);
    for (int r = 0; r < count; r += ROWS) {
        const float *rows_q[ROWS];
        __m512 top[ROWS];
        for (int i = 0; i < ROWS; i++) {
            rows_q[i] = q + (size_t)(r + i < count ? r + i : count - 1) * q_stride;
            top[i] = _mm512_set1_ps(-INFINITY);
        }
        for (int p = 0; p < panels_n; p += 2) {
            int both = p + 1 < panels_n;
            const float *first = panels + (size_t)p * dim * PANEL, *second = both ? first + (size_t)dim * PANEL : first;
            __m512 sum[ROWS][2];
            for (int i = 0; i < ROWS; i++) sum[i][0] = sum[i][1] = _mm512_setzero_ps();
            for (int d = 0; d < dim; d++) {
                __m512 a = _mm512_loadu_ps(first + (size_t)d * PANEL), b = _mm512_loadu_ps(second + (size_t)d * PANEL);
                for (int i = 0; i < ROWS; i++) {
                    __m512 x = _mm512_set1_ps(rows_q[i][d]);
                    sum[i][0] = _mm512_fmadd_ps(x, a, sum[i][0]);
                    sum[i][1] = _mm512_fmadd_ps(x, b, sum[i][1]);
                }
            }
            __mmask16 first_keys = p + 1 < panels_n ? (__mmask16)0xffff : last, second_keys = p + 2 < panels_n ? 0xffff : last;
            for (int i = 0; i < ROWS; i++) {
                float *to = scores + (size_t)(r + i) * stride + (size_t)p * PANEL;
                __m512 a = _mm512_mul_ps(sum[i][0], factor), b = _mm512_mul_ps(sum[i][1], factor);
                _mm512_storeu_ps(to, a);
                top[i] = _mm512_mask_max_ps(top[i], first_keys, top[i], a);
                if (both) {
                    _mm512_storeu_ps(to + PANEL, b);
                    top[i] = _mm512_mask_max_ps(top[i], second_keys, top[i], b);
                }
            }
        }
        for (int i = 0; i < ROWS && r + i < count; i++) tops[r + i] = _mm512_reduce_max_ps(top[i]);
    }
}

/* out = (weights v) / totals for `count` rows (weights rows_padded(count) rows `stride` apart, the head's values
   `keys` rows of `dim` (a multiple of 32) together; output rows `out_stride` apart). */
__attribute__((target("avx512f"))) static void values_avx512(const float *weights, int count, int stride, int keys,
                                                             const float *v, int dim, const float *totals, float *out,
                                                             long out_stride) {
    for (int r = 0; r < count; r += ROWS) {
        const float *rows_w = weights + (size_t)r * stride;
        for (int c = 0; c < dim; c += 2 * PANEL) {
            __m512 sum[ROWS][2];
            for (int i = 0; i < ROWS; i++) sum[i][0] = sum[i][1] = _mm512_setzero_ps();
            for (int j = 0; j < keys; j++) {
                const float *value = v + (size_t)j * dim + c;
                __m512 a = _mm512_loadu_ps(value), b = _mm512_loadu_ps(value + PANEL);
                for (int i = 0; i < ROWS; i++) {
                    __m512 x = _mm512_set1_ps(rows_w[(size_t)i * stride + j]);
                    sum[i][0] = _mm512_fmadd_ps(x, a, sum[i][0]);
                    sum[i][1] = _mm512_fmadd_ps(x, b, sum[i][1]);
                }
            }
            for (int i = 0; i < ROWS && r + i < count; i++) {
                __m512 total = _mm512_set1_ps(totals[r + i]);
                float *to = out + (size_t)(r + i) * out_stride + c;
                _mm512_storeu_ps(to, _mm512_div_ps(sum[i][0], total));
                _mm512_storeu_ps(to + PANEL, _mm512_div_ps(sum[i][1], total));
            }
        }
    }
}
#endif

typedef struct {
    atomic_int next;
    int end;
} run_t; /* a thread's own items: next up to end */

typedef struct {
    const float *q, *k, *v;
    float *out;
    const uint8_t *key_mask; /* batch x keys, 1 = attend; NULL: every key */
    int batch, heads, kv_heads, queries, keys, dim, block_rows, blocks_a_head, own_products;
    long q_stride[3], k_stride[3], v_stride[3], out_stride[3]; /* batch, position, head; in floats */
    float scale;
    sgemm_fn sgemm;
    softmax_fn softmax;
    run_t runs[MAX_THREADS];
    int run_count;
    atomic_int joined, done;
} attention_t;

/* A thread's buffers: the head's keys (as panels for this file's products) and values where they must be
   packed, a block's queries (for BLAS, where they must be packed), its scores (rows `stride` floats apart), their
   sums and (for this file's products) their largest. */
typedef struct {
    float *keys, *values, *queries, *scores, *totals, *tops;
    int stride;
} buffers_t;

/* `rows` rows of `dim` floats, `stride` apart, copied together into `to`; where they are together already,
   the rows themselves (BLAS multiplied rows spread H * D apart in 1.4-1.8x the time of packed ones). */
static const float *packed(const float *from, long stride, int rows, int dim, float *to) {
    if (stride == dim) return from;
    for (int r = 0; r < rows; r++) memcpy(to + (size_t)r * dim, from + (size_t)r * stride, dim * sizeof(float));
    return to;
}

static void hide_masked_keys(const attention_t *a, int b, int count, float *scores, int stride) {
    const uint8_t *mask = a->key_mask + (size_t)b * a->keys;
    for (int r = 0; r < count; r++)
        for (int j = 0; j < a->keys; j++)
            if (!mask[j]) scores[(size_t)r * stride + j] = MASKED;
}

static void run_block(const attention_t *a, int item, const float *keys, const float *values, buffers_t *buf) {
    int bh = item / a->blocks_a_head, b = bh / a->heads, h = bh % a->heads;
    int first = (item % a->blocks_a_head) * a->block_rows;
    int count = a->queries - first < a->block_rows ? a->queries - first : a->block_rows;
    const float *from = a->q + b * a->q_stride[0] + first * a->q_stride[1] + h * a->q_stride[2];
    float *out = a->out + b * a->out_stride[0] + first * a->out_stride[1] + h * a->out_stride[2];
#ifdef HAS_AVX512_FORMS
    if (a->own_products) {
        scores_avx512(from, a->q_stride[1], count, keys, a->keys, a->dim, a->scale, buf->scores, buf->stride,
                      buf->tops);
        if (a->key_mask) hide_masked_keys(a, b, count, buf->scores, buf->stride);
        /* a masked key's score may have been the largest: the softmax finds the max again */
        a->softmax(buf->scores, count, a->keys, buf->stride, a->key_mask ? NULL : buf->tops, buf->totals);
        values_avx512(buf->scores, count, buf->stride, a->keys, values, a->dim, buf->totals, out, a->out_stride[1]);
        return;
    }
#endif
    const float *q = packed(from, a->q_stride[1], count, a->dim, buf->queries);
    a->sgemm(ROW_MAJOR, NO_TRANS, TRANS, count, a->keys, a->dim, a->scale, q, a->dim, keys, a->dim, 0.0f, buf->scores,
             buf->stride);
    if (a->key_mask) hide_masked_keys(a, b, count, buf->scores, buf->stride);
    a->softmax(buf->scores, count, a->keys, buf->stride, NULL, buf->totals);
    a->sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, count, a->dim, a->keys, 1.0f, buf->scores, buf->stride, values, a->dim,
             0.0f, out, (int)a->out_stride[1]);
    for (int r = 0; r < count; r++)
        for (int d = 0; d < a->dim; d++) out[r * a->out_stride[1] + d] /= buf->totals[r];
}

/* Buffers for one thread; 0 when one could not be allocated. The BLAS path packs keys and values only where
   they are not together already (a VAE's one head: 65,536 keys of 512 channels would be 128 MB each). */
static int allocate(const attention_t *a, buffers_t *buf) {
    size_t keys = a->keys, dim = a->dim, rows = a->block_rows;
    *buf = (buffers_t){0};
    buf->values = a->v_stride[1] == a->dim ? NULL : malloc(keys * dim * sizeof(float));
    buf->totals = malloc(rows * sizeof(float));
    int shared = (buf->values || a->v_stride[1] == a->dim) && buf->totals;
    if (a->own_products) {
        buf->stride = panel_count(a->keys) * PANEL;
        buf->keys = malloc((size_t)buf->stride * dim * sizeof(float));
        buf->scores = malloc((size_t)rows_padded(a->block_rows) * buf->stride * sizeof(float));
        buf->tops = malloc(rows * sizeof(float));
        return shared && buf->keys && buf->scores && buf->tops;
    }
    buf->stride = a->keys;
    buf->keys = a->k_stride[1] == a->dim ? NULL : malloc(keys * dim * sizeof(float));
    buf->queries = a->q_stride[1] == a->dim ? NULL : malloc(rows * dim * sizeof(float));
    buf->scores = malloc(rows * keys * sizeof(float));
    return shared && (buf->keys || a->k_stride[1] == a->dim) && (buf->queries || a->q_stride[1] == a->dim)
           && buf->scores;
}

/* The next item of the thread's own run, else of the runs after it; -1 when none is left. */
static int next_item(attention_t *a, int own) {
    for (int o = 0; o < a->run_count; o++) {
        run_t *run = &a->runs[(own + o) % a->run_count];
        int item = atomic_fetch_add(&run->next, 1);
        if (item < run->end) return item;
    }
    return -1;
}

/* A thread takes items until none is left; a head's keys and values are packed once for all the blocks of it
   the thread takes in a row. */
static void *run_blocks(void *argument) {
    attention_t *a = argument;
    buffers_t buf;
    const float *k = NULL, *v = NULL;
    int own = atomic_fetch_add(&a->joined, 1) % a->run_count, packed_for = -1;
    if (allocate(a, &buf)) {
        for (int i; (i = next_item(a, own)) >= 0;) {
            int bh = i / a->blocks_a_head, b = bh / a->heads, kv = bh % a->heads / (a->heads / a->kv_heads);
            if (b * a->kv_heads + kv != packed_for) {
                const float *keys = a->k + b * a->k_stride[0] + kv * a->k_stride[2];
#ifdef HAS_AVX512_FORMS
                if (a->own_products) {
                    key_panels(keys, a->k_stride[1], a->keys, a->dim, buf.keys);
                    k = buf.keys;
                } else
#endif
                    k = packed(keys, a->k_stride[1], a->keys, a->dim, buf.keys);
                /* Values spread H * D apart took this file's product 1.1-1.3x the time of packed ones */
                v = packed(a->v + b * a->v_stride[0] + kv * a->v_stride[2], a->v_stride[1], a->keys, a->dim,
                           buf.values);
                packed_for = b * a->kv_heads + kv;
            }
            run_block(a, i, k, v, &buf);
            atomic_fetch_add(&a->done, 1);
        }
    }
    free(buf.keys);
    free(buf.values);
    free(buf.queries);
    free(buf.scores);
    free(buf.totals);
    free(buf.tops);
    return NULL; /* a thread that could not allocate leaves its blocks to the others */
}

/* Returns 0, or 1 when no thread could allocate its buffers. q is batch x queries x heads x dim, k and v
   batch x keys x kv_heads x dim (heads a multiple of kv_heads: each key head serves heads / kv_heads query
   heads), out as q; `strides` gives each one's batch, position and head strides in floats (a head's `dim`
   values together). key_mask: batch x keys, 1 where a key is attended to, or NULL. `products`: 1 for this
   file's AVX-512 products where they can run (a thread packs a head's keys: the caller bounds their size), 0
   for BLAS's. The caller's BLAS must multiply on the calling thread alone. */
int attention(const float *q, const float *k, const float *v, float *out, const uint8_t *key_mask, int batch,
              int heads, int kv_heads, int queries, int keys, int dim, const long *strides, float scale,
              int block_rows, int threads, int vectors, int products, sgemm_fn sgemm) {
    attention_t a = {q, k, v, out, key_mask, batch, heads, kv_heads, queries, keys, dim, block_rows,
                     (queries + block_rows - 1) / block_rows,
                     products && dim % (2 * PANEL) == 0 && avx512_here(1)};
    for (int s = 0; s < 3; s++) {
        a.q_stride[s] = strides[s];
        a.k_stride[s] = strides[3 + s];
        a.v_stride[s] = strides[6 + s];
        a.out_stride[s] = strides[9 + s];
    }
    a.scale = scale;
    a.sgemm = sgemm;
    a.softmax = softmax_function(vectors);
    int items = batch * heads * a.blocks_a_head;
    a.run_count = bounded_threads(threads);
    for (int t = 0; t < a.run_count; t++) {
        atomic_init(&a.runs[t].next, (int)((long)items * t / a.run_count));
        a.runs[t].end = (int)((long)items * (t + 1) / a.run_count);
    }
    atomic_init(&a.joined, 0);
    atomic_init(&a.done, 0);
    on_threads(run_blocks, &a, threads);
    return atomic_load(&a.done) == items ? 0 : 1;
}
