// Shared helpers of the C++ CPU kernels: buffer access, 16-bit float conversion, OpenMP shims.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef MAEFAST_OPENMP
#include <omp.h>
#endif

namespace maefast {
namespace py = pybind11;

// Element kinds passed from Python (maefast/ops/_cpp.py reads them through maefast._C.ELEMENT_KINDS).
enum Kind : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kUInt8 = 3, kUInt16 = 4, kInt64 = 5 };

inline int num_threads() {
#ifdef MAEFAST_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef MAEFAST_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// A contiguous buffer of at least `count` elements of `itemsize` bytes, or a clear error naming `what`.
template <typename T>
T* buffer_ptr(const py::buffer& buffer, int64_t count, const char* what) {
  py::buffer_info info = buffer.request();
  if (info.itemsize != static_cast<py::ssize_t>(sizeof(T))) {
    throw std::invalid_argument(std::string(what) + ": expected elements of " + std::to_string(sizeof(T)) +
                                " bytes, got " + std::to_string(info.itemsize));
  }
  if (info.size < count) {
    throw std::invalid_argument(std::string(what) + ": expected at least " + std::to_string(count) +
                                " elements, got " + std::to_string(info.size));
  }
  py::ssize_t expected_stride = info.itemsize;
  for (py::ssize_t dim = info.ndim - 1; dim >= 0; --dim) {
    if (info.shape[dim] > 1 && info.strides[dim] != expected_stride) {
      throw std::invalid_argument(std::string(what) + ": buffer is not C-contiguous");
    }
    expected_stride *= info.shape[dim];
  }
  return static_cast<T*>(info.ptr);
}

inline float bf16_to_float(uint16_t bits) {
  uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

inline uint16_t float_to_bf16(float value) {  // round to nearest even, NaN kept quiet
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if ((word & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((word >> 16) | 0x40u);
  word += 0x7fffu + ((word >> 16) & 1u);
  return static_cast<uint16_t>(word >> 16);
}

inline float fp16_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, word;
  if (exponent == 0) {
    if (mantissa == 0) {
      word = sign;
    } else {  // subnormal: renormalize
      exponent = 127 - 15 + 1;
      while ((mantissa & 0x400u) == 0) { mantissa <<= 1; --exponent; }
      word = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else if (exponent == 31) {
    word = sign | 0x7f800000u | (mantissa << 13);
  } else {
    word = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

inline uint16_t float_to_fp16(float value) {  // round to nearest even
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  uint32_t sign = (word >> 16) & 0x8000u;
  uint32_t magnitude = word & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);        // NaN
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);       // overflow -> inf
  if (magnitude < 0x38800000u) {                                                      // subnormal or zero
    float abs_value;
    std::memcpy(&abs_value, &magnitude, sizeof(abs_value));
    // adding 0.5 moves the subnormal mantissa into the low bits with IEEE rounding
    float shifted = abs_value + 0.5f;
    uint32_t bits;
    std::memcpy(&bits, &shifted, sizeof(bits));
    return static_cast<uint16_t>(sign | (bits - 0x3f000000u));
  }
  uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u) - ((127u - 15u) << 23);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MAEFAST_CLONES __attribute__((target_clones("arch=skylake-avx512", "avx2", "default")))
#else
#define MAEFAST_CLONES
#endif

// out[i] = a[i] + b[i] + c[i], rounded to `kind` (the row epilogue of the GEMMs); vectorized per ISA.
MAEFAST_CLONES inline void add3_store(const float* a, const float* b, const float* c, void* dst, int64_t index,
                                      int64_t count, int kind) {
  if (kind == kFloat32) {
    float* out = static_cast<float*>(dst) + index;
    for (int64_t i = 0; i < count; ++i) out[i] = a[i] + b[i] + c[i];
    return;
  }
  uint16_t* out = static_cast<uint16_t*>(dst) + index;
  if (kind == kBFloat16) {
    for (int64_t i = 0; i < count; ++i) {
      const float v = a[i] + b[i] + c[i];
      uint32_t word;
      std::memcpy(&word, &v, sizeof(word));
      const uint16_t rounded = static_cast<uint16_t>((word + 0x7fffu + ((word >> 16) & 1u)) >> 16);
      out[i] = (word & 0x7fffffffu) > 0x7f800000u ? static_cast<uint16_t>((word >> 16) | 0x40u) : rounded;
    }
    return;
  }
  for (int64_t i = 0; i < count; ++i) out[i] = float_to_fp16(a[i] + b[i] + c[i]);
}

// dst[i] = float(src[index + i]) for 16-bit or 32-bit floats; vectorized per ISA.
MAEFAST_CLONES inline void widen(const void* src, int64_t index, float* dst, int64_t count, int kind) {
  if (kind == kBFloat16) {
    const uint16_t* in = static_cast<const uint16_t*>(src) + index;
    for (int64_t i = 0; i < count; ++i) {
      const uint32_t word = static_cast<uint32_t>(in[i]) << 16;
      std::memcpy(dst + i, &word, sizeof(float));
    }
  } else if (kind == kFloat32) {
    std::memcpy(dst, static_cast<const float*>(src) + index, count * sizeof(float));
  } else {
    const uint16_t* in = static_cast<const uint16_t*>(src) + index;
    for (int64_t i = 0; i < count; ++i) dst[i] = fp16_to_float(in[i]);
  }
}

inline float load_as_float(const void* base, int64_t index, int kind) {
  switch (kind) {
    case kFloat32: return static_cast<const float*>(base)[index];
    case kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case kFloat16: return fp16_to_float(static_cast<const uint16_t*>(base)[index]);
    default: throw std::invalid_argument("unsupported float kind " + std::to_string(kind));
  }
}

// Converts `count` floats to the output kind at `dst + index`.
inline void store_floats(void* dst, int64_t index, const float* src, int64_t count, int kind) {
  if (kind == kFloat32) {
    std::memcpy(static_cast<float*>(dst) + index, src, count * sizeof(float));
  } else if (kind == kBFloat16) {
    uint16_t* out = static_cast<uint16_t*>(dst) + index;
    for (int64_t i = 0; i < count; ++i) {  // float_to_bf16 without branches, so that it vectorizes
      uint32_t word;
      std::memcpy(&word, src + i, sizeof(word));
      const uint16_t rounded = static_cast<uint16_t>((word + 0x7fffu + ((word >> 16) & 1u)) >> 16);
      const bool nan = (word & 0x7fffffffu) > 0x7f800000u;
      out[i] = nan ? static_cast<uint16_t>((word >> 16) | 0x40u) : rounded;
    }
  } else if (kind == kFloat16) {
    uint16_t* out = static_cast<uint16_t*>(dst) + index;
    for (int64_t i = 0; i < count; ++i) out[i] = float_to_fp16(src[i]);
  } else {
    throw std::invalid_argument("unsupported output kind " + std::to_string(kind));
  }
}

inline void load_floats(const void* src, int64_t index, float* dst, int64_t count, int kind) {
  if (kind == kFloat32) {
    std::memcpy(dst, static_cast<const float*>(src) + index, count * sizeof(float));
  } else if (kind == kBFloat16) {
    const uint16_t* in = static_cast<const uint16_t*>(src) + index;
    for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_float(in[i]);
  } else if (kind == kFloat16) {
    const uint16_t* in = static_cast<const uint16_t*>(src) + index;
    for (int64_t i = 0; i < count; ++i) dst[i] = fp16_to_float(in[i]);
  } else {
    throw std::invalid_argument("unsupported input kind " + std::to_string(kind));
  }
}

inline int float_itemsize(int kind) { return kind == kFloat32 ? 4 : 2; }

}  // namespace maefast
