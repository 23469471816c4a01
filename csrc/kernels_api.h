// Raw-pointer interface between the ATen bindings (bindings.cpp) and the
// per-ISA kernel translation units (isa_avx2.cpp, isa_base.cpp). Plain structs
// only, so the kernel files need no ATen headers.
#pragma once

#include <cstdint>

namespace mlkd {

// relation_kl on one (teacher, student) pair. Element (b, i, k) of a tensor
// lives at ptr + b * sb + i * sl + k * sd (any strides). Per-row outputs are
// contiguous (B, A, L, 5) (see relation_tiles.h); gradients are contiguous
// (B, L, D), pre-zeroed.
template <typename T>
struct RelationArgs {
  const T* t;
  int64_t t_sb, t_sl, t_sd, Dt;
  const T* s;
  int64_t s_sb, s_sl, s_sd, Ds;
  const bool* mask;  // (B, L) contiguous, or nullptr = all valid
  int64_t B, L, A;
  T* stats;  // (B, A, L, 5): forward writes, backward reads
  T* grad_t;  // backward: nullptr when the teacher needs no gradient
  T* grad_s;
  double grad_scale;  // backward: upstream gradient / number of valid rows
  int num_threads;
};

// sample_contrastive on the anchors X (N, D) (already L2-normalised).
template <typename T>
struct ContrastiveArgs {
  const T* x;
  int64_t x_sn, x_sd, N, D;
  const int64_t* ids;  // (N,) class id of each anchor; positives share an id
  double inv_tau;
  T* lse;       // (N,) forward writes log-sum-exp over j != i, backward reads
  T* loss_row;  // (N,) forward: lse_i - mean positive logit
  T* inv_pos;   // (N,) forward: 1 / |P(i)|, backward reads
  T* grad_x;    // (N, D) contiguous, backward writes
  double grad_scale;  // backward: d loss / d loss_row_i (same for every row)
  int num_threads;
};

// Every entry point returns 0, or -1 when scratch memory could not be allocated.
#define MLKD_DECLARE_ISA(ns)                                         \
  namespace ns {                                                     \
  template <typename T>                                              \
  int relation_forward(const RelationArgs<T>& args);                 \
  template <typename T>                                              \
  int relation_backward(const RelationArgs<T>& args);                \
  template <typename T>                                              \
  int contrastive_forward(const ContrastiveArgs<T>& args);           \
  template <typename T>                                              \
  int contrastive_backward(const ContrastiveArgs<T>& args);          \
  }

MLKD_DECLARE_ISA(avx2)
MLKD_DECLARE_ISA(base)

}  // namespace mlkd
