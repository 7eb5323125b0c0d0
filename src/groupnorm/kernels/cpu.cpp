// groupnorm CPU kernels: GroupNorm fused with an activation, forward and memory-lean backward.
//
// Built at first use by groupnorm/kernels/cpu.py with the system C++ compiler (no torch
// headers, so it compiles in about a second) and called through ctypes. Parallel regions use
// OpenMP; linked by soname, the library shares the libgomp that torch has already loaded, so
// our threads are torch's threads and the two never fight over the cores.
//
// Layouts: x is (N, C, S) contiguous ("nchw", S = prod(spatial)) or (N, S, C) contiguous
// ("nhwc", channels last). Dtypes: float32 and bfloat16 (as raw uint16 bits). Parameters,
// statistics and gradients of the parameters are float32. Accumulation: float32 within a
// block of at most a few thousand elements, float64 across blocks; the variance is taken by
// two passes over each block (its mean, then the compensated sum of squared deviations) and
// blocks are combined with Chan's formula, so a large mean against a small spread
// (x = 1e4 + N(0, 1)) costs no accuracy.
//
// Two ways to split the work. Tasks (the usual case): one thread takes a block of whole groups
// of one sample, computes their statistics and then their output while the block is still in
// its L2 cache; no barrier. Split (when there are fewer blocks than twice the threads): the
// groups' statistics are split over threads in pieces, with barriers between the passes.
// Every reduction runs in a fixed order: the same input gives the same bits on every run, and
// in the tasks mode for any number of threads (the mode itself depends on the thread count).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

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

// 16 floats: GCC's vector extensions, lowered to AVX-512, AVX2 or NEON as the target has.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
constexpr int64_t kV = 16;

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

// Moments of p[0..len), in chunks of kChunk: two passes over each chunk (it sits in L1).
template <class L>
inline void moments_of_run(const typename L::T* p, int64_t len, Moments& acc) {
  for (int64_t off = 0; off < len; off += kChunk) {
    const int64_t m = std::min(kChunk, len - off);
    const typename L::T* q = p + off;
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
// forward

template <class L, int ACT>
void forward_nchw_split(const typename L::T* x, const float* w, const float* b, int64_t N, int64_t C, int64_t S,
                  int64_t G, double eps, typename L::T* y, float* mean_out, float* rstd_out, int nthreads,
                  int64_t budget) {
  const int64_t D = C / G, len = D * S, parts = parts_of(len);
  const int64_t spw = samples_per_wave(C * S * int64_t(sizeof(typename L::T)), budget);
  std::vector<Moments> piece(size_t(std::min(N, spw) * G * parts));
  std::vector<double> mean_d(size_t(N * G)), rstd_d(size_t(N * G));

#pragma omp parallel num_threads(nthreads)
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
        const float scale = float(rstd * double(w[c])), shift = b[c];
#pragma omp simd
        for (int64_t j = i; j < stop; ++j) {
          float xc = (L::load(xg, j) - mu.hi) - mu.lo;
          L::store(yg, j, act_forward<ACT>(xc * scale + shift));
        }
        i = stop;
      }
    }
  }
}

template <class L, int ACT>
void forward_nhwc_split(const typename L::T* x, const float* w, const float* b, int64_t N, int64_t C, int64_t S,
                  int64_t G, double eps, typename L::T* y, float* mean_out, float* rstd_out, int nthreads,
                  int64_t budget) {
  const int64_t D = C / G;
  const int64_t P = std::min(S, std::max<int64_t>(32, kPiece / C));  // positions per piece
  const int64_t blocks = (S + P - 1) / P;
  const int64_t spw = samples_per_wave(C * S * int64_t(sizeof(typename L::T)), budget);
  std::vector<Moments> piece(size_t(std::min(N, spw) * blocks * G));
  // per (n, c) of the current wave: mean (hi, lo) and scale, expanded from the groups
  std::vector<float> mhi(size_t(std::min(N, spw) * C)), mlo(mhi.size()), scale(mhi.size());

  std::vector<float> scratch(size_t(3 * C * nthreads));  // per thread: channel sums

#pragma omp parallel num_threads(nthreads)
  {
    float* su = scratch.data() + 3 * C * omp_get_thread_num();
    float* de = su + C;
    float* sqq = de + C;
    for (int64_t n0 = 0; n0 < N; n0 += spw) {
      const int64_t n1 = std::min(N, n0 + spw);
      const int64_t pieces = (n1 - n0) * blocks;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < pieces; ++p) {
        const int64_t n = n0 + p / blocks, s0 = (p % blocks) * P, s1 = std::min(S, s0 + P);
        const typename L::T* xs = x + (n * S + s0) * C;
        const int64_t rows = s1 - s0;
        std::fill(su, su + 3 * C, 0.0f);
        for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) su[c] += L::load(xs, r * C + c);
        }
        const float inv_rows = 1.0f / float(rows);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) su[c] *= inv_rows;  // now the channel means
        for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float v = L::load(xs, r * C + c) - su[c];
            de[c] += v;
            sqq[c] += v * v;
          }
        }
        Moments* out = piece.data() + p * G;
        for (int64_t g = 0; g < G; ++g) {
          Moments m;
          for (int64_t c = g * D; c < (g + 1) * D; ++c) {
            const double dd = double(de[c]);
            m.merge(double(rows), double(su[c]) + dd / double(rows), double(sqq[c]) - dd * dd / double(rows));
          }
          out[g] = m;
        }
      }
#pragma omp for schedule(static)
      for (int64_t grp = n0 * G; grp < n1 * G; ++grp) {
        const int64_t n = grp / G, g = grp % G;
        Moments m;
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const Moments& q = piece[size_t(((n - n0) * blocks + blk) * G + g)];
          m.merge(q.n, q.mean, q.m2);
        }
        const double var = m.n > 0 ? std::max(0.0, m.m2 / m.n) : 0.0;
        const double rstd = 1.0 / std::sqrt(var + eps);
        mean_out[grp] = float(m.mean);
        rstd_out[grp] = float(rstd);
        const SplitMean mu = SplitMean::of(m.mean);
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          const size_t k = size_t((n - n0) * C + c);
          mhi[k] = mu.hi;
          mlo[k] = mu.lo;
          scale[k] = float(rstd * double(w[c]));
        }
      }
#pragma omp for schedule(static)
      for (int64_t p = 0; p < pieces; ++p) {
        const int64_t n = n0 + p / blocks, s0 = (p % blocks) * P, s1 = std::min(S, s0 + P);
        const float* hi = mhi.data() + (n - n0) * C;
        const float* lo = mlo.data() + (n - n0) * C;
        const float* sc = scale.data() + (n - n0) * C;
        const typename L::T* xs = x + (n * S + s0) * C;
        typename L::T* ys = y + (n * S + s0) * C;
        for (int64_t r = 0; r < s1 - s0; ++r) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float xc = (L::load(xs, r * C + c) - hi[c]) - lo[c];
            L::store(ys, r * C + c, act_forward<ACT>(xc * sc[c] + b[c]));
          }
        }
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

#pragma omp parallel num_threads(nthreads)
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
        for (int64_t j0 = i; j0 < stop; j0 += kChunk) {
          const int64_t j1 = std::min(stop, j0 + kChunk);
          float a = 0.0f, bb = 0.0f;
#pragma omp simd reduction(+ : a, bb)
          for (int64_t j = j0; j < j1; ++j) {
            float xc = L::load(xg, j) - mh;
            float dz = act_backward<ACT>(L::load(gg, j), xc * scale + shift);
            a += dz;
            bb += dz * xc;
          }
          qa[d] += a;
          qb[d] += bb;
        }
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
        const float k1 = c1[size_t(row)], k2 = c2[size_t(row)], k3 = c3[size_t(row)];
#pragma omp simd
        for (int64_t j = i; j < stop; ++j) {
          float xc = L::load(xg, j) - mh;
          float dz = act_backward<ACT>(L::load(gg, j), xc * scale + shift);
          L::store(og, j, k1 * dz + k2 * xc + k3);
        }
        i = stop;
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    dw[c] = float(dw_acc[size_t(c)]);
    db[c] = float(db_acc[size_t(c)]);
  }
}

template <class L, int ACT>
void backward_nhwc_split(const typename L::T* dy, const typename L::T* x, const float* w, const float* b,
                   const float* mean_in, const float* rstd_in, int64_t N, int64_t C, int64_t S, int64_t G,
                   typename L::T* dx, float* dw, float* db, int nthreads, int64_t budget) {
  const int64_t D = C / G;
  const int64_t P = std::min(S, std::max<int64_t>(32, kPiece / C));
  const int64_t blocks = (S + P - 1) / P;
  const int64_t spw = samples_per_wave(2 * C * S * int64_t(sizeof(typename L::T)), budget);
  const int64_t wave_rows = std::min(N, spw) * C;
  std::vector<double> pa(size_t(std::min(N, spw) * blocks * C)), pb(pa.size());
  const size_t rows = size_t(wave_rows);
  std::vector<float> mh(rows), scale(rows), c1(rows), c2(rows), c3(rows);
  std::vector<double> sa(rows), sb(rows);
  std::vector<double> dw_acc(size_t(C), 0.0), db_acc(size_t(C), 0.0);

  std::vector<float> scratch(size_t(2 * C * nthreads));  // per thread: channel sums

#pragma omp parallel num_threads(nthreads)
  {
    float* qa = scratch.data() + 2 * C * omp_get_thread_num();
    float* qb = qa + C;
    for (int64_t n0 = 0; n0 < N; n0 += spw) {
      const int64_t n1 = std::min(N, n0 + spw);
      const int64_t pieces = (n1 - n0) * blocks;
#pragma omp for schedule(static)
      for (int64_t row = 0; row < (n1 - n0) * C; ++row) {  // per-channel mean and scale of the wave
        const int64_t n = n0 + row / C, c = row % C, grp = n * G + c / D;
        mh[size_t(row)] = mean_in[grp];
        scale[size_t(row)] = rstd_in[grp] * w[c];
      }
#pragma omp for schedule(static)
      for (int64_t p = 0; p < pieces; ++p) {
        const int64_t n = n0 + p / blocks, s0 = (p % blocks) * P, s1 = std::min(S, s0 + P);
        const float* m = mh.data() + (n - n0) * C;
        const float* sc = scale.data() + (n - n0) * C;
        const typename L::T* xs = x + (n * S + s0) * C;
        const typename L::T* gs = dy + (n * S + s0) * C;
        std::fill(qa, qa + 2 * C, 0.0f);
        for (int64_t r = 0; r < s1 - s0; ++r) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float xc = L::load(xs, r * C + c) - m[c];
            float dz = act_backward<ACT>(L::load(gs, r * C + c), xc * sc[c] + b[c]);
            qa[c] += dz;
            qb[c] += dz * xc;
          }
        }
        double* oa = pa.data() + p * C;
        double* ob = pb.data() + p * C;
        for (int64_t c = 0; c < C; ++c) {
          oa[c] = qa[c];
          ob[c] = qb[c];
        }
      }
#pragma omp for schedule(static)
      for (int64_t grp = n0 * G; grp < n1 * G; ++grp) {
        const int64_t n = grp / G, g = grp % G, row0 = (n - n0) * C + g * D;
        double* A = sa.data() + row0;
        double* B = sb.data() + row0;
        std::fill(A, A + D, 0.0);
        std::fill(B, B + D, 0.0);
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const size_t base = size_t(((n - n0) * blocks + blk) * C + g * D);
          for (int64_t d = 0; d < D; ++d) {
            A[d] += pa[base + size_t(d)];
            B[d] += pb[base + size_t(d)];
          }
        }
        for (int64_t d = 0; d < D; ++d) B[d] *= double(rstd_in[grp]);  // now sum dz * x_hat
        backward_coefficients(A, B, w + g * D, D, S, rstd_in[grp], c1.data() + row0, c2.data() + row0,
                              c3.data() + row0);
      }
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t n = n0; n < n1; ++n) {
          db_acc[size_t(c)] += sa[size_t((n - n0) * C + c)];
          dw_acc[size_t(c)] += sb[size_t((n - n0) * C + c)];
        }
      }
#pragma omp for schedule(static)
      for (int64_t p = 0; p < pieces; ++p) {
        const int64_t n = n0 + p / blocks, s0 = (p % blocks) * P, s1 = std::min(S, s0 + P);
        const int64_t off = (n - n0) * C;
        const float* m = mh.data() + off;
        const float* sc = scale.data() + off;
        const float* k1 = c1.data() + off;
        const float* k2 = c2.data() + off;
        const float* k3 = c3.data() + off;
        const typename L::T* xs = x + (n * S + s0) * C;
        const typename L::T* gs = dy + (n * S + s0) * C;
        typename L::T* os = dx + (n * S + s0) * C;
        for (int64_t r = 0; r < s1 - s0; ++r) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float xc = L::load(xs, r * C + c) - m[c];
            float dz = act_backward<ACT>(L::load(gs, r * C + c), xc * sc[c] + b[c]);
            L::store(os, r * C + c, k1[c] * dz + k2[c] * xc + k3[c]);
          }
        }
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

// Groups per task in the channels-last layout: the fewest whose rows are at least row_bytes
// wide and a whole number of cache lines (so tasks share no line), fewer if that leaves too
// few tasks for the threads.
inline int64_t groups_per_task_nhwc(int64_t N, int64_t C, int64_t G, int64_t elem, int nthreads,
                                    int64_t row_bytes) {
  const int64_t D = C / G;
  int64_t gpb = 0;
  for (int pass = 0; pass < 2 && gpb == 0; ++pass) {
    for (int64_t k = 1; k <= G; ++k) {
      const int64_t bytes = k * D * elem;
      if (G % k == 0 && bytes >= row_bytes && (pass == 1 || bytes % 64 == 0)) {
        gpb = k;
        break;
      }
    }
  }
  if (gpb == 0) gpb = G;
  while (gpb > 1 && N * (G / gpb) < 2 * int64_t(nthreads)) {  // narrower blocks: more tasks
    int64_t k = gpb - 1;
    while (k > 1 && G % k) --k;
    gpb = k;
  }
  return gpb;
}

// How the work is split: mode 0 picks (tasks when there are at least two per thread), 1 forces
// tasks, 2 forces the split versions; the sizes of waves (split) and of rows (channels-last tasks).
struct Tuning {
  int mode;
  int64_t wave_bytes;
  int64_t row_bytes;
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
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
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
      const float scale = float(rstd * double(w[c])), shift = b[c];
      const typename L::T* xr = x + grp * len + d * S;
      typename L::T* yr = y + grp * len + d * S;
#pragma omp simd
      for (int64_t s = 0; s < S; ++s) {
        float xc = (L::load(xr, s) - mu.hi) - mu.lo;
        L::store(yr, s, act_forward<ACT>(xc * scale + shift));
      }
    }
  }
}

// Channels-last blocks are walked row by row, 16 channels to a vector, in chunks of rows
// (at most 32 KB of a row-block, so a chunk stays in L1 or L2 between the two passes of the
// statistics). The chunks depend on C only, not on the block: a channel's sums are the same
// bits whichever block of groups, and so whichever number of threads, computes them.
inline int64_t rows_per_chunk(int64_t C) { return std::max<int64_t>(32, 2 * kChunk / C); }

inline vf loadf(const float* p) { return F32::loadv(p); }
inline void storef(float* p, vf v) { F32::storev(p, v); }

// Per-channel mean, sum of deviations and sum of squared deviations (from that mean) over rows
// [r0, r1) of a block of W channels whose rows are C elements apart.
template <class L>
inline void chunk_channel_moments(const typename L::T* xs, int64_t C, int64_t r0, int64_t r1, int64_t W,
                                  float* mean, float* dev, float* sq) {
  const int64_t WV = W / kV * kV;
  std::fill(mean, mean + W, 0.0f);
  std::fill(dev, dev + W, 0.0f);
  std::fill(sq, sq + W, 0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const typename L::T* row = xs + r * C;
    for (int64_t c = 0; c < WV; c += kV) storef(mean + c, loadf(mean + c) + L::loadv(row + c));
    for (int64_t c = WV; c < W; ++c) mean[c] += L::load(row, c);
  }
  const float inv = 1.0f / float(r1 - r0);
  for (int64_t c = 0; c < W; ++c) mean[c] *= inv;
  for (int64_t r = r0; r < r1; ++r) {
    const typename L::T* row = xs + r * C;
    for (int64_t c = 0; c < WV; c += kV) {
      vf v = L::loadv(row + c) - loadf(mean + c);
      storef(dev + c, loadf(dev + c) + v);
      storef(sq + c, loadf(sq + c) + v * v);
    }
    for (int64_t c = WV; c < W; ++c) {
      float v = L::load(row, c) - mean[c];
      dev[c] += v;
      sq[c] += v * v;
    }
  }
}

template <class L, int ACT>
void forward_nhwc_tasks(const typename L::T* x, const float* w, const float* b, int64_t N, int64_t C, int64_t S,
                        int64_t G, double eps, typename L::T* y, float* mean_out, float* rstd_out, int nthreads,
                        int64_t gpb) {
  const int64_t D = C / G, W = gpb * D, WV = W / kV * kV, blocks = G / gpb, P = rows_per_chunk(C);
  std::vector<float> scratch(size_t(6 * W * nthreads));
  std::vector<double> channel(size_t(2 * W * nthreads));  // per channel: running mean and m2

#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    float* mu = scratch.data() + 6 * W * tid;
    float* de = mu + W;
    float* sq = de + W;
    float* hi = sq + W;  // mean (high part) per channel
    float* sc = hi + W;  // rstd * w
    float* sh = sc + W;  // b - (low part of the mean) * sc
    double* cm = channel.data() + 2 * W * tid;
    double* cq = cm + W;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < N * blocks; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * W, g0 = (task % blocks) * gpb;
      const typename L::T* xs = x + n * S * C + c0;
      typename L::T* ys = y + n * S * C + c0;
      double count = 0;
      for (int64_t r0 = 0; r0 < S; r0 += P) {
        const int64_t r1 = std::min(S, r0 + P);
        const double nr = double(r1 - r0), inv = 1.0 / nr;
        chunk_channel_moments<L>(xs, C, r0, r1, W, mu, de, sq);
        // Chan's merge of this chunk into every channel: all share the counts, so no division
        const double total = count + nr, f1 = nr / total, f2 = count * nr / total;
        for (int64_t c = 0; c < W; ++c) {
          const double dd = double(de[c]);
          const double mean_b = double(mu[c]) + dd * inv, m2_b = double(sq[c]) - dd * dd * inv;
          if (count == 0) {
            cm[c] = mean_b;
            cq[c] = m2_b;
          } else {
            const double delta = mean_b - cm[c];
            cm[c] += delta * f1;
            cq[c] += m2_b + delta * delta * f2;
          }
        }
        count = total;
      }
      for (int64_t j = 0; j < gpb; ++j) {
        Moments gm;
        for (int64_t c = j * D; c < (j + 1) * D; ++c) gm.merge(count, cm[c], cq[c]);
        const int64_t grp = n * G + g0 + j;
        const double var = gm.n > 0 ? std::max(0.0, gm.m2 / gm.n) : 0.0;
        const double rstd = 1.0 / std::sqrt(var + eps);
        mean_out[grp] = float(gm.mean);
        rstd_out[grp] = float(rstd);
        const SplitMean m = SplitMean::of(gm.mean);
        for (int64_t c = j * D; c < (j + 1) * D; ++c) {
          hi[c] = m.hi;
          sc[c] = float(rstd * double(w[c0 + c]));
          sh[c] = b[c0 + c] - m.lo * sc[c];
        }
      }
      for (int64_t r = 0; r < S; ++r) {
        const typename L::T* xr = xs + r * C;
        typename L::T* yr = ys + r * C;
        for (int64_t c = 0; c < WV; c += kV)
          L::storev(yr + c, act_forward<ACT>((L::loadv(xr + c) - loadf(hi + c)) * loadf(sc + c) + loadf(sh + c)));
        for (int64_t c = WV; c < W; ++c) L::store(yr, c, act_forward<ACT>((L::load(xr, c) - hi[c]) * sc[c] + sh[c]));
      }
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

#pragma omp parallel num_threads(nthreads)
  {
    float* k1 = scratch.data() + 3 * D * omp_get_thread_num();
    float* k2 = k1 + D;
    float* k3 = k2 + D;
#pragma omp for schedule(dynamic, 1)
    for (int64_t grp = 0; grp < N * G; ++grp) {
      const int64_t g = grp % G;
      const float mh = mean_in[grp], rstd = rstd_in[grp];
      double* Ag = A.data() + grp * D;  // (n, g*D + d) = grp*D + d
      double* Bg = B.data() + grp * D;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d;
        const float scale = rstd * w[c], shift = b[c];
        const typename L::T* xr = x + grp * len + d * S;
        const typename L::T* gr = dy + grp * len + d * S;
        double sa = 0, sb = 0;
        for (int64_t s0 = 0; s0 < S; s0 += kChunk) {
          const int64_t s1 = std::min(S, s0 + kChunk);
          float a = 0.0f, bb = 0.0f;
#pragma omp simd reduction(+ : a, bb)
          for (int64_t s = s0; s < s1; ++s) {
            float xc = L::load(xr, s) - mh;
            float dz = act_backward<ACT>(L::load(gr, s), xc * scale + shift);
            a += dz;
            bb += dz * xc;
          }
          sa += a;
          sb += bb;
        }
        Ag[d] = sa;
        Bg[d] = sb * double(rstd);
      }
      backward_coefficients(Ag, Bg, w + g * D, D, S, rstd, k1, k2, k3);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d;
        const float scale = rstd * w[c], shift = b[c];
        const float c1 = k1[d], c2 = k2[d], c3 = k3[d];
        const typename L::T* xr = x + grp * len + d * S;
        const typename L::T* gr = dy + grp * len + d * S;
        typename L::T* orow = dx + grp * len + d * S;
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) {
          float xc = L::load(xr, s) - mh;
          float dz = act_backward<ACT>(L::load(gr, s), xc * scale + shift);
          L::store(orow, s, c1 * dz + c2 * xc + c3);
        }
      }
    }
  }
  reduce_param_grads(A.data(), B.data(), N, C, dw, db);
}

template <class L, int ACT>
void backward_nhwc_tasks(const typename L::T* dy, const typename L::T* x, const float* w, const float* b,
                         const float* mean_in, const float* rstd_in, int64_t N, int64_t C, int64_t S, int64_t G,
                         typename L::T* dx, float* dw, float* db, int nthreads, int64_t gpb) {
  const int64_t D = C / G, W = gpb * D, WV = W / kV * kV, blocks = G / gpb, P = rows_per_chunk(C);
  std::vector<double> A(size_t(N * C)), B(size_t(N * C));
  std::vector<float> scratch(size_t(8 * W * nthreads));

#pragma omp parallel num_threads(nthreads)
  {
    float* mh = scratch.data() + 8 * W * omp_get_thread_num();
    float* sc = mh + W;
    float* bb = sc + W;
    float* qa = bb + W;
    float* qb = qa + W;
    float* k1 = qb + W;
    float* k2 = k1 + W;
    float* k3 = k2 + W;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < N * blocks; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * W, g0 = (task % blocks) * gpb;
      const typename L::T* xs = x + n * S * C + c0;
      const typename L::T* gs = dy + n * S * C + c0;
      typename L::T* os = dx + n * S * C + c0;
      double* An = A.data() + n * C + c0;
      double* Bn = B.data() + n * C + c0;
      for (int64_t c = 0; c < W; ++c) {
        const int64_t grp = n * G + g0 + c / D;
        mh[c] = mean_in[grp];
        sc[c] = rstd_in[grp] * w[c0 + c];
        bb[c] = b[c0 + c];
        An[c] = 0;
        Bn[c] = 0;
      }
      for (int64_t r0 = 0; r0 < S; r0 += P) {
        const int64_t r1 = std::min(S, r0 + P);
        std::fill(qa, qa + 2 * W, 0.0f);
        for (int64_t r = r0; r < r1; ++r) {
          const typename L::T* xr = xs + r * C;
          const typename L::T* gr = gs + r * C;
          for (int64_t c = 0; c < WV; c += kV) {
            vf xc = L::loadv(xr + c) - loadf(mh + c);
            vf dz = act_backward<ACT>(L::loadv(gr + c), xc * loadf(sc + c) + loadf(bb + c));
            storef(qa + c, loadf(qa + c) + dz);
            storef(qb + c, loadf(qb + c) + dz * xc);
          }
          for (int64_t c = WV; c < W; ++c) {
            float xc = L::load(xr, c) - mh[c];
            float dz = act_backward<ACT>(L::load(gr, c), xc * sc[c] + bb[c]);
            qa[c] += dz;
            qb[c] += dz * xc;
          }
        }
        for (int64_t c = 0; c < W; ++c) {
          An[c] += qa[c];
          Bn[c] += qb[c];
        }
      }
      for (int64_t j = 0; j < gpb; ++j) {
        const float rstd = rstd_in[n * G + g0 + j];
        for (int64_t d = j * D; d < (j + 1) * D; ++d) Bn[d] *= double(rstd);  // now sum dz * x_hat
        backward_coefficients(An + j * D, Bn + j * D, w + c0 + j * D, D, S, rstd, k1 + j * D, k2 + j * D,
                              k3 + j * D);
      }
      for (int64_t r = 0; r < S; ++r) {
        const typename L::T* xr = xs + r * C;
        const typename L::T* gr = gs + r * C;
        typename L::T* orow = os + r * C;
        for (int64_t c = 0; c < WV; c += kV) {
          vf xc = L::loadv(xr + c) - loadf(mh + c);
          vf dz = act_backward<ACT>(L::loadv(gr + c), xc * loadf(sc + c) + loadf(bb + c));
          L::storev(orow + c, loadf(k1 + c) * dz + loadf(k2 + c) * xc + loadf(k3 + c));
        }
        for (int64_t c = WV; c < W; ++c) {
          float xc = L::load(xr, c) - mh[c];
          float dz = act_backward<ACT>(L::load(gr, c), xc * sc[c] + bb[c]);
          L::store(orow, c, k1[c] * dz + k2[c] * xc + k3[c]);
        }
      }
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
  const int64_t gpb = groups_per_task_nhwc(N, C, G, int64_t(sizeof(T)), nthreads, t.row_bytes);
  if (use_tasks(N * (G / gpb), nthreads, t))
    forward_nhwc_tasks<L, ACT>(x, w, b, N, C, S, G, eps, y, mean, rstd, nthreads, gpb);
  else
    forward_nhwc_split<L, ACT>(x, w, b, N, C, S, G, eps, y, mean, rstd, nthreads, t.wave_bytes);
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
  const int64_t gpb = groups_per_task_nhwc(N, C, G, int64_t(sizeof(T)), nthreads, t.row_bytes);
  if (use_tasks(N * (G / gpb), nthreads, t))
    backward_nhwc_tasks<L, ACT>(dy, x, w, b, mean, rstd, N, C, S, G, dx, dw, db, nthreads, gpb);
  else
    backward_nhwc_split<L, ACT>(dy, x, w, b, mean, rstd, N, C, S, G, dx, dw, db, nthreads, t.wave_bytes);
}

bool valid(int dtype, int layout, int act, int64_t N, int64_t C, int64_t S, int64_t G, int nthreads) {
  return (dtype == kFloat32 || dtype == kBFloat16) && (layout == kNCHW || layout == kNHWC) && act >= 0 &&
         act <= 2 && N > 0 && C > 0 && S > 0 && G > 0 && C % G == 0 && nthreads > 0;
}

}  // namespace

extern "C" {

// Version of this ABI: cpu.py refuses a library that answers anything else.
int gn_abi_version() { return 2; }

// 0 on success, 1 for invalid arguments, 2 when memory ran out.
int gn_forward(int dtype, int layout, int act, const void* x, const float* w, const float* b, int64_t N,
               int64_t C, int64_t S, int64_t G, double eps, void* y, float* mean, float* rstd, int nthreads,
               int mode, int64_t wave_bytes, int64_t row_bytes) {
  if (!valid(dtype, layout, act, N, C, S, G, nthreads) || mode < 0 || mode > 2) return 1;
  const Tuning t{mode, wave_bytes, row_bytes};
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
                float* dw, float* db, int nthreads, int mode, int64_t wave_bytes, int64_t row_bytes) {
  if (!valid(dtype, layout, act, N, C, S, G, nthreads) || mode < 0 || mode > 2) return 1;
  const Tuning t{mode, wave_bytes, row_bytes};
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
