// The header of a numpy .npy file (packed shards, illumination functions), parsed strictly: the magic, the
// version, and a header that is exactly the dict numpy writes, {'descr': ..., 'fortran_order': ..., 'shape':
// (...)}, each key once, nothing else (no comment, no other key, nothing after the closing brace but the
// padding). numpy's own reader evaluates the header as a Python literal, so a comment that repeats an
// expected dtype, say, would fool a search for that text; this parser reads what the header says.
//
// Header-only, C++17, no dependencies. Every read is bounds-checked: the input is untrusted.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "header.h"

namespace maefast::decode {

struct NpyHeader {
  std::string descr;             // '|u1', '<u2', '<f4', ...
  bool fortran_order = false;
  std::vector<int64_t> shape;
  size_t data_offset = 0;        // where the array's bytes start

  // The numpy name of the dtype for messages: "uint8", "uint16", "float32", else the descr itself.
  std::string dtype_name() const {
    if (descr == "|u1" || descr == "<u1") return "uint8";
    if (descr == "<u2") return "uint16";
    if (descr == "<f4") return "float32";
    if (descr == "<f8") return "float64";
    return "'" + descr + "'";
  }
  std::string describe_shape() const {
    std::string text = "(";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + (shape.size() == 1 ? ",)" : ")");
  }
  int itemsize() const { return descr.size() >= 3 ? std::atoi(descr.c_str() + 2) : 0; }
  // Elements times itemsize, or DecodeError when that overflows.
  size_t data_bytes() const {
    size_t bytes = static_cast<size_t>(itemsize());
    for (int64_t n : shape) {
      if (n < 0 || (n > 0 && bytes > SIZE_MAX / static_cast<size_t>(n))) throw DecodeError("corrupt .npy header: shape");
      bytes *= static_cast<size_t>(n);
    }
    return bytes;
  }
};

// The most header bytes maefast reads (numpy refuses more than 10,000 by default).
constexpr size_t kMaxNpyHeader = 65536;

namespace npy_detail {

struct Cursor {
  const char* at;
  const char* end;

  void skip_spaces() {
    while (at < end && (*at == ' ' || *at == '\t')) ++at;
  }
  bool take(char c) {
    skip_spaces();
    if (at < end && *at == c) {
      ++at;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!take(c)) throw DecodeError(std::string("corrupt .npy header: expected '") + c + "'");
  }
  std::string string() {
    skip_spaces();
    if (at >= end || (*at != '\'' && *at != '"')) throw DecodeError("corrupt .npy header: expected a string");
    const char quote = *at++;
    const char* begin = at;
    while (at < end && *at != quote) {
      if (*at == '\\') throw DecodeError("corrupt .npy header: escape in a string");
      ++at;
    }
    if (at >= end) throw DecodeError("corrupt .npy header: unterminated string");
    return std::string(begin, at++);
  }
  bool boolean() {
    skip_spaces();
    if (end - at >= 4 && std::memcmp(at, "True", 4) == 0) return at += 4, true;
    if (end - at >= 5 && std::memcmp(at, "False", 5) == 0) return at += 5, false;
    throw DecodeError("corrupt .npy header: fortran_order is not True or False");
  }
  int64_t integer() {
    skip_spaces();
    int64_t value = 0;
    const char* begin = at;
    while (at < end && *at >= '0' && *at <= '9') {
      if (value > (INT64_MAX - 9) / 10) throw DecodeError("corrupt .npy header: dimension too large");
      value = value * 10 + (*at++ - '0');
    }
    if (at == begin) throw DecodeError("corrupt .npy header: expected a dimension");
    if (at < end && *at == 'L') ++at;  // Python 2's long literals
    return value;
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> values;
    if (take(')')) return values;
    for (;;) {
      values.push_back(integer());
      if (take(')')) break;
      expect(',');
      if (take(')')) break;
    }
    return values;
  }
};

}  // namespace npy_detail

// Parses the header of an .npy file whose first `size` bytes (at least the whole header) are `data`.
inline NpyHeader npy_header(const uint8_t* data, size_t size) {
  if (size < 10 || std::memcmp(data, "\x93NUMPY", 6) != 0) throw DecodeError("not a .npy file (bad magic)");
  const int major = data[6];
  if (major < 1 || major > 3) throw DecodeError("unknown .npy format version " + std::to_string(major));
  const size_t start = major == 1 ? 10 : 12;
  if (size < start) throw DecodeError("truncated .npy header");
  const size_t length = major == 1 ? (data[8] | data[9] << 8)
                                   : (static_cast<size_t>(data[8]) | static_cast<size_t>(data[9]) << 8 |
                                      static_cast<size_t>(data[10]) << 16 | static_cast<size_t>(data[11]) << 24);
  if (length > kMaxNpyHeader) throw DecodeError("corrupt .npy header: " + std::to_string(length) + " bytes long");
  if (length > size - start) throw DecodeError("truncated .npy header");
  NpyHeader header;
  header.data_offset = start + length;
  npy_detail::Cursor cursor{reinterpret_cast<const char*>(data + start), reinterpret_cast<const char*>(data + start + length)};
  cursor.expect('{');
  bool has_descr = false, has_order = false, has_shape = false;
  while (!cursor.take('}')) {
    const std::string key = cursor.string();
    cursor.expect(':');
    bool* seen = key == "descr" ? &has_descr : key == "fortran_order" ? &has_order : key == "shape" ? &has_shape : nullptr;
    if (seen == nullptr) throw DecodeError("corrupt .npy header: unknown key '" + key + "'");
    if (*seen) throw DecodeError("corrupt .npy header: key '" + key + "' appears twice");
    *seen = true;
    if (key == "descr") header.descr = cursor.string();
    else if (key == "fortran_order") header.fortran_order = cursor.boolean();
    else header.shape = cursor.tuple();
    if (!cursor.take(',')) {
      cursor.expect('}');
      break;
    }
  }
  if (!has_descr || !has_order || !has_shape) throw DecodeError("corrupt .npy header: descr, fortran_order or shape missing");
  for (; cursor.at < cursor.end; ++cursor.at) {  // the padding: spaces, then a newline
    if (*cursor.at != ' ' && *cursor.at != '\n' && *cursor.at != '\t' && *cursor.at != '\0')
      throw DecodeError("corrupt .npy header: text after the dict");
  }
  return header;
}

// Refuses (FormatError) an .npy array that is not `ndim`-dimensional, C-order, of one of `descrs`, with its
// trailing dimensions `trailing` (the whole shape when ndim == trailing.size()); DecodeError when the file is
// shorter than the array. `what` names the array in messages ("a shard of (n, 6, 96, 96) uint8 images").
template <size_t N>
void npy_check(const NpyHeader& header, size_t file_size, const char* const (&descrs)[N], size_t ndim,
               const std::vector<int64_t>& trailing, const std::string& what) {
  bool accepted = false;
  for (const char* descr : descrs) accepted = accepted || header.descr == descr;
  bool shape = header.shape.size() == ndim;
  for (size_t i = 0; shape && i < trailing.size(); ++i) shape = header.shape[ndim - trailing.size() + i] == trailing[i];
  if (!accepted || !shape)
    throw FormatError("expected " + what + ", found " + header.describe_shape() + " " + header.dtype_name());
  if (header.fortran_order) throw FormatError("expected " + what + " in C order, found a Fortran-order array");
  if (header.data_offset > file_size || header.data_bytes() > file_size - header.data_offset)
    throw DecodeError("truncated .npy file: " + std::to_string(file_size - std::min(file_size, header.data_offset)) +
                      " of " + std::to_string(header.data_bytes()) + " bytes of data");
}

}  // namespace maefast::decode
