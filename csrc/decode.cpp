// maefast._C bindings of the image decoders in csrc/decode/ (the DALI plugin in csrc/dali/ uses the same
// headers): decode_png for tests and tools, png_info for headers, zlib_inflate (the
// inflate alone) for tests and the decode benchmark.
#include <pybind11/numpy.h>

#include "common.h"
#include "decode/png.h"

namespace maefast {

static py::array decode_png(const py::bytes& encoded) {
  std::string_view data = encoded;
  decode::PngDecoder decoder;
  decode::PngInfo png;
  {
    py::gil_scoped_release release;
    png = decoder.decode(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  py::array array = png.bytes_per_pixel == 1 ? py::array(py::dtype::of<uint8_t>(), {png.height, png.width})
                                             : py::array(py::dtype::of<uint16_t>(), {png.height, png.width});
  std::memcpy(array.mutable_data(), decoder.pixels(), static_cast<size_t>(png.height) * png.width * png.bytes_per_pixel);
  return array;
}

static py::bytes zlib_inflate(const py::bytes& encoded, size_t size) {
  std::string_view data = encoded;
  // Inflated straight into the bytes object (with the slack the decoder may write into), then trimmed:
  // no zero-filling and no copy, so the benchmark against libdeflate's binding measures the inflate.
  PyObject* result = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size + decode::kInflateSlack));
  if (result == nullptr) throw py::error_already_set();
  py::bytes owned = py::reinterpret_steal<py::bytes>(result);
  {
    py::gil_scoped_release release;
    decode::zlib_inflate(reinterpret_cast<const uint8_t*>(data.data()), data.size(),
                         reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(result)), size);
  }
  result = owned.release().ptr();
  if (_PyBytes_Resize(&result, static_cast<Py_ssize_t>(size)) != 0) throw py::error_already_set();
  return py::reinterpret_steal<py::bytes>(result);
}

static py::tuple png_info(const py::bytes& encoded) {
  std::string_view data = encoded;
  decode::PngInfo png = decode::PngDecoder::info(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  return py::make_tuple(png.height, png.width, png.bytes_per_pixel == 1 ? "uint8" : "uint16");
}

void register_decode(py::module_& m) {
  py::register_exception<decode::DecodeError>(m, "DecodeError", PyExc_ValueError);
  m.def("decode_png", &decode_png, "Decodes a grayscale 8/16-bit PNG into a (H, W) uint8/uint16 array.",
        py::arg("encoded"));
  m.def("zlib_inflate", &zlib_inflate, "Inflates a zlib stream that must decode to exactly `size` bytes.",
        py::arg("encoded"), py::arg("size"));
  m.def("png_info", &png_info, "(height, width, dtype name) from a PNG header.", py::arg("encoded"));
}

}  // namespace maefast
