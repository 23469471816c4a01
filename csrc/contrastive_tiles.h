// Fused sample-contrastive kernels (KERNELS.md), included once per ISA inside
// namespace mlkd::MLKD_ISA after simd.h and relation_tiles.h (shares BLK,
// PAD and the packing helpers).
//
// Anchors X (N, D), logits z_ij = X_i.X_j / tau over j != i. Forward, per row
// block over key blocks: online log-sum-exp plus the sum and count of the
// positive logits; loss_i = lse_i - sum_pos / |P(i)|. Backward per row block:
// d loss / d z_ij = c (softmax_ij - [j in P(i)] / |P(i)|), and since z and
// the positive relation are symmetric, the column share G_ji is recomputed
// from the same tile, so every thread writes only its own rows of dX.
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

// Shared read-only packs of X: rows (Np x Dp) and keys as columns (D x Np).
template <typename T>
struct ConPacks {
  T *rows, *cols;
  bool ok;
  ConPacks(const ContrastiveArgs<T>& a, long Np, long Dp) {
    rows = scratch<T>(Np * Dp);
    cols = scratch<T>(a.D * Np);
    ok = rows && cols;
    if (ok) {
      pack_rows(rows, Dp, a.x, a.x_sn, a.x_sd, 0, Np, a.N, a.D);
      pack_cols(cols, Np, a.x, a.x_sn, a.x_sd, a.N, a.D);
    }
  }
  ~ConPacks() {
    free(rows);
    free(cols);
  }
};

template <typename T>
int contrastive_forward(const ContrastiveArgs<T>& a) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  const long N = a.N, Np = round_up(N, PAD), Dp = round_up(a.D, NR<T>());
  const long nblk = (Np + BLK - 1) / BLK;
  ConPacks<T> packs(a, Np, Dp);
  if (!packs.ok) return -1;
  int failed = 0;
#pragma omp parallel num_threads(a.num_threads) reduction(| : failed)
  {
    ConScratch<T> w(Np, a.D);
    if (!w.ok)
      failed = 1;
    else
      key_vectors<T>(nullptr, N, Np, T(a.inv_tau), w.sc, w.add);
#pragma omp for schedule(dynamic, 1)
    for (long blk = 0; blk < nblk; ++blk) {
      if (!w.ok) continue;
      const long i0 = blk * BLK, rows = (Np - i0 < BLK) ? Np - i0 : BLK;
      T mx[BLK], l[BLK], pos_sum[BLK], pos_cnt[BLK];
      for (long r = 0; r < rows; ++r) mx[r] = Vec<T>::NEG, l[r] = pos_sum[r] = pos_cnt[r] = T(0);
      for (long j0 = 0; j0 < Np; j0 += BLK) {
        const long cols = (Np - j0 < BLK) ? Np - j0 : BLK;
        gemm<T>(rows, cols, a.D, packs.rows + i0 * Dp, Dp, 1, packs.cols + j0, Np, w.z, BLK, false);
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
            if (j0 + j != i && a.ids[j0 + j] == a.ids[i]) pos_sum[r] += zr[j], pos_cnt[r] += T(1);
          for (long j = 0; j < cols; j += W) vm = vmax<T>(vm, vload(zr + j));
          const T bm = hmax<T>(vm);
          if (bm <= Vec<T>::NEG) continue;  // only the diagonal / padding in this block
          const T nm = bm > mx[r] ? bm : mx[r];
          const V vnm = vset<T>(nm);
          V sum = vset<T>(0);
          for (long j = 0; j < cols; j += W) sum += vexp(vload(zr + j) - vnm);
          l[r] = l[r] * sexp(mx[r] - nm) + hsum<T>(sum);
          mx[r] = nm;
        }
      }
      for (long r = 0; r < rows && i0 + r < N; ++r) {
        const long i = i0 + r;
        const T lse = mx[r] + slog(l[r]);
        a.lse[i] = lse;
        a.inv_pos[i] = T(1) / pos_cnt[r];
        a.loss_row[i] = lse - pos_sum[r] / pos_cnt[r];
      }
    }
  }
  return failed ? -1 : 0;
}

template <typename T>
int contrastive_backward(const ContrastiveArgs<T>& a) {
  typedef typename Vec<T>::v V;
  constexpr int W = Vec<T>::W;
  const long N = a.N, Np = round_up(N, PAD), Dp = round_up(a.D, NR<T>());
  const long nblk = (Np + BLK - 1) / BLK;
  ConPacks<T> packs(a, Np, Dp);
  if (!packs.ok) return -1;
  const T c = T(a.grad_scale);
  int failed = 0;
#pragma omp parallel num_threads(a.num_threads) reduction(| : failed)
  {
    ConScratch<T> w(Np, a.D);
    T* acc = scratch<T>(BLK * Dp);
    if (!w.ok || !acc) failed = 1;
    if (!failed) {
      key_vectors<T>(nullptr, N, Np, T(a.inv_tau), w.sc, w.add);
      for (long j = 0; j < Np; ++j) {
        w.lse_j[j] = j < N ? a.lse[j] : T(0);
        w.ipos_j[j] = j < N ? a.inv_pos[j] : T(0);
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (long blk = 0; blk < nblk; ++blk) {
      if (!w.ok || !acc) continue;
      const long i0 = blk * BLK, rows = (Np - i0 < BLK) ? Np - i0 : BLK;
      __builtin_memset(acc, 0, sizeof(T) * BLK * Dp);
      for (long j0 = 0; j0 < Np; j0 += BLK) {
        const long cols = (Np - j0 < BLK) ? Np - j0 : BLK;
        gemm<T>(rows, cols, a.D, packs.rows + i0 * Dp, Dp, 1, packs.cols + j0, Np, w.z, BLK, false);
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
        // dX_I += (G + G^T)_IJ X_J / tau
        gemm<T>(rows, Dp, cols, w.z, BLK, 1, packs.rows + j0 * Dp, Dp, acc, Dp, true);
      }
      const T inv_tau = T(a.inv_tau);
      for (long r = 0; r < rows && i0 + r < N; ++r)
        for (long k = 0; k < a.D; ++k) a.grad_x[(i0 + r) * a.D + k] = acc[r * Dp + k] * inv_tau;
    }
    free(acc);
  }
  return failed ? -1 : 0;
}
