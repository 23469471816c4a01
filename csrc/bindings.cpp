// ATen/pybind11 front of the fused CPU kernels: argument checks, output
// allocation, fp32/fp64 dispatch and the choice of instruction set. The
// autograd wrappers live in mlkd_fast/ops/{relation_kl,sample_contrastive}.py,
// which convert fp16/bf16 to fp32 before calling here.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <string>

#include "kernels_api.h"

namespace mlkd {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// "avx2" or "base"; tests switch it to check both compiled paths agree.
std::string& isa_choice() {
  static std::string isa = cpu_has_avx2() ? "avx2" : "base";
  return isa;
}

void set_isa(const std::string& name) {
  TORCH_CHECK_VALUE(name == "avx2" || name == "base", "isa must be 'avx2' or 'base', got '", name, "'");
  TORCH_CHECK_VALUE(name != "avx2" || cpu_has_avx2(), "isa='avx2' requested but this CPU lacks AVX2/FMA");
  isa_choice() = name;
}

bool use_avx2() { return isa_choice() == "avx2"; }

void check_float(const at::Tensor& x, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
                   " must be float32 or float64 (the Python wrapper converts fp16/bf16), got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == dim, name, " must be ", dim, "-D, got ", x.dim(), "-D");
}

void check_ok(int rc, const char* what) {
  TORCH_CHECK(rc == 0, what, ": could not allocate scratch memory");
}

// Mask as a contiguous bool (B, L) tensor or undefined (all valid).
at::Tensor mask_or_undefined(const c10::optional<at::Tensor>& mask, int64_t B, int64_t L) {
  if (!mask.has_value() || !mask->defined()) return at::Tensor();
  const at::Tensor& m = *mask;
  TORCH_CHECK_VALUE(m.device().is_cpu(), "mask must be a CPU tensor, got ", m.device());
  TORCH_CHECK_VALUE(m.dim() == 2 && m.size(0) == B && m.size(1) == L, "mask must have shape (B, L) = (", B, ", ",
                    L, "), got ", m.sizes());
  return m.ne(0).contiguous();
}

template <typename T>
RelationArgs<T> relation_args(const at::Tensor& t, const at::Tensor& s, int64_t splits, const at::Tensor& m) {
  RelationArgs<T> a{};
  a.t = t.data_ptr<T>();
  a.t_sb = t.stride(0), a.t_sl = t.stride(1), a.t_sd = t.stride(2), a.Dt = t.size(2);
  a.s = s.data_ptr<T>();
  a.s_sb = s.stride(0), a.s_sl = s.stride(1), a.s_sd = s.stride(2), a.Ds = s.size(2);
  a.mask = m.defined() ? m.data_ptr<bool>() : nullptr;
  a.B = t.size(0), a.L = t.size(1), a.A = splits;
  a.num_threads = at::get_num_threads();
  return a;
}

void check_relation(const at::Tensor& t, const at::Tensor& s, int64_t splits) {
  check_float(t, "teacher", 3);
  check_float(s, "student", 3);
  TORCH_CHECK_TYPE(t.scalar_type() == s.scalar_type(), "teacher and student must have the same dtype, got ",
                   t.scalar_type(), " and ", s.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) == s.size(0) && t.size(1) == s.size(1),
                    "teacher and student must agree on (B, L), got ", t.sizes(), " and ", s.sizes());
  TORCH_CHECK_VALUE(splits >= 1, "splits must be >= 1, got ", splits);
  TORCH_CHECK_VALUE(t.size(2) % splits == 0 && s.size(2) % splits == 0, "hidden sizes ", t.size(2), " and ",
                    s.size(2), " must be divisible by splits=", splits);
}

// Number of valid (b, i) rows (times splits = the denominator of the mean).
int64_t valid_rows(const at::Tensor& m, int64_t B, int64_t L) {
  return m.defined() ? m.sum().item<int64_t>() : B * L;
}

// Per-row statistics saved for the backward: m_t, log l_t, m_s, log l_s, KL (relation_tiles.h).
constexpr int64_t kStats = 5;

// Returns (loss, stats): loss 0-dim, stats (B, A, L, 5), both in the input dtype.
std::vector<at::Tensor> relation_kl_forward(const at::Tensor& t, const at::Tensor& s, int64_t splits,
                                            const c10::optional<at::Tensor>& mask) {
  check_relation(t, s, splits);
  const int64_t B = t.size(0), L = t.size(1);
  const at::Tensor m = mask_or_undefined(mask, B, L);
  auto opts = t.options();
  at::Tensor stats = at::zeros({B, splits, L, kStats}, opts);
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "relation_kl_forward", [&] {
    RelationArgs<scalar_t> a = relation_args<scalar_t>(t, s, splits, m);
    a.stats = stats.data_ptr<scalar_t>();
    if (B * L > 0)
      check_ok(use_avx2() ? avx2::relation_forward<scalar_t>(a) : base::relation_forward<scalar_t>(a),
               "relation_kl_forward");
    // Fixed-order serial sum: the loss does not depend on the thread count.
    // Padded rows hold KL = 0.
    for (int64_t n = 0; n < B * splits * L; ++n) total += double(a.stats[n * kStats + kStats - 1]);
  });
  const int64_t rows = valid_rows(m, B, L) * splits;
  at::Tensor loss = at::scalar_tensor(rows > 0 ? total / double(rows) : 0.0, opts);
  return {loss, stats};
}

// Returns (grad_teacher or undefined, grad_student), contiguous, in the input dtype.
std::vector<at::Tensor> relation_kl_backward(const at::Tensor& t, const at::Tensor& s, int64_t splits,
                                             const c10::optional<at::Tensor>& mask, const at::Tensor& stats,
                                             double grad_out, bool teacher_grad) {
  check_relation(t, s, splits);
  const int64_t B = t.size(0), L = t.size(1);
  TORCH_CHECK_VALUE(stats.sizes() == at::IntArrayRef({B, splits, L, kStats}) && stats.is_contiguous() &&
                        stats.scalar_type() == t.scalar_type(),
                    "stats must be the contiguous (B, A, L, 5) tensor of the input dtype that the forward returned");
  const at::Tensor m = mask_or_undefined(mask, B, L);
  at::Tensor gs = at::zeros(s.sizes(), s.options());
  at::Tensor gt = teacher_grad ? at::zeros(t.sizes(), t.options()) : at::Tensor();
  const int64_t rows = valid_rows(m, B, L) * splits;
  if (rows == 0) return {gt, gs};
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "relation_kl_backward", [&] {
    RelationArgs<scalar_t> a = relation_args<scalar_t>(t, s, splits, m);
    a.stats = stats.data_ptr<scalar_t>();
    a.grad_s = gs.data_ptr<scalar_t>();
    a.grad_t = teacher_grad ? gt.data_ptr<scalar_t>() : nullptr;
    a.grad_scale = grad_out / double(rows);
    check_ok(use_avx2() ? avx2::relation_backward<scalar_t>(a) : base::relation_backward<scalar_t>(a),
             "relation_kl_backward");
  });
  return {gt, gs};
}

template <typename T>
ContrastiveArgs<T> contrastive_args(const at::Tensor& x, const at::Tensor& ids, double inv_tau) {
  ContrastiveArgs<T> a{};
  a.x = x.data_ptr<T>();
  a.x_sn = x.stride(0), a.x_sd = x.stride(1), a.N = x.size(0), a.D = x.size(1);
  a.ids = ids.data_ptr<int64_t>();
  a.inv_tau = inv_tau;
  a.num_threads = at::get_num_threads();
  return a;
}

at::Tensor check_contrastive(const at::Tensor& x, const at::Tensor& ids, double inv_tau) {
  check_float(x, "anchors", 2);
  TORCH_CHECK_VALUE(ids.device().is_cpu() && ids.dim() == 1 && ids.size(0) == x.size(0),
                    "ids must be a CPU (N,) tensor with N = ", x.size(0), ", got ", ids.sizes());
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, "ids must be int64, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(inv_tau > 0, "inv_tau must be > 0, got ", inv_tau);
  return ids.contiguous();
}

// Returns (loss_row, lse, inv_pos), each (N,): loss_row_i = lse_i - mean positive logit.
std::vector<at::Tensor> sample_contrastive_forward(const at::Tensor& x, const at::Tensor& ids_in, double inv_tau) {
  const at::Tensor ids = check_contrastive(x, ids_in, inv_tau);
  const int64_t N = x.size(0);
  at::Tensor loss_row = at::zeros({N}, x.options()), lse = at::zeros({N}, x.options());
  at::Tensor inv_pos = at::zeros({N}, x.options());
  if (N < 2) return {loss_row, lse, inv_pos};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sample_contrastive_forward", [&] {
    ContrastiveArgs<scalar_t> a = contrastive_args<scalar_t>(x, ids, inv_tau);
    a.lse = lse.data_ptr<scalar_t>();
    a.loss_row = loss_row.data_ptr<scalar_t>();
    a.inv_pos = inv_pos.data_ptr<scalar_t>();
    check_ok(use_avx2() ? avx2::contrastive_forward<scalar_t>(a) : base::contrastive_forward<scalar_t>(a),
             "sample_contrastive_forward");
  });
  return {loss_row, lse, inv_pos};
}

// d loss / d X for loss = sum_i grad_scale * loss_row_i.
at::Tensor sample_contrastive_backward(const at::Tensor& x, const at::Tensor& ids_in, const at::Tensor& lse,
                                       const at::Tensor& inv_pos, double grad_scale, double inv_tau) {
  const at::Tensor ids = check_contrastive(x, ids_in, inv_tau);
  const int64_t N = x.size(0);
  for (const at::Tensor* v : {&lse, &inv_pos})
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == N && v->is_contiguous() && v->scalar_type() == x.scalar_type(),
                      "saved row statistics must be contiguous (N,) tensors of the input dtype");
  at::Tensor gx = at::zeros({N, x.size(1)}, x.options());
  if (N < 2) return gx;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sample_contrastive_backward", [&] {
    ContrastiveArgs<scalar_t> a = contrastive_args<scalar_t>(x, ids, inv_tau);
    a.lse = lse.data_ptr<scalar_t>();
    a.inv_pos = inv_pos.data_ptr<scalar_t>();
    a.grad_x = gx.data_ptr<scalar_t>();
    a.grad_scale = grad_scale;
    check_ok(use_avx2() ? avx2::contrastive_backward<scalar_t>(a) : base::contrastive_backward<scalar_t>(a),
             "sample_contrastive_backward");
  });
  return gx;
}

}  // namespace
}  // namespace mlkd

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mlkd_fast fused CPU kernels: relation KL and sample contrastive (forward and backward)";
  m.def("relation_kl_forward", &mlkd::relation_kl_forward, "relation KL forward -> (loss, stats (B, A, L, 5))",
        py::arg("teacher"), py::arg("student"), py::arg("splits"), py::arg("mask"));
  m.def("relation_kl_backward", &mlkd::relation_kl_backward, "relation KL backward -> (grad_teacher|None, grad_student)",
        py::arg("teacher"), py::arg("student"), py::arg("splits"), py::arg("mask"), py::arg("stats"),
        py::arg("grad_out"), py::arg("teacher_grad"));
  m.def("sample_contrastive_forward", &mlkd::sample_contrastive_forward,
        "contrastive forward over anchors -> (loss_row, lse, inv_pos)", py::arg("anchors"), py::arg("ids"),
        py::arg("inv_tau"));
  m.def("sample_contrastive_backward", &mlkd::sample_contrastive_backward, "contrastive backward -> grad anchors",
        py::arg("anchors"), py::arg("ids"), py::arg("lse"), py::arg("inv_pos"), py::arg("grad_scale"),
        py::arg("inv_tau"));
  m.def("cpu_isa", [] { return mlkd::isa_choice(); }, "instruction set the kernels use: 'avx2' or 'base'");
  m.def("set_isa", &mlkd::set_isa, "select 'avx2' or 'base' kernels (for tests)", py::arg("isa"));
}
