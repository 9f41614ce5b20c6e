// Each csrc/<op>.cpp defines register_<op>(module); register_ops calls them all (csrc/registry.cpp).
#pragma once
#include <pybind11/pybind11.h>

namespace maefast {
void register_ops(pybind11::module_& m);
}
