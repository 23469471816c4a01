// Fused sample-contrastive kernels (docs/kernels.md), included once per ISA
// inside namespace mlkd::MLKD_ISA after simd.h and tiling.h.
//
// Inputs: anchors X (N, D), any strides (element (i, k) at x + i*x_sn + k*x_sd),
// already L2-normalised; ids (N,) int64 class ids; inv_tau = 1 / tau.
// Math: z_ij = X_i.X_j / tau over j != i; P(i) = {j != i : ids_j = ids_i};
//   loss_i = lse_j(z_ij) - (1/|P(i)|) sum_{p in P(i)} z_ip.
// Forward writes lse_i, 1/|P(i)| and loss_i (O(N)); the backward recomputes z:
//   d loss / d z_ij = c (softmax_ij - [j in P(i)] / |P(i)|).
// z and the positive relation are symmetric, so only the J >= I half of the
// score tiles is computed (for_tile_pairs), split over the threads by a
// fixed rule. Forward: tile (I, J) feeds the online log-sum-exp and the
// positive sum/count of rows I (keys J) and rows J (keys I); per-thread row
// states are merged in thread order. Backward: tile (I, J) gives
// M = (G + G^T)_IJ, added as M X_J to rows I and M^T X_I to rows J of the
// thread's own buffer; the buffers are summed in thread order (sum_in_order).
// Reproducible for a given thread count, no atomics, nothing N x N.
#pragma once

// One thread's scratch: the score tile and key vectors, plus (forward) the
// running state of every row: online max and sum of exp, sum and count of
// the positive logits; or (backward) the saved per-row values as key
// vectors and the thread's O(N D) gradient buffer.
template <typename T>
struct ConScratch {
  T *z, *sc, *add;
  T *mx, *l, *pos_sum, *pos_cnt;  // forward
  T *pos, *lse_j, *ipos_j, *acc;  // backward
  Arena mem;
  bool ok;
  ConScratch(int, bool forward, long Np, long Dp) {
    mem.add(z, BLK * BLK).add(sc, Np).add(add, Np);
    if (forward)
      mem.add(mx, Np).add(l, Np).add(pos_sum, Np).add(pos_cnt, Np);
    else
      mem.add(pos, BLK).add(lse_j, Np).add(ipos_j, Np).add(acc, Np * Dp);
    ok = mem.allocate();
    if (ok && forward)
      for (long i = 0; i < Np; ++i) mx[i] = Vec<T>::NEG;
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
      pack_rows(rows + r0 * Dp, Dp, a.x, a.x_sn, a.x_sd, r0, PAD, a.N - r0, a.D, nullptr);
      pack_panels(cols, a.x, a.x_sn, a.x_sd, a.N, r0, r0 + PAD, a.D, nullptr);
    }
  }
  ~ConPacks() {
    free(rows);
    free(cols);
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
  auto body = [&](int t, int n, ConScratch<T>& w, ConScratch<T>** parts) {
    key_vectors<T>(nullptr, N, Np, T(a.inv_tau), w.sc, w.add);
    packs.fill(a, Np, Dp);
    for_tile_pairs(Np, t, n, [](long, long) { return true; }, [&](long i0, long rows, long j0, long cols) {
        gemm_pb<T>(rows, cols, a.D, packs.rows + i0 * Dp, Dp, packs.cols + j0 * a.D, w.z, BLK, false);
        if (j0 != i0) {
          // Rows J over keys I (no diagonal here), W rows at a time, before
          // the row-wise pass rescales the tile in place.
          for (long c = 0; c < cols && j0 + c < N; c += W) {
            V vm = vset<T>(Vec<T>::NEG);
            for (long r = 0; r < rows; ++r)
              vm = vmax<T>(vm, vload(w.z + r * BLK + c) * vset<T>(w.sc[i0 + r]) + vset<T>(w.add[i0 + r]));
            V nm;
            for (int l = 0; l < W; ++l) nm[l] = vm[l] > w.mx[j0 + c + l] ? vm[l] : w.mx[j0 + c + l];
            V sum = vset<T>(0);
            for (long r = 0; r < rows; ++r)
              sum += vexp(vload(w.z + r * BLK + c) * vset<T>(w.sc[i0 + r]) + vset<T>(w.add[i0 + r]) - nm);
            for (int l = 0; l < W; ++l) {
              const long j = j0 + c + l;
              w.l[j] = w.l[j] * sexp(w.mx[j] - nm[l]) + sum[l];
              w.mx[j] = nm[l];
            }
          }
          for (long c = 0; c < cols && j0 + c < N; ++c) {  // positives of rows J among keys I
            const long j = j0 + c;
            for (long r = 0; r < rows && i0 + r < N; ++r)
              if (a.ids[i0 + r] == a.ids[j]) w.pos_sum[j] += w.z[r * BLK + c] * w.sc[i0 + r], w.pos_cnt[j] += T(1);
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
            if (j0 + j != i && a.ids[j0 + j] == a.ids[i]) w.pos_sum[i] += zr[j], w.pos_cnt[i] += T(1);
          for (long j = 0; j < cols; j += W) vm = vmax<T>(vm, vload(zr + j));
          const T bm = hmax<T>(vm);
          if (bm <= Vec<T>::NEG) continue;  // only the diagonal / padding in this block
          const T nm = bm > w.mx[i] ? bm : w.mx[i];
          const V vnm = vset<T>(nm);
          V sum = vset<T>(0);
          for (long j = 0; j < cols; j += W) sum += vexp(vload(zr + j) - vnm);
          w.l[i] = w.l[i] * sexp(w.mx[i] - nm) + hsum<T>(sum);
          w.mx[i] = nm;
        }
    });
#pragma omp barrier
#pragma omp for schedule(static)
    for (long i = 0; i < N; ++i) {
      ConScratch<T>& s0 = *parts[0];
      for (int p = 1; p < n; ++p) {
        const ConScratch<T>& o = *parts[p];
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
  };
  return run_team<ConScratch<T>>(a.num_threads, body, true, Np, Dp);
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
  auto body = [&](int t, int n, ConScratch<T>& w, ConScratch<T>** parts) {
    key_vectors<T>(nullptr, N, Np, T(a.inv_tau), w.sc, w.add);
    for (long j = 0; j < Np; ++j) {
      w.lse_j[j] = j < N ? a.lse[j] : T(0);
      w.ipos_j[j] = j < N ? a.inv_pos[j] : T(0);
    }
    packs.fill(a, Np, Dp);
    for_tile_pairs(Np, t, n, [](long, long) { return true; }, [&](long i0, long rows, long j0, long cols) {
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
        gemm<T>(rows, Dp, cols, w.z, BLK, 1, packs.rows + j0 * Dp, Dp, w.acc + i0 * Dp, Dp, true);
        if (j0 != i0) gemm<T>(cols, Dp, rows, w.z, 1, BLK, packs.rows + i0 * Dp, Dp, w.acc + j0 * Dp, Dp, true);
    });
#pragma omp barrier
#pragma omp for schedule(static)
    for (long i = 0; i < N; ++i)
      sum_in_order(a.grad_x + i * a.D, a.D, n, T(a.inv_tau), [&](int p) { return parts[p]->acc + i * Dp; });
  };
  return run_team<ConScratch<T>>(a.num_threads, body, false, Np, Dp);
}
