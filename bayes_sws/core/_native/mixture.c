/*
 * Fused mixture-prior kernel for bayes_sws (see bayes_sws/kernel.py).
 *
 * For weights w (N,) and a Gaussian mixture (pi, mu, sigma) of M components,
 * one pass computes
 *
 *   log_prob   = sum_i ln sum_j pi_j N(w_i | mu_j, sigma_j^2)
 *   grad_w_i   = -sum_j gamma_ij u_ij / sigma_j
 *   grad_pi_j  = S0_j / pi_j   (sum_i N_ij / p_i where pi_j == 0)
 *   grad_mu_j  = S1_j / sigma_j
 *   grad_sig_j = (S2_j - S0_j) / sigma_j
 *
 * with u_ij = (w_i - mu_j) / sigma_j, gamma_ij the responsibilities and
 * S0 = sum_i gamma_ij, S1 = sum_i gamma_ij u_ij, S2 = sum_i gamma_ij u_ij^2 --
 * the maths of kernel._eager_chunk: logits in log2 units, the per-weight maximum
 * subtracted, exp2 arguments clamped below at min(log2(pi_j / (sigma_j sqrt(2 pi))),
 * -126) (float32) or -1022 (float64), so a pi_j == 0 component contributes nothing.
 *
 * Weights go in blocks of BLOCK so every inner loop runs over weights and is
 * vectorised ("omp simd"). Only IEEE-preserving flags are used (no -ffast-math):
 * NaN and inf propagate as in the torch path. exp2 and log are our own
 * branch-free versions: 2^round(x) built in the exponent bits times a polynomial
 * on [-1/2, 1/2] (Cephes exp2f, degree 6, for float32; Taylor to degree 13 for
 * float64), and ln x = e ln 2 + 2 atanh((m-1)/(m+1)), m in [sqrt(1/2), sqrt(2)).
 *
 * Threads: OpenMP over contiguous ranges of blocks, per-thread float64 partial
 * sums reduced in thread order afterwards (deterministic for a given count).
 *
 * Pruning (prune_build below; the bound and its proof are in kernel.py's module
 * docstring, "Pruning"): the real line around the means is cut into cells; for
 * each cell a list of the components that can matter to float precision for some
 * weight in it. Weights go in sort blocks of SORT_BLOCK: each weight's cell is
 * looked up, the block is counting-sorted by list, and each run of weights with
 * the same list goes through the block loop over that list only; the weight
 * gradients are gathered back in order. A weight outside the cells, or NaN, gets
 * every component.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef BLOCK
#define BLOCK 256
#endif
#define LN2 0.693147180559945309417232121458
#define LOG2E 1.44269504088896340735992468100
#define HALF_LOG2E 0.721347520444481703679960340500
#define HALF_LOG2_2PI 1.32574806473616118 /* 0.5 * log2(2 pi) */
#ifndef SORT_BLOCK
#define SORT_BLOCK 8192 /* <= 65536: places are uint16 */
#endif
#ifndef MAX_CELLS
#define MAX_CELLS 1024
#endif
#ifndef CELL_WIDTH
#define CELL_WIDTH 0.5 /* in units of the smallest sigma */
#endif
/* The cost model of a sort block, in (weight, component) pairs of the block loop:
   finding and sorting by segment costs PRUNE_SORT per weight, and each run of a
   segment costs PRUNE_RUN weights' worth per component of its list on top. */
#ifndef PRUNE_SORT
#define PRUNE_SORT 4
#endif
#ifndef PRUNE_RUN
#define PRUNE_RUN 24
#endif

int bsws_abi_version(void) { return 2; }

int bsws_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}


/* ---------------- pruning table (shared by both types, in double) ---------------- */

typedef struct {
    int64_t ncell;          /* cells 0 .. ncell-1 of width 1/inv_width from a */
    double a, inv_width;    /* exactly representable in the kernel's type */
    int32_t *seg_of_cell;   /* ncell + 1 entries: [0] every component, [c + 1] cell c */
    int32_t nseg;
    int32_t *seg_off;       /* nseg + 1 offsets into seg_list */
    int32_t *seg_list;      /* the components of each segment, ascending */
} prune_table;

static void prune_free(prune_table *pt) {
    free(pt->seg_of_cell);
    free(pt->seg_off);
    free(pt->seg_list);
    pt->seg_of_cell = NULL;
    pt->seg_off = pt->seg_list = NULL;
}

/* log2(pi_j N(x | mu_j, sigma_j^2)) in double */
static inline double log2_term(double c, double mu, double inv_s, double x) {
    double u = (x - mu) * inv_s;
    return c - HALF_LOG2E * (u * u);
}

/*
 * The threshold T_j (bits): skip component j for a weight when its log2-term is
 * at least T_j below the largest one. T_j is the least T with
 *     2^-T max(1/pi_j, rho_j (2 + (T + E_j)/h)) <= 2^-g,  g = p + 2 + ceil(log2 M),
 * rho_j = sigma_max / sigma_j, E_j = max(0, c_j - c_min), h = log2(e)/2
 * (kernel.py, "Pruning", for why this bounds every contribution).
 */
static double prune_threshold(double pi, double rho, double E, double g) {
    double T = g;
    for (int it = 0; it < 200; it++) {
        double F = rho * (2.0 + (T + E) / HALF_LOG2E);
        double ipi = 1.0 / pi;
        double need = g + log2(F > ipi ? F : ipi);
        if (need <= T) break;
        T = need + 0.5;
    }
    return T;
}

/* The mixture as the builder sees it, in double: alive components (pi_j > 0) only. */
typedef struct {
    int64_t M, B;
    const double *mu;
    double *c, *inv_s, *thr; /* log2(pi_j / (sigma_j sqrt(2 pi))), 1/sigma_j, T_j */
    double a, inv, delta;    /* cell c is [a + (c - delta)/inv, a + (c + 1 + delta)/inv] */
    const unsigned char *alive;
} prune_mix;

static inline double cell_lo(const prune_mix *m, int64_t c) { return m->a + ((double)c - m->delta) / m->inv; }
static inline double cell_hi(const prune_mix *m, int64_t c) { return m->a + ((double)c + 1 + m->delta) / m->inv; }

/* The cell holding x, clamped to [0, B). */
static inline int64_t cell_of(const prune_mix *m, double x) {
    double t = floor((x - m->a) * m->inv);
    return t < 0 ? 0 : (t >= (double)m->B ? m->B - 1 : (int64_t)t);
}

/* Per component the log2-constant, the threshold, and the cells (a, inv, B).
   1 when pruning does not apply. */
static int prune_params(const double *pi, const double *mu, const double *sigma, int mant_bits,
                        prune_mix *m, double *sorted) {
    int64_t alive = 0;
    double s_max = 0, s_min = INFINITY, c_min = INFINITY;
    for (int64_t j = 0; j < m->M; j++) {
        if (!(isfinite(pi[j]) && pi[j] >= 0 && isfinite(mu[j]) && isfinite(sigma[j]) &&
              sigma[j] > 0))
            return 1;
        m->inv_s[j] = 1.0 / sigma[j];
        if (!m->alive[j]) continue;
        m->c[j] = log2(pi[j]) - log2(sigma[j]) - HALF_LOG2_2PI;
        sorted[alive++] = sigma[j];
        s_max = sigma[j] > s_max ? sigma[j] : s_max;
        s_min = sigma[j] < s_min ? sigma[j] : s_min;
        c_min = m->c[j] < c_min ? m->c[j] : c_min;
    }
    if (alive == 0 || !isfinite(c_min)) return 1;
    double g = mant_bits + 2 + ceil(log2((double)alive));
    for (int64_t j = 0; j < m->M; j++)
        if (m->alive[j]) m->thr[j] = prune_threshold(pi[j], s_max / sigma[j], m->c[j] - c_min, g);
    /* the cells: over mu_j +- 8 min(sigma_j, median sigma), width sigma_min / 2, at most MAX_CELLS */
    for (int64_t q = 1; q < alive; q++) /* insertion sort: M is small */
        for (int64_t r = q; r > 0 && sorted[r - 1] > sorted[r]; r--) {
            double tmp = sorted[r];
            sorted[r] = sorted[r - 1];
            sorted[r - 1] = tmp;
        }
    double s_med = sorted[alive / 2], lo = INFINITY, hi = -INFINITY;
    for (int64_t j = 0; j < m->M; j++) {
        if (!m->alive[j]) continue;
        double r = 8.0 * (sigma[j] < s_med ? sigma[j] : s_med);
        lo = mu[j] - r < lo ? mu[j] - r : lo;
        hi = mu[j] + r > hi ? mu[j] + r : hi;
    }
    double ncell = ceil((hi - lo) / (CELL_WIDTH * s_min));
    m->B = ncell > MAX_CELLS ? MAX_CELLS : (ncell < 1 ? 1 : (int64_t)ncell);
    m->a = lo;
    m->inv = (double)m->B / (hi - lo);
    if (mant_bits == 24) {
        m->a = (double)(float)m->a;
        m->inv = (double)(float)m->inv;
    }
    /* the kernel computes (w - a) * inv in its own type: the cell index is off by at
       most B 2^(2 - p) < 2^-12 cells; each cell's interval is widened by delta cells. */
    m->delta = 1.0 / 64;
    if (!(isfinite(m->a) && isfinite(m->inv) && m->inv > 0) || fabs(m->a) * m->inv > 1e12 ||
        fabs(hi) * m->inv > 1e12)
        return 1;
    return 0;
}

/* The least l_k over cell c. */
static inline double cell_min(const prune_mix *m, int64_t k, int64_t c) {
    double l0 = log2_term(m->c[k], m->mu[k], m->inv_s[k], cell_lo(m, c));
    double l1 = log2_term(m->c[k], m->mu[k], m->inv_s[k], cell_hi(m, c));
    return l0 < l1 ? l0 : l1;
}

/* run[c]: the least lb over [c, B) (suffix); run[B + c]: the least over [0, c] (prefix) */
static void running_minima(const double *lb, int64_t B, double *run) {
    for (int dir = 0; dir < 2; dir++) {
        double low = INFINITY;
        for (int64_t q = 0; q < B; q++) {
            int64_t c = dir == 0 ? B - 1 - q : q;
            low = lb[c] < low ? lb[c] : low;
            run[dir * B + c] = low;
        }
    }
}

/*
 * lb[c] <= the largest log2-term of every x in cell c: max over k of the least
 * l_k on the cell. A first bound from the components of nearest mean on either
 * side of the cell (any k gives one), then each component raises it from its
 * own cell outwards until it can no longer raise it anywhere further (it only
 * falls there, and the first bound's suffix / prefix minimum is below it).
 * order: scratch for M indices.
 */
static void prune_lower_bound(const prune_mix *m, double *lb, double *run, int64_t *order) {
    const int64_t B = m->B;
    int64_t n = 0;
    for (int64_t k = 0; k < m->M; k++) /* alive components by mean (insertion sort) */
        if (m->alive[k]) {
            int64_t r = n++;
            for (; r > 0 && m->mu[order[r - 1]] > m->mu[k]; r--) order[r] = order[r - 1];
            order[r] = k;
        }
    for (int64_t c = 0, p = 0; c < B; c++) {
        double centre = 0.5 * (cell_lo(m, c) + cell_hi(m, c));
        while (p + 1 < n && m->mu[order[p + 1]] <= centre) p++;
        double v = cell_min(m, order[p], c);
        if (p + 1 < n) {
            double v1 = cell_min(m, order[p + 1], c);
            v = v1 > v ? v1 : v;
        }
        lb[c] = v;
    }
    running_minima(lb, B, run);
    for (int64_t k = 0; k < m->M; k++) {
        if (!m->alive[k]) continue;
        const int64_t ck = cell_of(m, m->mu[k]);
        for (int64_t c = ck; c < B; c++) { /* rightwards: l_k(cell_hi) falls with c */
            if (c > ck + 1 &&
                !(log2_term(m->c[k], m->mu[k], m->inv_s[k], cell_hi(m, c)) >= run[c]))
                break;
            double v = cell_min(m, k, c);
            lb[c] = v > lb[c] ? v : lb[c];
        }
        for (int64_t c = ck - 1; c >= 0; c--) { /* leftwards: l_k(cell_lo) falls */
            if (c < ck - 1 &&
                !(log2_term(m->c[k], m->mu[k], m->inv_s[k], cell_lo(m, c)) >= run[B + c]))
                break;
            double v = cell_min(m, k, c);
            lb[c] = v > lb[c] ? v : lb[c];
        }
    }
}

/* Whether component j may matter somewhere in a cell whose largest term is at least lb,
   when ub bounds its own term there: not (ub + T_j < lb) with a relative margin for
   the rounding of these doubles (the test only gets easier as ub falls or lb rises). */
static inline int prune_keeps(double ub, double thr, double lb) {
    const double r = 0x1p-20;
    return !(ub + thr < lb - r * (fabs(ub) + fabs(lb)) - r);
}

/*
 * keep[c M + j] = 1 where component j may matter in cell c: from its own cell
 * outwards, until its largest term on a cell (falling away from its mean) cannot
 * pass the least lb of all cells further out.
 */
static void prune_keep(const prune_mix *m, const double *lb, double *run, unsigned char *keep) {
    const int64_t B = m->B, M = m->M;
    running_minima(lb, B, run);
    memset(keep, 0, (size_t)(B * M));
    for (int64_t j = 0; j < M; j++) {
        if (!m->alive[j]) continue;
        const double mu = m->mu[j], c = m->c[j], is = m->inv_s[j], thr = m->thr[j];
        const int64_t cj = cell_of(m, mu);
        for (int64_t q = cj; q < B; q++) { /* rightwards */
            double x = cell_lo(m, q);
            double ub = x <= mu ? c : log2_term(c, mu, is, x);
            if (!prune_keeps(ub, thr, run[q])) break;
            keep[q * M + j] = (unsigned char)prune_keeps(ub, thr, lb[q]);
        }
        for (int64_t q = cj - 1; q >= 0; q--) { /* leftwards */
            double x = cell_hi(m, q);
            double ub = x >= mu ? c : log2_term(c, mu, is, x);
            if (!prune_keeps(ub, thr, run[B + q])) break;
            keep[q * M + j] = (unsigned char)prune_keeps(ub, thr, lb[q]);
        }
    }
}

/* The segments: consecutive cells with the same components share one. 0 or -1 (memory). */
static int prune_segments(const prune_mix *m, const unsigned char *keep, prune_table *pt) {
    const int64_t B = m->B, M = m->M;
    pt->seg_of_cell = (int32_t *)malloc(sizeof(int32_t) * (size_t)(B + 1));
    pt->seg_off = (int32_t *)malloc(sizeof(int32_t) * (size_t)(B + 2));
    pt->seg_list = (int32_t *)malloc(sizeof(int32_t) * (size_t)M * (size_t)(B + 1));
    if (!pt->seg_of_cell || !pt->seg_off || !pt->seg_list) return -1;
    for (int64_t j = 0; j < M; j++) pt->seg_list[j] = (int32_t)j; /* 0: every component */
    pt->seg_off[0] = 0;
    pt->seg_off[1] = (int32_t)M;
    pt->seg_of_cell[0] = 0;
    int32_t nseg = 1;
    for (int64_t c = 0; c < B; c++) {
        const unsigned char *row = keep + c * M;
        if (c > 0 && pt->seg_of_cell[c] > 0 && memcmp(row, row - M, (size_t)M) == 0) {
            pt->seg_of_cell[c + 1] = pt->seg_of_cell[c];
            continue;
        }
        int32_t used = pt->seg_off[nseg], K = 0;
        for (int64_t j = 0; j < M; j++)
            if (row[j]) pt->seg_list[used + K++] = (int32_t)j;
        if (K == 0) { /* cannot happen (the largest term is kept); be safe */
            pt->seg_of_cell[c + 1] = 0;
            continue;
        }
        pt->seg_off[++nseg] = used + K;
        pt->seg_of_cell[c + 1] = nseg - 1;
    }
    pt->nseg = nseg;
    return 0;
}

/*
 * Build the cells and their lists for a mixture (pi, mu, sigma as doubles).
 * mant_bits: 24 (float32) or 53 (float64). Returns 0 on success, 1 when pruning
 * does not apply (non-finite or invalid parameters, cells too fine for the
 * type), -1 when out of memory. Components with pi_j == 0 are in no list but
 * the full one (callers that need d/dpi_j for them do not prune).
 */
static int prune_build(const double *pi, const double *mu, const double *sigma, int64_t M,
                       int mant_bits, prune_table *pt) {
    memset(pt, 0, sizeof(*pt));
    if (M < 2 || M > 32767) return 1;
    double *buf = (double *)malloc(sizeof(double) * (5 * (size_t)M + 3 * MAX_CELLS));
    unsigned char *flags = (unsigned char *)malloc((size_t)M * (MAX_CELLS + 1));
    int status = (!buf || !flags) ? -1 : 0;
    prune_mix m;
    if (status == 0) {
        m.M = M;
        m.mu = mu;
        m.c = buf;
        m.inv_s = buf + M;
        m.thr = buf + 2 * M;
        unsigned char *alive = flags + (size_t)M * MAX_CELLS;
        for (int64_t j = 0; j < M; j++) alive[j] = pi[j] > 0;
        m.alive = alive;
        status = prune_params(pi, mu, sigma, mant_bits, &m, buf + 3 * M);
    }
    if (status == 0) {
        double *lb = buf + 5 * M, *run = lb + MAX_CELLS;
        prune_lower_bound(&m, lb, run, (int64_t *)(buf + 4 * M));
        prune_keep(&m, lb, run, flags);
        pt->ncell = m.B;
        pt->a = m.a;
        pt->inv_width = m.inv;
        status = prune_segments(&m, flags, pt);
    }
    if (status != 0) prune_free(pt);
    free(buf);
    free(flags);
    return status;
}

/* ---------------- float32 ---------------- */

static inline float poly_exp2_f32(float f) { /* 2^f on [-1/2, 1/2] */
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    return p;
}

/* x in [-126, 0] or NaN. t's low mantissa bits hold round(x) + 127: shifted
   into the exponent field they are 2^round(x). */
static inline float exp2_f32(float x) {
    const float shifter = 12582912.0f + 127.0f; /* 1.5 * 2^23 + bias */
    float t = x + shifter;
    float f = x - (t - shifter);
    uint32_t b;
    memcpy(&b, &t, 4);
    b <<= 23;
    float s;
    memcpy(&s, &b, 4);
    return poly_exp2_f32(f) * s;
}

/* x in [-160, 0] or NaN: two factors, each a normal number; 2^-160 rounds to 0. */
static inline float exp2_full_f32(float x) {
    const float shifter = 12582912.0f;
    float t = x + shifter;
    float f = x - (t - shifter);
    int32_t tb, sb;
    memcpy(&tb, &t, 4);
    memcpy(&sb, &shifter, 4);
    int32_t k = tb - sb, k1 = k >> 1, k2 = k - k1;
    int32_t b1 = (k1 + 127) << 23, b2 = (k2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    return (poly_exp2_f32(f) * s1) * s2;
}

static inline float log_f32(float x) {
    int32_t b;
    memcpy(&b, &x, 4);
    int32_t e = (b - 0x3f3504f3) >> 23; /* 0x3f3504f3: sqrt(1/2) */
    int32_t mb = b - (e << 23);
    float m;
    memcpy(&m, &mb, 4);
    float s = (m - 1.0f) / (m + 1.0f); /* |s| <= 0.172 */
    float s2 = s * s;
    float p = 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    float r = (float)e * (float)LN2 + 2.0f * s * p;
    return r + (x - x); /* NaN or inf in, NaN out */
}

/* ---------------- float64 ---------------- */

static inline double poly_exp2_f64(double f) { /* sum (f ln2)^k / k!, k <= 13 */
    double p = 1.3691488853904124e-12;
    p = p * f + 2.5678435993488196e-11;
    p = p * f + 4.44553827187081e-10;
    p = p * f + 7.054911620801121e-09;
    p = p * f + 1.0178086009239696e-07;
    p = p * f + 1.3215486790144305e-06;
    p = p * f + 1.5252733804059838e-05;
    p = p * f + 0.00015403530393381606;
    p = p * f + 0.0013333558146428441;
    p = p * f + 0.009618129107628477;
    p = p * f + 0.055504108664821576;
    p = p * f + 0.2402265069591007;
    p = p * f + 0.6931471805599453;
    p = p * f + 1.0;
    return p;
}

static inline double exp2_f64(double x) { /* x in [-1022, 0] or NaN */
    const double shifter = 6755399441055744.0 + 1023.0; /* 1.5 * 2^52 + bias */
    double t = x + shifter;
    double f = x - (t - shifter);
    uint64_t b;
    memcpy(&b, &t, 8);
    b <<= 52;
    double s;
    memcpy(&s, &b, 8);
    return poly_exp2_f64(f) * s;
}

static inline double exp2_full_f64(double x) { /* x in [-1100, 0] or NaN */
    const double shifter = 6755399441055744.0;
    double t = x + shifter;
    double f = x - (t - shifter);
    int64_t tb, sb;
    memcpy(&tb, &t, 8);
    memcpy(&sb, &shifter, 8);
    int64_t k = tb - sb, k1 = k >> 1, k2 = k - k1;
    int64_t b1 = (k1 + 1023) << 52, b2 = (k2 + 1023) << 52;
    double s1, s2;
    memcpy(&s1, &b1, 8);
    memcpy(&s2, &b2, 8);
    return (poly_exp2_f64(f) * s1) * s2;
}

static inline double log_f64(double x) {
    int64_t b;
    memcpy(&b, &x, 8);
    int64_t e = (b - 0x3fe6a09e667f3bcdLL) >> 52; /* sqrt(1/2) */
    int64_t mb = b - (int64_t)((uint64_t)e << 52);
    double m;
    memcpy(&m, &mb, 8);
    double s = (m - 1.0) / (m + 1.0);
    double s2 = s * s; /* <= 0.0295: terms to s^25 leave < 1e-19 */
    double p = 1.0 / 25.0;
    for (int q = 23; q >= 1; q -= 2) p = p * s2 + 1.0 / q;
    double r = (double)e * LN2 + 2.0 * s * p;
    return r + (x - x);
}

#define T float
#define SUFFIX f32
#define EXP2 exp2_f32
#define EXP2_FULL exp2_full_f32
#define LOG log_f32
#define FLOOR_NORMAL -126.0f
#define FLOOR_MIN -160.0f
#define MANT_BITS 24
#include "mixture_body.h"
#undef T
#undef SUFFIX
#undef EXP2
#undef EXP2_FULL
#undef LOG
#undef FLOOR_NORMAL
#undef FLOOR_MIN
#undef MANT_BITS

#define T double
#define SUFFIX f64
#define EXP2 exp2_f64
#define EXP2_FULL exp2_full_f64
#define LOG log_f64
#define FLOOR_NORMAL -1022.0
#define FLOOR_MIN -1100.0
#define MANT_BITS 53
#include "mixture_body.h"
