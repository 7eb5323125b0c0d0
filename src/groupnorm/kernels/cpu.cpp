// groupnorm CPU kernels: GroupNorm fused with an activation, forward and memory-lean backward.
//
// No torch header here: cpu_op.cpp includes this file and wraps gn_forward and gn_backward as torch
// operators, built at first use by groupnorm/kernels/cpu.py with the system C++ compiler; a C++
// harness can include it alone. Parallel regions use OpenMP; linked by soname, the library shares the
// libgomp that torch has already loaded, so our threads are torch's threads and the two never fight
// over the cores.
//
// Layouts: x is (N, C, S) contiguous ("nchw", S = prod(spatial)) or (N, S, C) contiguous
// ("nhwc", channels last). Dtypes: float32 and bfloat16 (as raw uint16 bits). Parameters,
// statistics and gradients of the parameters are float32. Statistics: x is read once for them,
// as float32 sums over blocks of at most a few thousand values shifted by one of the block's
// own values (a group's first value of the block in NCHW, the channel's value in the sample's
// first row in NHWC), then float64; where the shift lies so far from the block's mean that the
// shifted sums would lose bits to cancellation, that block is summed again around its mean (it
// is still in cache). Blocks and channels are combined with Chan's formula, so a large mean
// against a small spread (x = 1e4 + N(0, 1)) costs no accuracy.
//
// NCHW forward, two ways to split the work. Tasks (the usual case): one thread takes a group of
// one sample, its statistics and then its output while the group is still in its L2 cache; no
// barrier. Split (fewer groups than twice the threads): the groups' statistics are split over
// threads in pieces, with barriers between the passes. NHWC forward: pieces of whole rows, the
// statistics of every piece of a wave of samples, then every group's, then the output (two
// barriers). The backward passes follow the same plans (channels-last tasks: blocks of groups).
// Every reduction runs in a fixed order: the same input gives the same bits on every run, and
// for any number of threads in the NCHW tasks mode and in the NHWC forward.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace {

constexpr int64_t kPiece = 16384;  // elements per piece of work
constexpr int64_t kChunk = 4096;   // elements summed in float32 before going to float64

enum Act { kIdentity = 0, kRelu = 1, kSilu = 2 };
enum Layout { kNCHW = 0, kNHWC = 1 };
enum DType { kFloat32 = 0, kBFloat16 = 1 };

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// A vector of kV floats in GCC's vector extensions, as wide as the target's registers: 16 with AVX-512, 8 with
// AVX/AVX2, 4 otherwise (SSE, NEON). Wider than the registers, GCC lowers each operation through the stack:
// 64-byte vectors made the AVX2 build 3-7x slower than the AVX-512 one on the same machine.
#if defined(__AVX512F__)
constexpr int64_t kV = 16;
#elif defined(__AVX__)
constexpr int64_t kV = 8;
#else
constexpr int64_t kV = 4;
#endif
typedef float vf __attribute__((vector_size(4 * kV)));
typedef int32_t vi __attribute__((vector_size(4 * kV)));
typedef uint32_t vu __attribute__((vector_size(4 * kV)));
typedef uint16_t vh __attribute__((vector_size(2 * kV)));

// a * b + c, rounded once where the target has FMA. The kernels' instantiations for the activations share
// these expressions; left to the compiler's contraction (GCC's default -ffp-contract=fast), the identity and
// ReLU instantiations of one loop were contracted differently on an AVX2 build (an FMA in one, a multiply,
// a blend and an add in the other), so a fused GN + ReLU and a GN followed by a ReLU differed in the last bit
// of their gradients. Written out, both round the same way on every target.
inline float fmadd(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
inline vf fmadd(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(__aarch64__)
  return (vf)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#else
  return a * b + c;
#endif
}

template <class V>
inline V splat(float f);
template <>
inline float splat<float>(float f) {
  return f;
}
template <>
inline vf splat<vf>(float f) {
  return vf{} + f;
}

inline int32_t to_int(float k) { return int32_t(k); }
inline vi to_int(vf k) { return __builtin_convertvector(k, vi); }
inline float from_bits(int32_t i) { return bits_to_float(uint32_t(i)); }
inline vf from_bits(vi i) { return (vf)i; }

struct F32 {
  using T = float;
  static inline float load(const T* p, int64_t i) { return p[i]; }
  static inline void store(T* p, int64_t i, float v) { p[i] = v; }
  static inline vf loadv(const T* p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static inline void storev(T* p, vf v) { std::memcpy(p, &v, sizeof v); }
};

struct BF16 {
  using T = uint16_t;
  static inline float load(const T* p, int64_t i) { return bits_to_float(uint32_t(p[i]) << 16); }
  // Round to nearest even, as torch does; NaN stays a (quiet) NaN.
  static inline void store(T* p, int64_t i, float v) {
    uint32_t u = float_to_bits(v);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    p[i] = (v != v) ? uint16_t(0x7fc0) : uint16_t(r);
  }
  static inline vf loadv(const T* p) {
    vh h;
    std::memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
  }
  static inline void storev(T* p, vf v) {
    vu u = (vu)v;
    vu r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    r = (v != v) ? (vu{} + 0x7fc0u) : r;
    vh h = __builtin_convertvector(r, vh);
    std::memcpy(p, &h, sizeof h);
  }
};

// exp(x) for x <= 0 (Cephes' expf polynomial, about 1 ulp), for floats and vectors alike.
template <class V>
inline V exp_nonpositive(V x) {
  const V lo = splat<V>(-87.0f);
  x = x > lo ? x : lo;  // a NaN becomes -87 here; callers propagate NaN through z
  const V magic = splat<V>(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  V k = (x * 1.44269504088896341f + magic) - magic;
  V r = x - k * 0.693359375f + k * 2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * from_bits((to_int(k) + 127) << 23);
}

// 1 / (1 + exp(-z)) without overflow and accurate for z << 0.
template <class V>
inline V sigmoid(V z) {
  const V zero = splat<V>(0.0f);
  V e = exp_nonpositive<V>(z < zero ? z : -z);
  V r = 1.0f / (1.0f + e);
  return z >= zero ? r : e * r;
}

template <int ACT, class V>
inline V act_forward(V z) {
  const V zero = splat<V>(0.0f);
  if constexpr (ACT == kRelu) return z < zero ? zero : z;  // NaN passes through, as in torch
  if constexpr (ACT == kSilu) return z * sigmoid<V>(z);
  return z;
}

// d act(z) / dz times g
template <int ACT, class V>
inline V act_backward(V g, V z) {
  const V zero = splat<V>(0.0f);
  if constexpr (ACT == kRelu) return z > zero ? g : zero;
  if constexpr (ACT == kSilu) {
    V s = sigmoid<V>(z);
    return g * s * (1.0f + z * (1.0f - s));
  }
  return g;
}

// Count, mean and sum of squared deviations; merged with Chan et al.'s pairwise formula.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
  inline void merge(double nb, double mean_b, double m2_b) {
    if (nb <= 0) return;
    double total = n + nb;
    double delta = mean_b - mean;
    mean += delta * (nb / total);
    m2 += m2_b + delta * delta * (n * nb / total);
    n = total;
  }
};

// One pass of shifted sums is exact enough while the shift is near the data: with s1 = sum(x - k)
// and s2 = sum((x - k)^2) over m values, m2 = s2 - s1^2 / m loses about log2(1 + s1^2 / (m m2))
// bits to cancellation. A chunk whose ratio s1^2 / (m m2) exceeds this (its shift, the chunk's
// first value, an outlier of the chunk) is summed again around its own mean; it is in L1 by then.
constexpr double kMaxCancel = 16.0;

inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < kV; ++i) s += v[i];
  return s;
}

// Two passes over a chunk in L1: its mean, then the compensated sum of squared deviations.
template <class L>
inline void chunk_moments_two_pass(const typename L::T* q, int64_t m, Moments& acc) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < m; ++i) s += L::load(q, i);
  const float mu = s / float(m);
  float d = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : d, sq)
  for (int64_t i = 0; i < m; ++i) {
    float v = L::load(q, i) - mu;
    d += v;
    sq += v * v;
  }
  // compensated: the rounding error of mu is removed with d = sum(x - mu)
  acc.merge(double(m), double(mu) + double(d) / double(m), double(sq) - double(d) * double(d) / double(m));
}

// Moments of p[0..len), in chunks of kChunk: one pass of shifted sums over each chunk (four
// independent vector accumulators), the two-pass form for a chunk where the shift was poor.
template <class L>
inline void moments_of_run(const typename L::T* p, int64_t len, Moments& acc) {
  for (int64_t off = 0; off < len; off += kChunk) {
    const int64_t m = std::min(kChunk, len - off);
    const typename L::T* q = p + off;
    const float k = L::load(q, 0);
    const vf kv = splat<vf>(k);
    vf s1a = splat<vf>(0.0f), s1b = s1a, s2a = s1a, s2b = s1a;
    int64_t i = 0;
    for (; i + 2 * kV <= m; i += 2 * kV) {
      const vf u = L::loadv(q + i) - kv, v = L::loadv(q + i + kV) - kv;
      s1a += u;
      s2a += u * u;
      s1b += v;
      s2b += v * v;
    }
    float s1 = hsum(s1a + s1b), s2 = hsum(s2a + s2b);
    for (; i < m; ++i) {
      const float u = L::load(q, i) - k;
      s1 += u;
      s2 += u * u;
    }
    const double dm = double(m), shift2 = double(s1) * double(s1) / dm, m2 = double(s2) - shift2;
    if (shift2 > kMaxCancel * m2 && shift2 > 0.0)
      chunk_moments_two_pass<L>(q, m, acc);
    else
      acc.merge(dm, double(k) + double(s1) / dm, std::max(0.0, m2));
  }
}

// The threads' shares of [0, count) under schedule(static) are the same in every loop of a
// wave, so a thread re-reads in the output pass the pieces it read in the statistics pass.
struct Wave {
  int64_t n0, n1;
};

inline int64_t samples_per_wave(int64_t sample_bytes, int64_t budget) {
  if (sample_bytes <= 0) return 1;
  return std::max<int64_t>(1, budget / sample_bytes);
}

// Split a group block of len elements into parts of at most about kPiece elements.
inline int64_t parts_of(int64_t len) { return std::max<int64_t>(1, (len + kPiece - 1) / kPiece); }

inline void part_range(int64_t len, int64_t parts, int64_t part, int64_t& begin, int64_t& end) {
  const int64_t plen = (len + parts - 1) / parts;
  begin = std::min(len, part * plen);
  end = std::min(len, begin + plen);
}

// The mean split in two floats (hi + lo) so that x - mean is exact enough in float32.
struct SplitMean {
  float hi, lo;
  static SplitMean of(double mean) {
    float hi = float(mean);
    return {hi, float(mean - double(hi))};
  }
};

// ---------------------------------------------------------------------------------------
// NCHW runs: the S contiguous values of one channel, in vectors of kV, four at a time (independent
// chains of the activations' exp). A run's last partial vector is the vector that ends with the run
// (overlapping values already done, which it recomputes to the same bits), so a 14x14 map costs one
// more vector per channel rather than 4 scalar exps; only runs shorter than a vector go through a
// zero-padded copy.
constexpr int kUnroll = 4;

template <class T>
inline void copy_tail(T* dst, const T* src, int64_t count) {
  std::memcpy(dst, src, size_t(count) * sizeof(T));
}

// v in the lanes >= first, 0 below (drops the overlapped lanes of a run's last vector from its sums)
inline vf lanes_from(vf v, int64_t first) {
  vi lane;
  for (int i = 0; i < kV; ++i) lane[i] = i;
  return lane >= int32_t(first) ? v : splat<vf>(0.0f);
}

// y = act((x - hi) * sc + sh) over a run of len values.
template <class L, int ACT>
inline void output_run(const typename L::T* xr, typename L::T* yr, int64_t len, float hi, float sc, float sh) {
  using T = typename L::T;
  const vf h = splat<vf>(hi), a = splat<vf>(sc), t = splat<vf>(sh);
  if (len < kV) {
    T in[kV] = {}, out[kV];
    copy_tail(in, xr, len);
    L::storev(out, act_forward<ACT>(fmadd(L::loadv(in) - h, a, t)));
    copy_tail(yr, out, len);
    return;
  }
  int64_t s = 0;
  for (; s + kUnroll * kV <= len; s += kUnroll * kV) {
    vf r[kUnroll];
    for (int u = 0; u < kUnroll; ++u) r[u] = act_forward<ACT>(fmadd(L::loadv(xr + s + u * kV) - h, a, t));
    for (int u = 0; u < kUnroll; ++u) L::storev(yr + s + u * kV, r[u]);
  }
  for (; s + kV <= len; s += kV) L::storev(yr + s, act_forward<ACT>(fmadd(L::loadv(xr + s) - h, a, t)));
  if (s < len) L::storev(yr + len - kV, act_forward<ACT>(fmadd(L::loadv(xr + len - kV) - h, a, t)));
}

// SiLU's backward computes dz once: the sums pass keeps it (float32) and the dx pass reads it back. In
// float32 it is kept in dx itself; the NCHW tasks and the channels-last backward keep it for bfloat16 too, in
// float32 buffers (per thread and task; per wave); the NCHW split backward computes it twice in bfloat16.
template <class L, int ACT>
constexpr bool kKeepDz = ACT == kSilu && sizeof(typename L::T) == sizeof(float);

// The sums of dz and of dz * (x - mean) over a run of one channel: float32 vectors over chunks of kChunk,
// then float64. dz = act'(z) dy with z = (x - mean) * scale + shift; kept in keep[] (float32) where KEEP.
template <class L, int ACT, bool KEEP = kKeepDz<L, ACT>>
inline void backward_run_sums(const typename L::T* xr, const typename L::T* gr, float* keep, int64_t len,
                              float mh, float scale, float shift, double& sa, double& sb) {
  using T = typename L::T;
  const vf m = splat<vf>(mh), a = splat<vf>(scale), t = splat<vf>(shift);
  sa = 0.0;
  sb = 0.0;
  if (len < kV) {  // padded with dy = 0, so dz = 0 in the padding and it adds nothing
    T xin[kV] = {}, gin[kV] = {};
    copy_tail(xin, xr, len);
    copy_tail(gin, gr, len);
    const vf xc = L::loadv(xin) - m;
    const vf dz = act_backward<ACT>(L::loadv(gin), fmadd(xc, a, t));
    if constexpr (KEEP) {
      float out[kV];
      F32::storev(out, dz);
      copy_tail(keep, out, len);
    }
    sa = double(hsum(dz));
    sb = double(hsum(fmadd(dz, xc, splat<vf>(0.0f))));
    return;
  }
  for (int64_t s0 = 0; s0 < len; s0 += kChunk) {
    const int64_t s1 = std::min(len, s0 + kChunk);
    vf va[kUnroll], vb[kUnroll];
    for (int u = 0; u < kUnroll; ++u) va[u] = vb[u] = splat<vf>(0.0f);
    int64_t s = s0;
    for (; s + kUnroll * kV <= s1; s += kUnroll * kV) {
      for (int u = 0; u < kUnroll; ++u) {
        const vf xc = L::loadv(xr + s + u * kV) - m;
        const vf dz = act_backward<ACT>(L::loadv(gr + s + u * kV), fmadd(xc, a, t));
        if constexpr (KEEP) F32::storev(keep + s + u * kV, dz);
        va[u] += dz;
        vb[u] = fmadd(dz, xc, vb[u]);
      }
    }
    for (; s + kV <= s1; s += kV) {
      const vf xc = L::loadv(xr + s) - m;
      const vf dz = act_backward<ACT>(L::loadv(gr + s), fmadd(xc, a, t));
      if constexpr (KEEP) F32::storev(keep + s, dz);
      va[0] += dz;
      vb[0] = fmadd(dz, xc, vb[0]);
    }
    if (s < s1) {  // the vector ending at s1 (s1 >= kV here); its first lanes were summed already
      const int64_t at = s1 - kV;
      const vf xc = L::loadv(xr + at) - m;
      const vf dz = act_backward<ACT>(L::loadv(gr + at), fmadd(xc, a, t));
      if constexpr (KEEP) F32::storev(keep + at, dz);
      va[1] += lanes_from(dz, s - at);
      vb[1] += lanes_from(fmadd(dz, xc, splat<vf>(0.0f)), s - at);
    }
    sa += double(hsum((va[0] + va[1]) + (va[2] + va[3])));
    sb += double(hsum((vb[0] + vb[1]) + (vb[2] + vb[3])));
  }
}

// dx = c1 dz + c2 (x - mean) + c3 (dz read back where KEEP).
template <class L, int ACT, bool KEEP = kKeepDz<L, ACT>>
inline vf dx_of(vf x, vf g_or_dz, vf m, vf a, vf t, vf k1, vf k2, vf k3) {
  const vf xc = x - m;
  vf dz;
  if constexpr (KEEP)
    dz = g_or_dz;
  else
    dz = act_backward<ACT>(g_or_dz, fmadd(xc, a, t));
  return fmadd(k1, dz, fmadd(k2, xc, k3));
}

// dx over a run of one channel; where KEEP, dz is read from kept[] (float32; in float32 it is dx itself). The
// last, overlapping vector is computed first: where dz is kept in dx, the main loop overwrites the dz it reads.
template <class L, int ACT, bool KEEP = kKeepDz<L, ACT>>
inline void backward_run_dx(const typename L::T* xr, const typename L::T* gr, typename L::T* dxr, const float* kept,
                            int64_t len, float mh, float scale, float shift, float c1, float c2, float c3) {
  using T = typename L::T;
  const vf m = splat<vf>(mh), a = splat<vf>(scale), t = splat<vf>(shift);
  const vf k1 = splat<vf>(c1), k2 = splat<vf>(c2), k3 = splat<vf>(c3);
  // the second operand of dx_of: dz (kept, float32) or dy
  auto src = [&](int64_t at) { return KEEP ? F32::loadv(kept + at) : L::loadv(gr + at); };
  if (len < kV) {
    T xin[kV] = {}, gin[kV] = {}, out[kV];
    float din[kV] = {};
    copy_tail(xin, xr, len);
    if constexpr (KEEP)
      copy_tail(din, kept, len);
    else
      copy_tail(gin, gr, len);
    const vf g = KEEP ? F32::loadv(din) : L::loadv(gin);
    L::storev(out, dx_of<L, ACT, KEEP>(L::loadv(xin), g, m, a, t, k1, k2, k3));
    copy_tail(dxr, out, len);
    return;
  }
  const vf last = dx_of<L, ACT, KEEP>(L::loadv(xr + len - kV), src(len - kV), m, a, t, k1, k2, k3);
  int64_t s = 0;
  for (; s + kUnroll * kV <= len; s += kUnroll * kV) {
    vf r[kUnroll];
    for (int u = 0; u < kUnroll; ++u)
      r[u] = dx_of<L, ACT, KEEP>(L::loadv(xr + s + u * kV), src(s + u * kV), m, a, t, k1, k2, k3);
    for (int u = 0; u < kUnroll; ++u) L::storev(dxr + s + u * kV, r[u]);
  }
  for (; s + kV <= len; s += kV) L::storev(dxr + s, dx_of<L, ACT, KEEP>(L::loadv(xr + s), src(s), m, a, t, k1, k2, k3));
  L::storev(dxr + len - kV, last);
}

// Where the float32 kernels keep dz: in dx itself (null for other types, which keep none there).
template <class L>
inline float* dz_in_dx(typename L::T* dx) {
  if constexpr (sizeof(typename L::T) == sizeof(float))
    return reinterpret_cast<float*>(dx);
  else
    return nullptr;
}

// ---------------------------------------------------------------------------------------
// forward

template <class L, int ACT>
void forward_nchw_split(const typename L::T* x, const float* w, const float* b, int64_t N, int64_t C, int64_t S,
                  int64_t G, double eps, typename L::T* y, float* mean_out, float* rstd_out, int nthreads,
                  int64_t budget) {
  const int64_t D = C / G, len = D * S, parts = parts_of(len);
  const int64_t spw = samples_per_wave(C * S * int64_t(sizeof(typename L::T)), budget);
  std::vector<Moments> piece(size_t(std::min(N, spw) * G * parts));
  std::vector<double> mean_d(size_t(N * G)), rstd_d(size_t(N * G));

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  for (int64_t n0 = 0; n0 < N; n0 += spw) {
    const int64_t n1 = std::min(N, n0 + spw);
    const int64_t pieces = (n1 - n0) * G * parts;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t grp = n0 * G + p / parts;  // global (n, g) index
      int64_t begin, end;
      part_range(len, parts, p % parts, begin, end);
      Moments m;
      moments_of_run<L>(x + grp * len + begin, end - begin, m);
      piece[size_t(p)] = m;
    }
#pragma omp for schedule(static)
    for (int64_t grp = n0 * G; grp < n1 * G; ++grp) {
      Moments m;
      const Moments* ps = piece.data() + (grp - n0 * G) * parts;
      for (int64_t i = 0; i < parts; ++i) m.merge(ps[i].n, ps[i].mean, ps[i].m2);
      const double var = m.n > 0 ? std::max(0.0, m.m2 / m.n) : 0.0;
      mean_d[size_t(grp)] = m.mean;
      rstd_d[size_t(grp)] = 1.0 / std::sqrt(var + eps);
      mean_out[grp] = float(m.mean);
      rstd_out[grp] = float(rstd_d[size_t(grp)]);
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t grp = n0 * G + p / parts, g = grp % G;
      const SplitMean mu = SplitMean::of(mean_d[size_t(grp)]);
      const double rstd = rstd_d[size_t(grp)];
      int64_t begin, end;
      part_range(len, parts, p % parts, begin, end);
      const typename L::T* xg = x + grp * len;
      typename L::T* yg = y + grp * len;
      for (int64_t i = begin; i < end;) {  // one run per channel inside the piece
        const int64_t d = i / S, stop = std::min(end, (d + 1) * S);
        const int64_t c = g * D + d;
        const float scale = float(rstd * double(w[c])), shift = b[c] - mu.lo * scale;
        output_run<L, ACT>(xg + i, yg + i, stop - i, mu.hi, scale, shift);
        i = stop;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// backward: dz = dy * act'(z) with z recomputed from x, mean and rstd; then
//   A[n,c] = sum_s dz,  B[n,c] = sum_s dz * x_hat,  dw = sum_n B,  db = sum_n A,
//   dx = rstd * (w * dz - mean_g(w A) - x_hat * mean_g(w B))   (means over the M = D*S of a group)

// Per (n, g) of a wave: turn the channel sums into the coefficients of
// dx = c1[c] * dz + c2 * (x - mean) + c3, and add the channel sums into dw, db.
inline void backward_coefficients(const double* A, const double* B, const float* w, int64_t D, int64_t S,
                                  double rstd, float* c1, float* c2, float* c3) {
  double m1 = 0, m2 = 0;
  for (int64_t d = 0; d < D; ++d) {
    m1 += double(w[d]) * A[d];
    m2 += double(w[d]) * B[d];  // B: sum of dz * x_hat
  }
  const double M = double(D * S);
  m1 /= M;
  m2 /= M;
  for (int64_t d = 0; d < D; ++d) {
    c1[d] = float(rstd * double(w[d]));
    c2[d] = float(-rstd * rstd * m2);
    c3[d] = float(-rstd * m1);
  }
}

template <class L, int ACT>
void backward_nchw_split(const typename L::T* dy, const typename L::T* x, const float* w, const float* b,
                   const float* mean_in, const float* rstd_in, int64_t N, int64_t C, int64_t S, int64_t G,
                   typename L::T* dx, float* dw, float* db, int nthreads, int64_t budget) {
  const int64_t D = C / G, len = D * S, parts = parts_of(len);
  const int64_t spw = samples_per_wave(2 * C * S * int64_t(sizeof(typename L::T)), budget);
  const int64_t wave_rows = std::min(N, spw) * C;
  // partial sums per (piece, channel of its group): a piece touches at most D channels
  std::vector<double> pa(size_t(std::min(N, spw) * G * parts * D)), pb(pa.size());
  const size_t rows = size_t(wave_rows);
  std::vector<float> c1(rows), c2(rows), c3(rows);
  std::vector<double> sa(rows), sb(rows);  // A, B of the wave
  std::vector<double> dw_acc(size_t(C), 0.0), db_acc(size_t(C), 0.0);

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  for (int64_t n0 = 0; n0 < N; n0 += spw) {
    const int64_t n1 = std::min(N, n0 + spw);
    const int64_t pieces = (n1 - n0) * G * parts;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t grp = n0 * G + p / parts, g = grp % G;
      const float mh = mean_in[grp], rstd = rstd_in[grp];
      int64_t begin, end;
      part_range(len, parts, p % parts, begin, end);
      double* qa = pa.data() + p * D;
      double* qb = pb.data() + p * D;
      std::fill(qa, qa + D, 0.0);
      std::fill(qb, qb + D, 0.0);
      const typename L::T* xg = x + grp * len;
      const typename L::T* gg = dy + grp * len;
      for (int64_t i = begin; i < end;) {
        const int64_t d = i / S, stop = std::min(end, (d + 1) * S);
        const int64_t c = g * D + d;
        const float scale = rstd * w[c], shift = b[c];
        double a, bb;
        backward_run_sums<L, ACT>(xg + i, gg + i, dz_in_dx<L>(dx + grp * len + i), stop - i, mh, scale, shift, a,
                                  bb);
        qa[d] += a;
        qb[d] += bb;
        i = stop;
      }
    }
#pragma omp for schedule(static)
    for (int64_t grp = n0 * G; grp < n1 * G; ++grp) {
      const int64_t g = grp % G, row0 = (grp - n0 * G) * D;
      double* A = sa.data() + row0;
      double* B = sb.data() + row0;
      std::fill(A, A + D, 0.0);
      std::fill(B, B + D, 0.0);
      for (int64_t part = 0; part < parts; ++part) {
        const int64_t p = (grp - n0 * G) * parts + part;
        for (int64_t d = 0; d < D; ++d) {
          A[d] += pa[size_t(p * D + d)];
          B[d] += pb[size_t(p * D + d)];
        }
      }
      for (int64_t d = 0; d < D; ++d) B[d] *= double(rstd_in[grp]);  // now sum dz * x_hat
      backward_coefficients(A, B, w + g * D, D, S, rstd_in[grp], c1.data() + row0, c2.data() + row0,
                            c3.data() + row0);
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {  // fixed order over n: deterministic
      for (int64_t n = n0; n < n1; ++n) {
        db_acc[size_t(c)] += sa[size_t((n - n0) * C + c)];
        dw_acc[size_t(c)] += sb[size_t((n - n0) * C + c)];
      }
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t grp = n0 * G + p / parts, g = grp % G;
      const float mh = mean_in[grp], rstd = rstd_in[grp];
      int64_t begin, end;
      part_range(len, parts, p % parts, begin, end);
      const typename L::T* xg = x + grp * len;
      const typename L::T* gg = dy + grp * len;
      typename L::T* og = dx + grp * len;
      for (int64_t i = begin; i < end;) {
        const int64_t d = i / S, stop = std::min(end, (d + 1) * S);
        const int64_t c = g * D + d, row = (grp - n0 * G) * D + d;
        const float scale = rstd * w[c], shift = b[c];
        backward_run_dx<L, ACT>(xg + i, gg + i, og + i, dz_in_dx<L>(og + i), stop - i, mh, scale, shift,
                                c1[size_t(row)], c2[size_t(row)], c3[size_t(row)]);
        i = stop;
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    dw[c] = float(dw_acc[size_t(c)]);
    db[c] = float(db_acc[size_t(c)]);
  }
}

// ---------------------------------------------------------------------------------------
// task mode: one task per (sample, block of whole groups), no barrier between its statistics
// and its output, and the block still in L2 when its output is written. Used whenever there
// are enough tasks to feed the threads; otherwise the *_split versions above split the
// statistics of a group over threads, at the price of barriers.

// How the work is split: mode 0 picks (tasks when there are at least two per thread), 1 forces
// tasks, 2 forces the split versions; the sizes of waves (split) and of rows (channels-last tasks).
struct Tuning {
  int mode;
  int64_t wave_bytes;
};

inline bool use_tasks(int64_t tasks, int nthreads, const Tuning& t) {
  if (t.mode == 1) return true;
  if (t.mode == 2) return false;
  return tasks >= 2 * int64_t(nthreads);
}

template <class L, int ACT>
void forward_nchw_tasks(const typename L::T* x, const float* w, const float* b, int64_t N, int64_t C, int64_t S,
                        int64_t G, double eps, typename L::T* y, float* mean_out, float* rstd_out, int nthreads) {
  const int64_t D = C / G, len = D * S;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
  for (int64_t grp = 0; grp < N * G; ++grp) {
    const int64_t g = grp % G;
    Moments m;
    moments_of_run<L>(x + grp * len, len, m);
    const double var = m.n > 0 ? std::max(0.0, m.m2 / m.n) : 0.0;
    const double rstd = 1.0 / std::sqrt(var + eps);
    mean_out[grp] = float(m.mean);
    rstd_out[grp] = float(rstd);
    const SplitMean mu = SplitMean::of(m.mean);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t c = g * D + d;
      const float scale = float(rstd * double(w[c])), shift = b[c] - mu.lo * scale;
      output_run<L, ACT>(x + grp * len + d * S, y + grp * len + d * S, S, mu.hi, scale, shift);
    }
  }
}

// A float buffer left uninitialised: std::vector would zero it, a memset of a whole wave's dz per call.
class Buffer {
 public:
  explicit Buffer(size_t n) : p_(n ? new float[n] : nullptr) {}
  float* data() const { return p_.get(); }

 private:
  std::unique_ptr<float[]> p_;
};

inline vf loadf(const float* p) { return F32::loadv(p); }
inline void storef(float* p, vf v) { F32::storev(p, v); }

// ---------------------------------------------------------------------------------------
// channels-last forward: the (S, C) rows of a sample in pieces of up to kRowsPerPiece whole
// rows (the same pieces for every thread count, so the result does not depend on the threads).
// Statistics: per piece and channel, one pass of sums shifted by the channel's value in the
// sample's first row, the rows streamed in memory order with the piece's sums in L1; then per
// channel the pieces' sums in float64, in order, and its moments (summed again around the mean,
// in two passes, for a channel whose shift was an outlier); the channels of a group merged with
// Chan's formula. Output: a second pass per piece, in memory order. Samples go in waves whose
// inputs fit the threads' L2 where they can; samples larger than that go up to 4 at a time (they
// are read twice from L3 or memory either way, and fewer waves mean fewer barriers).

// Rows per piece: float32 sums of at most this many terms, then float64.
constexpr int64_t kRowsPerPiece = 256;

// Vectors of channels held in registers on narrow rows (3 accumulators each): 12 of the 16 (AVX2, SSE) or 32
// (AVX-512) vector registers. With AVX2's 8-float vectors, 4 beat 2 (2x1024x14x14 channels-last, 1 thread:
// identity forward 222 against 282 us, backward 365 against 437, when every row went this way).
constexpr int64_t kBlk = 4;

// Rows per piece of a sample of S rows of C channels: at most kRowsPerPiece, and about kPiece elements, so
// that a sample of wide rows (C = 1280, S = 256: 12 rows) still splits into pieces enough for every thread
// of a one-sample wave. A function of the shape alone: the result does not depend on the threads.
inline int64_t rows_per_piece(int64_t S, int64_t C) {
  const int64_t by_size = std::max<int64_t>(4, 4 * kPiece / std::max<int64_t>(C, 1));
  const int64_t most = std::max<int64_t>(1, std::min({S, kRowsPerPiece, by_size}));
  const int64_t pieces = (S + most - 1) / most;
  return (S + pieces - 1) / pieces;  // pieces of equal size: no short last piece left to one thread
}

// For channels [0, V * kV) of `rows` rows C apart: s1 = sum(x - k), s2 = sum((x - k)^2). Blocks of one or two
// vectors take U = 2 rows at a time into separate sums: with 2 or 4 chains of adds the loop waited on their
// latency (32x16x28x28 channels-last, two one-vector passes: forward 214 us against 133 in NCHW).
template <class L, int V>
inline void shifted_sums_block(const typename L::T* xs, int64_t C, int64_t rows, const typename L::T* k, float* s1,
                               float* s2) {
  constexpr int U = V <= 2 ? 2 : 1;
  vf kk[V], a[U][V], q[U][V];
  for (int v = 0; v < V; ++v) {
    kk[v] = L::loadv(k + v * kV);
    for (int u = 0; u < U; ++u) a[u][v] = q[u][v] = splat<vf>(0.0f);
  }
  int64_t r = 0;
  for (; r + U <= rows; r += U) {
    for (int u = 0; u < U; ++u) {
      const typename L::T* row = xs + (r + u) * C;
      for (int v = 0; v < V; ++v) {
        const vf d = L::loadv(row + v * kV) - kk[v];
        a[u][v] += d;
        q[u][v] += d * d;
      }
    }
  }
  for (; r < rows; ++r) {
    for (int v = 0; v < V; ++v) {
      const vf d = L::loadv(xs + r * C + v * kV) - kk[v];
      a[0][v] += d;
      q[0][v] += d * d;
    }
  }
  for (int v = 0; v < V; ++v) {
    for (int u = 1; u < U; ++u) {
      a[0][v] += a[u][v];
      q[0][v] += q[u][v];
    }
    storef(s1 + v * kV, a[0][v]);
    storef(s2 + v * kV, q[0][v]);
  }
}

// shifted_sums_block over all C channels; k: the shift per channel (a row of the sample).
template <class L>
inline void shifted_sums_narrow(const typename L::T* xs, int64_t C, int64_t rows, const typename L::T* k, float* s1,
                         float* s2) {
  int64_t c = 0;
  for (; c + kBlk * kV <= C; c += kBlk * kV) shifted_sums_block<L, kBlk>(xs + c, C, rows, k + c, s1 + c, s2 + c);
  const auto rest = [&]<int V>() {  // the whole vectors left, in one pass down the rows
    shifted_sums_block<L, V>(xs + c, C, rows, k + c, s1 + c, s2 + c);
    c += V * kV;
  };
  static_assert(kBlk == 4);
  switch ((C - c) / kV) {
    case 3: rest.template operator()<3>(); break;
    case 2: rest.template operator()<2>(); break;
    case 1: rest.template operator()<1>(); break;
  }
  for (; c < C; ++c) {
    const float kc = L::load(k, c);
    float a = 0.0f, q = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float u = L::load(xs, r * C + c) - kc;
      a += u;
      q += u * u;
    }
    s1[c] = a;
    s2[c] = q;
  }
}

// s1 = sum(x - k) and s2 = sum((x - k)^2) per channel over `rows` rows C apart (k: the shift per channel, a row
// of the sample). Rows of at most kBlk vectors: down the rows with the sums in registers (the rows are
// contiguous). Wider rows in memory order: two rows at a time, every vector of channels added into the sums (2 C
// floats, in L1); walking blocks of channels down wide rows touched a few cache lines of each row, which the
// prefetchers follow badly (1.1-1.3x slower at 320-1280 channels), while on narrow rows the sums in registers
// are 1.2-1.3x faster than in L1 (16-64 channels).
template <class L>
inline void shifted_sums(const typename L::T* xs, int64_t C, int64_t rows, const typename L::T* k, float* s1,
                         float* s2) {
  if (C <= kBlk * kV) return shifted_sums_narrow<L>(xs, C, rows, k, s1, s2);
  std::fill(s1, s1 + C, 0.0f);
  std::fill(s2, s2 + C, 0.0f);
  const int64_t cv = C - C % kV;
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    const typename L::T* r0 = xs + r * C;
    const typename L::T* r1 = r0 + C;
    for (int64_t c = 0; c < cv; c += kV) {
      const vf kk = L::loadv(k + c);
      const vf u = L::loadv(r0 + c) - kk, v = L::loadv(r1 + c) - kk;
      storef(s1 + c, loadf(s1 + c) + (u + v));
      storef(s2 + c, loadf(s2 + c) + (u * u + v * v));
    }
    for (int64_t c = cv; c < C; ++c) {
      const float kc = L::load(k, c), u = L::load(r0, c) - kc, v = L::load(r1, c) - kc;
      s1[c] += u + v;
      s2[c] += u * u + v * v;
    }
  }
  if (r < rows) {
    const typename L::T* r0 = xs + r * C;
    for (int64_t c = 0; c < cv; c += kV) {
      const vf u = L::loadv(r0 + c) - L::loadv(k + c);
      storef(s1 + c, loadf(s1 + c) + u);
      storef(s2 + c, loadf(s2 + c) + u * u);
    }
    for (int64_t c = cv; c < C; ++c) {
      const float u = L::load(r0, c) - L::load(k, c);
      s1[c] += u;
      s2[c] += u * u;
    }
  }
}

// Mean and sum of squared deviations of channel c of a sample (S rows C apart) from its shifted
// sums (float64); summed again around the mean where the shift k was an outlier of the channel.
template <class L>
inline void channel_moments(const typename L::T* xs, int64_t C, int64_t S, double inv, int64_t c, float k, double s1,
                            double s2, double& mean, double& m2) {
  const double shift2 = s1 * s1 * inv;  // inv = 1 / S
  mean = double(k) + s1 * inv;
  m2 = s2 - shift2;
  if (shift2 > kMaxCancel * m2 && shift2 > 0.0) {
    Moments m;
    for (int64_t r0 = 0; r0 < S; r0 += kRowsPerPiece) {
      const int64_t r1 = std::min(S, r0 + kRowsPerPiece);
      const float mu = float(mean);
      float d = 0.0f, sq = 0.0f;
      for (int64_t r = r0; r < r1; ++r) {
        const float v = L::load(xs, r * C + c) - mu;
        d += v;
        sq += v * v;
      }
      const double rows = double(r1 - r0);
      m.merge(rows, double(mu) + double(d) / rows, double(sq) - double(d) * double(d) / rows);
    }
    mean = m.mean;
    m2 = m.m2;
  }
  m2 = std::max(0.0, m2);
}

template <class L, int ACT, int V>
inline void output_block(const typename L::T* xs, typename L::T* ys, int64_t C, int64_t rows, const float* hi,
                         const float* sc, const float* sh) {
  vf h[V], s[V], t[V];
  for (int v = 0; v < V; ++v) {
    h[v] = loadf(hi + v * kV);
    s[v] = loadf(sc + v * kV);
    t[v] = loadf(sh + v * kV);
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int v = 0; v < V; ++v) {
      L::storev(ys + r * C + v * kV, act_forward<ACT>(fmadd(L::loadv(xs + r * C + v * kV) - h[v], s[v], t[v])));
    }
  }
}

// y = act((x - hi) * sc + sh) over the W channels of rows C apart, blocks of channels down the rows.
template <class L, int ACT>
inline void output_rows_narrow(const typename L::T* xs, typename L::T* ys, int64_t C, int64_t W, int64_t rows,
                        const float* hi, const float* sc, const float* sh) {
  int64_t c = 0;
  for (; c + kBlk * kV <= W; c += kBlk * kV)
    output_block<L, ACT, kBlk>(xs + c, ys + c, C, rows, hi + c, sc + c, sh + c);
  const auto rest = [&]<int V>() {  // the whole vectors left, in one pass down the rows
    output_block<L, ACT, V>(xs + c, ys + c, C, rows, hi + c, sc + c, sh + c);
    c += V * kV;
  };
  switch ((W - c) / kV) {
    case 3: rest.template operator()<3>(); break;
    case 2: rest.template operator()<2>(); break;
    case 1: rest.template operator()<1>(); break;
  }
  if (c < W) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = c; j < W; ++j)
        L::store(ys, r * C + j, act_forward<ACT>(fmadd(L::load(xs, r * C + j) - hi[j], sc[j], sh[j])));
  }
}

// y = act((x - hi) * sc + sh) over `rows` rows of C channels: as shifted_sums, narrow rows down the rows with the
// coefficients in registers, wider ones in memory order.
template <class L, int ACT>
inline void output_rows(const typename L::T* xs, typename L::T* ys, int64_t C, int64_t rows, const float* hi,
                        const float* sc, const float* sh) {
  if (C <= kBlk * kV) return output_rows_narrow<L, ACT>(xs, ys, C, C, rows, hi, sc, sh);
  const int64_t cv = C - C % kV;
  for (int64_t r = 0; r < rows; ++r) {
    const typename L::T* row = xs + r * C;
    typename L::T* out = ys + r * C;
    for (int64_t c = 0; c < cv; c += kV)
      L::storev(out + c, act_forward<ACT>(fmadd(L::loadv(row + c) - loadf(hi + c), loadf(sc + c), loadf(sh + c))));
    for (int64_t c = cv; c < C; ++c) L::store(out, c, act_forward<ACT>(fmadd(L::load(row, c) - hi[c], sc[c], sh[c])));
  }
}

template <class L, int ACT>
void forward_nhwc(const typename L::T* x, const float* w, const float* b, int64_t N, int64_t C, int64_t S,
                  int64_t G, double eps, typename L::T* y, float* mean_out, float* rstd_out, int nthreads,
                  int64_t budget) {
  const int64_t D = C / G, R = rows_per_piece(S, C);
  const int64_t pps = (S + R - 1) / R;  // pieces per sample
  const double inv_s = 1.0 / double(S);
  const int64_t sbytes = C * S * int64_t(sizeof(typename L::T));
  const int64_t wave = sbytes > budget ? std::min<int64_t>(N, 4) : std::min(N, samples_per_wave(sbytes, budget));
  std::vector<float> ps1(size_t(wave * pps * C)), ps2(ps1.size());  // per piece and channel
  std::vector<float> hi(size_t(wave * C)), sc(hi.size()), sh(hi.size());

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  for (int64_t n0 = 0; n0 < N; n0 += wave) {
    const int64_t n1 = std::min(N, n0 + wave), pieces = (n1 - n0) * pps;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t n = n0 + p / pps, r0 = (p % pps) * R, rows = std::min(S, r0 + R) - r0;
      shifted_sums<L>(x + (n * S + r0) * C, C, rows, x + n * S * C, ps1.data() + p * C, ps2.data() + p * C);
    }
#pragma omp for schedule(static)
    for (int64_t grp = n0 * G; grp < n1 * G; ++grp) {
      const int64_t n = grp / G, g = grp % G;
      const typename L::T* xs = x + n * S * C;
      // The channels have equal counts S, so the group's mean is the mean of theirs and its sum of
      // squared deviations sum(M2_c) + S sum((mean_c - mean)^2): the deviations are summed from the
      // first channel's mean (no division per channel, no cancellation between distant means).
      double ref = 0.0, sd = 0.0, sd2 = 0.0, sm2 = 0.0;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        double s1 = 0.0, s2 = 0.0;
        for (int64_t q = 0; q < pps; ++q) {
          const size_t i = size_t(((n - n0) * pps + q) * C + c);
          s1 += double(ps1[i]);
          s2 += double(ps2[i]);
        }
        double mc, m2c;
        channel_moments<L>(xs, C, S, inv_s, c, L::load(xs, c), s1, s2, mc, m2c);
        if (c == g * D) ref = mc;
        const double d = mc - ref;
        sd += d;
        sd2 += d * d;
        sm2 += m2c;
      }
      const double dmean = sd / double(D), group_mean = ref + dmean;
      const double m2 = sm2 + double(S) * std::max(0.0, sd2 - sd * dmean);
      const double var = std::max(0.0, m2 / (double(S) * double(D)));
      const double rstd = 1.0 / std::sqrt(var + eps);
      mean_out[grp] = float(group_mean);
      rstd_out[grp] = float(rstd);
      const SplitMean mu = SplitMean::of(group_mean);
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        const size_t i = size_t((n - n0) * C + c);
        hi[i] = mu.hi;
        sc[i] = float(rstd * double(w[c]));
        sh[i] = b[c] - mu.lo * sc[i];
      }
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t n = n0 + p / pps, r0 = (p % pps) * R, rows = std::min(S, r0 + R) - r0;
      const size_t off = size_t((n - n0) * C);
      output_rows<L, ACT>(x + (n * S + r0) * C, y + (n * S + r0) * C, C, rows, hi.data() + off, sc.data() + off,
                          sh.data() + off);
    }
  }
}

// dw[c] = sum_n B[n, c], db[c] = sum_n A[n, c], in a fixed order.
inline void reduce_param_grads(const double* A, const double* B, int64_t N, int64_t C, float* dw, float* db) {
  for (int64_t c = 0; c < C; ++c) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < N; ++n) {
      sw += B[n * C + c];
      sb += A[n * C + c];
    }
    dw[c] = float(sw);
    db[c] = float(sb);
  }
}

template <class L, int ACT>
void backward_nchw_tasks(const typename L::T* dy, const typename L::T* x, const float* w, const float* b,
                         const float* mean_in, const float* rstd_in, int64_t N, int64_t C, int64_t S, int64_t G,
                         typename L::T* dx, float* dw, float* db, int nthreads) {
  const int64_t D = C / G, len = D * S;
  std::vector<double> A(size_t(N * C)), B(size_t(N * C));  // B: sum dz * x_hat
  std::vector<float> scratch(size_t(3 * D * nthreads));

  // SiLU keeps dz between the two passes in every dtype here: in dx (float32) or in a float32 buffer per thread
  // holding one task's block (bfloat16), still in L2 when the dx pass reads it back.
  constexpr bool keep = ACT == kSilu;
  constexpr bool own_buffer = keep && !kKeepDz<L, ACT>;
  const Buffer dz_buffer(own_buffer ? size_t(len * nthreads) : 0);

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = omp_get_thread_num();
    float* k1 = scratch.data() + 3 * D * tid;
    float* k2 = k1 + D;
    float* k3 = k2 + D;
#pragma omp for schedule(static)
    for (int64_t grp = 0; grp < N * G; ++grp) {
      const int64_t g = grp % G;
      const float mh = mean_in[grp], rstd = rstd_in[grp];
      double* Ag = A.data() + grp * D;  // (n, g*D + d) = grp*D + d
      double* Bg = B.data() + grp * D;
      float* kept = own_buffer ? dz_buffer.data() + len * tid : dz_in_dx<L>(dx + grp * len);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d;
        const float scale = rstd * w[c], shift = b[c];
        const int64_t off = grp * len + d * S;
        double sa, sb;
        backward_run_sums<L, ACT, keep>(x + off, dy + off, kept ? kept + d * S : nullptr, S, mh, scale, shift, sa,
                                        sb);
        Ag[d] = sa;
        Bg[d] = sb * double(rstd);
      }
      backward_coefficients(Ag, Bg, w + g * D, D, S, rstd, k1, k2, k3);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d;
        const float scale = rstd * w[c], shift = b[c];
        const int64_t off = grp * len + d * S;
        backward_run_dx<L, ACT, keep>(x + off, dy + off, dx + off, kept ? kept + d * S : nullptr, S, mh, scale,
                                      shift, k1[d], k2[d], k3[d]);
      }
    }
  }
  reduce_param_grads(A.data(), B.data(), N, C, dw, db);
}

// Channels-last backward, in pieces and waves as the forward. Per piece and channel the
// sums of dz and dz * (x - mean) (float32; narrow rows down the rows in registers, wider ones in memory
// order), then per channel their sums over the pieces in float64, in order, and the coefficients of dx;
// then dx per piece.
constexpr int V_BWD = 2;  // narrow rows: 5 (sums) or 6 (dx) accumulators per vector of channels, 10-12 registers

// Rows per backward piece: fewer than the forward's, as each pass reads two tensors, x and dy
// (measured: 32 rows beat 256 by 17% at 2x320x64x64 channels-last on one thread; with the rows streamed,
// 128 rows were no faster than 32).
constexpr int64_t kRowsPerPieceBwd = 32;

template <class L, int ACT, int V>
inline void backward_sums_block(const typename L::T* xs, const typename L::T* gs, float* ks, int64_t C,
                                int64_t rows, const float* m, const float* sc, const float* bb, float* qa, float* qb) {
  vf mv[V], sv[V], bv[V], a[V], q[V];
  for (int v = 0; v < V; ++v) {
    mv[v] = loadf(m + v * kV);
    sv[v] = loadf(sc + v * kV);
    bv[v] = loadf(bb + v * kV);
    a[v] = splat<vf>(0.0f);
    q[v] = a[v];
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int v = 0; v < V; ++v) {
      const vf xc = L::loadv(xs + r * C + v * kV) - mv[v];
      const vf dz = act_backward<ACT>(L::loadv(gs + r * C + v * kV), fmadd(xc, sv[v], bv[v]));
      if constexpr (ACT == kSilu) F32::storev(ks + r * C + v * kV, dz);  // read back by backward_dx_block
      a[v] += dz;
      q[v] = fmadd(dz, xc, q[v]);
    }
  }
  for (int v = 0; v < V; ++v) {
    storef(qa + v * kV, a[v]);
    storef(qb + v * kV, q[v]);
  }
}

template <class L, int ACT, int V>
inline void backward_dx_block(const typename L::T* xs, const typename L::T* gs, const float* ks, typename L::T* os,
                              int64_t C, int64_t rows, const float* m, const float* sc, const float* bb,
                              const float* k1, const float* k2, const float* k3) {
  vf mv[V], sv[V], bv[V], c1[V], c2[V], c3[V];
  for (int v = 0; v < V; ++v) {
    mv[v] = loadf(m + v * kV);
    sv[v] = loadf(sc + v * kV);
    bv[v] = loadf(bb + v * kV);
    c1[v] = loadf(k1 + v * kV);
    c2[v] = loadf(k2 + v * kV);
    c3[v] = loadf(k3 + v * kV);
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int v = 0; v < V; ++v) {
      const vf xc = L::loadv(xs + r * C + v * kV) - mv[v];
      vf dz;
      if constexpr (ACT == kSilu)
        dz = F32::loadv(ks + r * C + v * kV);  // kept there by backward_sums_block
      else
        dz = act_backward<ACT>(L::loadv(gs + r * C + v * kV), fmadd(xc, sv[v], bv[v]));
      L::storev(os + r * C + v * kV, fmadd(c1[v], dz, fmadd(c2[v], xc, c3[v])));
    }
  }
}

// The sums of backward_sums_rows on narrow rows: blocks of V_BWD vectors of channels down the rows, the sums in
// registers (as shifted_sums_narrow); ks (SiLU's kept dz) at the piece's first row and channel.
template <class L, int ACT>
inline void backward_sums_narrow(const typename L::T* xs, const typename L::T* gs, float* ks, int64_t C, int64_t rows,
                                 const float* m, const float* sc, const float* bb, float* qa, float* qb) {
  constexpr int64_t VW = V_BWD * kV;
  auto kept = [&](int64_t c) { return ks == nullptr ? nullptr : ks + c; };
  int64_t c = 0;
  for (; c + VW <= C; c += VW)
    backward_sums_block<L, ACT, V_BWD>(xs + c, gs + c, kept(c), C, rows, m + c, sc + c, bb + c, qa + c, qb + c);
  for (; c + kV <= C; c += kV)
    backward_sums_block<L, ACT, 1>(xs + c, gs + c, kept(c), C, rows, m + c, sc + c, bb + c, qa + c, qb + c);
  for (; c < C; ++c) {
    float sa = 0.0f, sb = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float xc = L::load(xs, r * C + c) - m[c];
      const float dz = act_backward<ACT>(L::load(gs, r * C + c), fmadd(xc, sc[c], bb[c]));
      if constexpr (ACT == kSilu) ks[r * C + c] = dz;
      sa += dz;
      sb = fmadd(dz, xc, sb);
    }
    qa[c] = sa;
    qb[c] = sb;
  }
}

// dx of backward_dx_rows on narrow rows, blocks of V_BWD vectors of channels down the rows.
template <class L, int ACT>
inline void backward_dx_narrow(const typename L::T* xs, const typename L::T* gs, const float* ks, typename L::T* os,
                               int64_t C, int64_t rows, const float* m, const float* sc, const float* bb,
                               const float* k1, const float* k2, const float* k3) {
  constexpr int64_t VW = V_BWD * kV;
  auto kept = [&](int64_t c) { return ks == nullptr ? nullptr : ks + c; };
  int64_t c = 0;
  for (; c + VW <= C; c += VW)
    backward_dx_block<L, ACT, V_BWD>(xs + c, gs + c, kept(c), os + c, C, rows, m + c, sc + c, bb + c, k1 + c,
                                     k2 + c, k3 + c);
  for (; c + kV <= C; c += kV)
    backward_dx_block<L, ACT, 1>(xs + c, gs + c, kept(c), os + c, C, rows, m + c, sc + c, bb + c, k1 + c, k2 + c,
                                 k3 + c);
  for (; c < C; ++c) {
    for (int64_t r = 0; r < rows; ++r) {
      const float xc = L::load(xs, r * C + c) - m[c];
      const float dz = ACT == kSilu ? ks[r * C + c] : act_backward<ACT>(L::load(gs, r * C + c), fmadd(xc, sc[c], bb[c]));
      L::store(os, r * C + c, fmadd(k1[c], dz, fmadd(k2[c], xc, k3[c])));
    }
  }
}

// Per channel over `rows` rows C apart, in memory order (as shifted_sums): qa = sum dz, qb = sum dz * (x - m),
// with dz = act'(z) dy and z = (x - m) * sc + bb; SiLU keeps dz (float32) in ks, rows C apart, for the dx pass.
template <class L, int ACT>
inline void backward_sums_rows(const typename L::T* xs, const typename L::T* gs, float* ks, int64_t C, int64_t rows,
                               const float* m, const float* sc, const float* bb, float* qa, float* qb) {
  if (C <= kBlk * kV) return backward_sums_narrow<L, ACT>(xs, gs, ks, C, rows, m, sc, bb, qa, qb);
  std::fill(qa, qa + C, 0.0f);
  std::fill(qb, qb + C, 0.0f);
  const int64_t cv = C - C % kV;
  for (int64_t r = 0; r < rows; ++r) {
    const typename L::T* xr = xs + r * C;
    const typename L::T* gr = gs + r * C;
    for (int64_t c = 0; c < cv; c += kV) {
      const vf xc = L::loadv(xr + c) - loadf(m + c);
      const vf dz = act_backward<ACT>(L::loadv(gr + c), fmadd(xc, loadf(sc + c), loadf(bb + c)));
      if constexpr (ACT == kSilu) storef(ks + r * C + c, dz);
      storef(qa + c, loadf(qa + c) + dz);
      storef(qb + c, fmadd(dz, xc, loadf(qb + c)));
    }
    for (int64_t c = cv; c < C; ++c) {
      const float xc = L::load(xr, c) - m[c];
      const float dz = act_backward<ACT>(L::load(gr, c), fmadd(xc, sc[c], bb[c]));
      if constexpr (ACT == kSilu) ks[r * C + c] = dz;
      qa[c] += dz;
      qb[c] = fmadd(dz, xc, qb[c]);
    }
  }
}

// dx = k1 dz + k2 (x - m) + k3 over `rows` rows C apart, in memory order; SiLU reads dz back from ks.
template <class L, int ACT>
inline void backward_dx_rows(const typename L::T* xs, const typename L::T* gs, const float* ks, typename L::T* os,
                             int64_t C, int64_t rows, const float* m, const float* sc, const float* bb,
                             const float* k1, const float* k2, const float* k3) {
  if (C <= kBlk * kV) return backward_dx_narrow<L, ACT>(xs, gs, ks, os, C, rows, m, sc, bb, k1, k2, k3);
  const int64_t cv = C - C % kV;
  for (int64_t r = 0; r < rows; ++r) {
    const typename L::T* xr = xs + r * C;
    const typename L::T* gr = gs + r * C;
    typename L::T* orow = os + r * C;
    for (int64_t c = 0; c < cv; c += kV) {
      const vf xc = L::loadv(xr + c) - loadf(m + c);
      vf dz;
      if constexpr (ACT == kSilu)
        dz = loadf(ks + r * C + c);  // kept there by backward_sums_rows
      else
        dz = act_backward<ACT>(L::loadv(gr + c), fmadd(xc, loadf(sc + c), loadf(bb + c)));
      L::storev(orow + c, fmadd(loadf(k1 + c), dz, fmadd(loadf(k2 + c), xc, loadf(k3 + c))));
    }
    for (int64_t c = cv; c < C; ++c) {
      const float xc = L::load(xr, c) - m[c];
      const float dz = ACT == kSilu ? ks[r * C + c] : act_backward<ACT>(L::load(gr, c), fmadd(xc, sc[c], bb[c]));
      L::store(orow, c, fmadd(k1[c], dz, fmadd(k2[c], xc, k3[c])));
    }
  }
}

template <class L, int ACT>
void backward_nhwc(const typename L::T* dy, const typename L::T* x, const float* w, const float* b,
                   const float* mean_in, const float* rstd_in, int64_t N, int64_t C, int64_t S, int64_t G,
                   typename L::T* dx, float* dw, float* db, int nthreads, int64_t budget) {
  const int64_t D = C / G, R = std::min(S, kRowsPerPieceBwd), pps = (S + R - 1) / R;
  const int64_t wave = std::min(N, samples_per_wave(2 * C * S * int64_t(sizeof(typename L::T)), budget));
  const size_t per_wave = size_t(wave * C);
  std::vector<float> pa(size_t(wave * pps * C)), pb(pa.size());  // per piece and channel
  std::vector<float> mh(per_wave), scale(per_wave), k1(per_wave), k2(per_wave), k3(per_wave);
  std::vector<double> A(size_t(N * C)), B(size_t(N * C));  // per (n, c): sum dz, sum dz * x_hat
  // SiLU keeps dz (float32) between the passes: in dx for float32, in a buffer of the wave for bfloat16
  constexpr bool own_buffer = ACT == kSilu && !kKeepDz<L, ACT>;
  const Buffer dz_buffer(own_buffer ? size_t(wave * S * C) : 0);
  auto kept_at = [&](int64_t n, int64_t n0, int64_t r0, int64_t c) -> float* {  // null where nothing is kept
    if constexpr (ACT != kSilu) return nullptr;
    if constexpr (own_buffer) return dz_buffer.data() + ((n - n0) * S + r0) * C + c;
    return dz_in_dx<L>(dx + (n * S + r0) * C + c);
  };

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  for (int64_t n0 = 0; n0 < N; n0 += wave) {
    const int64_t n1 = std::min(N, n0 + wave), pieces = (n1 - n0) * pps;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < (n1 - n0) * C; ++i) {  // per-channel mean and scale of the wave
      const int64_t c = i % C, grp = (n0 + i / C) * G + c / D;
      mh[size_t(i)] = mean_in[grp];
      scale[size_t(i)] = rstd_in[grp] * w[c];
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t n = n0 + p / pps, r0 = (p % pps) * R, rows = std::min(S, r0 + R) - r0;
      const typename L::T* xs = x + (n * S + r0) * C;
      const typename L::T* gs = dy + (n * S + r0) * C;
      const float* m = mh.data() + (n - n0) * C;
      const float* sc = scale.data() + (n - n0) * C;
      float* qa = pa.data() + p * C;
      float* qb = pb.data() + p * C;
      backward_sums_rows<L, ACT>(xs, gs, kept_at(n, n0, r0, 0), C, rows, m, sc, b, qa, qb);
    }
#pragma omp for schedule(static)
    for (int64_t grp = n0 * G; grp < n1 * G; ++grp) {
      const int64_t n = grp / G, g = grp % G;
      double* An = A.data() + n * C + g * D;
      double* Bn = B.data() + n * C + g * D;
      for (int64_t d = 0; d < D; ++d) {
        double sa = 0.0, sb = 0.0;
        for (int64_t q = 0; q < pps; ++q) {
          const size_t i = size_t(((n - n0) * pps + q) * C + g * D + d);
          sa += double(pa[i]);
          sb += double(pb[i]);
        }
        An[d] = sa;
        Bn[d] = sb * double(rstd_in[grp]);  // sum dz * x_hat
      }
      const size_t off = size_t((n - n0) * C + g * D);
      backward_coefficients(An, Bn, w + g * D, D, S, rstd_in[grp], k1.data() + off, k2.data() + off,
                            k3.data() + off);
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pieces; ++p) {
      const int64_t n = n0 + p / pps, r0 = (p % pps) * R, rows = std::min(S, r0 + R) - r0;
      const int64_t off = (n - n0) * C;
      const typename L::T* xs = x + (n * S + r0) * C;
      const typename L::T* gs = dy + (n * S + r0) * C;
      typename L::T* os = dx + (n * S + r0) * C;
      const float *m = mh.data() + off, *sc = scale.data() + off;
      backward_dx_rows<L, ACT>(xs, gs, kept_at(n, n0, r0, 0), os, C, rows, m, sc, b, k1.data() + off, k2.data() + off,
                               k3.data() + off);
    }
  }
  reduce_param_grads(A.data(), B.data(), N, C, dw, db);
}

// ---------------------------------------------------------------------------------------
// dispatch on (dtype, layout, act) and on the mode

template <class L, int ACT>
void forward_typed(int layout, const void* xv, const float* w, const float* b, int64_t N, int64_t C, int64_t S,
                   int64_t G, double eps, void* yv, float* mean, float* rstd, int nthreads, const Tuning& t) {
  using T = typename L::T;
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  if (layout == kNCHW) {
    if (use_tasks(N * G, nthreads, t))
      forward_nchw_tasks<L, ACT>(x, w, b, N, C, S, G, eps, y, mean, rstd, nthreads);
    else
      forward_nchw_split<L, ACT>(x, w, b, N, C, S, G, eps, y, mean, rstd, nthreads, t.wave_bytes);
    return;
  }
  forward_nhwc<L, ACT>(x, w, b, N, C, S, G, eps, y, mean, rstd, nthreads, t.wave_bytes);
}

template <class L, int ACT>
void backward_typed(int layout, const void* dyv, const void* xv, const float* w, const float* b, const float* mean,
                    const float* rstd, int64_t N, int64_t C, int64_t S, int64_t G, void* dxv, float* dw,
                    float* db, int nthreads, const Tuning& t) {
  using T = typename L::T;
  const T* dy = static_cast<const T*>(dyv);
  const T* x = static_cast<const T*>(xv);
  T* dx = static_cast<T*>(dxv);
  if (layout == kNCHW) {
    if (use_tasks(N * G, nthreads, t))
      backward_nchw_tasks<L, ACT>(dy, x, w, b, mean, rstd, N, C, S, G, dx, dw, db, nthreads);
    else
      backward_nchw_split<L, ACT>(dy, x, w, b, mean, rstd, N, C, S, G, dx, dw, db, nthreads, t.wave_bytes);
    return;
  }
  backward_nhwc<L, ACT>(dy, x, w, b, mean, rstd, N, C, S, G, dx, dw, db, nthreads, t.wave_bytes);
}

bool valid(int dtype, int layout, int act, int64_t N, int64_t C, int64_t S, int64_t G, int nthreads) {
  return (dtype == kFloat32 || dtype == kBFloat16) && (layout == kNCHW || layout == kNHWC) && act >= 0 &&
         act <= 2 && N > 0 && C > 0 && S > 0 && G > 0 && C % G == 0 && nthreads > 0;
}

}  // namespace

extern "C" {

// The widest vectors this build uses: what -march gave it (the library is built per CPU).
int gn_vector_bits() {
#if defined(__AVX512F__)
  return 512;
#elif defined(__AVX2__)
  return 256;
#else
  return 128;
#endif
}

// 0 on success, 1 for invalid arguments, 2 when memory ran out.
int gn_forward(int dtype, int layout, int act, const void* x, const float* w, const float* b, int64_t N,
               int64_t C, int64_t S, int64_t G, double eps, void* y, float* mean, float* rstd, int nthreads,
               int mode, int64_t wave_bytes) {
  if (!valid(dtype, layout, act, N, C, S, G, nthreads) || mode < 0 || mode > 2) return 1;
  const Tuning t{mode, wave_bytes};
  try {
#define GN_FWD(L, A) forward_typed<L, A>(layout, x, w, b, N, C, S, G, eps, y, mean, rstd, nthreads, t)
    if (dtype == kFloat32) {
      if (act == kIdentity) GN_FWD(F32, kIdentity);
      else if (act == kRelu) GN_FWD(F32, kRelu);
      else GN_FWD(F32, kSilu);
    } else {
      if (act == kIdentity) GN_FWD(BF16, kIdentity);
      else if (act == kRelu) GN_FWD(BF16, kRelu);
      else GN_FWD(BF16, kSilu);
    }
#undef GN_FWD
  } catch (...) {
    return 2;
  }
  return 0;
}

int gn_backward(int dtype, int layout, int act, const void* dy, const void* x, const float* w, const float* b,
                const float* mean, const float* rstd, int64_t N, int64_t C, int64_t S, int64_t G, void* dx,
                float* dw, float* db, int nthreads, int mode, int64_t wave_bytes) {
  if (!valid(dtype, layout, act, N, C, S, G, nthreads) || mode < 0 || mode > 2) return 1;
  const Tuning t{mode, wave_bytes};
  try {
#define GN_BWD(L, A) \
  backward_typed<L, A>(layout, dy, x, w, b, mean, rstd, N, C, S, G, dx, dw, db, nthreads, t)
    if (dtype == kFloat32) {
      if (act == kIdentity) GN_BWD(F32, kIdentity);
      else if (act == kRelu) GN_BWD(F32, kRelu);
      else GN_BWD(F32, kSilu);
    } else {
      if (act == kIdentity) GN_BWD(BF16, kIdentity);
      else if (act == kRelu) GN_BWD(BF16, kRelu);
      else GN_BWD(BF16, kSilu);
    }
#undef GN_BWD
  } catch (...) {
    return 2;
  }
  return 0;
}

}  // extern "C"
