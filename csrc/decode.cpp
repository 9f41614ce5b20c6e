// maefast._C bindings of the readers in csrc/decode/, which the DALI plugin in csrc/dali/ compiles too, so the
// PyTorch loader and `maefast data check` (maefast.data.decode) open, bound, check and decode every file as the
// DALI operators do: read_image / decode_image (PNG and TIFF channel images against a spec), read_compressed /
// check_compressed (JPEG and JPEG 2000 ones, checked for the decoder that follows), image_header, shard_header,
// read_illumination, check_shard_row and the table of accepted formats; encoded_header and check_encoded
// (RxRx3-core's PNG and JPEG 2000 bytes, checked before decoding). decode_png, png_info and zlib_inflate (the
// inflate alone) serve tests and the decode benchmark.
//
// Refusals raise DecodeError (corrupt or truncated: "unreadable"), and its subclasses ImageFormatError (not
// what the data set accepts: "format") and MissingImage ("missing"); the message is the reason alone.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "common.h"
#include "decode/formats.h"
#include "decode/image.h"

namespace maefast {

namespace {

decode::ImageSpec spec_of(int64_t height, int64_t width, int itemsize, double max_ratio) {
  if (height < 1 || width < 1 || (itemsize != 1 && itemsize != 2) || !(max_ratio > 0))
    throw std::invalid_argument("image spec: height and width >= 1, itemsize 1 or 2, max_ratio > 0");
  decode::ImageSpec spec;
  spec.height = height;
  spec.width = width;
  spec.bytes_per_pixel = itemsize;
  spec.max_ratio = max_ratio;
  return spec;
}

// A (height, width) uint8 / uint16 array decoded by `fill(spec, target)` into a buffer with the decoder's slack.
template <typename Fill>
py::array decoded_array(const decode::ImageSpec& spec, Fill fill) {
  const size_t bytes = spec.image_bytes();
  py::array_t<uint8_t> buffer(static_cast<py::ssize_t>(bytes + decode::kDecodeSlack));
  uint8_t* target = buffer.mutable_data();
  {
    py::gil_scoped_release release;
    fill(target);
  }
  py::object view = buffer[py::slice(0, static_cast<py::ssize_t>(bytes), 1)];
  return view.attr("view")(spec.bytes_per_pixel == 1 ? "uint8" : "uint16").attr("reshape")(spec.height, spec.width);
}

py::array read_image(const std::string& path, int64_t height, int64_t width, int itemsize, double max_ratio) {
  const decode::ImageSpec spec = spec_of(height, width, itemsize, max_ratio);
  return decoded_array(spec, [&](uint8_t* target) {
    thread_local decode::ImageDecoder decoder;
    decoder.decode(path, spec, target);
  });
}

py::array decode_image(const py::bytes& encoded, int64_t height, int64_t width, int itemsize, double max_ratio) {
  const decode::ImageSpec spec = spec_of(height, width, itemsize, max_ratio);
  std::string_view data = encoded;
  return decoded_array(spec, [&](uint8_t* target) {
    thread_local decode::ImageDecoder decoder;
    decoder.decode(reinterpret_cast<const uint8_t*>(data.data()), data.size(), spec, target);
  });
}

py::tuple header_tuple(const decode::ImageHeader& header) {
  return py::make_tuple(header.height, header.width, header.samples, header.dtype, header.pages, header.format);
}

py::tuple image_header(const std::string& path) {
  decode::ImageHeader header;
  {
    py::gil_scoped_release release;
    header = decode::image_header(path);
  }
  return header_tuple(header);
}

py::tuple encoded_header(const py::bytes& encoded) {
  std::string_view data = encoded;
  return header_tuple(decode::encoded_header(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
}

std::string check_encoded(const py::bytes& encoded, int64_t height, int64_t width, int itemsize, double max_ratio) {
  const decode::ImageSpec spec = spec_of(height, width, itemsize, max_ratio);
  std::string_view data = encoded;
  py::gil_scoped_release release;
  return decode::check_encoded(reinterpret_cast<const uint8_t*>(data.data()), data.size(), spec);
}

py::bytes read_compressed(const std::string& path, int64_t height, int64_t width, int itemsize, double max_ratio) {
  const decode::ImageSpec spec = spec_of(height, width, itemsize, max_ratio);
  std::vector<uint8_t> bytes;
  {
    py::gil_scoped_release release;
    decode::read_channel_file(path, spec, bytes);
    decode::check_compressed(bytes.data(), bytes.size(), spec);
  }
  return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void check_compressed(const py::bytes& encoded, int64_t height, int64_t width, int itemsize, double max_ratio) {
  const decode::ImageSpec spec = spec_of(height, width, itemsize, max_ratio);
  std::string_view data = encoded;
  py::gil_scoped_release release;
  decode::check_compressed(reinterpret_cast<const uint8_t*>(data.data()), data.size(), spec);
}

py::bytes blank_png(int64_t height, int64_t width, int itemsize) {
  const std::vector<uint8_t> png = decode::blank_png(spec_of(height, width, itemsize, 1));
  return py::bytes(reinterpret_cast<const char*>(png.data()), png.size());
}

py::tuple shard_header(const std::string& path, int64_t channels, int64_t height, int64_t width, int itemsize) {
  decode::NpyHeader header;
  {
    py::gil_scoped_release release;
    header = decode::read_shard_header(path, channels, spec_of(height, width, itemsize, 1));
  }
  return py::make_tuple(py::tuple(py::cast(header.shape)), header.data_offset);
}

py::array read_illumination(const std::string& path, int64_t height, int64_t width) {
  std::vector<float> values;
  {
    py::gil_scoped_release release;
    values = decode::read_illumination(path, height, width);
  }
  py::array_t<float> array({height, width});
  std::memcpy(array.mutable_data(), values.data(), values.size() * sizeof(float));
  return array;
}

py::list codes(const decode::formats::Code* begin, const decode::formats::Code* end) {
  py::list list;
  for (const auto* code = begin; code != end; ++code) list.append(py::make_tuple(code->value, code->name));
  return list;
}

template <size_t N>
py::list codes(const decode::formats::Code (&values)[N]) {
  return codes(values, values + N);
}

template <typename T, size_t N>
py::list items(const T (&values)[N]) {
  py::list list;
  for (const T& value : values) list.append(value);
  return list;
}

py::dict accepted_formats() {
  namespace f = decode::formats;
  py::dict png, tiff, jpeg, jpeg2000, shard, illumination, table;
  png["bit_depths"] = items(f::kPngBitDepths);
  jpeg["bit_depths"] = items(f::kJpegBitDepths);
  jpeg["processes"] = codes(f::kJpegProcesses);
  tiff["bit_depths"] = items(f::kTiffBitDepths);
  tiff["compressions"] = codes(f::kTiffCompressions);
  tiff["predictors"] = codes(f::kTiffPredictors);
  tiff["photometrics"] = codes(f::kTiffPhotometrics);
  tiff["orientations"] = codes(f::kTiffOrientations);
  tiff["planar_configurations"] = codes(f::kTiffPlanarConfigurations);
  jpeg2000["bit_depths"] = items(f::kJpeg2000BitDepths);
  jpeg2000["max_tiles"] = f::kJpeg2000MaxTiles;
  shard["descrs"] = items(f::kShardDescrs);
  illumination["descrs"] = items(f::kIlluminationDescrs);
  table["png"] = png;
  table["tiff"] = tiff;
  table["jpeg"] = jpeg;
  table["jpeg2000"] = jpeg2000;
  table["shard"] = shard;
  table["illumination"] = illumination;
  return table;
}

py::array decode_png(const py::bytes& encoded) {
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

py::bytes zlib_inflate(const py::bytes& encoded, size_t size) {
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

py::tuple png_info(const py::bytes& encoded) {
  std::string_view data = encoded;
  decode::PngInfo png = decode::PngDecoder::info(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  return py::make_tuple(png.height, png.width, png.bytes_per_pixel == 1 ? "uint8" : "uint16");
}

}  // namespace

void register_decode(py::module_& m) {
  // Subclasses after their base: pybind11 tries the translators registered last first.
  auto& base = py::register_exception<decode::DecodeError>(m, "DecodeError", PyExc_ValueError);
  py::register_exception<decode::FormatError>(m, "ImageFormatError", base.ptr());
  py::register_exception<decode::MissingFile>(m, "MissingImage", base.ptr());
  m.def("read_image", &read_image, "Reads the channel image at path, which must be height x width of 1 or 2 bytes "
        "per sample: a (height, width) uint8 / uint16 array.", py::arg("path"), py::arg("height"), py::arg("width"),
        py::arg("itemsize"), py::arg("max_ratio"));
  m.def("decode_image", &decode_image, "read_image on a file's bytes.", py::arg("encoded"), py::arg("height"),
        py::arg("width"), py::arg("itemsize"), py::arg("max_ratio"));
  m.def("image_header", &image_header, "(height, width, samples, dtype name, pages, format) of a PNG, TIFF, JPEG "
        "or JPEG 2000 file.", py::arg("path"));
  m.def("encoded_header", &encoded_header, "(height, width, samples, dtype name, pages, format) of PNG or JPEG 2000 "
        "bytes (RxRx3-core's channel images).", py::arg("encoded"));
  m.def("check_encoded", &check_encoded, "Checks PNG or JPEG 2000 bytes against a spec without decoding them "
        "(header, JPEG 2000 structure, formats, ratio cap); returns the codec, 'png' or 'jpeg2000'.",
        py::arg("encoded"), py::arg("height"), py::arg("width"), py::arg("itemsize"), py::arg("max_ratio"));
  m.def("read_compressed", &read_compressed, "The bytes of the JPEG or JPEG 2000 file at path, checked against a "
        "height x width image of 1 or 2 bytes per sample and the table of formats, for a decoder to decode.",
        py::arg("path"), py::arg("height"), py::arg("width"), py::arg("itemsize"), py::arg("max_ratio"));
  m.def("check_compressed", &check_compressed, "read_compressed's checks on a JPEG or JPEG 2000 file's bytes.",
        py::arg("encoded"), py::arg("height"), py::arg("width"), py::arg("itemsize"), py::arg("max_ratio"));
  m.def("blank_png", &blank_png, "The PNG of zeros that DALI decodes in place of a refused compressed image.",
        py::arg("height"), py::arg("width"), py::arg("itemsize"));
  m.def("shard_header", &shard_header, "(shape, data offset) of a packed shard, checked against the data set.",
        py::arg("path"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("itemsize"));
  m.def("check_shard_row", &decode::check_shard_row, "ImageFormatError when row is outside a shard of `images`.",
        py::arg("row"), py::arg("images"));
  m.def("read_illumination", &read_illumination, "An illumination function (.npy), checked: (height, width) "
        "float32.", py::arg("path"), py::arg("height"), py::arg("width"));
  m.def("accepted_formats", &accepted_formats, "The table of accepted formats (csrc/decode/formats.h).");
  m.def("decode_png", &decode_png, "Decodes a grayscale 8/16-bit PNG into a (H, W) uint8/uint16 array.",
        py::arg("encoded"));
  m.def("zlib_inflate", &zlib_inflate, "Inflates a zlib stream that must decode to exactly `size` bytes.",
        py::arg("encoded"), py::arg("size"));
  m.def("png_info", &png_info, "(height, width, dtype name) from a PNG header.", py::arg("encoded"));
}

}  // namespace maefast
