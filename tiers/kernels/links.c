/* The dense RAM's fused link step: tiered/tiers/link_kernels.py compiles this file at first
 * use with the system C compiler (-O3 -march=native -fopenmp) and calls it through ctypes.
 * Loaded after torch, its OpenMP calls bind to torch's own OpenMP runtime, so the kernels
 * share torch's worker threads instead of competing with them.
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
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DEFINE_KERNELS(T, SUFFIX)                                                          \
void link_forward_##SUFFIX(const T *restrict link, const T *restrict precedence,          \
                           const T *restrict write, const T *restrict reads, int64_t P,   \
                           int64_t H, int64_t N, int64_t R, int64_t parallel,             \
                           T *restrict out, T *restrict fwd, T *restrict bwd) {           \
    _Pragma("omp parallel for schedule(static) if (parallel)")                           \
    for (int64_t q = 0; q < P; q++) {                                                     \
        const T *restrict L = link + q * N * N;                                           \
        T *restrict O = out + q * N * N;                                                  \
        const T *restrict p = precedence + q * N;                                         \
        const T *restrict w = write + q * N;                                              \
        const T *restrict x = reads + (q / H) * R * N;                                    \
        T *restrict f = fwd + q * R * N;                                                  \
        T *restrict bk = bwd + q * R * N;                                                 \
        memset(bk, 0, sizeof(T) * R * N);                                                 \
        for (int64_t i = 0; i < N; i++) {                                                 \
            const T wi = w[i], ci = (T)1 - w[i];                                          \
            const T *restrict Li = L + i * N;                                             \
            T *restrict Oi = O + i * N;                                                   \
            for (int64_t j = 0; j < N; j++) Oi[j] = (ci - w[j]) * Li[j] + wi * p[j];      \
            Oi[i] = 0;                                                                    \
            int64_t r = 0;                                                                \
            for (; r + 1 < R; r += 2) { /* two heads per pass over the row */             \
                const T *restrict xa = x + r * N, *restrict xb = xa + N;                  \
                T *restrict ba = bk + r * N, *restrict bb = ba + N;                       \
                const T ya = xa[i], yb = xb[i];                                           \
                T acc_a = 0, acc_b = 0;                                                   \
                for (int64_t j = 0; j < N; j++) {                                         \
                    const T v = Oi[j];                                                    \
                    acc_a += v * xa[j];                                                   \
                    acc_b += v * xb[j];                                                   \
                    ba[j] += v * ya;                                                      \
                    bb[j] += v * yb;                                                      \
                }                                                                         \
                f[r * N + i] = acc_a;                                                     \
                f[(r + 1) * N + i] = acc_b;                                               \
            }                                                                             \
            for (; r < R; r++) {                                                          \
                const T *restrict xr = x + r * N;                                         \
                T *restrict br = bk + r * N;                                              \
                const T xi = xr[i];                                                       \
                T acc = 0;                                                                \
                for (int64_t j = 0; j < N; j++) {                                         \
                    const T v = Oi[j];                                                    \
                    acc += v * xr[j];                                                     \
                    br[j] += v * xi;                                                      \
                }                                                                         \
                f[r * N + i] = acc;                                                       \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
void link_backward_##SUFFIX(const T *restrict link, const T *restrict precedence,         \
                            const T *restrict write, const T *restrict reads, int64_t P,  \
                            int64_t H, int64_t N, int64_t R, int64_t parallel,            \
                            const T *restrict grad, const T *restrict gf,                 \
                            const T *restrict gb, T *restrict grad_prev, T *restrict gw,  \
                            T *restrict gp, T *restrict gx) {                             \
    _Pragma("omp parallel for schedule(static) if (parallel)")                           \
    for (int64_t q = 0; q < P; q++) {                                                     \
        const T *restrict L = link + q * N * N;                                           \
        const T *restrict p = precedence + q * N;                                         \
        const T *restrict w = write + q * N;                                              \
        const T *restrict x = reads + (q / H) * R * N;                                    \
        const T *restrict gfq = gf + q * R * N;                                           \
        const T *restrict gbq = gb + q * R * N;                                           \
        T *restrict gwq = gw + q * N;                                                     \
        T *restrict gpq = gp + q * N;                                                     \
        T *restrict gxq = gx + q * R * N;                                                 \
        T *restrict total = (T *)malloc(sizeof(T) * 2 * N);                               \
        T *restrict fresh = total + N;                                                    \
        memset(gwq, 0, sizeof(T) * N);                                                    \
        memset(gpq, 0, sizeof(T) * N);                                                    \
        memset(gxq, 0, sizeof(T) * R * N);                                                \
        for (int64_t i = 0; i < N; i++) {                                                 \
            const T wi = w[i], ci = (T)1 - w[i];                                          \
            const T *restrict Li = L + i * N;                                             \
            for (int64_t j = 0; j < N; j++) fresh[j] = (ci - w[j]) * Li[j] + wi * p[j];   \
            fresh[i] = 0;                                                                 \
            /* Gt's row, head by head; the first head's pass also copies the gradient. */ \
            const T *restrict Gi = grad ? grad + q * N * N + i * N : 0;                   \
            for (int64_t r = 0; r < R; r++) {                                             \
                const T *restrict xr = x + r * N;                                         \
                const T *restrict yr = gbq + r * N;                                       \
                T *restrict gxr = gxq + r * N;                                            \
                const T a = gfq[r * N + i], d = xr[i];                                    \
                T acc = 0;                                                                \
                if (r > 0) {                                                              \
                    for (int64_t j = 0; j < N; j++) {                                     \
                        const T v = fresh[j], y = yr[j];                                  \
                        total[j] += a * xr[j] + d * y;                                    \
                        gxr[j] += v * a;                                                  \
                        acc += v * y;                                                     \
                    }                                                                     \
                } else if (Gi) {                                                          \
                    for (int64_t j = 0; j < N; j++) {                                     \
                        const T v = fresh[j], y = yr[j];                                  \
                        total[j] = Gi[j] + a * xr[j] + d * y;                             \
                        gxr[j] += v * a;                                                  \
                        acc += v * y;                                                     \
                    }                                                                     \
                } else {                                                                  \
                    for (int64_t j = 0; j < N; j++) {                                     \
                        const T v = fresh[j], y = yr[j];                                  \
                        total[j] = a * xr[j] + d * y;                                     \
                        gxr[j] += v * a;                                                  \
                        acc += v * y;                                                     \
                    }                                                                     \
                }                                                                         \
                gxr[i] += acc;                                                            \
            }                                                                             \
            if (R == 0) {                                                                 \
                if (Gi) memcpy(total, Gi, sizeof(T) * N);                                 \
                else memset(total, 0, sizeof(T) * N);                                     \
            }                                                                             \
            total[i] = 0;                                                                 \
            T row = 0;                                                                    \
            for (int64_t j = 0; j < N; j++) {                                             \
                const T t = total[j], o = Li[j];                                          \
                row += t * (p[j] - o);                                                    \
                gwq[j] -= t * o;                                                          \
                gpq[j] += t * wi;                                                         \
            }                                                                             \
            gwq[i] += row;                                                                \
            if (grad_prev) {                                                              \
                T *restrict out = grad_prev + q * N * N + i * N;                          \
                for (int64_t j = 0; j < N; j++) out[j] = (ci - w[j]) * total[j];          \
            }                                                                             \
        }                                                                                 \
        free(total);                                                                      \
    }                                                                                     \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
