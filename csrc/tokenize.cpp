// tokenize on the CPU: self-standardization stats, gather of the visible patches, patch-embedding GEMM,
// + bias + positions, in one pass over the visible pixels; the weight / bias gradient recomputes the
// patches tile by tile instead of keeping them; masked targets gather the standardized masked patches.
// See maefast/ops/tokenize.py for the specification (tokenize_reference, masked_targets_reference).
#include <cmath>
#include <vector>

#include "common.h"
#include "gemm.h"
#include "ops.h"

namespace maefast {
namespace {

constexpr double kStandardizeEps = 1e-5;  // ops.patches.STANDARDIZE_EPS

struct Geometry {
  int64_t B, C, H, W, p, gw, G, Kd, L;
  bool ca;
  Geometry(int64_t b, int64_t c, int64_t h, int64_t w, int64_t patch, bool channel_agnostic)
      : B(b), C(c), H(h), W(w), p(patch), gw(w / patch), G((h / patch) * (w / patch)),
        Kd(channel_agnostic ? patch * patch : c * patch * patch), L(channel_agnostic ? c * G : G),
        ca(channel_agnostic) {}
};

double pixel_scale(int kind) {
  if (kind == kUInt8) return 255.0;
  if (kind == kUInt16) return 65535.0;
  if (kind == kFloat32) return 1.0;
  throw std::invalid_argument("pixels must be uint8, uint16 or float32, got kind " + std::to_string(kind));
}

// Standardization as x * a + c per (image, channel): a = rstd / scale, c = -mean * rstd.
struct Affine {
  std::vector<float> a, c;
};

Affine affine_from_stats(const float* mean, const float* rstd, int64_t n, double scale) {
  Affine affine;
  affine.a.resize(n);
  affine.c.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    affine.a[i] = static_cast<float>(rstd[i] / scale);
    affine.c[i] = -mean[i] * rstd[i];
  }
  return affine;
}

template <typename P>
void stats_impl(const P* pixels, int64_t planes, int64_t plane_size, double scale, float* mean, float* rstd) {
#pragma omp parallel for schedule(dynamic)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const P* x = pixels + plane * plane_size;
    double m, var;
    if constexpr (std::is_integral_v<P>) {  // exact integer sums
      int64_t sum = 0, sum_sq = 0;
      for (int64_t i = 0; i < plane_size; ++i) {
        int64_t v = x[i];
        sum += v;
        sum_sq += v * v;
      }
      double mu = static_cast<double>(sum) / plane_size;
      m = mu / scale;
      var = (static_cast<double>(sum_sq) / plane_size - mu * mu) / (scale * scale);
    } else {  // two passes in double
      double sum = 0.0;
      for (int64_t i = 0; i < plane_size; ++i) sum += x[i];
      double mu = sum / plane_size, sq = 0.0;
      for (int64_t i = 0; i < plane_size; ++i) sq += (x[i] - mu) * (x[i] - mu);
      m = mu / scale;
      var = sq / plane_size / (scale * scale);
    }
    mean[plane] = static_cast<float>(m);
    rstd[plane] = static_cast<float>(1.0 / std::sqrt(std::max(var, 0.0) + kStandardizeEps));
  }
}

// Writes the standardized embedding patch of token `idx` of image `b` to row[Kd] in (c, p, q) order.
template <typename P>
inline void gather_patch(const P* pixels, const Geometry& g, const Affine& affine, int64_t b, int64_t idx,
                         float* row) {
  int64_t c0 = 0, c1 = g.C, cell = idx;
  if (g.ca) {
    c0 = idx / g.G;
    c1 = c0 + 1;
    cell = idx % g.G;
  }
  const int64_t y0 = (cell / g.gw) * g.p, x0 = (cell % g.gw) * g.p;
  for (int64_t c = c0; c < c1; ++c) {
    const float a = affine.a[b * g.C + c], shift = affine.c[b * g.C + c];
    const P* plane = pixels + (b * g.C + c) * g.H * g.W;
    for (int64_t i = 0; i < g.p; ++i) {
      const P* src = plane + (y0 + i) * g.W + x0;
      for (int64_t j = 0; j < g.p; ++j) row[j] = static_cast<float>(src[j]) * a + shift;
      row += g.p;
    }
  }
}

void check_indices(const int64_t* idx, int64_t count, int64_t limit, const char* what) {
  for (int64_t i = 0; i < count; ++i) {
    if (idx[i] < 0 || idx[i] >= limit) {
      throw std::out_of_range(std::string(what) + ": token id " + std::to_string(idx[i]) + " at position " +
                              std::to_string(i) + " is outside [0, " + std::to_string(limit) + ")");
    }
  }
}

template <typename Fn>
void with_pixel_type(int kind, Fn&& fn) {
  if (kind == kUInt8) fn(uint8_t{});
  else if (kind == kUInt16) fn(uint16_t{});
  else if (kind == kFloat32) fn(float{});
  else throw std::invalid_argument("pixels must be uint8, uint16 or float32, got kind " + std::to_string(kind));
}

const void* pixel_ptr(const py::buffer& pixels, int kind, int64_t count) {
  if (kind == kUInt8) return buffer_ptr<uint8_t>(pixels, count, "pixels");
  if (kind == kUInt16) return buffer_ptr<uint16_t>(pixels, count, "pixels");
  return buffer_ptr<float>(pixels, count, "pixels");
}

void tokenize_stats(const py::buffer& pixels, int kind, int64_t planes, int64_t plane_size, const py::buffer& mean,
                    const py::buffer& rstd) {
  const void* px = pixel_ptr(pixels, kind, planes * plane_size);
  float* mean_ptr = buffer_ptr<float>(mean, planes, "mean");
  float* rstd_ptr = buffer_ptr<float>(rstd, planes, "rstd");
  double scale = pixel_scale(kind);
  py::gil_scoped_release release;
  with_pixel_type(kind, [&](auto tag) {
    using P = decltype(tag);
    stats_impl(static_cast<const P*>(px), planes, plane_size, scale, mean_ptr, rstd_ptr);
  });
}

constexpr int64_t kForwardTile = 96;

void tokenize_forward(const py::buffer& pixels, int kind, int64_t B, int64_t C, int64_t H, int64_t W, int64_t patch,
                      bool channel_agnostic, const py::buffer& keep_idx, int64_t K, const py::buffer& mean,
                      const py::buffer& rstd, const py::buffer& weight, int64_t D, const py::object& bias,
                      const py::buffer& pos_embed, const py::buffer& out, int out_kind) {
  const Geometry g(B, C, H, W, patch, channel_agnostic);
  const void* px = pixel_ptr(pixels, kind, B * C * H * W);
  const int64_t* keep = buffer_ptr<int64_t>(keep_idx, B * K, "keep_idx");
  const float* w = buffer_ptr<float>(weight, D * g.Kd, "weight");
  const float* b_ptr = bias.is_none() ? nullptr : buffer_ptr<float>(bias.cast<py::buffer>(), D, "bias");
  const float* pos = buffer_ptr<float>(pos_embed, g.L * D, "pos_embed");
  void* out_ptr = out_kind == kFloat32 ? static_cast<void*>(buffer_ptr<float>(out, B * K * D, "out"))
                                       : static_cast<void*>(buffer_ptr<uint16_t>(out, B * K * D, "out"));
  const Affine affine = affine_from_stats(buffer_ptr<float>(mean, B * C, "mean"),
                                          buffer_ptr<float>(rstd, B * C, "rstd"), B * C, pixel_scale(kind));
  check_indices(keep, B * K, g.L, "keep_idx");
  py::gil_scoped_release release;
  // B[k][d] = weight[d][k]; the caller's buffer is kept between calls (no page faults on every call). A
  // thread_local name inside the parallel region would name each worker's own copy, hence the reference.
  thread_local PackedB packed_weight;
  PackedB& packed = packed_weight;
  pack_b(packed, g.Kd, D, w, 1, g.Kd);
  std::vector<float> bias_row(static_cast<size_t>(D), 0.0f);
  if (b_ptr) std::copy(b_ptr, b_ptr + D, bias_row.begin());
  const int64_t tokens = B * K, tiles = (tokens + kForwardTile - 1) / kForwardTile;
  with_pixel_type(kind, [&](auto tag) {
    using P = decltype(tag);
    const P* pix = static_cast<const P*>(px);
#pragma omp parallel
    {
      thread_local std::vector<float> patches, result;
      patches.resize(static_cast<size_t>(kForwardTile * g.Kd));
      result.resize(static_cast<size_t>(kForwardTile * D));
#pragma omp for schedule(dynamic)
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t t0 = tile * kForwardTile, rows = std::min(kForwardTile, tokens - t0);
        for (int64_t r = 0; r < rows; ++r)
          gather_patch(pix, g, affine, (t0 + r) / K, keep[t0 + r], patches.data() + r * g.Kd);
        gemm(rows, pack_rows(rows, g.Kd, [&](int64_t r) { return patches.data() + r * g.Kd; }), packed,
             [&](int64_t r0, int n_rows, int64_t col0, int cols, const float* tile_result) {
               for (int i = 0; i < n_rows; ++i)
                 std::memcpy(result.data() + (r0 + i) * D + col0, tile_result + i * kPanel, cols * sizeof(float));
             });
        for (int64_t r = 0; r < rows; ++r)  // + bias + positions, converted, one contiguous row at a time
          add3_store(result.data() + r * D, pos + keep[t0 + r] * D, bias_row.data(), out_ptr, (t0 + r) * D, D,
                     out_kind);
      }
    }
  });
}

void masked_targets(const py::buffer& pixels, int kind, int64_t B, int64_t C, int64_t H, int64_t W, int64_t patch,
                    bool channel_agnostic, const py::buffer& masked_idx, int64_t M, const py::buffer& mean,
                    const py::buffer& rstd, const py::buffer& out) {
  const Geometry g(B, C, H, W, patch, channel_agnostic);
  const void* px = pixel_ptr(pixels, kind, B * C * H * W);
  const int64_t* idx = buffer_ptr<int64_t>(masked_idx, B * M, "masked_idx");
  float* out_ptr = buffer_ptr<float>(out, B * M * g.Kd, "out");
  const Affine affine = affine_from_stats(buffer_ptr<float>(mean, B * C, "mean"),
                                          buffer_ptr<float>(rstd, B * C, "rstd"), B * C, pixel_scale(kind));
  check_indices(idx, B * M, g.L, "masked_idx");
  py::gil_scoped_release release;
  with_pixel_type(kind, [&](auto tag) {
    using P = decltype(tag);
    const P* pix = static_cast<const P*>(px);
#pragma omp parallel
    {
      std::vector<float> patch_buf(static_cast<size_t>(g.Kd));
#pragma omp for schedule(dynamic, 64)
      for (int64_t t = 0; t < B * M; ++t) {
        float* dst = out_ptr + t * g.Kd;
        if (g.ca) {  // (p, q) order is the embedding order
          gather_patch(pix, g, affine, t / M, idx[t], dst);
          continue;
        }
        gather_patch(pix, g, affine, t / M, idx[t], patch_buf.data());  // (c, p, q) -> (p, q, c)
        const int64_t pp = g.p * g.p;
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t s = 0; s < pp; ++s) dst[s * g.C + c] = patch_buf[c * pp + s];
      }
    }
  });
}

}  // namespace

void register_tokenize(py::module_& m) {
  m.def("tokenize_stats", &tokenize_stats, "Per-(image, channel) mean and rstd of scaled pixels.",
        py::arg("pixels"), py::arg("kind"), py::arg("planes"), py::arg("plane_size"), py::arg("mean"),
        py::arg("rstd"));
  m.def("tokenize_forward", &tokenize_forward, "Visible tokens: gather + standardize + GEMM + bias + positions.",
        py::arg("pixels"), py::arg("kind"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"),
        py::arg("patch"), py::arg("channel_agnostic"), py::arg("keep_idx"), py::arg("K"), py::arg("mean"),
        py::arg("rstd"), py::arg("weight"), py::arg("D"), py::arg("bias"), py::arg("pos_embed"), py::arg("out"),
        py::arg("out_kind"));
  m.def("masked_targets", &masked_targets, "Standardized masked patches in the decoder layout.", py::arg("pixels"),
        py::arg("kind"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("patch"),
        py::arg("channel_agnostic"), py::arg("masked_idx"), py::arg("M"), py::arg("mean"), py::arg("rstd"),
        py::arg("out"));
}

}  // namespace maefast
