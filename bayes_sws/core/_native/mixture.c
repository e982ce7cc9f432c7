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

int bsws_abi_version(void) { return 1; }

int bsws_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
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
#include "mixture_body.h"
#undef T
#undef SUFFIX
#undef EXP2
#undef EXP2_FULL
#undef LOG
#undef FLOOR_NORMAL
#undef FLOOR_MIN

#define T double
#define SUFFIX f64
#define EXP2 exp2_f64
#define EXP2_FULL exp2_full_f64
#define LOG log_f64
#define FLOOR_NORMAL -1022.0
#define FLOOR_MIN -1100.0
#include "mixture_body.h"
