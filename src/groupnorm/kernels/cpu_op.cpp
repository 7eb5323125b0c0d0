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
//   <ns>::info() -> [ABI version, widest vector bits]
//
// x: (N, C, *) float32 or bfloat16 on the CPU, contiguous or channels-last (2-D or 3-D; anything else is
// made contiguous); y and dx keep that memory format; mean and rstd (N, G) and dw, db (C,) are float32.
// The checks of the arguments' meaning are groupnorm.functional's; these only keep the kernels' memory safe.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu.cpp"

#ifndef GN_NAMESPACE
#define GN_NAMESPACE groupnorm_cpu
#endif

namespace {

using at::Tensor;

constexpr int64_t kAbiVersion = 4;  // of the operators' schemas: cpu.py refuses a library that answers otherwise

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

std::vector<int64_t> info() { return {kAbiVersion, int64_t(gn_vector_bits())}; }

}  // namespace

TORCH_LIBRARY(GN_NAMESPACE, m) {
  m.def("forward(Tensor x, Tensor? weight, Tensor? bias, int num_groups, float eps, int act, int mode, "
        "int wave_bytes_per_thread) -> (Tensor, Tensor, Tensor)",
        &forward);
  m.def("backward(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, int num_groups, "
        "int act, int mode, int wave_bytes_per_thread) -> (Tensor, Tensor, Tensor)",
        &backward);
  m.def("info() -> int[]", &info);
}
