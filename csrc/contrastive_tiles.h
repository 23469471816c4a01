// Fused sample-contrastive kernels (KERNELS.md), included once per ISA inside
// namespace mlkd::MLKD_ISA after simd.h and relation_tiles.h (shares BLK,
// PAD and the packing helpers).
//
// Anchors X (N, D), logits z_ij = X_i.X_j / tau over j != i. z and the
// positive relation are symmetric, so only the J >= I half of the score tiles
// is computed, split over the threads by a fixed rule. Forward: tile (I, J)
// feeds the online log-sum-exp and the positive sum/count of rows I (keys J)
// and rows J (keys I); per-thread row states are merged in thread order;
// loss_i = lse_i - sum_pos / |P(i)|. Backward: d loss / d z_ij = c
// (softmax_ij - [j in P(i)] / |P(i)|); tile (I, J) gives M = (G + G^T)_IJ,
// added as M X_J to rows I and M^T X_I to rows J of the thread's own buffer;
// the buffers are summed in thread order (reproducible, no atomics).
#pragma once

template <typename T>
struct ConScratch {
  T *q, *z, *sc, *add, *pos, *lse_j, *ipos_j;
  bool ok;
  ConScratch(long Np, long D) {
    T** all[] = {&q, &z, &sc, &add, &pos, &lse_j, &ipos_j};
    long sizes[] = {BLK * D, BLK * BLK, Np, Np, BLK, Np, Np};
    ok = true;
    for (int n = 0; n < 7; ++n) {
      *all[n] = scratch<T>(sizes[n]);
      ok = ok && *all[n] != nullptr;
    }
  }
  ~ConScratch() {
    T* all[] = {q, z, sc, add, pos, lse_j, ipos_j};
    for (T* p : all) free(p);
  }
};

// Shared read-only packs of X: rows (Np x Dp) and keys in panels
// (pack_panels), filled by all threads together (fill(), inside the
// parallel region; its omp for ends with the barrier the readers need).
template <typename T>
struct ConPacks {
  T *rows, *cols;
  bool ok;
  ConPacks(long Np, long D, long Dp) {
    rows = scratch<T>(Np * Dp);
    cols = scratch<T>(D * Np);
    ok = rows && cols;
  }
  void fill(const ContrastiveArgs<T>& a, long Np, long Dp) {
#pragma omp for schedule(static)
    for (long r0 = 0; r0 < Np; r0 += PAD) {
      pack_rows(rows + r0 * Dp, Dp, a.x, a.x_sn, a.x_sd, r0, PAD, a.N - r0, a.D);
      pack_panels(cols, a.x, a.x_sn, a.x_sd, a.N, r0, r0 + PAD, a.D);
    }
  }
  ~ConPacks() {
    free(rows);
    free(cols);
  }
};

// Per-thread running state of every row: the online max and sum of exp and
// the sum and count of the positive logits.
template <typename T>
struct ConState {
  T *mx, *l, *pos_sum, *pos_cnt;
  bool ok;
  explicit ConState(long Np) {
    T** all[] = {&mx, &l, &pos_sum, &pos_cnt};
    ok = true;
    for (T** p : all) {
      *p = scratch<T>(Np);
      ok = ok && *p != nullptr;
    }
    for (long i = 0; ok && i < Np; ++i) mx[i] = Vec<T>::NEG;
  }
  ~ConState() {
    T* all[] = {mx, l, pos_sum, pos_cnt};
    for (T* p : all) free(p);
  }
};

// Tile pairs J >= I in a fixed enumeration; pair p belongs to thread p % n.
// The logits are symmetric, so one score tile (I, J) serves rows I (keys J)
// and rows J (keys I): half the dot products of a row-block sweep. Each
// thread keeps its own row states; they are merged in thread order below, so
// the result is reproducible for a given thread count.
template <typename T>
int contrastive_forward(const ContrastiveArgs<T>& a) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  const long N = a.N, Np = round_up(N, PAD), Dp = ld_rows<T>(a.D);
  ConPacks<T> packs(Np, a.D, Dp);
  if (!packs.ok) return -1;
  ConState<T>* parts[256];
  const int nt = a.num_threads < 256 ? a.num_threads : 256;
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    ConScratch<T> w(Np, a.D);
    ConState<T> st(Np);
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    parts[t] = &st;
    if (!w.ok || !st.ok) {
#pragma omp atomic write
      failed = 1;
    } else {
      key_vectors<T>(nullptr, N, Np, T(a.inv_tau), w.sc, w.add);
    }
#pragma omp barrier
    if (!failed) packs.fill(a, Np, Dp);
    long pair = -1;
    for (long i0 = 0; i0 < Np && !failed; i0 += BLK) {
      const long rows = (Np - i0 < BLK) ? Np - i0 : BLK;
      for (long j0 = i0; j0 < Np; j0 += BLK) {
        const long cols = (Np - j0 < BLK) ? Np - j0 : BLK;
        if (++pair % n != t) continue;
        gemm_pb<T>(rows, cols, a.D, packs.rows + i0 * Dp, Dp, packs.cols + j0 * a.D, w.z, BLK, false);
        if (j0 != i0) {
          // Rows J over keys I (no diagonal here), W rows at a time, before
          // the row-wise pass rescales the tile in place.
          for (long c = 0; c < cols && j0 + c < N; c += W) {
            V vm = vset<T>(Vec<T>::NEG);
            for (long r = 0; r < rows; ++r)
              vm = vmax<T>(vm, vload(w.z + r * BLK + c) * vset<T>(w.sc[i0 + r]) + vset<T>(w.add[i0 + r]));
            V nm;
            for (int l = 0; l < W; ++l) nm[l] = vm[l] > st.mx[j0 + c + l] ? vm[l] : st.mx[j0 + c + l];
            V sum = vset<T>(0);
            for (long r = 0; r < rows; ++r)
              sum += vexp(vload(w.z + r * BLK + c) * vset<T>(w.sc[i0 + r]) + vset<T>(w.add[i0 + r]) - nm);
            for (int l = 0; l < W; ++l) {
              const long j = j0 + c + l;
              st.l[j] = st.l[j] * sexp(st.mx[j] - nm[l]) + sum[l];
              st.mx[j] = nm[l];
            }
          }
          for (long c = 0; c < cols && j0 + c < N; ++c) {  // positives of rows J among keys I
            const long j = j0 + c;
            for (long r = 0; r < rows && i0 + r < N; ++r)
              if (a.ids[i0 + r] == a.ids[j]) st.pos_sum[j] += w.z[r * BLK + c] * w.sc[i0 + r], st.pos_cnt[j] += T(1);
          }
        }
        for (long r = 0; r < rows; ++r) {
          const long i = i0 + r;
          if (i >= N) break;
          T* zr = w.z + r * BLK;
          V vm = vset<T>(Vec<T>::NEG);
          for (long j = 0; j < cols; j += W) {
            V z = vload(zr + j) * vload(w.sc + j0 + j) + vload(w.add + j0 + j);
            vstore(zr + j, z);
          }
          if (i >= j0 && i < j0 + cols) zr[i - j0] = Vec<T>::NEG;  // j != i
          // Positives: same class id, j != i (scalar: ids are int64).
          for (long j = 0; j < cols && j0 + j < N; ++j)
            if (j0 + j != i && a.ids[j0 + j] == a.ids[i]) st.pos_sum[i] += zr[j], st.pos_cnt[i] += T(1);
          for (long j = 0; j < cols; j += W) vm = vmax<T>(vm, vload(zr + j));
          const T bm = hmax<T>(vm);
          if (bm <= Vec<T>::NEG) continue;  // only the diagonal / padding in this block
          const T nm = bm > st.mx[i] ? bm : st.mx[i];
          const V vnm = vset<T>(nm);
          V sum = vset<T>(0);
          for (long j = 0; j < cols; j += W) sum += vexp(vload(zr + j) - vnm);
          st.l[i] = st.l[i] * sexp(st.mx[i] - nm) + hsum<T>(sum);
          st.mx[i] = nm;
        }
      }
    }
#pragma omp barrier
    if (!failed) {
#pragma omp for schedule(static)
      for (long i = 0; i < N; ++i) {
        ConState<T>& s0 = *parts[0];
        for (int p = 1; p < n; ++p) {
          const ConState<T>& o = *parts[p];
          s0.pos_sum[i] += o.pos_sum[i];
          s0.pos_cnt[i] += o.pos_cnt[i];
          if (o.mx[i] <= Vec<T>::NEG) continue;  // this part saw no key of row i
          const T nm = o.mx[i] > s0.mx[i] ? o.mx[i] : s0.mx[i];
          s0.l[i] = s0.l[i] * sexp(s0.mx[i] - nm) + o.l[i] * sexp(o.mx[i] - nm);
          s0.mx[i] = nm;
        }
        const T lse = s0.mx[i] + slog(s0.l[i]);
        a.lse[i] = lse;
        a.inv_pos[i] = T(1) / s0.pos_cnt[i];
        a.loss_row[i] = lse - s0.pos_sum[i] / s0.pos_cnt[i];
      }
    }
  }
  return failed ? -1 : 0;
}

// Tile pairs J >= I split over the threads as in the forward; tile (I, J)
// gives M_IJ = (G + G^T)_IJ, added as M_IJ X_J to rows I and M_IJ^T X_I to
// rows J of the thread's own O(N D) buffer. The buffers are summed in thread
// order: no atomics, reproducible for a given thread count.
template <typename T>
int contrastive_backward(const ContrastiveArgs<T>& a) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  const long N = a.N, Np = round_up(N, PAD), Dp = ld_rows<T>(a.D);
  ConPacks<T> packs(Np, a.D, Dp);
  if (!packs.ok) return -1;
  const T c = T(a.grad_scale);
  T* parts[256];
  const int nt = a.num_threads < 256 ? a.num_threads : 256;
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    ConScratch<T> w(Np, a.D);
    T* acc = scratch<T>(Np * Dp);
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    parts[t] = acc;
    if (!w.ok || !acc) {
#pragma omp atomic write
      failed = 1;
    } else {
      key_vectors<T>(nullptr, N, Np, T(a.inv_tau), w.sc, w.add);
      for (long j = 0; j < Np; ++j) {
        w.lse_j[j] = j < N ? a.lse[j] : T(0);
        w.ipos_j[j] = j < N ? a.inv_pos[j] : T(0);
      }
    }
#pragma omp barrier
    if (!failed) packs.fill(a, Np, Dp);
    long pair = -1;
    for (long i0 = 0; i0 < Np && !failed; i0 += BLK) {
      const long rows = (Np - i0 < BLK) ? Np - i0 : BLK;
      for (long j0 = i0; j0 < Np; j0 += BLK) {
        const long cols = (Np - j0 < BLK) ? Np - j0 : BLK;
        if (++pair % n != t) continue;
        gemm_pb<T>(rows, cols, a.D, packs.rows + i0 * Dp, Dp, packs.cols + j0 * a.D, w.z, BLK, false);
        for (long r = 0; r < rows; ++r) {
          const long i = i0 + r;
          T* zr = w.z + r * BLK;
          if (i >= N) {
            for (long j = 0; j < cols; ++j) zr[j] = T(0);
            continue;
          }
          for (long j = 0; j < cols; ++j)  // [j in P(i)] (then also [i in P(j)])
            w.pos[j] = (j0 + j < N && j0 + j != i && a.ids[j0 + j] == a.ids[i]) ? T(1) : T(0);
          const V lse_i = vset<T>(a.lse[i]), ipos_i = vset<T>(a.inv_pos[i]), vc = vset<T>(c);
          for (long j = 0; j < cols; j += W) {
            V z = vload(zr + j) * vload(w.sc + j0 + j) + vload(w.add + j0 + j);
            const V soft = vexp(z - lse_i) + vexp(z - vload(w.lse_j + j0 + j));
            const V pos = vload(w.pos + j) * (ipos_i + vload(w.ipos_j + j0 + j));
            vstore(zr + j, vc * (soft - pos));
          }
          if (i >= j0 && i < j0 + cols) zr[i - j0] = T(0);  // no self pair
        }
        // rows' share: dX_I += M_IJ X_J; columns' share: dX_J += M_IJ^T X_I (M symmetric in (i, j))
        gemm<T>(rows, Dp, cols, w.z, BLK, 1, packs.rows + j0 * Dp, Dp, acc + i0 * Dp, Dp, true);
        if (j0 != i0) gemm<T>(cols, Dp, rows, w.z, 1, BLK, packs.rows + i0 * Dp, Dp, acc + j0 * Dp, Dp, true);
      }
    }
#pragma omp barrier
    if (!failed) {
      const T inv_tau = T(a.inv_tau);
#pragma omp for schedule(static)
      for (long i = 0; i < N; ++i)
        for (long k = 0; k < a.D; ++k) {
          T v = parts[0][i * Dp + k];
          for (int p = 1; p < n; ++p) v += parts[p][i * Dp + k];
          a.grad_x[i * a.D + k] = v * inv_tau;
        }
    }
#pragma omp barrier
    free(acc);
  }
  return failed ? -1 : 0;
}
