/* Fused BAM gate for CPU, float32: y = x * (1 + sigmoid(l)), l = c + s or c * s.
 *
 * One pass over x forward, one pass over (x, dy) backward. `mode` picks how the gate is
 * computed from the two per-row operands a, b:
 *   SUM_EXP (0): a = exp(-c) [B,C], b = exp(-s) [B,HW], filled by bam_gate_prep_sum, so
 *                sigmoid(c + s) = 1 / (1 + a * b) costs no exp per element. Exact only while
 *                exp(-c) and exp(-s) are both finite and normal; prep_sum says when they are.
 *   PRODUCT  (1): a = c, b = s: sigmoid(c * s), one expf per element.
 *   SUM      (2): a = c, b = s: sigmoid(c + s), one expf per element (wide logits).
 * Layout: cl = 0 is NCHW ([B][C][HW]), cl = 1 is channels_last ([B][HW][C]).
 * Plain C with no torch headers: it builds in about a second (see kernels/_cpu.py).
 */
#include <math.h>
#include <stdint.h>

enum { SUM_EXP = 0, PRODUCT = 1, SUM = 2 };

/* exp(-v) is a normal float for |v| <= 80, and the product of two such is finite or rounds to
 * 0 / inf exactly where sigmoid itself is 1 / 0 in float32: the factored form is exact there. */
#define FACTOR_LIMIT 80.0f

/* ec = exp(-c), es = exp(-s): B * (C + HW) values, serial: small next to one pass over x, and a
 * parallel region per tiny op costs more than it saves on a busy machine. Returns 1 if every
 * |c| and |s| is within FACTOR_LIMIT (use SUM_EXP), else 0 (use SUM: the logits must be added
 * before they are exponentiated, or c = 90, s = -89 gives exp(-90) * exp(89) = 0 * inf). */
int bam_gate_prep_sum(const float *c, const float *s, float *ec, float *es, int64_t nc,
                      int64_t ns) {
    float m = 0.0f;
    for (int64_t i = 0; i < nc; ++i) {
        ec[i] = expf(-c[i]);
        m = fmaxf(m, fabsf(c[i]));
    }
    for (int64_t i = 0; i < ns; ++i) {
        es[i] = expf(-s[i]);
        m = fmaxf(m, fabsf(s[i]));
    }
    return m <= FACTOR_LIMIT; /* false for NaN too: the per-element path propagates it */
}

static inline float gate_of(float a, float b, int mode) {
    if (mode == SUM_EXP) return 1.0f / (1.0f + a * b);
    /* The logit first, then clamped: expf stays finite, and 1 / (1 + exp(88)) is 6e-39, as
     * good as sigmoid's 0 in float32. */
    float l = mode == PRODUCT ? a * b : a + b;
    l = l < -88.0f ? -88.0f : (l > 88.0f ? 88.0f : l);
    return 1.0f / (1.0f + expf(-l));
}

/* Inner loops, always inlined and called with a literal `mode`: OpenMP outlines each parallel
 * region into its own function, where a `mode` read from the shared data would be a run-time
 * branch inside the loop and stop gcc from vectorising it. WITH_MODE(m, call) expands `call`
 * once per mode, each with a literal m. */
#define INLINE static inline __attribute__((always_inline))
#define WITH_MODE(m, call)                                                                  \
    do {                                                                                    \
        if ((m) == PRODUCT) {                                                               \
            const int m_ = PRODUCT;                                                         \
            call;                                                                           \
        } else if ((m) == SUM) {                                                            \
            const int m_ = SUM;                                                             \
            call;                                                                           \
        } else {                                                                            \
            const int m_ = SUM_EXP;                                                         \
            call;                                                                           \
        }                                                                                   \
    } while (0)

INLINE void fwd_row(const float *xr, float *yr, const float *a, int64_t a_step, const float *b,
                    int64_t b_step, int64_t n, const int mode) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * (1.0f + gate_of(a[i * a_step], b[i * b_step], mode));
}

INLINE void fwd_impl(const float *x, const float *a, const float *b, float *y, int64_t B,
                     int64_t C, int64_t HW, int cl, int mode, int nt) {
    if (!cl) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t bc = 0; bc < B * C; ++bc) {
            /* one channel plane: a is constant, b runs over the image's pixels */
            const float *xr = x + bc * HW, *bb = b + (bc / C) * HW;
            WITH_MODE(mode, fwd_row(xr, y + bc * HW, a + bc, 0, bb, 1, HW, m_));
        }
    } else {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t bp = 0; bp < B * HW; ++bp) {
            /* one pixel's channels: b is constant, a runs over the image's channels */
            const float *xr = x + bp * C, *aa = a + (bp / HW) * C;
            WITH_MODE(mode, fwd_row(xr, y + bp * C, aa, 1, b + bp, 0, C, m_));
        }
    }
}

/* Backward of one row (a channel plane in NCHW, a pixel's channels in channels_last).
 * dl = dy * x * g * (1 - g); dx = dy * (1 + g). Returns the row's sum of dl (times `other`
 * for product) and adds dl (times `scale`) into part[i]. */
INLINE float bwd_row(const float *gr, const float *xr, float *dxr, const float *a, int64_t a_step,
                     const float *b, int64_t b_step, const float *other, float scale, float *part,
                     int64_t n, const int mode) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate_of(a[i * a_step], b[i * b_step], mode);
        const float dl = gr[i] * xr[i] * g * (1.0f - g);
        dxr[i] = gr[i] * (1.0f + g);
        acc += mode == PRODUCT ? dl * other[i] : dl;
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
                     int64_t B, int64_t C, int64_t HW, int64_t nchunk, int cl, int mode, int nt) {
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
                const float cc = mode == PRODUCT ? cv[bc] : 1.0f;
                WITH_MODE(mode, dc[bc] = bwd_row(dy + o, x + o, dx + o, a + bc, 0, b + bi * HW, 1,
                                                 sv + bi * HW, cc, pr, HW, m_));
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
                const float ss = mode == PRODUCT ? sv[bp] : 1.0f;
                WITH_MODE(mode, ds[bp] = bwd_row(dy + o, x + o, dx + o, a + bi * C, 1, b + bp, 0,
                                                 cv + bi * C, ss, pr, C, m_));
            }
        }
    }
}

/* Entry points: branch once on mode so each inner loop is specialised and vectorised;
 * target_clones picks AVX-512/AVX2 code at load time where the CPU has it. */
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
CLONES void bam_gate_fwd(const float *x, const float *a, const float *b, float *y, int64_t B,
                  int64_t C, int64_t HW, int cl, int mode, int nt) {
    WITH_MODE(mode, fwd_impl(x, a, b, y, B, C, HW, cl, m_, nt));
}

CLONES void bam_gate_bwd(const float *dy, const float *x, const float *a, const float *b,
                  const float *cv, const float *sv, float *dx, float *dc, float *ds,
                  float *part, int64_t B, int64_t C, int64_t HW, int64_t nchunk, int cl,
                  int mode, int nt) {
    WITH_MODE(mode, bwd_impl(dy, x, a, b, cv, sv, dx, dc, ds, part, B, C, HW, nchunk, cl, m_, nt));
}
