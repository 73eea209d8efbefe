/* softmax(q k^T * scale) v on the CPU, one block of one head's queries at a time.

   Each thread takes the next (batch, head, block of queries) not yet taken. For its block it multiplies the
   queries by the head's keys with a one-thread BLAS sgemm into a buffer of scores of its own (a few MB at
   most, so that they are still in cache for what follows), turns each row into exp(score - the row's max)
   and its sum in one pass, multiplies the weights by the head's values, and divides each output row by its
   sum. MLX's CPU ops would write the scores out and read them back once for each of those passes, on one
   thread.

   The exp is cephes_exp.h's (included before this text), in AVX-512 where the CPU has it, else in plain C:
   the same bits. A
   row's sum is taken in LANES partial sums (score j into sum j % LANES) added in order, by both. Keys
   masked out score MASKED, as fast_math's callers do: a row with every key masked averages the values.

   Its threads are cpu_threads.h's. Built by core/cpu_kernels.py with the system C compiler. */
#include <stdatomic.h>
#include <stdlib.h>

typedef void (*sgemm_fn)(int order, int transa, int transb, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
#define LANES 16
#define MASKED (-3.0e38f)

/* Row by row: each score becomes exp(score - the row's max) in place; totals[r] is the row's sum, taken in
   LANES partial sums (score j into sum j % LANES) then added in order. */
typedef void (*softmax_fn)(float *scores, int rows, int columns, float *totals);

static void softmax_scalar(float *scores, int rows, int columns, float *totals) {
    for (int r = 0; r < rows; r++) {
        float *row = scores + (size_t)r * columns, top = row[0], sums[LANES] = {0};
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
__attribute__((target("avx512f"))) static void softmax_avx512(float *scores, int rows, int columns, float *totals) {
    const __m512 lowest = _mm512_set1_ps(LOWEST);
    int full = columns / LANES * LANES;
    __mmask16 tail = (__mmask16)((1u << (columns - full)) - 1);
    for (int r = 0; r < rows; r++) {
        float *row = scores + (size_t)r * columns;
        __m512 top = _mm512_set1_ps(row[0]);
        for (int j = 0; j < full; j += LANES) top = _mm512_max_ps(top, _mm512_loadu_ps(row + j));
        if (tail) top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, row + full));
        __m512 top_all = _mm512_set1_ps(_mm512_reduce_max_ps(top)), sums = _mm512_setzero_ps();
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

typedef struct {
    const float *q, *k, *v;
    float *out;
    const uint8_t *key_mask; /* batch x keys, 1 = attend; NULL: every key */
    int batch, heads, kv_heads, queries, keys, dim, block_rows, blocks_a_head;
    long q_stride[3], k_stride[3], v_stride[3], out_stride[3]; /* batch, position, head; in floats */
    float scale;
    sgemm_fn sgemm;
    softmax_fn softmax;
    atomic_int next, done;
} attention_t;

/* `rows` rows of `dim` floats, `stride` apart, copied together into `to`; where they are together already,
   the rows themselves (BLAS multiplied rows spread H * D apart in 1.4-1.8x the time of packed ones). */
static const float *packed(const float *from, long stride, int rows, int dim, float *to) {
    if (stride == dim) return from;
    for (int r = 0; r < rows; r++) memcpy(to + (size_t)r * dim, from + (size_t)r * stride, dim * sizeof(float));
    return to;
}

static void run_block(const attention_t *a, int item, const float *keys, const float *values, float *queries,
                      float *scores, float *totals) {
    int bh = item / a->blocks_a_head, b = bh / a->heads, h = bh % a->heads;
    int first = (item % a->blocks_a_head) * a->block_rows;
    int count = a->queries - first < a->block_rows ? a->queries - first : a->block_rows;
    size_t width = a->keys;
    const float *q = packed(a->q + b * a->q_stride[0] + first * a->q_stride[1] + h * a->q_stride[2], a->q_stride[1],
                            count, a->dim, queries);
    a->sgemm(ROW_MAJOR, NO_TRANS, TRANS, count, a->keys, a->dim, a->scale, q, a->dim, keys, a->dim, 0.0f, scores,
             a->keys);
    if (a->key_mask) {
        const uint8_t *mask = a->key_mask + (size_t)b * width;
        for (int r = 0; r < count; r++)
            for (size_t j = 0; j < width; j++)
                if (!mask[j]) scores[r * width + j] = MASKED;
    }
    a->softmax(scores, count, a->keys, totals);
    float *out = a->out + b * a->out_stride[0] + first * a->out_stride[1] + h * a->out_stride[2];
    a->sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, count, a->dim, a->keys, 1.0f, scores, a->keys, values, a->dim, 0.0f, out,
             (int)a->out_stride[1]);
    for (int r = 0; r < count; r++)
        for (int d = 0; d < a->dim; d++) out[r * a->out_stride[1] + d] /= totals[r];
}

/* A thread takes the next block not yet taken until none is left; a head's keys and values are packed once
   for all the blocks of it the thread takes in a row. */
static void *run_blocks(void *argument) {
    attention_t *a = argument;
    size_t keys = a->keys, dim = a->dim, rows = a->block_rows;
    /* Buffers to pack rows into only where they are not together already (a VAE's one head: 65,536 keys of
       512 channels would be 128 MB each) */
    float *key_rows = a->k_stride[1] == a->dim ? NULL : malloc(keys * dim * sizeof(float));
    float *value_rows = a->v_stride[1] == a->dim ? NULL : malloc(keys * dim * sizeof(float));
    float *queries = a->q_stride[1] == a->dim ? NULL : malloc(rows * dim * sizeof(float));
    float *scores = malloc(rows * keys * sizeof(float)), *totals = malloc(rows * sizeof(float));
    const float *k = NULL, *v = NULL;
    int items = a->batch * a->heads * a->blocks_a_head, packed_for = -1;
    int allocated = (key_rows || a->k_stride[1] == a->dim) && (value_rows || a->v_stride[1] == a->dim)
                    && (queries || a->q_stride[1] == a->dim) && scores && totals;
    if (allocated) {
        for (int i; (i = atomic_fetch_add(&a->next, 1)) < items;) {
            int bh = i / a->blocks_a_head, b = bh / a->heads, kv = bh % a->heads / (a->heads / a->kv_heads);
            if (b * a->kv_heads + kv != packed_for) {
                k = packed(a->k + b * a->k_stride[0] + kv * a->k_stride[2], a->k_stride[1], a->keys, a->dim, key_rows);
                v = packed(a->v + b * a->v_stride[0] + kv * a->v_stride[2], a->v_stride[1], a->keys, a->dim,
                           value_rows);
                packed_for = b * a->kv_heads + kv;
            }
            run_block(a, i, k, v, queries, scores, totals);
            atomic_fetch_add(&a->done, 1);
        }
    }
    free(key_rows);
    free(value_rows);
    free(queries);
    free(scores);
    free(totals);
    return NULL; /* a thread that could not allocate leaves its blocks to the others */
}

/* Returns 0, or 1 when no thread could allocate its buffers. q is batch x queries x heads x dim, k and v
   batch x keys x kv_heads x dim (heads a multiple of kv_heads: each key head serves heads / kv_heads query
   heads), out as q; `strides` gives each one's batch, position and head strides in floats (a head's `dim`
   values together). key_mask: batch x keys, 1 where a key is attended to, or NULL. The caller's BLAS must
   multiply on the calling thread alone. */
int attention(const float *q, const float *k, const float *v, float *out, const uint8_t *key_mask, int batch,
              int heads, int kv_heads, int queries, int keys, int dim, const long *strides, float scale,
              int block_rows, int threads, int vectors, sgemm_fn sgemm) {
    attention_t a = {q, k, v, out, key_mask, batch, heads, kv_heads, queries, keys, dim, block_rows,
                     (queries + block_rows - 1) / block_rows};
    for (int s = 0; s < 3; s++) {
        a.q_stride[s] = strides[s];
        a.k_stride[s] = strides[3 + s];
        a.v_stride[s] = strides[6 + s];
        a.out_stride[s] = strides[9 + s];
    }
    a.scale = scale;
    a.sgemm = sgemm;
    a.softmax = softmax_function(vectors);
    atomic_init(&a.next, 0);
    atomic_init(&a.done, 0);
    on_threads(run_blocks, &a, threads);
    return atomic_load(&a.done) == batch * heads * a.blocks_a_head ? 0 : 1;
}
