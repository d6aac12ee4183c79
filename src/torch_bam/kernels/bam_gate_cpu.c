/* Fused BAM gate for CPU, float32: y = x * (1 + sigmoid(l)), l = c + s or c * s.
 *
 * One pass over x forward, one pass over (x, dy) backward. For combine="sum", prep_sum first
 * fills ec = exp(-c) [B,C] and es = exp(-s) [B,HW], so sigmoid(c + s) = 1 / (1 + ec * es)
 * costs no exp per element. For "product" a, b are c and s themselves and we call expf.
 * Layout: cl = 0 is NCHW ([B][C][HW]), cl = 1 is channels_last ([B][HW][C]).
 * Plain C with no torch headers: it builds in about a second (see kernels/_cpu.py).
 */
#include <math.h>
#include <stdint.h>

static inline float exp_neg_clamped(float v) {
    /* Clamping at +-80 keeps exp finite (and ec * es at worst inf, giving a gate of 0, as
     * sigmoid gives); it changes sigmoid by less than 1e-34. */
    v = v < -80.0f ? -80.0f : (v > 80.0f ? 80.0f : v);
    return expf(-v);
}

/* ec = exp(-c), es = exp(-s): B * (C + HW) values, serial: small next to one pass over x, and a
 * parallel region per tiny op costs more than it saves on a busy machine. */
void bam_gate_prep_sum(const float *c, const float *s, float *ec, float *es, int64_t nc,
                       int64_t ns) {
    for (int64_t i = 0; i < nc; ++i) ec[i] = exp_neg_clamped(c[i]);
    for (int64_t i = 0; i < ns; ++i) es[i] = exp_neg_clamped(s[i]);
}

static inline float gate_of(float a, float b, int product) {
    /* sum: a = exp(-c), b = exp(-s); product: a = c, b = s */
    return product ? 1.0f / (1.0f + expf(-(a * b))) : 1.0f / (1.0f + a * b);
}

/* Inner loops, always inlined and called with a literal `product`: OpenMP outlines each
 * parallel region into its own function, where a `product` read from the shared data would be
 * a run-time branch inside the loop and stop gcc from vectorising it. */
#define INLINE static inline __attribute__((always_inline))

INLINE void fwd_row(const float *xr, float *yr, const float *a, int64_t a_step, const float *b,
                    int64_t b_step, int64_t n, const int product) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * (1.0f + gate_of(a[i * a_step], b[i * b_step], product));
}

INLINE void fwd_impl(const float *x, const float *a, const float *b, float *y, int64_t B,
                     int64_t C, int64_t HW, int cl, int product, int nt) {
    if (!cl) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t bc = 0; bc < B * C; ++bc) {
            /* one channel plane: a is constant, b runs over the image's pixels */
            const float *xr = x + bc * HW, *bb = b + (bc / C) * HW;
            if (product)
                fwd_row(xr, y + bc * HW, a + bc, 0, bb, 1, HW, 1);
            else
                fwd_row(xr, y + bc * HW, a + bc, 0, bb, 1, HW, 0);
        }
    } else {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t bp = 0; bp < B * HW; ++bp) {
            /* one pixel's channels: b is constant, a runs over the image's channels */
            const float *xr = x + bp * C, *aa = a + (bp / HW) * C;
            if (product)
                fwd_row(xr, y + bp * C, aa, 1, b + bp, 0, C, 1);
            else
                fwd_row(xr, y + bp * C, aa, 1, b + bp, 0, C, 0);
        }
    }
}

/* Backward of one row (a channel plane in NCHW, a pixel's channels in channels_last).
 * dl = dy * x * g * (1 - g); dx = dy * (1 + g). Returns the row's sum of dl (times `other`
 * for product) and adds dl (times `scale`) into part[i]. */
INLINE float bwd_row(const float *gr, const float *xr, float *dxr, const float *a, int64_t a_step,
                     const float *b, int64_t b_step, const float *other, float scale, float *part,
                     int64_t n, const int product) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate_of(a[i * a_step], b[i * b_step], product);
        const float dl = gr[i] * xr[i] * g * (1.0f - g);
        dxr[i] = gr[i] * (1.0f + g);
        acc += product ? dl * other[i] : dl;
        part[i] += dl * scale;
    }
    return acc;
}

/* Backward. dc = sum over HW of dl (times s for product), ds = sum over C of dl (times c for
 * product). cv, sv are the raw logits (needed for product's chain rule; unused for sum).
 * NCHW: tasks are (b, channel chunk); each writes a partial ds row part[task][HW].
 * channels_last: tasks are (b, pixel chunk); each writes a partial dc row part[task][C].
 * The caller sums the partial rows over chunks.
 */
INLINE void bwd_impl(const float *dy, const float *x, const float *a, const float *b,
                     const float *cv, const float *sv, float *dx, float *dc, float *ds, float *part,
                     int64_t B, int64_t C, int64_t HW, int64_t nchunk, int cl, int product, int nt) {
    if (!cl) {
        const int64_t step = (C + nchunk - 1) / nchunk;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t t = 0; t < B * nchunk; ++t) {
            const int64_t bi = t / nchunk, k = t % nchunk;
            float *pr = part + t * HW;
            for (int64_t p = 0; p < HW; ++p) pr[p] = 0.0f;
            const int64_t c1 = (k + 1) * step < C ? (k + 1) * step : C;
            for (int64_t c = k * step; c < c1; ++c) {
                const int64_t bc = bi * C + c, o = bc * HW;
                const float cc = product ? cv[bc] : 1.0f;
                if (product)
                    dc[bc] = bwd_row(dy + o, x + o, dx + o, a + bc, 0, b + bi * HW, 1,
                                     sv + bi * HW, cc, pr, HW, 1);
                else
                    dc[bc] = bwd_row(dy + o, x + o, dx + o, a + bc, 0, b + bi * HW, 1,
                                     sv + bi * HW, cc, pr, HW, 0);
            }
        }
    } else {
        const int64_t step = (HW + nchunk - 1) / nchunk;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t t = 0; t < B * nchunk; ++t) {
            const int64_t bi = t / nchunk, k = t % nchunk;
            float *pr = part + t * C;
            for (int64_t c = 0; c < C; ++c) pr[c] = 0.0f;
            const int64_t p1 = (k + 1) * step < HW ? (k + 1) * step : HW;
            for (int64_t p = k * step; p < p1; ++p) {
                const int64_t bp = bi * HW + p, o = bp * C;
                const float ss = product ? sv[bp] : 1.0f;
                if (product)
                    ds[bp] = bwd_row(dy + o, x + o, dx + o, a + bi * C, 1, b + bp, 0,
                                     cv + bi * C, ss, pr, C, 1);
                else
                    ds[bp] = bwd_row(dy + o, x + o, dx + o, a + bi * C, 1, b + bp, 0,
                                     cv + bi * C, ss, pr, C, 0);
            }
        }
    }
}

/* Entry points: branch once on combine so each inner loop is specialised and vectorised;
 * target_clones picks AVX-512/AVX2 code at load time where the CPU has it. */
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
CLONES void bam_gate_fwd(const float *x, const float *a, const float *b, float *y, int64_t B,
                  int64_t C, int64_t HW, int cl, int product, int nt) {
    if (product)
        fwd_impl(x, a, b, y, B, C, HW, cl, 1, nt);
    else
        fwd_impl(x, a, b, y, B, C, HW, cl, 0, nt);
}

CLONES void bam_gate_bwd(const float *dy, const float *x, const float *a, const float *b,
                  const float *cv, const float *sv, float *dx, float *dc, float *ds,
                  float *part, int64_t B, int64_t C, int64_t HW, int64_t nchunk, int cl,
                  int product, int nt) {
    if (product)
        bwd_impl(dy, x, a, b, cv, sv, dx, dc, ds, part, B, C, HW, nchunk, cl, 1, nt);
    else
        bwd_impl(dy, x, a, b, cv, sv, dx, dc, ds, part, B, C, HW, nchunk, cl, 0, nt);
}
