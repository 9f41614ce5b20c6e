// Copies one augmented square crop out of a 2-D plane: the C++ form of maefast.data.plan.apply_augment.
//
// The crop is plane[y:y+size, x:x+size]; it is transposed first (optional), then its rows are reversed
// (flip_vertical), then its columns (flip_horizontal): the 8 symmetries of the square, so
//   out[i][j] = plane[y + j'][x + i'] if transposed, else plane[y + i'][x + j'],
//   with i' = flip_vertical ? size-1-i : i and j' = flip_horizontal ? size-1-j : j.
// Untransposed rows are memcpy'd, or copied 16 bytes at a time with the lanes reversed. Transposed crops
// go through 16x16-byte register transposes (SSE2; 8x8 for uint16): the flips only choose which source
// rows are loaded and where each transposed vector is stored, so no lane has to move twice. Without
// SSE2, or for sizes that are not whole blocks, a scalar loop does the same.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace maefast::decode {

namespace crop_detail {

template <typename T>
void copy_crop_scalar(const T* origin, int64_t row_stride, int size, bool transpose, bool flip_vertical,
                      bool flip_horizontal, T* out) {
  for (int i = 0; i < size; ++i) {
    const int si = flip_vertical ? size - 1 - i : i;
    T* target = out + static_cast<int64_t>(i) * size;
    for (int j = 0; j < size; ++j) {
      const int sj = flip_horizontal ? size - 1 - j : j;
      target[j] = transpose ? origin[sj * row_stride + si] : origin[si * row_stride + sj];
    }
  }
}

#if defined(__SSE2__)
// Elements per 16-byte vector: 16 for uint8, 8 for uint16; a block is lanes x lanes elements.
template <typename T>
constexpr int kLanes = 16 / sizeof(T);

template <typename T>
inline __m128i reverse_lanes(__m128i v) {
  v = _mm_shuffle_epi32(v, _MM_SHUFFLE(0, 1, 2, 3));
  v = _mm_shufflelo_epi16(v, _MM_SHUFFLE(2, 3, 0, 1));
  v = _mm_shufflehi_epi16(v, _MM_SHUFFLE(2, 3, 0, 1));
  if (sizeof(T) == 1) v = _mm_or_si128(_mm_slli_epi16(v, 8), _mm_srli_epi16(v, 8));
  return v;
}

// In-register transpose of a lanes x lanes block: log2(lanes) rounds of interleaving row j with row
// j + lanes/2 (unpack low halves into row 2j, high halves into row 2j+1).
template <typename T>
inline void transpose_block(__m128i* rows) {
  constexpr int n = kLanes<T>;
  __m128i next[n];
  for (int round = 1; round < n; round <<= 1) {
    for (int j = 0; j < n / 2; ++j) {
      if (sizeof(T) == 1) {
        next[2 * j] = _mm_unpacklo_epi8(rows[j], rows[j + n / 2]);
        next[2 * j + 1] = _mm_unpackhi_epi8(rows[j], rows[j + n / 2]);
      } else {
        next[2 * j] = _mm_unpacklo_epi16(rows[j], rows[j + n / 2]);
        next[2 * j + 1] = _mm_unpackhi_epi16(rows[j], rows[j + n / 2]);
      }
    }
    for (int j = 0; j < n; ++j) rows[j] = next[j];
  }
}

template <typename T>
void copy_crop_sse2(const T* origin, int64_t row_stride, int size, bool transpose, bool flip_vertical,
                    bool flip_horizontal, T* out) {
  constexpr int n = kLanes<T>;
  if (!transpose) {
    for (int i = 0; i < size; ++i) {
      const T* source = origin + (flip_vertical ? size - 1 - i : i) * row_stride;
      T* target = out + static_cast<int64_t>(i) * size;
      if (!flip_horizontal) {
        std::memcpy(target, source, sizeof(T) * size);
        continue;
      }
      for (int j = 0; j < size; j += n) {
        __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(source + size - n - j));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(target + j), reverse_lanes<T>(v));
      }
    }
    return;
  }
  __m128i block[n];
  for (int j0 = 0; j0 < size; j0 += n) {      // output columns j0.. <- source rows j'
    for (int i0 = 0; i0 < size; i0 += n) {    // output rows i0.. <- source columns i'
      // Source columns of this block: i0.. (lane m -> output row i0 + m), or with flip_vertical the
      // mirrored range (lane m -> output row i0 + n-1-m).
      const int column = flip_vertical ? size - n - i0 : i0;
      for (int jj = 0; jj < n; ++jj) {
        const int j = j0 + jj;
        const T* row = origin + (flip_horizontal ? size - 1 - j : j) * row_stride;
        block[jj] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + column));
      }
      transpose_block<T>(block);
      for (int m = 0; m < n; ++m) {
        const int i = flip_vertical ? i0 + n - 1 - m : i0 + m;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + static_cast<int64_t>(i) * size + j0), block[m]);
      }
    }
  }
}
#endif

}  // namespace crop_detail

template <typename T>
void copy_crop(const T* plane, int64_t row_stride, int64_t y, int64_t x, int size, bool transpose, bool flip_vertical,
               bool flip_horizontal, T* out) {
  static_assert(sizeof(T) == 1 || sizeof(T) == 2, "uint8 or uint16 pixels");
  const T* origin = plane + y * row_stride + x;
#if defined(__SSE2__)
  if (size % crop_detail::kLanes<T> == 0) {
    crop_detail::copy_crop_sse2(origin, row_stride, size, transpose, flip_vertical, flip_horizontal, out);
    return;
  }
#endif
  crop_detail::copy_crop_scalar(origin, row_stride, size, transpose, flip_vertical, flip_horizontal, out);
}

}  // namespace maefast::decode
