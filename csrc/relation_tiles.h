// Fused relation-KL kernels (KERNELS.md), included once per ISA inside
// namespace mlkd::MLKD_ISA after simd.h.
//
// Forward: one pass over key blocks per (batch, split, row block) with an
// online max/sum for teacher and student and the running KL accumulator;
// only the row maxima, log-sums and KL per row are written. Backward: one (batch, split)
// per task; because the relation logits are symmetric (x_i.x_j = x_j.x_i),
// one score tile (I, J) yields both G_IJ and G_JI, so only the J >= I half of
// the tiles is recomputed and both the rows' and the columns' share of
// dX = c (G + G^T) X are accumulated by the one thread that owns (b, split):
// no races, no atomics, bitwise-reproducible. Scratch is O(L d + BLK^2) per
// thread; nothing of size L x L exists.
#pragma once

// Row/key block: tiles of BLK x BLK scores stay in L1 (16 KiB in fp32).
constexpr int BLK = 64;
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

// Per-row statistics saved by the forward for the backward, (B, A, L, NSTAT):
// the row maxima and log-sums of teacher and student (log p_ij =
// (t_ij - m_t) - log l_t keeps its precision for peaked rows) and KL_i.
enum { S_MT = 0, S_LLT, S_MS, S_LLS, S_KL, NSTAT };

template <typename T>
struct FwdScratch {
  T *qt, *qs, *kt, *ks, *tt, *ts, *sc_t, *sc_s, *add;
  // Per-row running state in double even for fp32 inputs: l = 1 + tiny for
  // a peaked row, and log(l) must keep the tiny part (KL can be ~1e-6).
  double *m_t, *l_t, *m_s, *l_s, *acc;
  bool ok;
  FwdScratch(long Lp, long dt, long ds) {
    T** all[] = {&qt, &qs, &kt, &ks, &tt, &ts, &sc_t, &sc_s, &add};
    long sizes[] = {BLK * dt, BLK * ds, dt * Lp, ds * Lp, BLK * BLK, BLK * BLK, Lp, Lp, Lp};
    double** rows[] = {&m_t, &l_t, &m_s, &l_s, &acc};
    ok = true;
    for (int n = 0; n < 9; ++n) {
      *all[n] = scratch<T>(sizes[n]);
      ok = ok && *all[n] != nullptr;
    }
    for (int n = 0; n < 5; ++n) {
      *rows[n] = scratch<double>(BLK);
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

// One (batch b, split sp, row block starting at i0).
template <typename T>
static void relation_forward_block(const RelationArgs<T>& a, long b, long sp, long i0, FwdScratch<T>& w) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  const long L = a.L, Lp = round_up(L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const bool* m = a.mask ? a.mask + b * L : nullptr;
  const long rows = (Lp - i0 < BLK) ? Lp - i0 : BLK;
  T* st = a.stats + (b * a.A + sp) * L * NSTAT;
  if (!sequence_active(m, L)) {
    for (long i = i0; i < i0 + rows && i < L; ++i)
      for (int c = 0; c < NSTAT; ++c) st[i * NSTAT + c] = T(0);
    return;
  }
  const T* tb = a.t + b * a.t_sb + sp * dt * a.t_sd;
  const T* sb = a.s + b * a.s_sb + sp * ds * a.s_sd;
  pack_rows(w.qt, dt, tb, a.t_sl, a.t_sd, i0, rows, L - i0, dt);
  pack_rows(w.qs, ds, sb, a.s_sl, a.s_sd, i0, rows, L - i0, ds);
  pack_cols(w.kt, Lp, tb, a.t_sl, a.t_sd, L, dt);
  pack_cols(w.ks, Lp, sb, a.s_sl, a.s_sd, L, ds);
  key_vectors<T>(m, L, Lp, T(1) / __builtin_sqrt(T(dt)), w.sc_t, w.add);
  key_vectors<T>(m, L, Lp, T(1) / __builtin_sqrt(T(ds)), w.sc_s, w.add);
  for (long r = 0; r < rows; ++r) {
    w.m_t[r] = w.m_s[r] = Vec<T>::NEG;
    w.l_t[r] = w.l_s[r] = w.acc[r] = 0.0;
  }
  for (long j0 = 0; j0 < Lp; j0 += BLK) {
    const long cols = (Lp - j0 < BLK) ? Lp - j0 : BLK;
    if (!any_valid(m, j0, j0 + cols < L ? j0 + cols : L)) continue;  // every key masked: contributes nothing
    gemm<T>(rows, cols, dt, w.qt, dt, 1, w.kt + j0, Lp, w.tt, BLK, false);
    gemm<T>(rows, cols, ds, w.qs, ds, 1, w.ks + j0, Lp, w.ts, BLK, false);
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
      // The block holds a valid key, so both block maxima are real logits.
      const T bm_t = hmax<T>(vm_t), bm_s = hmax<T>(vm_s);
      const T nm_t = bm_t > T(w.m_t[r]) ? bm_t : T(w.m_t[r]);
      const T nm_s = bm_s > T(w.m_s[r]) ? bm_s : T(w.m_s[r]);
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
      // Rescale the old state to the new maxima: every old term's (t - m_t) -
      // (s - m_s) drops by d_t - d_s, its weight by exp(-d_t). The first block
      // (l = acc = 0) stays finite because NEG is finite.
      const double d_t = double(nm_t) - w.m_t[r], d_s = double(nm_s) - w.m_s[r];
      const double r_t = __builtin_exp(-d_t), r_s = __builtin_exp(-d_s);
      w.acc[r] = r_t * (w.acc[r] - (d_t - d_s) * w.l_t[r]) + double(hsum<T>(sum_kl));
      w.l_t[r] = w.l_t[r] * r_t + double(hsum<T>(sum_t));
      w.l_s[r] = w.l_s[r] * r_s + double(hsum<T>(sum_s));
      w.m_t[r] = nm_t;
      w.m_s[r] = nm_s;
    }
  }
  for (long r = 0; r < rows; ++r) {
    const long i = i0 + r;
    if (i >= L) break;
    T* o = st + i * NSTAT;
    if (m && !m[i]) {
      for (int c = 0; c < NSTAT; ++c) o[c] = T(0);
      continue;
    }
    const double ll_t = __builtin_log(w.l_t[r]), ll_s = __builtin_log(w.l_s[r]);
    o[S_MT] = T(w.m_t[r]);
    o[S_LLT] = T(ll_t);
    o[S_MS] = T(w.m_s[r]);
    o[S_LLS] = T(ll_s);
    // KL_i = sum_j p_j ((t_j - m_t) - (s_j - m_s)) - log l_t + log l_s
    o[S_KL] = T(w.acc[r] / w.l_t[r] - ll_t + ll_s);
  }
}

template <typename T>
int relation_forward(const RelationArgs<T>& a) {
  const long L = a.L, Lp = round_up(L, PAD), nblk = (Lp + BLK - 1) / BLK;
  const long dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long units = a.B * a.A * nblk;
  int failed = 0;
#pragma omp parallel num_threads(a.num_threads) reduction(| : failed)
  {
    FwdScratch<T> w(Lp, dt, ds);
    if (!w.ok) failed = 1;
#pragma omp for schedule(dynamic, 1)
    for (long u = 0; u < units; ++u) {
      if (!w.ok) continue;
      const long blk = u % nblk, sp = (u / nblk) % a.A, b = u / (nblk * a.A);
      relation_forward_block(a, b, sp, blk * BLK, w);
    }
  }
  return failed ? -1 : 0;
}

template <typename T>
struct BwdScratch {
  T *xt, *xtT, *xs, *xsT, *gt, *gs, *tt, *ts, *mt, *ms, *sc_t, *sc_s, *add;
  T* row[NSTAT];  // the saved statistics of this (b, split), one array per statistic, padded to Lp
  bool ok;
  BwdScratch(long Lp, long dt, long ds, long dtp, long dsp) {
    T** all[] = {&xt, &xtT, &xs, &xsT, &gt, &gs, &tt, &ts, &mt, &ms, &sc_t, &sc_s, &add,
                 &row[0], &row[1], &row[2], &row[3], &row[4]};
    long sizes[] = {Lp * dtp, dt * Lp, Lp * dsp, ds * Lp, Lp * dtp, Lp * dsp, BLK * BLK, BLK * BLK,
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

// One (batch b, split sp): all tiles J >= I, both shares of the gradient.
template <typename T>
static void relation_backward_unit(const RelationArgs<T>& a, long b, long sp, BwdScratch<T>& w) {
  const long L = a.L, Lp = round_up(L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long dtp = round_up(dt, NR<T>()), dsp = round_up(ds, NR<T>());
  const bool* m = a.mask ? a.mask + b * L : nullptr;
  if (!sequence_active(m, L)) return;  // no rows: gradient stays zero
  const bool teacher = a.grad_t != nullptr;
  const T* tb = a.t + b * a.t_sb + sp * dt * a.t_sd;
  const T* sb = a.s + b * a.s_sb + sp * ds * a.s_sd;
  pack_rows(w.xs, dsp, sb, a.s_sl, a.s_sd, 0, Lp, L, ds);
  pack_cols(w.xsT, Lp, sb, a.s_sl, a.s_sd, L, ds);
  pack_rows(w.xt, dtp, tb, a.t_sl, a.t_sd, 0, Lp, L, dt);
  pack_cols(w.xtT, Lp, tb, a.t_sl, a.t_sd, L, dt);
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
  for (long i0 = 0; i0 < Lp; i0 += BLK) {
    const long rows = (Lp - i0 < BLK) ? Lp - i0 : BLK;
    if (!any_valid(m, i0, i0 + rows < L ? i0 + rows : L)) continue;
    for (long j0 = i0; j0 < Lp; j0 += BLK) {
      const long cols = (Lp - j0 < BLK) ? Lp - j0 : BLK;
      if (!any_valid(m, j0, j0 + cols < L ? j0 + cols : L)) continue;
      gemm<T>(rows, cols, ds, w.xs + i0 * dsp, dsp, 1, w.xsT + j0, Lp, w.ts, BLK, false);
      gemm<T>(rows, cols, dt, w.xt + i0 * dtp, dtp, 1, w.xtT + j0, Lp, w.tt, BLK, false);
      relation_grad_tile(a, m, i0, rows, j0, cols, teacher, g_s, g_t, w);
      // rows' share: dX_I += M_IJ X_J; columns' share: dX_J += M_IJ^T X_I
      gemm<T>(rows, dsp, cols, w.ms, BLK, 1, w.xs + j0 * dsp, dsp, w.gs + i0 * dsp, dsp, true);
      if (j0 != i0) gemm<T>(cols, dsp, rows, w.ms, 1, BLK, w.xs + i0 * dsp, dsp, w.gs + j0 * dsp, dsp, true);
      if (teacher) {
        gemm<T>(rows, dtp, cols, w.mt, BLK, 1, w.xt + j0 * dtp, dtp, w.gt + i0 * dtp, dtp, true);
        if (j0 != i0) gemm<T>(cols, dtp, rows, w.mt, 1, BLK, w.xt + i0 * dtp, dtp, w.gt + j0 * dtp, dtp, true);
      }
    }
  }
  for (long i = 0; i < L; ++i) {
    T* os = a.grad_s + (b * L + i) * a.Ds + sp * ds;
    for (long k = 0; k < ds; ++k) os[k] = w.gs[i * dsp + k];
    if (teacher) {
      T* ot = a.grad_t + (b * L + i) * a.Dt + sp * dt;
      for (long k = 0; k < dt; ++k) ot[k] = w.gt[i * dtp + k];
    }
  }
}

template <typename T>
int relation_backward(const RelationArgs<T>& a) {
  const long Lp = round_up(a.L, PAD), dt = a.Dt / a.A, ds = a.Ds / a.A;
  const long units = a.B * a.A;
  int failed = 0;
#pragma omp parallel num_threads(a.num_threads) reduction(| : failed)
  {
    BwdScratch<T> w(Lp, dt, ds, round_up(dt, NR<T>()), round_up(ds, NR<T>()));
    if (!w.ok) failed = 1;
#pragma omp for schedule(dynamic, 1)
    for (long u = 0; u < units; ++u) {
      if (!w.ok) continue;
      relation_backward_unit(a, u / a.A, u % a.A, w);
    }
  }
  return failed ? -1 : 0;
}
