// A small register-blocked fp32 GEMM for the fused CPU kernels: C = A @ B with a per-tile epilogue.
//
// B is packed once into panels of 32 columns ([N/32][K][32], zero padded), A is read in place through
// row pointers (so a caller can feed gathered rows), and each MR x 32 result tile goes to an epilogue
// callback that adds bias / positions, converts and stores, or accumulates. The micro-kernel is written
// with GCC vector extensions and compiled for AVX-512, AVX2 and the baseline ISA; the best one the CPU
// supports is picked at run time.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

namespace maefast {

constexpr int kPanel = 32;

struct PackedB {
  int64_t K = 0, N = 0;
  std::vector<float> data;  // [ceil(N/32)][K][32]
  const float* panel(int64_t p) const { return data.data() + p * K * kPanel; }
  int64_t panels() const { return (N + kPanel - 1) / kPanel; }
};

// B[k][n] = src[k * stride_k + n * stride_n]
inline void pack_b(PackedB& packed, int64_t K, int64_t N, const float* src, int64_t stride_k, int64_t stride_n) {
  packed.K = K;
  packed.N = N;
  packed.data.resize(static_cast<size_t>(packed.panels() * K * kPanel));
  for (int64_t p = 0; p < packed.panels(); ++p) {
    float* dst = packed.data.data() + p * K * kPanel;
    int64_t cols = std::min<int64_t>(kPanel, N - p * kPanel);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t j = 0; j < cols; ++j) dst[k * kPanel + j] = src[k * stride_k + (p * kPanel + j) * stride_n];
      for (int64_t j = cols; j < kPanel; ++j) dst[k * kPanel + j] = 0.0f;
    }
  }
}

// epilogue(row0, rows, col0, cols, tile): tile holds rows x 32 results (row stride 32).
using Epilogue = std::function<void(int64_t, int, int64_t, int, const float*)>;
// pack_a(row0, mr, dst): writes rows row0 .. row0 + mr - 1 of A as dst[k * mr + i] (k < K); rows past the end
// of A may hold anything finite (their results are not passed to the epilogue).
using PackA = std::function<void(int64_t, int, float*)>;

// A PackA that reads row-major rows through row_ptr(i), repeating the last row past the end.
inline PackA pack_rows(int64_t M, int64_t K, std::function<const float*(int64_t)> row_ptr) {
  return [M, K, row_ptr](int64_t row0, int mr, float* dst) {
    for (int i = 0; i < mr; ++i) {
      const float* src = row_ptr(std::min<int64_t>(row0 + i, M - 1));
      for (int64_t k = 0; k < K; ++k) dst[k * mr + i] = src[k];
    }
  };
}

typedef float vec4f __attribute__((vector_size(16)));
#if defined(__x86_64__)
typedef float vec8f __attribute__((vector_size(32)));
typedef float vec16f __attribute__((vector_size(64)));
#endif

template <typename V, int LANES, int MR>
static inline __attribute__((always_inline)) void micro_kernel(int64_t K, const float* packed_a,
                                                              const float* panel, float* tile) {
  constexpr int NV = kPanel / LANES;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = V{} ;
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], panel + k * kPanel + v * LANES, sizeof(V));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float a = packed_a[k * MR + i];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] += a * b[v];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(tile + i * kPanel + v * LANES, &acc[i][v], sizeof(V));
}

// C[M, N] = A[M, K] @ B; row i of A starts at row_ptr(i). Calls the epilogue once per tile.
template <typename V, int LANES, int MR>
static inline __attribute__((always_inline)) void gemm_impl(int64_t M, const PackA& pack_a, const PackedB& B,
                                                           const Epilogue& epilogue) {
  alignas(64) float tile[MR * kPanel];
  const int64_t K = B.K, blocks = (M + MR - 1) / MR;
  // A packed as [block][k][MR]: the micro-kernel's broadcasts read one contiguous stream
  thread_local std::vector<float> packed_a;
  packed_a.resize(static_cast<size_t>(blocks * K * MR));
  for (int64_t blk = 0; blk < blocks; ++blk) pack_a(blk * MR, MR, packed_a.data() + blk * K * MR);
  for (int64_t p = 0; p < B.panels(); ++p) {
    const float* panel = B.panel(p);
    int cols = static_cast<int>(std::min<int64_t>(kPanel, B.N - p * kPanel));
    for (int64_t blk = 0; blk < blocks; ++blk) {
      int rows = static_cast<int>(std::min<int64_t>(MR, M - blk * MR));
      micro_kernel<V, LANES, MR>(K, packed_a.data() + blk * K * MR, panel, tile);
      epilogue(blk * MR, rows, p * kPanel, cols, tile);
    }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512dq,fma"))) inline void gemm_avx512(
    int64_t M, const PackA& pack_a, const PackedB& B, const Epilogue& epilogue) {
  gemm_impl<vec16f, 16, 12>(M, pack_a, B, epilogue);
}
__attribute__((target("avx2,fma"))) inline void gemm_avx2(
    int64_t M, const PackA& pack_a, const PackedB& B, const Epilogue& epilogue) {
  gemm_impl<vec8f, 8, 3>(M, pack_a, B, epilogue);
}
#endif

inline void gemm_baseline(int64_t M, const PackA& pack_a, const PackedB& B, const Epilogue& epilogue) {
  gemm_impl<vec4f, 4, 4>(M, pack_a, B, epilogue);
}

inline void gemm(int64_t M, const PackA& pack_a, const PackedB& B, const Epilogue& epilogue) {
#if defined(__x86_64__)
  static const int level = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
  if (level == 2) return gemm_avx512(M, pack_a, B, epilogue);
  if (level == 1) return gemm_avx2(M, pack_a, B, epilogue);
#endif
  gemm_baseline(M, pack_a, B, epilogue);
}

}  // namespace maefast
