/*
 * The kernel for one floating-point type; included twice by mixture.c with
 *   T       float / double
 *   SUFFIX  f32 / f64
 *   EXP2    exp2 for arguments in [FLOOR_NORMAL, 0] or NaN (result normal or 1)
 *   EXP2_FULL  exp2 for arguments in [FLOOR_MIN, 0] or NaN (subnormal / 0 results)
 *   LOG     natural log of a positive finite number (NaN/inf propagate)
 *   FLOOR_NORMAL  -126 / -1022: log2 of the smallest normal number
 *   FLOOR_MIN     -160 / -1100: exp2 of it rounds to exactly 0
 */
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define BLOCK_FN CAT(block_, SUFFIX)
#define ENTRY CAT(bsws_mixture_, SUFFIX)

/* Constants per component, laid out for the block loop. */
typedef struct {
    const T *mu, *inv_s, *neg_inv_s, *coef, *floor_, *log2norm;
    const unsigned char *zero; /* pi_j == 0 and grad_pi wanted */
    const unsigned char *subnormal; /* floor_j < FLOOR_NORMAL: needs EXP2_FULL */
    int any_zero, any_subnormal;
} CAT(consts_, SUFFIX);

/*
 * One block of n <= BLOCK weights. L and U: M * BLOCK scratch each.
 * part (1 + 4M doubles): log_prob, S0, S1, S2, Z accumulated into.
 * Inlined twice: with n == BLOCK (fixed trip counts) and for the tail.
 */
static inline __attribute__((always_inline)) void
BLOCK_FN(const T *restrict w, const int64_t n, const int64_t M, const CAT(consts_, SUFFIX) * k,
         T *restrict gw, const int need_sums, T *restrict L, T *restrict U,
         double *restrict part) {
    T top[BLOCK], total[BLOCK], inv[BLOCK];
    /* 1. u = (w - mu) / sigma, logits l = log2(pi N) (up to a constant), per-weight max. */
    for (int64_t j = 0; j < M; j++) {
        const T m = k->mu[j], is = k->inv_s[j], c = k->coef[j];
        T *restrict lj = L + j * BLOCK, *restrict uj = U + j * BLOCK;
        if (j == 0) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                T u = (w[i] - m) * is;
                T l = c - (T)HALF_LOG2E * (u * u);
                uj[i] = u;
                lj[i] = l;
                top[i] = l;
            }
        } else {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                T u = (w[i] - m) * is;
                T l = c - (T)HALF_LOG2E * (u * u);
                uj[i] = u;
                lj[i] = l;
                top[i] = l > top[i] ? l : top[i]; /* a NaN top stays NaN */
            }
        }
    }
    /* 2. e = exp2(max(l - top, floor)), total = sum_j e. */
    for (int64_t j = 0; j < M; j++) {
        const T fl = k->floor_[j];
        T *restrict lj = L + j * BLOCK;
        if (k->any_subnormal && k->subnormal[j]) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                T d = lj[i] - top[i];
                d = d < fl ? fl : d; /* NaN passes */
                T e = EXP2_FULL(d);
                lj[i] = e;
                total[i] = j ? total[i] + e : e;
            }
        } else if (j == 0) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                T d = lj[i] - top[i];
                d = d < fl ? fl : d;
                T e = EXP2(d);
                lj[i] = e;
                total[i] = e;
            }
        } else {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                T d = lj[i] - top[i];
                d = d < fl ? fl : d;
                T e = EXP2(d);
                lj[i] = e;
                total[i] += e;
            }
        }
    }
    /* 3. ln p(w_i) = ln total + top ln 2. */
    T lp = 0;
#pragma omp simd reduction(+ : lp)
    for (int64_t i = 0; i < n; i++) {
        inv[i] = (T)1 / total[i];
        lp += LOG(total[i]) + top[i] * (T)LN2;
    }
    part[0] += (double)lp;
    /* 4. gradients: gamma = e / total; grad_w = -sum_j gamma u / sigma; S0, S1, S2. */
    if (gw) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) gw[i] = 0;
    }
    if (gw || need_sums) {
        for (int64_t j = 0; j < M; j++) {
            const T *restrict ej = L + j * BLOCK, *restrict uj = U + j * BLOCK;
            const T nis = k->neg_inv_s[j];
            if (need_sums && gw) {
                T a = 0, b = 0, c = 0;
#pragma omp simd reduction(+ : a, b, c)
                for (int64_t i = 0; i < n; i++) {
                    T gam = ej[i] * inv[i];
                    T gu = gam * uj[i];
                    a += gam;
                    b += gu;
                    c += gu * uj[i];
                    gw[i] += gu * nis;
                }
                part[1 + j] += (double)a;
                part[1 + M + j] += (double)b;
                part[1 + 2 * M + j] += (double)c;
            } else if (need_sums) {
                T a = 0, b = 0, c = 0;
#pragma omp simd reduction(+ : a, b, c)
                for (int64_t i = 0; i < n; i++) {
                    T gam = ej[i] * inv[i];
                    T gu = gam * uj[i];
                    a += gam;
                    b += gu;
                    c += gu * uj[i];
                }
                part[1 + j] += (double)a;
                part[1 + M + j] += (double)b;
                part[1 + 2 * M + j] += (double)c;
            } else {
#pragma omp simd
                for (int64_t i = 0; i < n; i++) gw[i] += ej[i] * uj[i] * nis;
            }
        }
        if (gw && !need_sums) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) gw[i] *= inv[i];
        }
    }
    /* 5. sum_i N(w_i | mu_j, sigma_j) / p(w_i) for pi_j == 0 (rare; libm exp2). */
    if (k->any_zero) {
        for (int64_t j = 0; j < M; j++) {
            if (!k->zero[j]) continue;
            const T *restrict uj = U + j * BLOCK;
            double z = 0;
            for (int64_t i = 0; i < n; i++) {
                T r = k->log2norm[j] - (T)HALF_LOG2E * (uj[i] * uj[i]) - top[i];
                z += (double)((T)exp2((double)r) * inv[i]);
            }
            part[1 + 3 * M + j] += z;
        }
    }
}

/*
 * Entry point. Returns 0 on success, 1 if out of memory. out_log_prob: one
 * double. grad_w (N) and grad_pi, grad_mu, grad_sigma (M) may be NULL when not
 * wanted. threads: OpenMP team size (capped so each thread gets >= 2^15 pairs).
 */
int ENTRY(const T *w, int64_t N, const T *pi, const T *mu, const T *sigma, int64_t M,
          int threads, double *out_log_prob, T *grad_w, T *grad_pi, T *grad_mu,
          T *grad_sigma) {
    const int need_sums = grad_pi || grad_mu || grad_sigma;
    const int64_t P = 1 + 4 * M;
    T *buf = (T *)malloc(sizeof(T) * 6 * (size_t)M);
    unsigned char *flags = (unsigned char *)calloc(2 * (size_t)M, 1);
    if (!buf || !flags) {
        free(buf);
        free(flags);
        return 1;
    }
    CAT(consts_, SUFFIX) k;
    T *inv_s = buf, *neg_inv_s = buf + M, *coef = buf + 2 * M, *floor_ = buf + 3 * M;
    T *log2norm = buf + 4 * M, *mu_c = buf + 5 * M;
    unsigned char *zero = flags, *subnormal = flags + M;
    k.any_zero = k.any_subnormal = 0;
    for (int64_t j = 0; j < M; j++) {
        inv_s[j] = (T)1 / sigma[j];
        neg_inv_s[j] = -inv_s[j];
        /* in T, as kernel._coefficients computes them in the weights' dtype */
        T log_pi = (T)log((double)pi[j]), log_sigma = (T)log((double)sigma[j]);
        coef[j] = (log_pi - log_sigma) * (T)LOG2E - (T)HALF_LOG2_2PI;
        log2norm[j] = -log_sigma * (T)LOG2E - (T)HALF_LOG2_2PI;
        T fl = coef[j] < (T)FLOOR_NORMAL ? coef[j] : (T)FLOOR_NORMAL; /* -inf if pi_j == 0 */
        if (fl < (T)FLOOR_NORMAL) {
            subnormal[j] = 1;
            k.any_subnormal = 1;
            fl = fl < (T)FLOOR_MIN ? (T)FLOOR_MIN : fl; /* exp2 of it is exactly 0 */
        }
        floor_[j] = fl;
        mu_c[j] = mu[j];
        if (grad_pi && pi[j] == 0) {
            zero[j] = 1;
            k.any_zero = 1;
        }
    }
    k.mu = mu_c;
    k.inv_s = inv_s;
    k.neg_inv_s = neg_inv_s;
    k.coef = coef;
    k.floor_ = floor_;
    k.log2norm = log2norm;
    k.zero = zero;
    k.subnormal = subnormal;

    const int64_t nblocks = (N + BLOCK - 1) / BLOCK;
    if (threads < 1) threads = 1;
    int64_t max_threads = (N * M) >> 15;
    if (max_threads < 1) max_threads = 1;
    if (threads > max_threads) threads = (int)max_threads;
    double *parts = (double *)calloc((size_t)threads * P, sizeof(double));
    int failed = parts == NULL;
    if (!failed) {
#pragma omp parallel num_threads(threads) if (threads > 1)
        {
            int t = 0, nt = 1;
#ifdef _OPENMP
            t = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            const int64_t b0 = nblocks * t / nt, b1 = nblocks * (t + 1) / nt;
            T *scratch = (T *)aligned_alloc(64, sizeof(T) * 2 * BLOCK * (size_t)M);
            double *part = parts + (int64_t)t * P;
            if (!scratch) {
#pragma omp atomic write
                failed = 1;
            } else {
                T *L = scratch, *U = scratch + BLOCK * M;
                for (int64_t b = b0; b < b1; b++) {
                    const int64_t i0 = b * BLOCK;
                    T *g = grad_w ? grad_w + i0 : NULL;
                    if (N - i0 >= BLOCK)
                        BLOCK_FN(w + i0, BLOCK, M, &k, g, need_sums, L, U, part);
                    else
                        BLOCK_FN(w + i0, N - i0, M, &k, g, need_sums, L, U, part);
                }
                free(scratch);
            }
        }
    }
    if (!failed) {
        for (int t = 1; t < threads; t++)
            for (int64_t q = 0; q < P; q++) parts[q] += parts[(int64_t)t * P + q];
        *out_log_prob = parts[0];
        const double *S0 = parts + 1, *S1 = parts + 1 + M, *S2 = parts + 1 + 2 * M;
        const double *Z = parts + 1 + 3 * M;
        for (int64_t j = 0; j < M; j++) {
            const double is = (double)inv_s[j];
            if (grad_pi) grad_pi[j] = zero[j] ? (T)Z[j] : (T)(S0[j] / (double)pi[j]);
            if (grad_mu) grad_mu[j] = (T)(S1[j] * is);
            if (grad_sigma) grad_sigma[j] = (T)((S2[j] - S0[j]) * is);
        }
    }
    free(parts);
    free(buf);
    free(flags);
    return failed;
}

#undef BLOCK_FN
#undef ENTRY
