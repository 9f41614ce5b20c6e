#include "ops.h"

namespace maefast {
// Ops add their registration here as they gain a C++ implementation.
void register_ops(pybind11::module_& m) { (void)m; }
}  // namespace maefast
