// Fused relation-KL kernels (KERNELS.md), included once per ISA inside
// namespace mlkd::MLKD_ISA after simd.h.
//
// The relation logits are symmetric (x_i.x_j = x_j.x_i, bitwise: both orders
// sum the same products in the same order), so both passes visit only the
// J >= I half of the BLK x BLK score tiles, each computed by the packed-panel
// GEMM of simd.h. Forward: one pass; tile (I, J) folds keys J into the online
// max/sum/KL state of rows I (row-wise) and keys I into that of rows J
// (column-wise); per row only the maxima, log-sums and KL are written.
// Backward: tile (I, J) yields both G_IJ and G_JI; both the rows' and the
// columns' share of dX = c (G + G^T) X are accumulated. Work split: one
// (batch, split) per thread when there are enough of them; otherwise (few
// sequences, e.g. sample_relation_kl's single B x B relation) the threads
// take fixed shares of each sequence's tile pairs into their own O(L) row
// states / O(L d) gradient buffers, merged in thread order. No atomics;
// bitwise-reproducible for a given thread count. Tiles past a sequence's
// last valid token are skipped. Scratch is O(L d + BLK^2) per thread;
// nothing of size L x L exists.
#pragma once

// Row/key block: tiles of BLK x BLK scores stay in L1 (4 KiB in fp32). 32
// rather than 64: the J >= I half of the tiles of a short sequence is then a
// smaller share of L x L (L = 128: 10/16 instead of 3/4 of the dot products).
constexpr int BLK = 32;
// Rows and keys are padded to a multiple of this (the micro-kernel width).
constexpr int PAD = 16;

// dst[r * ld + k] = x(i0 + r, col0 + k) for r < rows, k < d; zero for rows
// >= avail and for columns d..ld.
template <typename T>
static void pack_rows(T* dst, long ld, const T* src, long sl, long sd, long i0, long rows, long avail, long d) {
  for (long r = 0; r < rows; ++r) {
    T* o = dst + r * ld;
    long k = 0;
    if (r < avail) {
      const T* in = src + (i0 + r) * sl;
      if (sd == 1)
        for (; k < d; ++k) o[k] = in[k];
      else
        for (; k < d; ++k) o[k] = in[k * sd];
    }
    for (; k < ld; ++k) o[k] = T(0);
  }
}

// dst[k * ld + j] = x(j, col0 + k) for j < n, zero for n <= j < ld (keys as columns).
template <typename T>
static void pack_cols(T* dst, long ld, const T* src, long sl, long sd, long n, long d) {
  for (long j = 0; j < n; ++j) {
    const T* in = src + j * sl;
    for (long k = 0; k < d; ++k) dst[k * ld + j] = in[k * sd];
  }
  for (long k = 0; k < d; ++k)
    for (long j = n; j < ld; ++j) dst[k * ld + j] = T(0);
}

// Keys as columns in panels of NR keys (the layout gemm_pb reads):
// dst[((j / NR) * d + k) * NR + j % NR] = x(j, col0 + k) for j < n, zero for
// n <= j; keys j in [from, to) only (threads may pack disjoint ranges).
template <typename T>
static void pack_panels(T* dst, const T* src, long sl, long sd, long n, long from, long to, long d) {
  constexpr long nr = NR<T>();
  for (long j = from; j < to; ++j) {
    T* o = dst + (j / nr) * d * nr + j % nr;
    if (j < n) {
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

static inline bool any_valid(const bool* m, long from, long to) {
  if (m == nullptr) return from < to;
  for (long j = from; j < to; ++j)
    if (m[j]) return true;
  return false;
}

// A sequence with no valid token has no rows in any average: skipped entirely.
static inline bool sequence_active(const bool* m, long L) { return any_valid(m, 0, L); }

// Rows/keys [0, Le) cover every valid token (Le = last valid + 1, rounded up
// to PAD): tiles past it hold only padding (masked rows, keys of weight 0),
// so a padded sequence costs its length, not L.
static inline long effective_len(const bool* m, long L) {
  long n = L;
  if (m)
    while (n > 0 && !m[n - 1]) --n;
  return round_up(n, PAD);
}

// Per-row statistics saved by the forward for the backward, (B, A, L, NSTAT):
// the row maxima and log-sums of teacher and student (log p_ij =
// (t_ij - m_t) - log l_t keeps its precision for peaked rows) and KL_i.
enum { S_MT = 0, S_LLT, S_MS, S_LLS, S_KL, NSTAT };

template <typename T>
struct FwdScratch {
  T *qt, *qs, *kt, *ks, *tt, *ts, *sc_t, *sc_s, *add;
  // Per-row running state in double even for fp32 inputs: l = 1 + tiny for
  // a peaked row, and log(l) must keep the tiny part (KL can be ~1e-6).
  // One entry per row of the sequence (O(L)).
  double *m_t, *l_t, *m_s, *l_s, *acc;
  bool ok;
  // packs = false: no room for the packed rows / key panels (the thread reads
  // another thread's, see relation_forward_shared).
  FwdScratch(long Lp, long dt, long ds, bool packs = true) {
    T** all[] = {&qt, &qs, &kt, &ks, &tt, &ts, &sc_t, &sc_s, &add};
    const long P = packs ? Lp : 1;
    long sizes[] = {P * dt, P * ds, dt * P, ds * P, BLK * BLK, BLK * BLK, Lp, Lp, Lp};
    double** rows[] = {&m_t, &l_t, &m_s, &l_s, &acc};
    ok = true;
    for (int n = 0; n < 9; ++n) {
      *all[n] = scratch<T>(sizes[n]);
      ok = ok && *all[n] != nullptr;
    }
    for (int n = 0; n < 5; ++n) {
      *rows[n] = scratch<double>(Lp);
      ok = ok && *rows[n] != nullptr;
    }
  }
  ~FwdScratch() {
    T* all[] = {qt, qs, kt, ks, tt, ts, sc_t, sc_s, add};
    for (T* p : all) free(p);
    double* rows[] = {m_t, l_t, m_s, l_s, acc};
    for (double* p : rows) free(p);
  }
};

// Folds one block of keys into row r's running state, given the block maxima
// bm_t, bm_s (real logits: the block holds a valid key) and the block sums
// (relative to the new maxima nm_t, nm_s). Every old term's (t - m_t) -
// (s - m_s) drops by d_t - d_s, its weight by exp(-d_t); the first block
// (l = acc = 0, m = NEG) stays finite because NEG is finite.
template <typename T>
static inline void fold_block(FwdScratch<T>& w, long r, T nm_t, T nm_s, T sum_t, T sum_s, T sum_kl) {
  const double d_t = double(nm_t) - w.m_t[r], d_s = double(nm_s) - w.m_s[r];
  const double r_t = __builtin_exp(-d_t), r_s = __builtin_exp(-d_s);
  w.acc[r] = r_t * (w.acc[r] - (d_t - d_s) * w.l_t[r]) + double(sum_kl);
  w.l_t[r] = w.l_t[r] * r_t + double(sum_t);
  w.l_s[r] = w.l_s[r] * r_s + double(sum_s);
  w.m_t[r] = nm_t;
  w.m_s[r] = nm_s;
}

// One (batch b, split sp): the tile pairs J >= I whose index is part (mod
// nparts). The logits are symmetric (x_i.x_j = x_j.x_i, bitwise: the dot
// products are summed in the same order), so one score tile (I, J) feeds
// both rows I (keys J, a row-wise pass) and rows J (keys I, a column-wise
// pass): half the dot products of a row-block sweep. The running state of
// every row is left in w; returns false when the sequence has no valid token.
// The packs live in pk (w itself, or in shared mode thread 0's scratch,
// filled by all nparts threads together: then every thread must call this).
template <typename T>
static bool relation_forward_pairs(const RelationArgs<T>& a, long b, long sp, FwdScratch<T>& w,
                                   const FwdScratch<T>& pk, long part, long nparts) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  const long L = a.L, Lp = round_up(L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const bool* m = a.mask ? a.mask + b * L : nullptr;
  if (!sequence_active(m, L)) return false;
  const long Le = effective_len(m, L);
  const T* tb = a.t + b * a.t_sb + sp * dt * a.t_sd;
  const T* sb = a.s + b * a.s_sb + sp * ds * a.s_sd;
  {
    const long chunk = round_up((Lp + nparts - 1) / nparts, PAD);
    const long p0 = part * chunk < Lp ? part * chunk : Lp, p1 = p0 + chunk < Lp ? p0 + chunk : Lp;
    pack_rows(pk.qt + p0 * dt, dt, tb, a.t_sl, a.t_sd, p0, p1 - p0, L - p0, dt);
    pack_rows(pk.qs + p0 * ds, ds, sb, a.s_sl, a.s_sd, p0, p1 - p0, L - p0, ds);
    pack_panels(pk.kt, tb, a.t_sl, a.t_sd, L, p0, p1, dt);
    pack_panels(pk.ks, sb, a.s_sl, a.s_sd, L, p0, p1, ds);
    if (nparts > 1) {
#pragma omp barrier
    }
  }
  key_vectors<T>(m, L, Lp, T(1) / __builtin_sqrt(T(dt)), w.sc_t, w.add);
  key_vectors<T>(m, L, Lp, T(1) / __builtin_sqrt(T(ds)), w.sc_s, w.add);
  for (long r = 0; r < Lp; ++r) {
    w.m_t[r] = w.m_s[r] = Vec<T>::NEG;
    w.l_t[r] = w.l_s[r] = w.acc[r] = 0.0;
  }
  long pair = -1;
  for (long i0 = 0; i0 < Le; i0 += BLK) {
    const long rows = (Le - i0 < BLK) ? Le - i0 : BLK;
    if (!any_valid(m, i0, i0 + rows < L ? i0 + rows : L)) continue;  // no valid row, no valid key
    for (long j0 = i0; j0 < Le; j0 += BLK) {
      const long cols = (Le - j0 < BLK) ? Le - j0 : BLK;
      if (!any_valid(m, j0, j0 + cols < L ? j0 + cols : L)) continue;
      if (++pair % nparts != part) continue;
      gemm_pb<T>(rows, cols, dt, pk.qt + i0 * dt, dt, pk.kt + j0 * dt, w.tt, BLK, false);
      gemm_pb<T>(rows, cols, ds, pk.qs + i0 * ds, ds, pk.ks + j0 * ds, w.ts, BLK, false);
      if (j0 != i0) {
        // Rows J over keys I, W rows j at a time (the tile's columns), read
        // before the row-wise pass rescales the tile in place. Logit (j, i)
        // = raw * scale[i] + add[i], exactly as a row-wise pass would form it.
        for (long c = 0; c < cols; c += W) {
          V vm_t = vset<T>(Vec<T>::NEG), vm_s = vm_t;
          for (long r = 0; r < rows; ++r) {
            const V t = vload(w.tt + r * BLK + c) * vset<T>(w.sc_t[i0 + r]) + vset<T>(w.add[i0 + r]);
            const V s = vload(w.ts + r * BLK + c) * vset<T>(w.sc_s[i0 + r]) + vset<T>(w.add[i0 + r]);
            vm_t = vmax<T>(vm_t, t);
            vm_s = vmax<T>(vm_s, s);
          }
          V nm_t, nm_s;
          for (int l = 0; l < W; ++l) {
            nm_t[l] = vm_t[l] > T(w.m_t[j0 + c + l]) ? vm_t[l] : T(w.m_t[j0 + c + l]);
            nm_s[l] = vm_s[l] > T(w.m_s[j0 + c + l]) ? vm_s[l] : T(w.m_s[j0 + c + l]);
          }
          V sum_t = vset<T>(0), sum_s = sum_t, sum_kl = sum_t;
          for (long r = 0; r < rows; ++r) {
            const V t = (vload(w.tt + r * BLK + c) * vset<T>(w.sc_t[i0 + r]) + vset<T>(w.add[i0 + r])) - nm_t;
            const V s = (vload(w.ts + r * BLK + c) * vset<T>(w.sc_s[i0 + r]) + vset<T>(w.add[i0 + r])) - nm_s;
            const V e_t = vexp(t);
            sum_t += e_t;
            sum_s += vexp(s);
            sum_kl += e_t * (t - s);
          }
          for (int l = 0; l < W; ++l) fold_block(w, j0 + c + l, nm_t[l], nm_s[l], sum_t[l], sum_s[l], sum_kl[l]);
        }
      }
      // Rows I over keys J.
      const T* sct = w.sc_t + j0;
      const T* scs = w.sc_s + j0;
      const T* add = w.add + j0;
      for (long r = 0; r < rows; ++r) {
        const long i = i0 + r;
        if (i >= L || (m && !m[i])) continue;  // padded query rows are never read
        T* tr = w.tt + r * BLK;
        T* sr = w.ts + r * BLK;
        V vm_t = vset<T>(Vec<T>::NEG), vm_s = vm_t;
        for (long j = 0; j < cols; j += W) {
          const V t = vload(tr + j) * vload(sct + j) + vload(add + j);
          const V s = vload(sr + j) * vload(scs + j) + vload(add + j);
          vstore(tr + j, t);
          vstore(sr + j, s);
          vm_t = vmax<T>(vm_t, t);
          vm_s = vmax<T>(vm_s, s);
        }
        const T bm_t = hmax<T>(vm_t), bm_s = hmax<T>(vm_s);
        const T nm_t = bm_t > T(w.m_t[i]) ? bm_t : T(w.m_t[i]);
        const T nm_s = bm_s > T(w.m_s[i]) ? bm_s : T(w.m_s[i]);
        const V mt = vset<T>(nm_t), ms = vset<T>(nm_s);
        V sum_t = vset<T>(0), sum_s = sum_t, sum_kl = sum_t;
        for (long j = 0; j < cols; j += W) {
          // Logits relative to the running maxima: the row's largest terms are
          // exact (0) and small KLs of peaked rows do not cancel away.
          const V t = vload(tr + j) - mt, s = vload(sr + j) - ms;
          const V e_t = vexp(t);
          sum_t += e_t;
          sum_s += vexp(s);
          sum_kl += e_t * (t - s);  // masked keys: 0 * (NEG - NEG) = 0
        }
        fold_block(w, i, nm_t, nm_s, hsum<T>(sum_t), hsum<T>(sum_s), hsum<T>(sum_kl));
      }
    }
  }
  return true;
}

// Writes the statistics of rows [from, to) of (b, sp) from the running state.
template <typename T>
static void relation_forward_finish(const RelationArgs<T>& a, long b, long sp, const FwdScratch<T>& w, long from,
                                    long to) {
  const bool* m = a.mask ? a.mask + b * a.L : nullptr;
  T* st = a.stats + (b * a.A + sp) * a.L * NSTAT;
  for (long i = from; i < to; ++i) {
    T* o = st + i * NSTAT;
    if (m && !m[i]) {
      for (int c = 0; c < NSTAT; ++c) o[c] = T(0);
      continue;
    }
    const double ll_t = __builtin_log(w.l_t[i]), ll_s = __builtin_log(w.l_s[i]);
    o[S_MT] = T(w.m_t[i]);
    o[S_LLT] = T(ll_t);
    o[S_MS] = T(w.m_s[i]);
    o[S_LLS] = T(ll_s);
    // KL_i = sum_j p_j ((t_j - m_t) - (s_j - m_s)) - log l_t + log l_s
    o[S_KL] = T(w.acc[i] / w.l_t[i] - ll_t + ll_s);
  }
}

// Few (batch, split) units (sample_relation_kl: one): every thread takes a
// fixed share of each unit's tile pairs into its own O(L) row states; the
// states are then merged row by row in thread order (online-softmax merge,
// the same rescaling as fold_block). Reproducible for a given thread count.
template <typename T>
static int relation_forward_shared(const RelationArgs<T>& a) {
  const long L = a.L, Lp = round_up(L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  FwdScratch<T>* parts[256];
  const int nt = a.num_threads < 256 ? a.num_threads : 256;
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    FwdScratch<T> w(Lp, dt, ds, t == 0);
    parts[t] = &w;
    if (!w.ok) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    if (!failed) {
      for (long u = 0; u < a.B * a.A; ++u) {
        const long b = u / a.A, sp = u % a.A;
        const bool active = relation_forward_pairs(a, b, sp, w, *parts[0], t, n);
#pragma omp barrier
        if (active) {
#pragma omp for schedule(static)
          for (long i = 0; i < L; ++i)
            for (int p = 1; p < n; ++p) {
              FwdScratch<T>& o = *parts[p];
              if (o.m_t[i] <= Vec<T>::NEG) continue;  // this part saw no key of row i
              const T nm_t = T(o.m_t[i]) > T(parts[0]->m_t[i]) ? T(o.m_t[i]) : T(parts[0]->m_t[i]);
              const T nm_s = T(o.m_s[i]) > T(parts[0]->m_s[i]) ? T(o.m_s[i]) : T(parts[0]->m_s[i]);
              const double d_t = double(nm_t) - o.m_t[i], d_s = double(nm_s) - o.m_s[i];
              const double r_t = __builtin_exp(-d_t), r_s = __builtin_exp(-d_s);
              fold_block(*parts[0], i, nm_t, nm_s, T(0), T(0), T(0));
              parts[0]->acc[i] += r_t * (o.acc[i] - (d_t - d_s) * o.l_t[i]);
              parts[0]->l_t[i] += o.l_t[i] * r_t;
              parts[0]->l_s[i] += o.l_s[i] * r_s;
            }
          // implicit barrier: part 0 holds the merged state
#pragma omp for schedule(static)
          for (long i = 0; i < L; ++i) relation_forward_finish(a, b, sp, *parts[0], i, i + 1);
        }
        else {
#pragma omp single
          {
            T* st = a.stats + (b * a.A + sp) * L * NSTAT;
            for (long i = 0; i < L * NSTAT; ++i) st[i] = T(0);
          }
        }
      }
    }
  }
  return failed ? -1 : 0;
}

template <typename T>
int relation_forward(const RelationArgs<T>& a) {
  const long Lp = round_up(a.L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long units = a.B * a.A;
  if (a.num_threads > 1 && units < 2 * a.num_threads) return relation_forward_shared(a);
  int failed = 0;
#pragma omp parallel num_threads(a.num_threads) reduction(| : failed)
  {
    FwdScratch<T> w(Lp, dt, ds);
    if (!w.ok) failed = 1;
#pragma omp for schedule(dynamic, 1)
    for (long u = 0; u < units; ++u) {
      if (!w.ok) continue;
      const long b = u / a.A, sp = u % a.A;
      if (relation_forward_pairs(a, b, sp, w, w, 0, 1)) {
        relation_forward_finish(a, b, sp, w, 0, a.L);
      } else {
        T* st = a.stats + u * a.L * NSTAT;
        for (long i = 0; i < a.L * NSTAT; ++i) st[i] = T(0);
      }
    }
  }
  return failed ? -1 : 0;
}

template <typename T>
struct BwdScratch {
  T *xt, *xtT, *xs, *xsT, *gt, *gs, *tt, *ts, *mt, *ms, *sc_t, *sc_s, *add;
  T* row[NSTAT];  // the saved statistics of this (b, split), one array per statistic, padded to Lp
  bool ok;
  // packs = false: no room for the packed rows / key panels (shared mode:
  // thread 0's are read); teacher = false: no teacher gradient buffer.
  BwdScratch(long Lp, long dt, long ds, long dtp, long dsp, bool packs = true, bool teacher = true) {
    T** all[] = {&xt, &xtT, &xs, &xsT, &gt, &gs, &tt, &ts, &mt, &ms, &sc_t, &sc_s, &add,
                 &row[0], &row[1], &row[2], &row[3], &row[4]};
    const long P = packs ? Lp : 1, G = teacher ? Lp : 1;
    long sizes[] = {P * dtp, dt * P, P * dsp, ds * P, G * dtp, Lp * dsp, BLK * BLK, BLK * BLK,
                    BLK * BLK, BLK * BLK, Lp, Lp, Lp, Lp, Lp, Lp, Lp, Lp};
    static_assert(NSTAT == 5, "one scratch row per statistic");
    ok = true;
    for (int n = 0; n < 18; ++n) {
      *all[n] = scratch<T>(sizes[n]);
      ok = ok && *all[n] != nullptr;
    }
  }
  ~BwdScratch() {
    T* all[] = {xt, xtT, xs, xsT, gt, gs, tt, ts, mt, ms, sc_t, sc_s, add, row[0], row[1], row[2], row[3], row[4]};
    for (T* p : all) free(p);
  }
};

// Gradient tiles for rows I (i0, rows) x keys J (j0, cols), from the raw dot
// products in w.tt / w.ts. Writes into w.ms the student's (G + G^T)_IJ times
// c_s * upstream, and into w.mt the teacher's (H + H^T)_IJ times c_t * upstream.
template <typename T>
static void relation_grad_tile(const RelationArgs<T>& a, const bool* m, long i0, long rows, long j0, long cols,
                               bool teacher, T g_s, T g_t, BwdScratch<T>& w) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  const T* sct = w.sc_t + j0;
  const T* scs = w.sc_s + j0;
  const T* add = w.add + j0;
  const T* mt_j = w.row[S_MT] + j0;
  const T* llt_j = w.row[S_LLT] + j0;
  const T* ms_j = w.row[S_MS] + j0;
  const T* lls_j = w.row[S_LLS] + j0;
  const T* kl_j = w.row[S_KL] + j0;
  for (long r = 0; r < rows; ++r) {
    const long i = i0 + r;
    T* mrow_s = w.ms + r * BLK;
    T* mrow_t = w.mt + r * BLK;
    if (i >= a.L || (m && !m[i])) {
      // G_ij = 0 (row weight 0) and G_ji = 0 (key i masked).
      for (long j = 0; j < cols; ++j) mrow_s[j] = mrow_t[j] = T(0);
      continue;
    }
    const T* tr = w.tt + r * BLK;
    const T* sr = w.ts + r * BLK;
    const V mt_i = vset<T>(w.row[S_MT][i]), llt_i = vset<T>(w.row[S_LLT][i]);
    const V ms_i = vset<T>(w.row[S_MS][i]), lls_i = vset<T>(w.row[S_LLS][i]);
    const V kl_i = vset<T>(w.row[S_KL][i]);
    const V vg_s = vset<T>(g_s), vg_t = vset<T>(g_t);
    for (long j = 0; j < cols; j += W) {
      const V t = vload(tr + j) * vload(sct + j) + vload(add + j);
      const V s = vload(sr + j) * vload(scs + j) + vload(add + j);
      // Row i's log-probabilities at key j and, by symmetry of the logits, row j's at key i.
      const V lp = (t - mt_i) - llt_i, lq = (s - ms_i) - lls_i;
      const V lpT = (t - vload(mt_j + j)) - vload(llt_j + j), lqT = (s - vload(ms_j + j)) - vload(lls_j + j);
      const V p = vexp(lp), q = vexp(lq), pT = vexp(lpT), qT = vexp(lqT);
      vstore(mrow_s + j, vg_s * ((q - p) + (qT - pT)));
      if (teacher) {
        // d KL_i / d t_ij = p_ij (log p_ij - log q_ij - KL_i); masked: 0 * (NEG - NEG - kl) = 0
        const V h = p * ((lp - lq) - kl_i) + pT * ((lpT - lqT) - vload(kl_j + j));
        vstore(mrow_t + j, vg_t * h);
      }
    }
  }
}

// One (batch b, split sp): the tile pairs J >= I whose index in the (I, J)
// enumeration is part (mod nparts), both shares of the gradient, summed in
// w.gs / w.gt (Lp x dsp / dtp). With nparts == 1 (one thread owns the whole
// unit) the sums are written to the outputs; otherwise the caller reduces the
// parts in a fixed order. Returns false when the sequence has no valid row.
// The packs live in pk (w itself, or in shared mode thread 0's scratch,
// filled by all nparts threads together: then every thread must call this).
template <typename T>
static bool relation_backward_unit(const RelationArgs<T>& a, long b, long sp, BwdScratch<T>& w,
                                   const BwdScratch<T>& pk, long part, long nparts) {
  const long L = a.L, Lp = round_up(L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long dtp = ld_rows<T>(dt), dsp = ld_rows<T>(ds);
  const bool* m = a.mask ? a.mask + b * L : nullptr;
  if (!sequence_active(m, L)) return false;  // no rows: gradient stays zero
  const long Le = effective_len(m, L);
  const bool teacher = a.grad_t != nullptr;
  const T* tb = a.t + b * a.t_sb + sp * dt * a.t_sd;
  const T* sb = a.s + b * a.s_sb + sp * ds * a.s_sd;
  {
    const long chunk = round_up((Lp + nparts - 1) / nparts, PAD);
    const long p0 = part * chunk < Lp ? part * chunk : Lp, p1 = p0 + chunk < Lp ? p0 + chunk : Lp;
    pack_rows(pk.xs + p0 * dsp, dsp, sb, a.s_sl, a.s_sd, p0, p1 - p0, L - p0, ds);
    pack_panels(pk.xsT, sb, a.s_sl, a.s_sd, L, p0, p1, ds);
    pack_rows(pk.xt + p0 * dtp, dtp, tb, a.t_sl, a.t_sd, p0, p1 - p0, L - p0, dt);
    pack_panels(pk.xtT, tb, a.t_sl, a.t_sd, L, p0, p1, dt);
    if (nparts > 1) {
#pragma omp barrier
    }
  }
  const T c_t = T(1) / __builtin_sqrt(T(dt)), c_s = T(1) / __builtin_sqrt(T(ds));
  key_vectors<T>(m, L, Lp, c_t, w.sc_t, w.add);
  key_vectors<T>(m, L, Lp, c_s, w.sc_s, w.add);
  const T* st = a.stats + (b * a.A + sp) * L * NSTAT;
  for (long j = 0; j < Lp; ++j) {
    const bool v = j < L && (m == nullptr || m[j]);
    for (int c = 0; c < NSTAT; ++c) w.row[c][j] = v ? st[j * NSTAT + c] : T(0);
  }
  __builtin_memset(w.gs, 0, sizeof(T) * Lp * dsp);
  if (teacher) __builtin_memset(w.gt, 0, sizeof(T) * Lp * dtp);
  const T g_s = T(a.grad_scale) * c_s, g_t = T(a.grad_scale) * c_t;
  long pair = -1;
  for (long i0 = 0; i0 < Le; i0 += BLK) {
    const long rows = (Le - i0 < BLK) ? Le - i0 : BLK;
    if (!any_valid(m, i0, i0 + rows < L ? i0 + rows : L)) continue;
    for (long j0 = i0; j0 < Le; j0 += BLK) {
      const long cols = (Le - j0 < BLK) ? Le - j0 : BLK;
      if (!any_valid(m, j0, j0 + cols < L ? j0 + cols : L)) continue;
      if (++pair % nparts != part) continue;
      gemm_pb<T>(rows, cols, ds, pk.xs + i0 * dsp, dsp, pk.xsT + j0 * ds, w.ts, BLK, false);
      gemm_pb<T>(rows, cols, dt, pk.xt + i0 * dtp, dtp, pk.xtT + j0 * dt, w.tt, BLK, false);
      relation_grad_tile(a, m, i0, rows, j0, cols, teacher, g_s, g_t, w);
      // rows' share: dX_I += M_IJ X_J; columns' share: dX_J += M_IJ^T X_I
      gemm<T>(rows, dsp, cols, w.ms, BLK, 1, pk.xs + j0 * dsp, dsp, w.gs + i0 * dsp, dsp, true);
      if (j0 != i0) gemm<T>(cols, dsp, rows, w.ms, 1, BLK, pk.xs + i0 * dsp, dsp, w.gs + j0 * dsp, dsp, true);
      if (teacher) {
        gemm<T>(rows, dtp, cols, w.mt, BLK, 1, pk.xt + j0 * dtp, dtp, w.gt + i0 * dtp, dtp, true);
        if (j0 != i0) gemm<T>(cols, dtp, rows, w.mt, 1, BLK, pk.xt + i0 * dtp, dtp, w.gt + j0 * dtp, dtp, true);
      }
    }
  }
  if (nparts > 1) return true;
  for (long i = 0; i < L; ++i) {
    T* os = a.grad_s + (b * L + i) * a.Ds + sp * ds;
    for (long k = 0; k < ds; ++k) os[k] = w.gs[i * dsp + k];
    if (teacher) {
      T* ot = a.grad_t + (b * L + i) * a.Dt + sp * dt;
      for (long k = 0; k < dt; ++k) ot[k] = w.gt[i * dtp + k];
    }
  }
  return true;
}

// Few (batch, split) units (sample_relation_kl: one): every thread takes a
// fixed share of each unit's tile pairs into its own O(L d) buffers, then the
// rows of the output are summed over the threads' buffers in thread order.
// No atomics; for a given thread count the result is bitwise reproducible.
template <typename T>
static int relation_backward_shared(const RelationArgs<T>& a) {
  const long L = a.L, Lp = round_up(L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long dtp = ld_rows<T>(dt), dsp = ld_rows<T>(ds);
  const bool teacher = a.grad_t != nullptr;
  T* part_s[256];
  T* part_t[256];
  BwdScratch<T>* scr[256];
  int nt = a.num_threads < 256 ? a.num_threads : 256;
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    BwdScratch<T> w(Lp, dt, ds, dtp, dsp, t == 0, teacher);
    scr[t] = &w;
    part_s[t] = w.gs;
    part_t[t] = w.gt;
    if (!w.ok) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    if (!failed) {
      for (long u = 0; u < a.B * a.A; ++u) {
        const long b = u / a.A, sp = u % a.A;
        const bool active = relation_backward_unit(a, b, sp, w, *scr[0], t, n);
#pragma omp barrier
        if (active) {
#pragma omp for schedule(static)
          for (long i = 0; i < L; ++i) {
            T* os = a.grad_s + (b * L + i) * a.Ds + sp * ds;
            for (long k = 0; k < ds; ++k) {
              T v = part_s[0][i * dsp + k];
              for (int p = 1; p < n; ++p) v += part_s[p][i * dsp + k];
              os[k] = v;
            }
            if (teacher) {
              T* ot = a.grad_t + (b * L + i) * a.Dt + sp * dt;
              for (long k = 0; k < dt; ++k) {
                T v = part_t[0][i * dtp + k];
                for (int p = 1; p < n; ++p) v += part_t[p][i * dtp + k];
                ot[k] = v;
              }
            }
          }  // implicit barrier: the buffers are reused by the next unit
        }
      }
    }
  }
  return failed ? -1 : 0;
}

template <typename T>
int relation_backward(const RelationArgs<T>& a) {
  const long Lp = round_up(a.L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long units = a.B * a.A;
  if (a.num_threads > 1 && units < 2 * a.num_threads) return relation_backward_shared(a);
  int failed = 0;
#pragma omp parallel num_threads(a.num_threads) reduction(| : failed)
  {
    BwdScratch<T> w(Lp, dt, ds, ld_rows<T>(dt), ld_rows<T>(ds), true, a.grad_t != nullptr);
    if (!w.ok) failed = 1;
#pragma omp for schedule(dynamic, 1)
    for (long u = 0; u < units; ++u) {
      if (!w.ok) continue;
      relation_backward_unit(a, u / a.A, u % a.A, w, w, 0, 1);
    }
  }
  return failed ? -1 : 0;
}
