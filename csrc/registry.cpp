#include "ops.h"

namespace maefast {
void register_decode(pybind11::module_& m);
void register_tokenize(pybind11::module_& m);
void register_unshuffle(pybind11::module_& m);

// Each op with a C++ implementation registers its functions here.
void register_ops(pybind11::module_& m) {
  register_decode(m);
  register_tokenize(m);
  register_unshuffle(m);
}
}  // namespace maefast
