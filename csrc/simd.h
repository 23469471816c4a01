// Portable SIMD building blocks for the fused CPU kernels.
//
// This header is included once per instruction set (see isa_avx2.cpp and
// isa_base.cpp) inside `namespace MLKD_ISA`, after that file has set its
// `#pragma GCC target`. Everything here is therefore compiled once per ISA
// under distinct symbol names, and must not instantiate std:: templates
// (those would be merged across ISAs by the linker and could leak AVX2 code
// into the baseline path). GCC vector extensions give explicit 256-bit
// vectors: 8 floats or 4 doubles; on the baseline path GCC splits them into
// SSE2 halves.
#pragma once

#ifndef MLKD_ISA
#error "simd.h must be included from an isa_*.cpp file that defines MLKD_ISA"
#endif

typedef float vf8 __attribute__((vector_size(32)));
typedef double vd4 __attribute__((vector_size(32)));
typedef int vi8 __attribute__((vector_size(32)));
typedef long long vl4 __attribute__((vector_size(32)));

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  typedef vf8 v;
  typedef vi8 mask;
  static constexpr int W = 8;
  // Masked logits: exp() of (NEG - anything finite) is exactly 0 and
  // NEG - NEG = 0, so masked entries drop out without NaNs.
  static constexpr float NEG = -1e30f;
};

template <>
struct Vec<double> {
  typedef vd4 v;
  typedef vl4 mask;
  static constexpr int W = 4;
  static constexpr double NEG = -1e300;
};

// Unaligned load/store via memcpy: GCC turns these into vmovups/vmovupd.
template <typename T>
static inline typename Vec<T>::v vload(const T* p) {
  typename Vec<T>::v x;
  __builtin_memcpy(&x, p, sizeof(x));
  return x;
}

template <typename T>
static inline void vstore(T* p, typename Vec<T>::v x) {
  __builtin_memcpy(p, &x, sizeof(x));
}

// Broadcast. Written as a - 0 (scalar - vector broadcasts; x - 0.0 == x for
// every x, so GCC folds it away) because a lane-by-lane fill compiles to a
// chain of vinsertps instead of one vbroadcastss.
template <typename T>
static inline typename Vec<T>::v vset(T a) {
  const typename Vec<T>::v zero = {};
  return a - zero;
}

template <typename T>
static inline typename Vec<T>::v vmax(typename Vec<T>::v a, typename Vec<T>::v b) {
  return a > b ? a : b;
}

// Horizontal reductions in a fixed lane order (results are bitwise reproducible).
template <typename T>
static inline T hsum(typename Vec<T>::v x) {
  T s = x[0];
  for (int l = 1; l < Vec<T>::W; ++l) s += x[l];
  return s;
}

template <typename T>
static inline T hmax(typename Vec<T>::v x) {
  T m = x[0];
  for (int l = 1; l < Vec<T>::W; ++l) m = x[l] > m ? x[l] : m;
  return m;
}

// exp for 8 floats: Cephes range reduction x = n ln2 + r and a degree-6
// polynomial, ~1 ulp on the range used here (arguments <= 0). Arguments below
// ln(FLT_MIN) give exactly 0 (masked logits, see Vec<float>::NEG).
static inline vf8 vexp(vf8 x) {
  const vf8 lo = vset<float>(-87.33654f), hi = vset<float>(88.0f);
  const vi8 keep = x >= lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf8 magic = vset<float>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf8 t = x * vset<float>(1.44269504088896341f) + magic;
  const vf8 n = t - magic;
  vf8 r = x - n * vset<float>(0.693359375f);
  r = r - n * vset<float>(-2.12194440e-4f);
  vf8 y = vset<float>(1.9875691500e-4f);
  y = y * r + vset<float>(1.3981999507e-3f);
  y = y * r + vset<float>(8.3334519073e-3f);
  y = y * r + vset<float>(4.1665795894e-2f);
  y = y * r + vset<float>(1.6666665459e-1f);
  y = y * r + vset<float>(5.0000001201e-1f);
  y = y * (r * r) + r + vset<float>(1.0f);
  const vi8 e = ((vi8)t - (vi8)magic + 127) << 23;  // 2^n from the integer in t's low bits
  y = y * (vf8)e;
  return (vf8)((vi8)y & keep);
}

// fp64 needs ~1e-16 relative accuracy: libm per lane (the fp64 path is for
// validation and exactness, the fp32 path is the fast one).
static inline vd4 vexp(vd4 x) {
  vd4 y;
  for (int l = 0; l < 4; ++l) y[l] = __builtin_exp(x[l]);
  return y;
}

static inline float sexp(float x) { return __builtin_expf(x); }
static inline double sexp(double x) { return __builtin_exp(x); }
static inline float slog(float x) { return __builtin_logf(x); }
static inline double slog(double x) { return __builtin_log(x); }

// Register-blocked micro-kernel: C[4 x 2W] (=|+=) alpha * A[4 x K] * B[K x 2W].
// A(r, k) = A[r * ars + k * aks] (any layout, so a transposed tile needs no
// copy); B row k is contiguous at B + k * ldb; C rows at C + r * ldc.
template <typename T>
static inline void micro_4x2(int K, const T* A, long ars, long aks, const T* B, long ldb, T* C, long ldc,
                             bool accumulate) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  V c00 = vset<T>(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  for (int k = 0; k < K; ++k) {
    const V b0 = vload(B + k * ldb), b1 = vload(B + k * ldb + W);
    const T* a = A + k * aks;
    V a0 = vset<T>(a[0]), a1 = vset<T>(a[ars]), a2 = vset<T>(a[2 * ars]), a3 = vset<T>(a[3 * ars]);
    c00 += a0 * b0;
    c01 += a0 * b1;
    c10 += a1 * b0;
    c11 += a1 * b1;
    c20 += a2 * b0;
    c21 += a2 * b1;
    c30 += a3 * b0;
    c31 += a3 * b1;
  }
  if (accumulate) {
    c00 += vload(C);
    c01 += vload(C + W);
    c10 += vload(C + ldc);
    c11 += vload(C + ldc + W);
    c20 += vload(C + 2 * ldc);
    c21 += vload(C + 2 * ldc + W);
    c30 += vload(C + 3 * ldc);
    c31 += vload(C + 3 * ldc + W);
  }
  vstore(C, c00);
  vstore(C + W, c01);
  vstore(C + ldc, c10);
  vstore(C + ldc + W, c11);
  vstore(C + 2 * ldc, c20);
  vstore(C + 2 * ldc + W, c21);
  vstore(C + 3 * ldc, c30);
  vstore(C + 3 * ldc + W, c31);
}

// The same for 6 rows: 12 accumulator chains hide the FMA latency (4 rows,
// 8 chains, cannot keep two FMA pipes of latency 4-5 busy) and each loaded B
// vector feeds 6 FMAs. Per element the summation order is that of micro_4x2.
template <typename T>
static inline void micro_6x2(int K, const T* A, long ars, long aks, const T* B, long ldb, T* C, long ldc,
                             bool accumulate) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  V c00 = vset<T>(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  V c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int k = 0; k < K; ++k) {
    const V b0 = vload(B + k * ldb), b1 = vload(B + k * ldb + W);
    const T* a = A + k * aks;
    V a0 = vset<T>(a[0]), a1 = vset<T>(a[ars]);
    c00 += a0 * b0;
    c01 += a0 * b1;
    c10 += a1 * b0;
    c11 += a1 * b1;
    a0 = vset<T>(a[2 * ars]), a1 = vset<T>(a[3 * ars]);
    c20 += a0 * b0;
    c21 += a0 * b1;
    c30 += a1 * b0;
    c31 += a1 * b1;
    a0 = vset<T>(a[4 * ars]), a1 = vset<T>(a[5 * ars]);
    c40 += a0 * b0;
    c41 += a0 * b1;
    c50 += a1 * b0;
    c51 += a1 * b1;
  }
  V* acc[12] = {&c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51};
  for (int r = 0; r < 6; ++r)
    for (int h = 0; h < 2; ++h) {
      T* p = C + r * ldc + h * W;
      vstore(p, accumulate ? *acc[2 * r + h] + vload(p) : *acc[2 * r + h]);
    }
}

// Rows covered by 6-row micro-kernels in an M-row block (M % 4 == 0): the
// rest, a multiple of 4, goes to micro_4x2.
static inline int rows6(int M) {
  int n6 = M / 6;
  while ((M - 6 * n6) % 4 != 0) --n6;
  return 6 * n6;
}

// Number of columns one micro-kernel call covers (16 floats, 8 doubles).
template <typename T>
constexpr int NR() {
  return 2 * Vec<T>::W;
}

// Depth of one accumulation chain. Longer dot products (d = 384 or 768 with
// one split) are summed in chunks of KC, so the rounding error grows with
// KC + K / KC rather than with K.
constexpr int KC = 64;

// C[M x N] (=|+=) A[M x K] * B[K x N]; M % 4 == 0, N % NR == 0.
template <typename T>
static void gemm(int M, int N, int K, const T* A, long ars, long aks, const T* B, long ldb, T* C, long ldc,
                 bool accumulate) {
  const int M6 = rows6(M);
  for (int j = 0; j < N; j += NR<T>()) {
    for (int i = 0; i < M6; i += 6)
      for (int k = 0; k < K || k == 0; k += KC)
        micro_6x2<T>(K - k < KC ? K - k : KC, A + i * ars + k * aks, ars, aks, B + k * ldb + j, ldb,
                     C + i * ldc + j, ldc, accumulate || k > 0);
    for (int i = M6; i < M; i += 4)
      for (int k = 0; k < K || k == 0; k += KC)
        micro_4x2<T>(K - k < KC ? K - k : KC, A + i * ars + k * aks, ars, aks, B + k * ldb + j, ldb,
                     C + i * ldc + j, ldc, accumulate || k > 0);
  }
}

// C[M x N] (=|+=) A[M x K] * B[K x N] with B in panels (see pack_panels):
// column j, row k at Bp[(j / NR) * K * NR + k * NR + j % NR]. Same summation
// order per element as gemm() (chunks of KC), so results are bitwise equal;
// but the loops run chunk-outer so a KC x N slice of B (contiguous per panel)
// stays in L1 across the row groups, and B never has a large stride (a key
// stride of Lp floats = 8 KiB at Lp = 2048 maps every row to one cache set).
template <typename T>
static void gemm_pb(int M, int N, int K, const T* A, long lda, const T* Bp, T* C, long ldc, bool accumulate) {
  for (int k = 0; k < K || k == 0; k += KC) {
    const int kc = K - k < KC ? K - k : KC, M6 = rows6(M);
    for (int i = 0; i < M6; i += 6)
      for (int j = 0; j < N; j += NR<T>())
        micro_6x2<T>(kc, A + i * lda + k, lda, 1, Bp + (long)(j / NR<T>()) * K * NR<T>() + (long)k * NR<T>(),
                     NR<T>(), C + i * ldc + j, ldc, accumulate || k > 0);
    for (int i = M6; i < M; i += 4)
      for (int j = 0; j < N; j += NR<T>())
        micro_4x2<T>(kc, A + i * lda + k, lda, 1, Bp + (long)(j / NR<T>()) * K * NR<T>() + (long)k * NR<T>(),
                     NR<T>(), C + i * ldc + j, ldc, accumulate || k > 0);
  }
}

static inline long round_up(long x, long m) { return (x + m - 1) / m * m; }

// Leading dimension of a packed row-major (rows x d) tile: a multiple of NR
// (one 64-byte line) and an odd number of lines. A stride of an even number
// of lines (d = 768: 48 lines) maps the rows of a K x NR slice into few L1
// sets (768: 4 of 64) and the slice thrashes; an odd stride uses them all.
template <typename T>
static inline long ld_rows(long d) {
  const long dp = round_up(d, NR<T>());
  return (dp / NR<T>()) % 2 ? dp : dp + NR<T>();
}

// 64-byte aligned scratch, zero-filled, released with free(). Plain C
// allocation: no std:: templates here.
template <typename T>
static T* scratch(long n) {
  long bytes = round_up(n * (long)sizeof(T), 64);
  if (bytes == 0) bytes = 64;
  T* p = (T*)aligned_alloc(64, bytes);  // <stdlib.h>; nullptr on failure, checked by callers
  if (p) __builtin_memset(p, 0, bytes);
  return p;
}
