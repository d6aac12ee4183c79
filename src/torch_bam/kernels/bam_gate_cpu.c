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

static inline __attribute__((always_inline)) void fwd_impl(
    const float *x, const float *a, const float *b, float *y, int64_t B, int64_t C, int64_t HW,
    int cl, const int product, int nt) {
    if (!cl) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t bc = 0; bc < B * C; ++bc) {
            const float av = a[bc];
            const float *bb = b + (bc / C) * HW;
            const float *xr = x + bc * HW;
            float *yr = y + bc * HW;
#pragma omp simd
            for (int64_t p = 0; p < HW; ++p) yr[p] = xr[p] * (1.0f + gate_of(av, bb[p], product));
        }
    } else {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t bp = 0; bp < B * HW; ++bp) {
            const float bv = b[bp];
            const float *aa = a + (bp / HW) * C;
            const float *xr = x + bp * C;
            float *yr = y + bp * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * (1.0f + gate_of(aa[c], bv, product));
        }
    }
}

/* Backward. dl = dy * x * g * (1 - g); dx = dy * (1 + g);
 * dc = sum over HW of dl (times s for product), ds = sum over C of dl (times c for product).
 * cv, sv are the raw logits (needed for product's chain rule; unused for sum).
 * NCHW: tasks are (b, channel chunk); each writes a partial ds row part[task][HW].
 * channels_last: tasks are (b, pixel chunk); each writes a partial dc row part[task][C].
 * The caller sums the partial rows over chunks.
 */
static inline __attribute__((always_inline)) void bwd_impl(
    const float *dy, const float *x, const float *a, const float *b, const float *cv,
    const float *sv, float *dx, float *dc, float *ds, float *part, int64_t B, int64_t C,
    int64_t HW, int64_t nchunk, int cl, const int product, int nt) {
    if (!cl) {
        const int64_t step = (C + nchunk - 1) / nchunk;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t t = 0; t < B * nchunk; ++t) {
            const int64_t bi = t / nchunk, k = t % nchunk;
            float *pr = part + t * HW;
            const float *bb = b + bi * HW;
            const float *sr = sv + bi * HW;
            for (int64_t p = 0; p < HW; ++p) pr[p] = 0.0f;
            const int64_t c1 = (k + 1) * step < C ? (k + 1) * step : C;
            for (int64_t c = k * step; c < c1; ++c) {
                const int64_t bc = bi * C + c;
                const float av = a[bc], cc = product ? cv[bc] : 1.0f;
                const float *xr = x + bc * HW, *gr = dy + bc * HW;
                float *dxr = dx + bc * HW;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t p = 0; p < HW; ++p) {
                    const float g = gate_of(av, bb[p], product);
                    const float dl = gr[p] * xr[p] * g * (1.0f - g);
                    dxr[p] = gr[p] * (1.0f + g);
                    acc += product ? dl * sr[p] : dl;
                    pr[p] += dl * cc;
                }
                dc[bc] = acc;
            }
        }
    } else {
        const int64_t step = (HW + nchunk - 1) / nchunk;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t t = 0; t < B * nchunk; ++t) {
            const int64_t bi = t / nchunk, k = t % nchunk;
            float *pr = part + t * C;
            const float *aa = a + bi * C;
            const float *cr = cv + bi * C;
            for (int64_t c = 0; c < C; ++c) pr[c] = 0.0f;
            const int64_t p1 = (k + 1) * step < HW ? (k + 1) * step : HW;
            for (int64_t p = k * step; p < p1; ++p) {
                const int64_t bp = bi * HW + p;
                const float bv = b[bp], ss = product ? sv[bp] : 1.0f;
                const float *xr = x + bp * C, *gr = dy + bp * C;
                float *dxr = dx + bp * C;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t c = 0; c < C; ++c) {
                    const float g = gate_of(aa[c], bv, product);
                    const float dl = gr[c] * xr[c] * g * (1.0f - g);
                    dxr[c] = gr[c] * (1.0f + g);
                    acc += product ? dl * cr[c] : dl;
                    pr[c] += dl * ss;
                }
                ds[bp] = acc;
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
