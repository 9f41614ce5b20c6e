// unshuffle on the CPU: the decoder input in one pass over the output (see maefast/ops/unshuffle.py):
// out[b, l] = (visible[b, k] if keep_idx[b, k] == l else mask_token) + pos_embed[l].
// Backward: grad_visible[b, k] = grad[b, keep_idx[b, k]], grad_mask_token = sum of grad over masked rows.
#include <algorithm>
#include <vector>

#include "common.h"
#include "ops.h"

namespace maefast {
namespace {

// inverse[b * L + l] = k where keep_idx[b, k] == l, else -1 (a masked position)
std::vector<int64_t> inverse_index(const int64_t* keep, int64_t B, int64_t K, int64_t L) {
  std::vector<int64_t> inverse(static_cast<size_t>(B * L), -1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      int64_t l = keep[b * K + k];
      if (l < 0 || l >= L)
        throw std::out_of_range("keep_idx: token id " + std::to_string(l) + " is outside [0, " + std::to_string(L) + ")");
      if (inverse[b * L + l] >= 0)
        throw std::invalid_argument("keep_idx: token id " + std::to_string(l) + " appears twice in sample " +
                                    std::to_string(b));
      inverse[b * L + l] = k;
    }
  }
  return inverse;
}

void unshuffle_forward(const py::buffer& visible, int kind, int64_t B, int64_t K, int64_t D, const py::buffer& keep_idx,
                       const py::buffer& mask_token, const py::buffer& pos_embed, int64_t L, const py::buffer& out) {
  const int64_t* keep = buffer_ptr<int64_t>(keep_idx, B * K, "keep_idx");
  const float* mask = buffer_ptr<float>(mask_token, D, "mask_token");
  const float* pos = buffer_ptr<float>(pos_embed, L * D, "pos_embed");
  const void* vis = kind == kFloat32 ? static_cast<const void*>(buffer_ptr<float>(visible, B * K * D, "visible"))
                                     : static_cast<const void*>(buffer_ptr<uint16_t>(visible, B * K * D, "visible"));
  void* dst = kind == kFloat32 ? static_cast<void*>(buffer_ptr<float>(out, B * L * D, "out"))
                               : static_cast<void*>(buffer_ptr<uint16_t>(out, B * L * D, "out"));
  const std::vector<int64_t> inverse = inverse_index(keep, B, K, L);
  py::gil_scoped_release release;
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 256)
    for (int64_t r = 0; r < B * L; ++r) {
      const int64_t b = r / L, l = r % L, k = inverse[r];
      const float* p = pos + l * D;
      if (k >= 0) {
        load_floats(vis, (b * K + k) * D, row.data(), D, kind);
        for (int64_t d = 0; d < D; ++d) row[d] += p[d];
      } else {
        for (int64_t d = 0; d < D; ++d) row[d] = mask[d] + p[d];
      }
      store_floats(dst, r * D, row.data(), D, kind);
    }
  }
}

void unshuffle_backward(const py::buffer& grad, int kind, int64_t B, int64_t K, int64_t D, const py::buffer& keep_idx,
                        int64_t L, const py::buffer& grad_visible, const py::buffer& grad_mask_token) {
  const int64_t* keep = buffer_ptr<int64_t>(keep_idx, B * K, "keep_idx");
  const void* g = kind == kFloat32 ? static_cast<const void*>(buffer_ptr<float>(grad, B * L * D, "grad"))
                                   : static_cast<const void*>(buffer_ptr<uint16_t>(grad, B * L * D, "grad"));
  void* gv = kind == kFloat32 ? static_cast<void*>(buffer_ptr<float>(grad_visible, B * K * D, "grad_visible"))
                              : static_cast<void*>(buffer_ptr<uint16_t>(grad_visible, B * K * D, "grad_visible"));
  float* gm = buffer_ptr<float>(grad_mask_token, D, "grad_mask_token");
  const std::vector<int64_t> inverse = inverse_index(keep, B, K, L);
  py::gil_scoped_release release;
  // The mask-token gradient sums the gradient rows of every masked token. Partial sums belong to fixed
  // chunks of rows (not to threads, whose share of the rows changes from run to run) and are added in
  // chunk order, so the result is bitwise the same on every run and for any thread count.
  constexpr int64_t kChunkRows = 256;
  const int64_t rows = B * L, chunks = (rows + kChunkRows - 1) / kChunkRows;
  std::vector<float> partial(static_cast<size_t>(chunks * D), 0.0f);
#pragma omp parallel num_threads(num_threads())
  {
    std::vector<float> row(static_cast<size_t>(D));
#pragma omp for schedule(dynamic)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      float* sum = partial.data() + chunk * D;
      for (int64_t r = chunk * kChunkRows; r < std::min(rows, (chunk + 1) * kChunkRows); ++r) {
        const int64_t b = r / L, k = inverse[r];
        load_floats(g, r * D, row.data(), D, kind);
        if (k >= 0) {
          store_floats(gv, (b * K + k) * D, row.data(), D, kind);
        } else {
          for (int64_t d = 0; d < D; ++d) sum[d] += row[d];
        }
      }
    }
  }
  for (int64_t d = 0; d < D; ++d) gm[d] = 0.0f;
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t d = 0; d < D; ++d) gm[d] += partial[chunk * D + d];
}

}  // namespace

void register_unshuffle(py::module_& m) {
  m.def("unshuffle_forward", &unshuffle_forward, "Decoder input: visible tokens and mask tokens in order + positions.",
        py::arg("visible"), py::arg("kind"), py::arg("B"), py::arg("K"), py::arg("D"), py::arg("keep_idx"),
        py::arg("mask_token"), py::arg("pos_embed"), py::arg("L"), py::arg("out"));
  m.def("unshuffle_backward", &unshuffle_backward, "Gradients of unshuffle for the visible tokens and the mask token.",
        py::arg("grad"), py::arg("kind"), py::arg("B"), py::arg("K"), py::arg("D"), py::arg("keep_idx"), py::arg("L"),
        py::arg("grad_visible"), py::arg("grad_mask_token"));
}

}  // namespace maefast
