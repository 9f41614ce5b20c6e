// maefast._C: C++17 CPU implementations of the fused ops. Functions take contiguous numpy/torch
// buffers through the buffer protocol, so the module links neither libtorch nor CUDA.
#include <pybind11/pybind11.h>

#include "common.h"
#include "ops.h"

#ifdef MAEFAST_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

static py::dict build_info() {
  py::dict info;
#ifdef MAEFAST_OPENMP
  info["openmp"] = true;
  info["max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["max_threads"] = 1;
#endif
  return info;
}

// The element kinds the kernels take, by torch dtype name: maefast/ops/_cpp.py reads its table from here.
static py::dict element_kinds() {
  py::dict kinds;
  kinds["float32"] = static_cast<int>(maefast::kFloat32);
  kinds["bfloat16"] = static_cast<int>(maefast::kBFloat16);
  kinds["float16"] = static_cast<int>(maefast::kFloat16);
  kinds["uint8"] = static_cast<int>(maefast::kUInt8);
  kinds["uint16"] = static_cast<int>(maefast::kUInt16);
  kinds["int64"] = static_cast<int>(maefast::kInt64);
  return kinds;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "maefast C++ CPU kernels";
  m.def("build_info", &build_info, "How the extension was built (OpenMP, threads).");
  m.attr("ELEMENT_KINDS") = element_kinds();
  maefast::register_ops(m);
}
