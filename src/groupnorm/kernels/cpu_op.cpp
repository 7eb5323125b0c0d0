// The CPU kernels of cpu.cpp as torch operators: what groupnorm/kernels/cpu.py loads.
//
// A call through torch's dispatcher costs a few microseconds; the ctypes call it replaces, with the output
// tensors allocated from Python and the arguments converted one by one, cost 20-40 (a tenth to a half of a
// GroupNorm on an 8x8 or 14x14 map). Built with torch's headers by cpu.py, like cpu.cpp before it (one
// library per CPU and -march). The namespace carries the build's hash (GN_NAMESPACE, set by cpu.py), so
// that two builds (say the native and the AVX2 one) can be loaded in one process.
//
//   <ns>::forward(x, weight?, bias?, num_groups, eps, act, mode, wave_bytes_per_thread) -> (y, mean, rstd)
//   <ns>::backward(dy, x, weight?, bias?, mean, rstd, num_groups, act, mode, wave_bytes_per_thread)
//       -> (dx, dw, db)
//   <ns>::group_norm_act(x, weight?, bias?, num_groups, eps, act, mode, wave_bytes_per_thread) -> (y, mean, rstd)
//       forward with its autograd formula in C++ (saves x, the parameters and the statistics; the backward
//       recomputes the rest), for eager calls: no Python autograd.Function, 20-50 us less per call
//   <ns>::info() -> [ABI version, widest vector bits]
//
// x: (N, C, *) float32 or bfloat16 on the CPU, contiguous or channels-last (2-D or 3-D; anything else is
// made contiguous); y and dx keep that memory format; mean and rstd (N, G) and dw, db (C,) are float32.
// The checks of the arguments' meaning are groupnorm.functional's; these only keep the kernels' memory safe.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "cpu.cpp"

#ifndef GN_NAMESPACE
#define GN_NAMESPACE groupnorm_cpu
#endif

namespace {

using at::Tensor;

constexpr int64_t kAbiVersion = 5;  // of the operators' schemas: cpu.py refuses a library that answers otherwise

// The memory format x is laid out in (as groupnorm.kernels._common.memory_format_of) and the kernels' code.
struct Plan {
  at::MemoryFormat format;
  int code;  // kNCHW or kNHWC
};

Plan plan_of(const Tensor& x) {
  if (x.is_contiguous()) return {at::MemoryFormat::Contiguous, kNCHW};
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) return {at::MemoryFormat::ChannelsLast, kNHWC};
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d))
    return {at::MemoryFormat::ChannelsLast3d, kNHWC};
  return {at::MemoryFormat::Contiguous, kNCHW};
}

int dtype_code(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "groupnorm CPU kernels: x must be on the CPU; got ", x.device());
  if (x.scalar_type() == at::kFloat) return kFloat32;
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "groupnorm CPU kernels: x must be float32 or bfloat16; got ",
              x.scalar_type());
  return kBFloat16;
}

// A (C,) float32 contiguous parameter: p itself where it is one, its default (ones or zeros) where absent.
Tensor param(const std::optional<Tensor>& p, int64_t C, double fill) {
  if (!p.has_value() || !p->defined()) return at::full({C}, fill, at::TensorOptions().dtype(at::kFloat));
  TORCH_CHECK(p->numel() == C, "groupnorm CPU kernels: a parameter must have C = ", C, " values; got ", p->numel());
  return p->to(at::kFloat).contiguous();
}

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

struct Sizes {
  int64_t N, C, S;
};

Sizes sizes_of(const Tensor& x, int64_t G) {
  TORCH_CHECK(x.dim() >= 2 && x.numel() > 0, "groupnorm CPU kernels: x must be a non-empty (N, C, *) tensor");
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(G > 0 && C % G == 0, "groupnorm CPU kernels: num_groups must divide C = ", C, "; got ", G);
  return {N, C, x.numel() / (N * C)};
}

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& x_in, const std::optional<Tensor>& weight,
                                           const std::optional<Tensor>& bias, int64_t G, double eps, int64_t act,
                                           int64_t mode, int64_t wave_bytes_per_thread) {
  const int dtype = dtype_code(x_in);
  const Sizes s = sizes_of(x_in, G);
  const Plan lay = plan_of(x_in);
  const Tensor x = x_in.contiguous(lay.format);
  const Tensor y = at::empty(x.sizes(), x.options().memory_format(lay.format));
  const auto f = at::TensorOptions().dtype(at::kFloat);
  const Tensor mean = at::empty({s.N, G}, f), rstd = at::empty({s.N, G}, f);
  const Tensor w = param(weight, s.C, 1.0), b = param(bias, s.C, 0.0);
  const int threads = std::max(1, at::get_num_threads());
  const int rc = gn_forward(dtype, lay.code, int(act), x.const_data_ptr(), w.const_data_ptr<float>(),
                            b.const_data_ptr<float>(), s.N, s.C, s.S, G, eps, y.mutable_data_ptr(),
                            mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>(), threads,
                            int(mode), threads * wave_bytes_per_thread);
  TORCH_CHECK(rc == 0, "groupnorm CPU forward kernel failed with code ", rc, " for x of shape ", x.sizes());
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& dy_in, const Tensor& x_in,
                                            const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                                            const Tensor& mean_in, const Tensor& rstd_in, int64_t G, int64_t act,
                                            int64_t mode, int64_t wave_bytes_per_thread) {
  const int dtype = dtype_code(x_in);
  const Sizes s = sizes_of(x_in, G);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), "groupnorm CPU kernels: dy must have x's shape ", x_in.sizes(),
              "; got ", dy_in.sizes());
  TORCH_CHECK(mean_in.numel() == s.N * G && rstd_in.numel() == s.N * G,
              "groupnorm CPU kernels: mean and rstd must have N * num_groups = ", s.N * G, " values");
  const Plan lay = plan_of(x_in);
  const Tensor x = x_in.contiguous(lay.format);
  const Tensor dy = dy_in.to(x.scalar_type()).contiguous(lay.format);
  const Tensor dx = at::empty(x.sizes(), x.options().memory_format(lay.format));
  const auto f = at::TensorOptions().dtype(at::kFloat);
  const Tensor dw = at::empty({s.C}, f), db = at::empty({s.C}, f);
  const Tensor w = param(weight, s.C, 1.0), b = param(bias, s.C, 0.0);
  const Tensor mean = f32(mean_in), rstd = f32(rstd_in);
  const int threads = std::max(1, at::get_num_threads());
  const int rc = gn_backward(dtype, lay.code, int(act), dy.const_data_ptr(), x.const_data_ptr(),
                             w.const_data_ptr<float>(), b.const_data_ptr<float>(), mean.const_data_ptr<float>(),
                             rstd.const_data_ptr<float>(), s.N, s.C, s.S, G, dx.mutable_data_ptr(),
                             dw.mutable_data_ptr<float>(), db.mutable_data_ptr<float>(), threads,
                             int(mode), threads * wave_bytes_per_thread);
  TORCH_CHECK(rc == 0, "groupnorm CPU backward kernel failed with code ", rc, " for x of shape ", x.sizes());
  return {dx, dw, db};
}

// act(GN(x)) through torch's differentiable operators: the backward's graph when create_graph=True asks for
// gradients of gradients (as groupnorm.kernels.native.forward_differentiable).
Tensor forward_differentiable(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t G, double eps,
                              int64_t act) {
  const auto as_x = [&](const Tensor& p) -> std::optional<Tensor> {
    return p.defined() ? std::optional<Tensor>(p.to(x.scalar_type())) : std::nullopt;
  };
  Tensor z = at::group_norm(x.contiguous(), G, as_x(weight), as_x(bias), eps);
  if (act == kRelu) z = at::relu(z);
  if (act == kSilu) z = at::silu(z);
  return z.contiguous(plan_of(x).format);
}

struct GroupNormAct : public torch::autograd::Function<GroupNormAct> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                                                const std::optional<Tensor>& weight,
                                                const std::optional<Tensor>& bias, int64_t G, double eps,
                                                int64_t act, int64_t mode, int64_t wave_bytes_per_thread) {
    auto [y, mean, rstd] = ::forward(x, weight, bias, G, eps, act, mode, wave_bytes_per_thread);
    ctx->save_for_backward({x, weight.value_or(Tensor()), bias.value_or(Tensor()), mean, rstd});
    ctx->saved_data["G"] = G;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = act;
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["wave"] = wave_bytes_per_thread;
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);  // no zero tensors for the statistics' (unused) gradients
    return {y, mean, rstd};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(8);
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    // needs_input_grad counts the tensor inputs only: an absent weight or bias has no index
    const bool need[3] = {ctx->needs_input_grad(0), weight.defined() && ctx->needs_input_grad(1),
                          bias.defined() && ctx->needs_input_grad(weight.defined() ? 2 : 1)};
    const Tensor& dy = grads[0];
    if (!dy.defined() || !(need[0] || need[1] || need[2])) return out;
    const int64_t G = ctx->saved_data["G"].toInt(), act = ctx->saved_data["act"].toInt();
    if (at::GradMode::is_enabled()) {  // create_graph=True: gradients that are themselves differentiable
      const Tensor y = forward_differentiable(x, weight, bias, G, ctx->saved_data["eps"].toDouble(), act);
      torch::autograd::variable_list inputs;
      for (int i = 0; i < 3; ++i)
        if (need[i]) inputs.push_back(saved[i]);
      const auto g = torch::autograd::grad({y}, inputs, {dy}, /*retain_graph=*/true, /*create_graph=*/true);
      for (int i = 0, k = 0; i < 3; ++i)
        if (need[i]) out[i] = g[k++];
      return out;
    }
    auto [dx, dw, db] = ::backward(dy, x, weight, bias, saved[3], saved[4], G, act, ctx->saved_data["mode"].toInt(),
                                   ctx->saved_data["wave"].toInt());
    if (need[0]) out[0] = dx;
    if (need[1] && weight.defined()) out[1] = dw.to(weight.scalar_type());
    if (need[2] && bias.defined()) out[2] = db.to(bias.scalar_type());
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor> group_norm_act(const Tensor& x, const std::optional<Tensor>& weight,
                                                  const std::optional<Tensor>& bias, int64_t G, double eps,
                                                  int64_t act, int64_t mode, int64_t wave_bytes_per_thread) {
  const auto out = GroupNormAct::apply(x, weight, bias, G, eps, act, mode, wave_bytes_per_thread);
  return {out[0], out[1], out[2]};
}

std::vector<int64_t> info() { return {kAbiVersion, int64_t(gn_vector_bits())}; }

}  // namespace

TORCH_LIBRARY(GN_NAMESPACE, m) {
  m.def("forward(Tensor x, Tensor? weight, Tensor? bias, int num_groups, float eps, int act, int mode, "
        "int wave_bytes_per_thread) -> (Tensor, Tensor, Tensor)",
        &forward);
  m.def("backward(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, int num_groups, "
        "int act, int mode, int wave_bytes_per_thread) -> (Tensor, Tensor, Tensor)",
        &backward);
  m.def("group_norm_act(Tensor x, Tensor? weight, Tensor? bias, int num_groups, float eps, int act, int mode, "
        "int wave_bytes_per_thread) -> (Tensor, Tensor, Tensor)",
        &group_norm_act);
  m.def("info() -> int[]", &info);
}
