// Fused relation-KL kernels (docs/kernels.md), included once per ISA inside
// namespace mlkd::MLKD_ISA after simd.h and tiling.h.
//
// Inputs (any strides; element (b, i, k) at ptr + b*sb + i*sl + k*sd):
//   teacher t (B, L, Dt), student s (B, L, Ds), mask (B, L) bool or null;
//   split sp of a row is its columns [sp*d, (sp+1)*d), d = D / A.
// Math, per (b, split, valid row i), keys j valid:
//   t_ij = t_i.t_j / sqrt(dt), s_ij likewise; p_i = softmax_j(t_i.), q_i = softmax_j(s_i.)
//   KL_i = sum_j p_ij (log p_ij - log q_ij); loss = mean of KL_i over valid rows.
// Saved by the forward, (B, A, L, NSTAT): row maxima and log-sums of both
// models and KL_i (O(B A L)); the backward recomputes the scores from them:
//   dKL_i/ds_ij = q_ij - p_ij,  dKL_i/dt_ij = p_ij (log p_ij - log q_ij - KL_i).
//
// The relation logits are symmetric (x_i.x_j = x_j.x_i, bitwise: both orders
// sum the same products in the same order), so both passes visit only the
// J >= I half of the BLK x BLK score tiles (for_tile_pairs), each computed
// by the packed-panel GEMM of simd.h. Forward: one pass; tile (I, J) folds
// keys J into the online max/sum/KL state of rows I (row-wise) and keys I
// into that of rows J (column-wise). Backward: tile (I, J) yields both G_IJ
// and G_JI; both the rows' and the columns' share of dX = c (G + G^T) X are
// accumulated. Work split: one (batch, split) per thread when there are
// enough of them; otherwise (few sequences, e.g. sample_relation_kl's single
// B x B relation) the threads take fixed shares of each sequence's tile pairs
// into their own O(L) row states / O(L d) gradient buffers, merged in thread
// order. No atomics; bitwise-reproducible for a given thread count. Tiles past
// a sequence's last valid token are skipped. Scratch is O(L d + BLK^2) per
// thread; nothing of size L x L exists.
#pragma once

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
  Arena mem;
  bool ok;
  // Thread t's scratch. shared: the threads share each sequence, and only
  // thread 0 holds the packed rows / key panels (all threads fill and read them).
  FwdScratch(int t, bool shared, long Lp, long dt, long ds) {
    const long P = (shared && t != 0) ? 1 : Lp;
    mem.add(qt, P * dt).add(qs, P * ds).add(kt, dt * P).add(ks, ds * P);
    mem.add(tt, BLK * BLK).add(ts, BLK * BLK).add(sc_t, Lp).add(sc_s, Lp).add(add, Lp);
    mem.add(m_t, Lp).add(l_t, Lp).add(m_s, Lp).add(l_s, Lp).add(acc, Lp);
    ok = mem.allocate();
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
    long p0, p1;
    part_range(Lp, part, nparts, &p0, &p1);
    pack_rows(pk.qt + p0 * dt, dt, tb, a.t_sl, a.t_sd, p0, p1 - p0, L - p0, dt, m);
    pack_rows(pk.qs + p0 * ds, ds, sb, a.s_sl, a.s_sd, p0, p1 - p0, L - p0, ds, m);
    pack_panels(pk.kt, tb, a.t_sl, a.t_sd, L, p0, p1, dt, m);
    pack_panels(pk.ks, sb, a.s_sl, a.s_sd, L, p0, p1, ds, m);
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
  // a block without a valid token has no valid row and no valid key
  auto active = [&](long from, long to) { return any_valid(m, from, to < L ? to : L); };
  for_tile_pairs(Le, part, nparts, active, [&](long i0, long rows, long j0, long cols) {
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
  });
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

// Merges thread p's running state of row i into thread 0's (the online-
// softmax merge: the same rescaling as fold_block).
template <typename T>
static void merge_row_state(FwdScratch<T>& into, const FwdScratch<T>& o, long i) {
  if (o.m_t[i] <= Vec<T>::NEG) return;  // that thread saw no key of row i
  const T nm_t = T(o.m_t[i]) > T(into.m_t[i]) ? T(o.m_t[i]) : T(into.m_t[i]);
  const T nm_s = T(o.m_s[i]) > T(into.m_s[i]) ? T(o.m_s[i]) : T(into.m_s[i]);
  const double d_t = double(nm_t) - o.m_t[i], d_s = double(nm_s) - o.m_s[i];
  const double r_t = __builtin_exp(-d_t), r_s = __builtin_exp(-d_s);
  fold_block(into, i, nm_t, nm_s, T(0), T(0), T(0));
  into.acc[i] += r_t * (o.acc[i] - (d_t - d_s) * o.l_t[i]);
  into.l_t[i] += o.l_t[i] * r_t;
  into.l_s[i] += o.l_s[i] * r_s;
}

template <typename T>
static void zero_stats(const RelationArgs<T>& a, long unit) {
  T* st = a.stats + unit * a.L * NSTAT;
  for (long i = 0; i < a.L * NSTAT; ++i) st[i] = T(0);
}

// Few (batch, split) units (sample_relation_kl: one): every thread takes a
// fixed share of each unit's tile pairs into its own O(L) row states; the
// states are then merged row by row in thread order. Reproducible for a
// given thread count.
template <typename T>
static int relation_forward_shared(const RelationArgs<T>& a) {
  const long L = a.L, Lp = round_up(L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  auto body = [&](int t, int n, FwdScratch<T>& w, FwdScratch<T>** parts) {
    for (long u = 0; u < a.B * a.A; ++u) {
      const long b = u / a.A, sp = u % a.A;
      const bool active = relation_forward_pairs(a, b, sp, w, *parts[0], t, n);
#pragma omp barrier
      if (active) {
#pragma omp for schedule(static)
        for (long i = 0; i < L; ++i)
          for (int p = 1; p < n; ++p) merge_row_state(*parts[0], *parts[p], i);
        // implicit barrier: part 0 holds the merged state
#pragma omp for schedule(static)
        for (long i = 0; i < L; ++i) relation_forward_finish(a, b, sp, *parts[0], i, i + 1);
      } else {
#pragma omp single
        zero_stats(a, u);
      }
    }
  };
  return run_team<FwdScratch<T>>(a.num_threads, body, true, Lp, dt, ds);
}

template <typename T>
int relation_forward(const RelationArgs<T>& a) {
  const long Lp = round_up(a.L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long units = a.B * a.A;
  if (a.num_threads > 1 && units < 2 * a.num_threads) return relation_forward_shared(a);
  auto body = [&](int, int, FwdScratch<T>& w, FwdScratch<T>**) {
#pragma omp for schedule(dynamic, 1)
    for (long u = 0; u < units; ++u) {
      const long b = u / a.A, sp = u % a.A;
      if (relation_forward_pairs(a, b, sp, w, w, 0, 1))
        relation_forward_finish(a, b, sp, w, 0, a.L);
      else
        zero_stats(a, u);
    }
  };
  return run_team<FwdScratch<T>>(a.num_threads, body, false, Lp, dt, ds);
}

template <typename T>
struct BwdScratch {
  T *xt, *xtT, *xs, *xsT, *gt, *gs, *tt, *ts, *mt, *ms, *sc_t, *sc_s, *add;
  T* row[NSTAT];  // the saved statistics of this (b, split), one array per statistic, padded to Lp
  Arena mem;
  bool ok;
  // Thread t's scratch. shared: only thread 0 holds the packed rows / key
  // panels (all threads fill and read them); teacher = false: no teacher
  // gradient buffer.
  BwdScratch(int t, bool shared, long Lp, long dt, long ds, long dtp, long dsp, bool teacher) {
    const long P = (shared && t != 0) ? 1 : Lp, G = teacher ? Lp : 1;
    mem.add(xt, P * dtp).add(xtT, dt * P).add(xs, P * dsp).add(xsT, ds * P).add(gt, G * dtp).add(gs, Lp * dsp);
    mem.add(tt, BLK * BLK).add(ts, BLK * BLK).add(mt, BLK * BLK).add(ms, BLK * BLK);
    mem.add(sc_t, Lp).add(sc_s, Lp).add(add, Lp);
    for (int c = 0; c < NSTAT; ++c) mem.add(row[c], Lp);
    ok = mem.allocate();
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
    long p0, p1;
    part_range(Lp, part, nparts, &p0, &p1);
    pack_rows(pk.xs + p0 * dsp, dsp, sb, a.s_sl, a.s_sd, p0, p1 - p0, L - p0, ds, m);
    pack_panels(pk.xsT, sb, a.s_sl, a.s_sd, L, p0, p1, ds, m);
    pack_rows(pk.xt + p0 * dtp, dtp, tb, a.t_sl, a.t_sd, p0, p1 - p0, L - p0, dt, m);
    pack_panels(pk.xtT, tb, a.t_sl, a.t_sd, L, p0, p1, dt, m);
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
  auto active = [&](long from, long to) { return any_valid(m, from, to < L ? to : L); };
  for_tile_pairs(Le, part, nparts, active, [&](long i0, long rows, long j0, long cols) {
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
  });
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
  auto body = [&](int t, int n, BwdScratch<T>& w, BwdScratch<T>** parts) {
    for (long u = 0; u < a.B * a.A; ++u) {
      const long b = u / a.A, sp = u % a.A;
      const bool active = relation_backward_unit(a, b, sp, w, *parts[0], t, n);
#pragma omp barrier
      if (!active) continue;  // every thread agrees: the mask decides
#pragma omp for schedule(static)
      for (long i = 0; i < L; ++i) {
        sum_in_order(a.grad_s + (b * L + i) * a.Ds + sp * ds, ds, n, T(1), [&](int p) { return parts[p]->gs + i * dsp; });
        if (teacher)
          sum_in_order(a.grad_t + (b * L + i) * a.Dt + sp * dt, dt, n, T(1), [&](int p) { return parts[p]->gt + i * dtp; });
      }  // implicit barrier: the buffers are reused by the next unit
    }
  };
  return run_team<BwdScratch<T>>(a.num_threads, body, true, Lp, dt, ds, dtp, dsp, teacher);
}

template <typename T>
int relation_backward(const RelationArgs<T>& a) {
  const long Lp = round_up(a.L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long units = a.B * a.A;
  if (a.num_threads > 1 && units < 2 * a.num_threads) return relation_backward_shared(a);
  auto body = [&](int, int, BwdScratch<T>& w, BwdScratch<T>**) {
#pragma omp for schedule(dynamic, 1)
    for (long u = 0; u < units; ++u) relation_backward_unit(a, u / a.A, u % a.A, w, w, 0, 1);
  };
  return run_team<BwdScratch<T>>(a.num_threads, body, false, Lp, dt, ds, ld_rows<T>(dt), ld_rows<T>(ds),
                                 a.grad_t != nullptr);
}
