// maefast._C: C++17 CPU implementations of the fused ops. Functions take contiguous numpy/torch
// buffers through the buffer protocol, so the module links neither libtorch nor CUDA.
#include <pybind11/pybind11.h>

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

PYBIND11_MODULE(_C, m) {
  m.doc() = "maefast C++ CPU kernels";
  m.def("build_info", &build_info, "How the extension was built (OpenMP, threads).");
  maefast::register_ops(m);
}
