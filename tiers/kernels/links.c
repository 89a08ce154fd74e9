/* The dense RAM's fused link step: tiered/tiers/link_kernels.py compiles this file at first
 * use with the system C compiler (-O3 -march=native -fopenmp) and calls it through ctypes.
 * Loaded after torch, its OpenMP loops bind to torch's own OpenMP runtime, so the kernels
 * run on torch's worker threads instead of competing with them.
 *
 * Layout: P = B H link matrices of N x N, row-major; pair q belongs to batch element q / H.
 * link, out, grad, grad_prev: (P, N, N); precedence, write, gw, gp: (P, N);
 * reads: (B, R, N); fwd, bwd, gf, gb, gx: (P, R, N).
 *
 * forward:  out = (1 - w_i - w_j) L + w_i p_j (zero diagonal); fwd_r = out x_r;
 *           bwd_r = out^T x_r.
 * backward: Gt = grad + sum_r gf_r x_r^T + x_r gb_r^T (zero diagonal);
 *           grad_prev = (1 - w_i - w_j) Gt; gw[k] = sum_j Gt[k,j] (p_j - L[k,j])
 *           - sum_i Gt[i,k] L[i,k]; gp[j] = sum_i Gt[i,j] w_i; gx_r = out^T gf_r + out gb_r.
 *
 * Each link matrix is read once forward and once backward. Rows are taken two at a time, so
 * that every load of a per-slot vector (a head's reads, their gradients) serves both rows.
 * The file includes itself once per element type (float: _f32, double: _f64).
 */
#ifndef LINKS_BODY
#define LINKS_BODY
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

/* 1 when built with OpenMP (the kernels then share torch's threads), else 0. */
int64_t links_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

#define T float
#define NAME(name) name##_f32
#if defined(__AVX__)
#define LANES 8
#define STREAM(dst, src) _mm256_stream_ps((dst), _mm256_loadu_ps(src))
#endif
#include __FILE__
#undef T
#undef NAME
#undef LANES
#undef STREAM

#define T double
#define NAME(name) name##_f64
#if defined(__AVX__)
#define LANES 4
#define STREAM(dst, src) _mm256_stream_pd((dst), _mm256_loadu_pd(src))
#endif
#include __FILE__
#undef T
#undef NAME
#undef LANES
#undef STREAM

#else /* LINKS_BODY: the kernels for element type T */

/* Copy a finished row to the matrix without reading the destination into the cache first
 * (non-temporal stores where AVX has them): it is read again only at another step. */
static inline void NAME(put_row)(T *restrict dst, const T *restrict src, int64_t N) {
    int64_t j = 0;
#if defined(STREAM)
    while (j < N && ((uintptr_t)(dst + j) & 31u)) {
        dst[j] = src[j];
        j++;
    }
    for (; j + LANES <= N; j += LANES) STREAM(dst + j, src + j);
#endif
    for (; j < N; j++) dst[j] = src[j];
}

static inline void NAME(fence)(void) {
#if defined(STREAM)
    _mm_sfence();
#endif
}

/* Row i of L_t from row i of L_{t-1}, zero on the diagonal. */
static inline void NAME(new_row)(const T *restrict Li, T *restrict Oi, const T *restrict w,
                                 const T *restrict p, int64_t N, int64_t i) {
    const T wi = w[i], ci = (T)1 - w[i];
    for (int64_t j = 0; j < N; j++) Oi[j] = (ci - w[j]) * Li[j] + wi * p[j];
    Oi[i] = 0;
}

/* Forward reads of rows i0 and i0 + 1 of out (O0, O1), heads r0 and r0 + 1 (x0, x1). */
static inline void NAME(read_2x2)(const T *restrict O0, const T *restrict O1,
                                  const T *restrict x0, const T *restrict x1,
                                  T *restrict b0, T *restrict b1, T *restrict f0,
                                  T *restrict f1, int64_t N, int64_t i0) {
    const T y00 = x0[i0], y01 = x0[i0 + 1], y10 = x1[i0], y11 = x1[i0 + 1];
    T a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    for (int64_t j = 0; j < N; j++) {
        const T u = O0[j], v = O1[j], s = x0[j], t = x1[j];
        a00 += u * s;
        a01 += v * s;
        a10 += u * t;
        a11 += v * t;
        b0[j] += u * y00 + v * y01;
        b1[j] += u * y10 + v * y11;
    }
    f0[i0] = a00;
    f0[i0 + 1] = a01;
    f1[i0] = a10;
    f1[i0 + 1] = a11;
}

/* Forward reads of one row i of out, one head. */
static inline void NAME(read_1x1)(const T *restrict Oi, const T *restrict x, T *restrict b,
                                  T *restrict f, int64_t N, int64_t i) {
    const T y = x[i];
    T acc = 0;
    for (int64_t j = 0; j < N; j++) {
        const T u = Oi[j];
        acc += u * x[j];
        b[j] += u * y;
    }
    f[i] = acc;
}

void NAME(link_forward)(const T *restrict link, const T *restrict precedence,
                        const T *restrict write, const T *restrict reads, int64_t P, int64_t H,
                        int64_t N, int64_t R, int64_t parallel, T *restrict out,
                        T *restrict fwd, T *restrict bwd) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t q = 0; q < P; q++) {
        const T *L = link + q * N * N;
        T *O = out + q * N * N;
        const T *p = precedence + q * N, *w = write + q * N;
        const T *x = reads + (q / H) * R * N;
        T *f = fwd + q * R * N, *bk = bwd + q * R * N;
        if (R) memset(bk, 0, sizeof(T) * R * N);
        int64_t i = 0;
        for (; i + 1 < N; i += 2) {
            NAME(new_row)(L + i * N, O + i * N, w, p, N, i);
            NAME(new_row)(L + (i + 1) * N, O + (i + 1) * N, w, p, N, i + 1);
            int64_t r = 0;
            for (; r + 1 < R; r += 2)
                NAME(read_2x2)(O + i * N, O + (i + 1) * N, x + r * N, x + (r + 1) * N,
                               bk + r * N, bk + (r + 1) * N, f + r * N, f + (r + 1) * N, N, i);
            for (; r < R; r++) {
                NAME(read_1x1)(O + i * N, x + r * N, bk + r * N, f + r * N, N, i);
                NAME(read_1x1)(O + (i + 1) * N, x + r * N, bk + r * N, f + r * N, N, i + 1);
            }
        }
        for (; i < N; i++) {
            NAME(new_row)(L + i * N, O + i * N, w, p, N, i);
            for (int64_t r = 0; r < R; r++)
                NAME(read_1x1)(O + i * N, x + r * N, bk + r * N, f + r * N, N, i);
        }
    }
}

/* Backward, one head r over rows i0 and i0 + 1: adds the head's rank-one terms to Gt's two
 * rows (t0, t1; when first, they start from the gradient rows g0, g1, or from zero), the
 * forward read's share of gx over every slot, and the backward read's share at the rows. */
static inline void NAME(head_2)(const T *restrict n0, const T *restrict n1, T *restrict t0,
                                T *restrict t1, const T *restrict g0, const T *restrict g1,
                                const T *restrict x, const T *restrict y, T *restrict gxr,
                                T a0, T a1, int64_t N, int64_t i0, int first) {
    const T d0 = x[i0], d1 = x[i0 + 1];
    T acc0 = 0, acc1 = 0;
    if (!first) {
        for (int64_t j = 0; j < N; j++) {
            const T s = x[j], v = y[j];
            t0[j] += a0 * s + d0 * v;
            t1[j] += a1 * s + d1 * v;
            gxr[j] += n0[j] * a0 + n1[j] * a1;
            acc0 += n0[j] * v;
            acc1 += n1[j] * v;
        }
    } else if (g0) {
        for (int64_t j = 0; j < N; j++) {
            const T s = x[j], v = y[j];
            t0[j] = g0[j] + a0 * s + d0 * v;
            t1[j] = g1[j] + a1 * s + d1 * v;
            gxr[j] += n0[j] * a0 + n1[j] * a1;
            acc0 += n0[j] * v;
            acc1 += n1[j] * v;
        }
    } else {
        for (int64_t j = 0; j < N; j++) {
            const T s = x[j], v = y[j];
            t0[j] = a0 * s + d0 * v;
            t1[j] = a1 * s + d1 * v;
            gxr[j] += n0[j] * a0 + n1[j] * a1;
            acc0 += n0[j] * v;
            acc1 += n1[j] * v;
        }
    }
    gxr[i0] += acc0;
    gxr[i0 + 1] += acc1;
}

/* Backward, heads r and r + 1 over rows i0 and i0 + 1 (both heads after the first). */
static inline void NAME(head_22)(const T *restrict n0, const T *restrict n1, T *restrict t0,
                                 T *restrict t1, const T *restrict xa, const T *restrict xb,
                                 const T *restrict ya, const T *restrict yb,
                                 T *restrict gxa, T *restrict gxb, T a0, T a1, T b0, T b1,
                                 int64_t N, int64_t i0) {
    const T da0 = xa[i0], da1 = xa[i0 + 1], db0 = xb[i0], db1 = xb[i0 + 1];
    T acc_a0 = 0, acc_a1 = 0, acc_b0 = 0, acc_b1 = 0;
    for (int64_t j = 0; j < N; j++) {
        const T sa = xa[j], sb = xb[j], va = ya[j], vb = yb[j], u0 = n0[j], u1 = n1[j];
        t0[j] += a0 * sa + da0 * va + b0 * sb + db0 * vb;
        t1[j] += a1 * sa + da1 * va + b1 * sb + db1 * vb;
        gxa[j] += u0 * a0 + u1 * a1;
        gxb[j] += u0 * b0 + u1 * b1;
        acc_a0 += u0 * va;
        acc_a1 += u1 * va;
        acc_b0 += u0 * vb;
        acc_b1 += u1 * vb;
    }
    gxa[i0] += acc_a0;
    gxa[i0 + 1] += acc_a1;
    gxb[i0] += acc_b0;
    gxb[i0 + 1] += acc_b1;
}

/* The same for one row i. */
static inline void NAME(head_1)(const T *restrict n0, T *restrict t0, const T *restrict g0,
                                const T *restrict x, const T *restrict y, T *restrict gxr,
                                T a0, int64_t N, int64_t i, int first) {
    const T d0 = x[i];
    T acc0 = 0;
    if (!first) {
        for (int64_t j = 0; j < N; j++) {
            t0[j] += a0 * x[j] + d0 * y[j];
            gxr[j] += n0[j] * a0;
            acc0 += n0[j] * y[j];
        }
    } else if (g0) {
        for (int64_t j = 0; j < N; j++) {
            t0[j] = g0[j] + a0 * x[j] + d0 * y[j];
            gxr[j] += n0[j] * a0;
            acc0 += n0[j] * y[j];
        }
    } else {
        for (int64_t j = 0; j < N; j++) {
            t0[j] = a0 * x[j] + d0 * y[j];
            gxr[j] += n0[j] * a0;
            acc0 += n0[j] * y[j];
        }
    }
    gxr[i] += acc0;
}

/* Gt's row i (t, zero at i) against L_{t-1}'s row: the write and precedence gradients,
 * and the gradient of L_{t-1}'s row into D (when wanted). */
static inline void NAME(finish_row)(T *restrict t, const T *restrict Li,
                                    const T *restrict w, const T *restrict p, T *restrict gw,
                                    T *restrict gp, T *restrict D, int64_t N, int64_t i) {
    const T wi = w[i], ci = (T)1 - w[i];
    T row = 0;
    for (int64_t j = 0; j < N; j++) {
        const T v = t[j], o = Li[j];
        row += v * (p[j] - o);
        gw[j] -= v * o;
        gp[j] += v * wi;
    }
    gw[i] += row;
    if (D) {
        for (int64_t j = 0; j < N; j++) t[j] *= ci - w[j];
        NAME(put_row)(D, t, N);
    }
}

int64_t NAME(link_backward)(const T *restrict link, const T *restrict precedence,
                         const T *restrict write, const T *restrict reads, int64_t P,
                         int64_t H, int64_t N, int64_t R, int64_t parallel,
                         const T *restrict grad, const T *restrict gf, const T *restrict gb,
                         T *restrict grad_prev, T *restrict gw, T *restrict gp,
                         T *restrict gx) {
    int64_t failed = 0;
#pragma omp parallel if (parallel) reduction(| : failed)
    {
        /* Per thread: two rows of L_t and of Gt. */
        T *scratch = (T *)malloc(sizeof(T) * 4 * (size_t)N);
        if (!scratch) failed = 1;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < P; q++) {
            if (!scratch) continue;
            T *n0 = scratch, *n1 = scratch + N, *t0 = scratch + 2 * N, *t1 = scratch + 3 * N;
            const T *L = link + q * N * N;
            const T *G = grad ? grad + q * N * N : 0;
            T *D = grad_prev ? grad_prev + q * N * N : 0;
            const T *p = precedence + q * N, *w = write + q * N;
            const T *x = reads + (q / H) * R * N;
            const T *gfq = gf + q * R * N, *gbq = gb + q * R * N;
            T *gwq = gw + q * N, *gpq = gp + q * N, *gxq = gx + q * R * N;
            memset(gwq, 0, sizeof(T) * N);
            memset(gpq, 0, sizeof(T) * N);
            if (R) memset(gxq, 0, sizeof(T) * R * N);
            int64_t i = 0;
            for (; i + 1 < N; i += 2) {
                NAME(new_row)(L + i * N, n0, w, p, N, i);
                NAME(new_row)(L + (i + 1) * N, n1, w, p, N, i + 1);
                const T *g0 = G ? G + i * N : 0, *g1 = G ? G + (i + 1) * N : 0;
                int64_t r = 0;
                if (R > 0) {
                    NAME(head_2)(n0, n1, t0, t1, g0, g1, x, gbq, gxq, gfq[i], gfq[i + 1], N, i,
                                 1);
                    r = 1;
                }
                for (; r + 1 < R; r += 2)
                    NAME(head_22)(n0, n1, t0, t1, x + r * N, x + (r + 1) * N, gbq + r * N,
                                  gbq + (r + 1) * N, gxq + r * N, gxq + (r + 1) * N,
                                  gfq[r * N + i], gfq[r * N + i + 1], gfq[(r + 1) * N + i],
                                  gfq[(r + 1) * N + i + 1], N, i);
                for (; r < R; r++)
                    NAME(head_2)(n0, n1, t0, t1, g0, g1, x + r * N, gbq + r * N, gxq + r * N,
                                 gfq[r * N + i], gfq[r * N + i + 1], N, i, 0);
                if (R == 0) {
                    for (int64_t j = 0; j < N; j++) {
                        t0[j] = g0 ? g0[j] : 0;
                        t1[j] = g1 ? g1[j] : 0;
                    }
                }
                t0[i] = 0;
                t1[i + 1] = 0;
                NAME(finish_row)(t0, L + i * N, w, p, gwq, gpq, D ? D + i * N : 0, N, i);
                NAME(finish_row)(t1, L + (i + 1) * N, w, p, gwq, gpq, D ? D + (i + 1) * N : 0,
                                 N, i + 1);
            }
            for (; i < N; i++) {
                NAME(new_row)(L + i * N, n0, w, p, N, i);
                const T *g0 = G ? G + i * N : 0;
                for (int64_t r = 0; r < R; r++)
                    NAME(head_1)(n0, t0, g0, x + r * N, gbq + r * N, gxq + r * N,
                                 gfq[r * N + i], N, i, r == 0);
                if (R == 0)
                    for (int64_t j = 0; j < N; j++) t0[j] = g0 ? g0[j] : 0;
                t0[i] = 0;
                NAME(finish_row)(t0, L + i * N, w, p, gwq, gpq, D ? D + i * N : 0, N, i);
            }
        }
        NAME(fence)();
        free(scratch);
    }
    return failed; /* 1: out of memory for the scratch rows */
}

#endif /* LINKS_BODY */
