// maefast's readers as a module of their own, maefast_readers: the bindings of csrc/decode.cpp and nothing else.
// maefast.data.native compiles it on first use where maefast._C (which holds the same bindings) was not built.
#include <pybind11/pybind11.h>

namespace maefast {
void register_decode(pybind11::module_& m);
}

PYBIND11_MODULE(maefast_readers, m) { maefast::register_decode(m); }
