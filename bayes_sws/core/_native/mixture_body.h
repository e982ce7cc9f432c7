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
    int64_t M;
} CAT(consts_, SUFFIX);

/*
 * One block of n <= BLOCK weights against the K components list[0..K) (all M, in
 * order, without pruning). L and U: K * BLOCK scratch each, row t for list[t].
 * part (1 + 4M doubles): log_prob, S0, S1, S2, Z accumulated into.
 * Inlined three times: with n == BLOCK (fixed trip counts), for the tail, and
 * for the runs of the sorted blocks.
 */
static inline __attribute__((always_inline)) void
BLOCK_FN(const T *restrict w, const int64_t n, const int32_t *restrict list, const int64_t K,
         const CAT(consts_, SUFFIX) * k, T *restrict gw, const int need_sums,
         T *restrict L, T *restrict U, double *restrict part) {
    const int64_t M = k->M;
    T top[BLOCK], total[BLOCK], inv[BLOCK];
    /* 1. u = (w - mu) / sigma, logits l = log2(pi N) (up to a constant), per-weight max. */
    for (int64_t t = 0; t < K; t++) {
        const int64_t j = list[t];
        const T m = k->mu[j], is = k->inv_s[j], c = k->coef[j];
        T *restrict lj = L + t * BLOCK, *restrict uj = U + t * BLOCK;
        if (t == 0) {
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
    for (int64_t t = 0; t < K; t++) {
        const int64_t j = list[t];
        const T fl = k->floor_[j];
        T *restrict lj = L + t * BLOCK;
        if (k->any_subnormal && k->subnormal[j]) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                T d = lj[i] - top[i];
                d = d < fl ? fl : d; /* NaN passes */
                T e = EXP2_FULL(d);
                lj[i] = e;
                total[i] = t ? total[i] + e : e;
            }
        } else if (t == 0) {
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
        for (int64_t t = 0; t < K; t++) {
            const int64_t j = list[t];
            const T *restrict ej = L + t * BLOCK, *restrict uj = U + t * BLOCK;
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
    /* 5. sum_i N(w_i | mu_j, sigma_j) / p(w_i) for pi_j == 0 (rare; libm exp2; never
       pruned, so list is every component and row j is component j). */
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

/* The pruning table (prune_build) in the kernel's type. */
typedef struct {
    T a, inv, fcells;
    const int32_t *seg_of_cell, *off, *list;
    int32_t nseg;
} CAT(prune_, SUFFIX);

/* Per-thread buffers of one sort block. */
typedef struct {
    T *ws, *gs;       /* the sorted weights and their gradients */
    int32_t *count;   /* 4 nseg counters */
    uint16_t *seg, *perm; /* each weight's segment and place in the sorted order */
} CAT(sortbuf_, SUFFIX);

/* The segment of each weight: its cell's, or 0 (every component) outside the
   cells and for NaN. Branch-free, so it vectorises. */
static inline void CAT(segments_, SUFFIX)(const CAT(prune_, SUFFIX) * pr, const T *restrict w,
                                          int64_t n, uint16_t *restrict seg) {
    const T a = pr->a, inv = pr->inv, fc = pr->fcells;
    const int32_t *restrict soc = pr->seg_of_cell;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        T t = (w[i] - a) * inv;
        t = (t >= 0 && t < fc) ? t : (T)-1; /* NaN fails both */
        seg[i] = (uint16_t)soc[(int32_t)t + 1];
    }
}

/* Weights [0, n) in blocks of BLOCK against every component: the unpruned loop. */
static void CAT(plain_, SUFFIX)(const T *w, int64_t n, const int32_t *all,
                                const CAT(consts_, SUFFIX) * k, T *gw, int need_sums, T *L,
                                T *U, double *part) {
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        T *g = gw ? gw + i0 : NULL;
        if (n - i0 >= BLOCK)
            BLOCK_FN(w + i0, BLOCK, all, k->M, k, g, need_sums, L, U, part);
        else
            BLOCK_FN(w + i0, n - i0, all, k->M, k, g, need_sums, L, U, part);
    }
}

/*
 * A run whose list is the one component j: the block loop's results for K = 1
 * without its exponentials and logarithms, which are exact there (the only
 * term is the largest: exp2(0) = 1, total = 1, ln 1 = 0, gamma = 1), so every
 * value is the block loop's bit for bit; the sums as the block loop adds them,
 * per BLOCK weights.
 */
static void CAT(single_, SUFFIX)(const T *restrict w, int64_t n, int64_t j,
                                 const CAT(consts_, SUFFIX) * k, T *restrict gw, int need_sums,
                                 double *restrict part) {
    const int64_t M = k->M;
    const T m = k->mu[j], is = k->inv_s[j], c = k->coef[j], nis = k->neg_inv_s[j];
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        const int64_t len = n - i0 < BLOCK ? n - i0 : BLOCK;
        const T *restrict x = w + i0;
        T lp = 0, a = 0, b = 0, q = 0;
#pragma omp simd reduction(+ : lp, a, b, q)
        for (int64_t i = 0; i < len; i++) {
            T u = (x[i] - m) * is;
            T l = c - (T)HALF_LOG2E * (u * u);
            lp += (T)0 + l * (T)LN2;
            if (gw) gw[i0 + i] = (T)0 + u * nis;
            a += (T)1;
            b += u;
            q += u * u;
        }
        part[0] += (double)lp;
        if (need_sums) {
            part[1 + j] += (double)a;
            part[1 + M + j] += (double)b;
            part[1 + 2 * M + j] += (double)q;
        }
    }
}

/*
 * One sort block of n <= SORT_BLOCK weights: each weight's segment from its
 * cell, a counting sort by segment (four interleaved counters, so consecutive
 * weights of one segment do not wait on each other), each run through the block
 * loop over its segment's list, the weight gradients gathered back in order. Unless
 * force, a block whose runs would cost more than the unpruned loop takes that
 * loop. Returns the (weight, component) pairs evaluated.
 */
static int64_t CAT(sorted_block_, SUFFIX)(const T *restrict w, int64_t n, const int32_t *all,
                                          const CAT(consts_, SUFFIX) * k,
                                          const CAT(prune_, SUFFIX) * pr, T *restrict gw,
                                          int need_sums, T *L, T *U, double *part,
                                          const CAT(sortbuf_, SUFFIX) * sb, int force) {
    const int64_t M = k->M, S = pr->nseg;
    const int32_t *off = pr->off;
    int32_t *restrict cnt = sb->count;
    uint16_t *restrict seg = sb->seg, *restrict perm = sb->perm;
    T *restrict ws = sb->ws, *restrict gs = sb->gs;
    CAT(segments_, SUFFIX)(pr, w, n, seg);
    int32_t *restrict c0 = cnt, *restrict c1 = cnt + S, *restrict c2 = cnt + 2 * S,
                      *restrict c3 = cnt + 3 * S;
    memset(cnt, 0, sizeof(int32_t) * 4 * (size_t)S);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        c0[seg[i]]++;
        c1[seg[i + 1]]++;
        c2[seg[i + 2]]++;
        c3[seg[i + 3]]++;
    }
    for (; i < n; i++) cnt[(i & 3) * S + seg[i]]++;
    int64_t work = 0, cost = PRUNE_SORT * n;
    for (int64_t s = 0; s < S; s++) {
        int64_t c = cnt[s] + cnt[S + s] + cnt[2 * S + s] + cnt[3 * S + s];
        work += c * (off[s + 1] - off[s]);
        cost += c ? (c + PRUNE_RUN) * (off[s + 1] - off[s]) : 0;
    }
    if (!force && cost >= n * M) {
        CAT(plain_, SUFFIX)(w, n, all, k, gw, need_sums, L, U, part);
        return n * M;
    }
    int32_t pos = 0; /* counters -> where each of the four streams of a segment starts */
    for (int64_t s = 0; s < S; s++)
        for (int64_t r = 0; r < 4; r++) {
            int32_t c = cnt[r * S + s];
            cnt[r * S + s] = pos;
            pos += c;
        }
    for (i = 0; i + 4 <= n; i += 4) { /* weight i goes to place perm[i] */
        int32_t q0 = c0[seg[i]]++, q1 = c1[seg[i + 1]]++;
        int32_t q2 = c2[seg[i + 2]]++, q3 = c3[seg[i + 3]]++;
        perm[i] = (uint16_t)q0;
        perm[i + 1] = (uint16_t)q1;
        perm[i + 2] = (uint16_t)q2;
        perm[i + 3] = (uint16_t)q3;
        ws[q0] = w[i];
        ws[q1] = w[i + 1];
        ws[q2] = w[i + 2];
        ws[q3] = w[i + 3];
    }
    for (; i < n; i++) {
        int32_t q = cnt[(i & 3) * S + seg[i]]++;
        perm[i] = (uint16_t)q;
        ws[q] = w[i];
    }
    int32_t begin = 0; /* the last stream's counter now ends its segment */
    for (int64_t s = 0; s < S; s++) {
        const int32_t end = cnt[3 * S + s], *list = pr->list + off[s];
        const int64_t K = off[s + 1] - off[s];
        if (K == 1) {
            CAT(single_, SUFFIX)(ws + begin, end - begin, list[0], k, gw ? gs + begin : NULL,
                                 need_sums, part);
        } else {
            for (int32_t i0 = begin; i0 < end; i0 += BLOCK) {
                int64_t m = end - i0 < BLOCK ? end - i0 : BLOCK;
                BLOCK_FN(ws + i0, m, list, K, k, gw ? gs + i0 : NULL, need_sums, L, U, part);
            }
        }
        begin = end;
    }
    if (gw) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) gw[j] = gs[perm[j]];
    }
    return work;
}

/*
 * Build the pruning table for this call into *pt and *pr; 1 if pruning is used,
 * 0 if not, -1 when out of memory. prune: 0 never, 1 where the cost model says
 * it pays (from the segments of about 2048 weights spread over w, as if every
 * sort block held them in these proportions), 2 whenever it applies.
 */
static int CAT(prune_setup_, SUFFIX)(const T *w, int64_t N, const T *pi, const T *mu,
                                     const T *sigma, int64_t M, int prune, int any_zero,
                                     prune_table *pt, CAT(prune_, SUFFIX) * pr) {
    if (prune == 0 || any_zero || M < 2 || N < 1 || (prune == 1 && N < 16384)) return 0;
    double *d = (double *)malloc(sizeof(double) * 3 * (size_t)M);
    if (!d) return -1;
    for (int64_t j = 0; j < M; j++) {
        d[j] = (double)pi[j];
        d[M + j] = (double)mu[j];
        d[2 * M + j] = (double)sigma[j];
    }
    int status = prune_build(d, d + M, d + 2 * M, M, MANT_BITS, pt);
    free(d);
    if (status != 0) return status < 0 ? -1 : 0;
    pr->a = (T)pt->a;
    pr->inv = (T)pt->inv_width;
    pr->fcells = (T)pt->ncell;
    pr->seg_of_cell = pt->seg_of_cell;
    pr->off = pt->seg_off;
    pr->list = pt->seg_list;
    pr->nseg = pt->nseg;
    if (prune == 2) return 1;
    int32_t *hist = (int32_t *)calloc((size_t)pt->nseg, sizeof(int32_t));
    if (!hist) {
        prune_free(pt);
        return -1;
    }
    const int64_t step = N / 2048 + 1;
    int64_t samples = 0;
    for (int64_t i = 0; i < N; i += step, samples++) {
        uint16_t s;
        CAT(segments_, SUFFIX)(pr, w + i, 1, &s);
        hist[s]++;
    }
    /* expected cost of a sort block of SORT_BLOCK weights, in pairs, times samples */
    double cost = (double)PRUNE_SORT * SORT_BLOCK * samples;
    for (int32_t s = 0; s < pt->nseg; s++) {
        double c = (double)hist[s] * SORT_BLOCK; /* samples x expected count in a block */
        double present = c < samples ? c : (double)samples;
        cost += (c + PRUNE_RUN * present) * (pt->seg_off[s + 1] - pt->seg_off[s]);
    }
    free(hist);
    if (cost >= (double)SORT_BLOCK * samples * M) {
        prune_free(pt);
        return 0;
    }
    return 1;
}

/* The per-component constants into k, laid out in buf (6M) and flags (2M, zeroed). */
static void CAT(consts_setup_, SUFFIX)(const T *pi, const T *mu, const T *sigma, int64_t M,
                                       int want_grad_pi, T *buf, unsigned char *flags,
                                       CAT(consts_, SUFFIX) * k) {
    T *inv_s = buf, *neg_inv_s = buf + M, *coef = buf + 2 * M, *floor_ = buf + 3 * M;
    T *log2norm = buf + 4 * M, *mu_c = buf + 5 * M;
    unsigned char *zero = flags, *subnormal = flags + M;
    k->any_zero = k->any_subnormal = 0;
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
            k->any_subnormal = 1;
            fl = fl < (T)FLOOR_MIN ? (T)FLOOR_MIN : fl; /* exp2 of it is exactly 0 */
        }
        floor_[j] = fl;
        mu_c[j] = mu[j];
        if (want_grad_pi && pi[j] == 0) {
            zero[j] = 1;
            k->any_zero = 1;
        }
    }
    k->mu = mu_c;
    k->inv_s = inv_s;
    k->neg_inv_s = neg_inv_s;
    k->coef = coef;
    k->floor_ = floor_;
    k->log2norm = log2norm;
    k->zero = zero;
    k->subnormal = subnormal;
    k->M = M;
}

/*
 * Thread t of nt: its contiguous share of the weights, into its partial sums
 * part. Without pruning (pr NULL) in blocks of BLOCK, else in sort blocks.
 * Returns the pairs evaluated, or -1 when out of memory.
 */
static int64_t CAT(thread_pass_, SUFFIX)(int t, int nt, const T *w, int64_t N,
                                         const int32_t *all, const CAT(consts_, SUFFIX) * k,
                                         const CAT(prune_, SUFFIX) * pr, T *grad_w,
                                         int need_sums, double *part, int force) {
    const int64_t M = k->M;
    T *scratch = (T *)aligned_alloc(64, sizeof(T) * 2 * BLOCK * (size_t)M);
    if (!scratch) return -1;
    T *L = scratch, *U = scratch + BLOCK * M;
    int64_t pairs = 0;
    if (!pr) {
        const int64_t nblocks = (N + BLOCK - 1) / BLOCK;
        const int64_t b0 = nblocks * t / nt, b1 = nblocks * (t + 1) / nt;
        for (int64_t b = b0; b < b1; b++) {
            const int64_t i0 = b * BLOCK;
            T *g = grad_w ? grad_w + i0 : NULL;
            if (N - i0 >= BLOCK)
                BLOCK_FN(w + i0, BLOCK, all, M, k, g, need_sums, L, U, part);
            else
                BLOCK_FN(w + i0, N - i0, all, M, k, g, need_sums, L, U, part);
        }
        free(scratch);
        return (b1 > b0 ? (b1 * BLOCK < N ? b1 * BLOCK : N) - b0 * BLOCK : 0) * M;
    }
    char *mem = (char *)malloc((2 * sizeof(uint16_t) + 2 * sizeof(T)) * SORT_BLOCK +
                               sizeof(int32_t) * 4 * (size_t)pr->nseg);
    if (!mem) {
        free(scratch);
        return -1;
    }
    CAT(sortbuf_, SUFFIX) sb;
    sb.ws = (T *)mem;
    sb.gs = sb.ws + SORT_BLOCK;
    sb.count = (int32_t *)(sb.gs + SORT_BLOCK);
    sb.seg = (uint16_t *)(sb.count + 4 * pr->nseg);
    sb.perm = sb.seg + SORT_BLOCK;
    const int64_t nsb = (N + SORT_BLOCK - 1) / SORT_BLOCK;
    const int64_t b0 = nsb * t / nt, b1 = nsb * (t + 1) / nt;
    for (int64_t b = b0; b < b1; b++) {
        const int64_t i0 = b * SORT_BLOCK, n = N - i0 < SORT_BLOCK ? N - i0 : SORT_BLOCK;
        pairs += CAT(sorted_block_, SUFFIX)(w + i0, n, all, k, pr, grad_w ? grad_w + i0 : NULL,
                                            need_sums, L, U, part, &sb, force);
    }
    free(mem);
    free(scratch);
    return pairs;
}

/*
 * Entry point. Returns 0 on success, 1 if out of memory. out_log_prob: one
 * double. grad_w (N) and grad_pi, grad_mu, grad_sigma (M) may be NULL when not
 * wanted. threads: OpenMP team size (capped so each thread gets >= 2^15 pairs).
 * prune: 0 never, 1 where it is estimated to pay (the default), 2 whenever it
 * applies (for tests). out_pairs (may be NULL): the (weight, component) pairs
 * evaluated.
 */
int ENTRY(const T *w, int64_t N, const T *pi, const T *mu, const T *sigma, int64_t M,
          int threads, double *out_log_prob, T *grad_w, T *grad_pi, T *grad_mu,
          T *grad_sigma, int prune, int64_t *out_pairs) {
    const int need_sums = grad_pi || grad_mu || grad_sigma;
    const int64_t P = 1 + 4 * M;
    T *buf = (T *)malloc(sizeof(T) * 6 * (size_t)M);
    unsigned char *flags = (unsigned char *)calloc(2 * (size_t)M, 1);
    int32_t *all = (int32_t *)malloc(sizeof(int32_t) * (size_t)M);
    if (!buf || !flags || !all) {
        free(buf);
        free(flags);
        free(all);
        return 1;
    }
    CAT(consts_, SUFFIX) k;
    CAT(consts_setup_, SUFFIX)(pi, mu, sigma, M, grad_pi != NULL, buf, flags, &k);
    for (int64_t j = 0; j < M; j++) all[j] = (int32_t)j;
    prune_table pt;
    CAT(prune_, SUFFIX) pr;
    memset(&pt, 0, sizeof(pt));
    int pruned = CAT(prune_setup_, SUFFIX)(w, N, pi, mu, sigma, M, prune, k.any_zero, &pt, &pr);

    if (threads < 1) threads = 1;
    int64_t max_threads = (N * M) >> 15;
    if (max_threads < 1) max_threads = 1;
    if (threads > max_threads) threads = (int)max_threads;
    double *parts = (double *)calloc((size_t)threads * P, sizeof(double));
    int failed = parts == NULL || pruned < 0;
    int64_t pairs = 0;
    if (!failed) {
#pragma omp parallel num_threads(threads) if (threads > 1) reduction(+ : pairs)
        {
            int t = 0, nt = 1;
#ifdef _OPENMP
            t = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            int64_t done = CAT(thread_pass_, SUFFIX)(t, nt, w, N, all, &k, pruned ? &pr : NULL,
                                                     grad_w, need_sums, parts + (int64_t)t * P,
                                                     prune == 2);
            if (done < 0) {
#pragma omp atomic write
                failed = 1;
            } else {
                pairs += done;
            }
        }
    }
    if (out_pairs) *out_pairs = pairs;
    if (!failed) {
        for (int t = 1; t < threads; t++)
            for (int64_t q = 0; q < P; q++) parts[q] += parts[(int64_t)t * P + q];
        *out_log_prob = parts[0];
        const double *S0 = parts + 1, *S1 = parts + 1 + M, *S2 = parts + 1 + 2 * M;
        const double *Z = parts + 1 + 3 * M;
        for (int64_t j = 0; j < M; j++) {
            const double is = (double)k.inv_s[j];
            if (grad_pi) grad_pi[j] = k.zero[j] ? (T)Z[j] : (T)(S0[j] / (double)pi[j]);
            if (grad_mu) grad_mu[j] = (T)(S1[j] * is);
            if (grad_sigma) grad_sigma[j] = (T)((S2[j] - S0[j]) * is);
        }
    }
    free(parts);
    free(buf);
    free(flags);
    free(all);
    prune_free(&pt);
    return failed;
}

/*
 * For tests: mask[i M + j] = 1 where the pruned loop evaluates component j for
 * weight i (prune == 2, grad_pi not wanted; every component where pruning does
 * not apply). Returns 1 if pruning applies, 0 if not, -1 when out of memory.
 */
int CAT(bsws_prune_mask_, SUFFIX)(const T *w, int64_t N, const T *pi, const T *mu,
                                  const T *sigma, int64_t M, unsigned char *mask) {
    prune_table pt;
    CAT(prune_, SUFFIX) pr;
    memset(&pt, 0, sizeof(pt));
    int used = CAT(prune_setup_, SUFFIX)(w, N, pi, mu, sigma, M, 2, 0, &pt, &pr);
    if (used < 0) return -1;
    memset(mask, used ? 0 : 1, (size_t)(N * M));
    for (int64_t i = 0; used && i < N; i++) {
        uint16_t s;
        CAT(segments_, SUFFIX)(&pr, w + i, 1, &s);
        for (int32_t q = pr.off[s]; q < pr.off[s + 1]; q++) mask[i * M + pr.list[q]] = 1;
    }
    prune_free(&pt);
    return used;
}

#undef BLOCK_FN
#undef ENTRY
