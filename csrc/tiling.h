// Scaffolding shared by every fused CPU kernel (relation_tiles.h,
// contrastive_tiles.h), included once per ISA after simd.h:
//   Arena        one thread's scratch buffers, carved from one allocation
//   run_team     the OpenMP shell: per-thread scratch, one failure flag,
//                a barrier before any work and one before any scratch dies
//   for_tile_pairs  the J >= I walk over BLK x BLK score tiles, split over
//                threads by a fixed round-robin rule (reproducible sums)
//   sum_in_order    the fixed-order reduction of per-thread buffers
//   packing helpers for query rows and key panels
// Like simd.h: no std:: templates (they would merge across ISAs).
#pragma once

// Row/key block: tiles of BLK x BLK scores stay in L1 (4 KiB in fp32). 32
// rather than 64: the J >= I half of the tiles of a short sequence is then a
// smaller share of L x L (L = 128: 10/16 instead of 3/4 of the dot products).
constexpr int BLK = 32;
// Rows and keys are padded to a multiple of this (the micro-kernel width).
constexpr int PAD = 16;
// Threads per team; per-thread state lives in fixed arrays of this size.
constexpr int MAX_THREADS = 256;

// One thread's scratch buffers: add(p, n) reserves n elements for pointer p;
// allocate() makes one zero-filled block (each buffer 64-byte aligned) and
// sets every pointer. Freed with the Arena.
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() { free(base_); }

  template <typename U>
  Arena& add(U*& p, long n) {
    if (count_ < MAX_SLOTS) slots_[count_] = Slot{&p, round_up(n * (long)sizeof(U), 64)};
    ++count_;
    return *this;
  }
  // false when the memory is not there (or more buffers were added than fit)
  bool allocate() {
    if (count_ > MAX_SLOTS) return false;
    long total = 0;
    for (int i = 0; i < count_; ++i) total += slots_[i].bytes;
    base_ = scratch<char>(total);
    if (base_ == nullptr) return false;
    long at = 0;
    for (int i = 0; i < count_; ++i) {
      char* where = base_ + at;  // stored through memcpy: the slot holds a T*, not a char*
      __builtin_memcpy(slots_[i].ptr, &where, sizeof where);
      at += slots_[i].bytes;
    }
    return true;
  }

 private:
  static constexpr int MAX_SLOTS = 24;
  struct Slot {
    void* ptr;  // address of the caller's pointer
    long bytes;
  };
  Slot slots_[MAX_SLOTS];
  int count_ = 0;
  char* base_ = nullptr;
};

// Runs body(t, n, own, parts) on up to num_threads threads: thread t first
// builds its scratch S own(t, args...) (S has a bool `ok`); when any thread's
// allocation failed, no thread runs body and the result is -1. parts[p] is
// thread p's scratch, readable by all (shared packs, merges in thread order).
// Every scratch lives until all threads have left body.
template <typename S, typename Body, typename... Args>
static int run_team(int num_threads, Body body, const Args&... args) {
  S* parts[MAX_THREADS];
  const int nt = num_threads < MAX_THREADS ? num_threads : MAX_THREADS;
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    S own(t, args...);
    parts[t] = &own;
    if (!own.ok) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    if (!failed) body(t, omp_get_num_threads(), own, parts);
#pragma omp barrier
  }
  return failed ? -1 : 0;
}

// Rows [p0, p1) of [0, Lp) that thread `part` of `nparts` packs (PAD-aligned shares).
static inline void part_range(long Lp, long part, long nparts, long* p0, long* p1) {
  const long chunk = round_up((Lp + nparts - 1) / nparts, PAD);
  *p0 = part * chunk < Lp ? part * chunk : Lp;
  *p1 = *p0 + chunk < Lp ? *p0 + chunk : Lp;
}

// The score tiles (I, J), J >= I, of an n x n relation in BLK blocks:
// body(i0, rows, j0, cols) for every pair whose index in this fixed
// enumeration is part (mod nparts). Blocks for which active(from, to) is
// false (no valid token) are skipped and not counted.
template <typename Active, typename Body>
static inline void for_tile_pairs(long n, long part, long nparts, Active active, Body body) {
  long pair = -1;
  for (long i0 = 0; i0 < n; i0 += BLK) {
    const long rows = (n - i0 < BLK) ? n - i0 : BLK;
    if (!active(i0, i0 + rows)) continue;
    for (long j0 = i0; j0 < n; j0 += BLK) {
      const long cols = (n - j0 < BLK) ? n - j0 : BLK;
      if (!active(j0, j0 + cols)) continue;
      if (++pair % nparts != part) continue;
      body(i0, rows, j0, cols);
    }
  }
}

// out[k] = scale * (part(0)[k] + part(1)[k] + ... + part(n-1)[k]) for k < len,
// summed in thread order: the same bits for a given thread count.
template <typename T, typename Part>
static inline void sum_in_order(T* out, long len, int n, T scale, Part part) {
  for (long k = 0; k < len; ++k) {
    T v = part(0)[k];
    for (int p = 1; p < n; ++p) v += part(p)[k];
    out[k] = v * scale;
  }
}

// dst[r * ld + k] = x(i0 + r, k) for r < rows, k < d; zero for rows
// >= avail, for padded rows (m[i0 + r] false; m may be null) and for
// columns d..ld. Padded rows are never read: they may hold anything, NaN too.
template <typename T>
static void pack_rows(T* dst, long ld, const T* src, long sl, long sd, long i0, long rows, long avail, long d,
                      const bool* m) {
  for (long r = 0; r < rows; ++r) {
    T* o = dst + r * ld;
    long k = 0;
    if (r < avail && (m == nullptr || m[i0 + r])) {
      const T* in = src + (i0 + r) * sl;
      if (sd == 1)
        for (; k < d; ++k) o[k] = in[k];
      else
        for (; k < d; ++k) o[k] = in[k * sd];
    }
    for (; k < ld; ++k) o[k] = T(0);
  }
}

// Keys as columns in panels of NR keys (the layout gemm_pb reads):
// dst[((j / NR) * d + k) * NR + j % NR] = x(j, k) for j < n, zero for
// n <= j and for padded keys (m[j] false; m may be null); keys j in
// [from, to) only (threads may pack disjoint ranges).
template <typename T>
static void pack_panels(T* dst, const T* src, long sl, long sd, long n, long from, long to, long d, const bool* m) {
  constexpr long nr = NR<T>();
  for (long j = from; j < to; ++j) {
    T* o = dst + (j / nr) * d * nr + j % nr;
    if (j < n && (m == nullptr || m[j])) {
      const T* in = src + j * sl;
      if (sd == 1)
        for (long k = 0; k < d; ++k) o[k * nr] = in[k];
      else
        for (long k = 0; k < d; ++k) o[k * nr] = in[k * sd];
    } else {
      for (long k = 0; k < d; ++k) o[k * nr] = T(0);
    }
  }
}

// Per-sequence key data: scale[j] = c * valid_j, add[j] = 0 or NEG, so that
// logit = raw * scale + add is exactly the scaled logit or exactly NEG.
template <typename T>
static void key_vectors(const bool* m, long L, long Lp, T c, T* scale, T* add) {
  for (long j = 0; j < Lp; ++j) {
    const bool v = j < L && (m == nullptr || m[j]);
    scale[j] = v ? c : T(0);
    add[j] = v ? T(0) : Vec<T>::NEG;
  }
}
