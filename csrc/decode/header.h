// Headers of the channel files maefast reads (PNG, TIFF), parsed without decoding, and the check of an
// image against what its dataset declares (maefast.data.decode.ImageSpec: height x width, uint8 or
// uint16, one sample per pixel, one page). The DALI operators run this check on every file, so that a
// file of another size, bit depth or page count is refused before any decoder converts or crops it.
//
// Header-only, C++17, no dependencies. Every read is bounds-checked: the input is untrusted.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "inflate.h"  // DecodeError

namespace maefast::decode {

// A PNG's IHDR fields and its frame count (an animated PNG's acTL chunk; 1 otherwise).
struct PngHeader {
  uint32_t width = 0, height = 0;
  int depth = 0, color = 0, compression = 0, filter = 0, interlace = 0;
  uint32_t frames = 1;
};

// What a file holds, in the terms of maefast.data.decode.describe_image: "72x72 uint16, 3 pages".
struct ImageHeader {
  int64_t width = 0, height = 0;
  int samples = 1;          // values per pixel (3 for RGB)
  std::string dtype;        // "uint8", "uint16", "int16", "float32", "palette", ...
  int64_t pages = 1;

  std::string describe() const {
    std::string text = std::to_string(height) + "x" + std::to_string(width);
    if (samples != 1) text += "x" + std::to_string(samples);
    text += " " + dtype;
    if (pages != 1) text += ", " + std::to_string(pages) + " pages";
    return text;
  }
};

namespace header_detail {

inline uint32_t be32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 | p[3];
}

// Reads little- or big-endian unsigned integers of a TIFF file, refusing reads past its end.
struct TiffReader {
  const uint8_t* data;
  size_t size;
  bool big_endian;

  uint64_t read(uint64_t offset, int bytes) const {
    if (offset > size || static_cast<uint64_t>(bytes) > size - offset) throw DecodeError("truncated TIFF header");
    uint64_t value = 0;
    for (int i = 0; i < bytes; ++i) {
      uint64_t byte = data[offset + (big_endian ? i : bytes - 1 - i)];
      value = value << 8 | byte;
    }
    return value;
  }
};

inline int tiff_type_size(uint64_t type) {
  switch (type) {
    case 1: case 2: case 6: case 7: return 1;  // BYTE, ASCII, SBYTE, UNDEFINED
    case 3: case 8: return 2;                  // SHORT, SSHORT
    case 4: case 9: case 11: case 13: return 4;  // LONG, SLONG, FLOAT, IFD
    case 16: case 17: case 18: return 8;       // LONG8, SLONG8, IFD8 (BigTIFF)
    default: return 0;
  }
}

}  // namespace header_detail

inline PngHeader png_header(const uint8_t* data, size_t size) {
  using header_detail::be32;
  static constexpr uint8_t kSignature[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  if (size < 8 || std::memcmp(data, kSignature, 8) != 0) throw DecodeError("not a PNG file (bad signature)");
  if (size < 33 || std::memcmp(data + 12, "IHDR", 4) != 0 || be32(data + 8) != 13)
    throw DecodeError("truncated or corrupt PNG (no IHDR chunk)");
  const uint8_t* ihdr = data + 16;
  PngHeader png;
  png.width = be32(ihdr);
  png.height = be32(ihdr + 4);
  png.depth = ihdr[8];
  png.color = ihdr[9];
  png.compression = ihdr[10];
  png.filter = ihdr[11];
  png.interlace = ihdr[12];
  // An animated PNG announces its frames in an acTL chunk before the image data.
  for (size_t pos = 33; size - pos >= 12;) {
    uint32_t length = be32(data + pos);
    const uint8_t* type = data + pos + 4;
    if (std::memcmp(type, "IDAT", 4) == 0 || length > size - pos - 12) break;
    if (std::memcmp(type, "acTL", 4) == 0 && length >= 8) png.frames = be32(data + pos + 8);
    pos += 12 + static_cast<size_t>(length);
  }
  return png;
}

inline ImageHeader image_header_of_png(const PngHeader& png) {
  static constexpr int kSamples[7] = {1, 0, 3, 1, 2, 0, 4};  // by color type; 0: invalid
  ImageHeader header;
  header.width = png.width;
  header.height = png.height;
  const bool valid = png.color <= 6 && kSamples[png.color] != 0;
  header.samples = valid ? kSamples[png.color] : 1;
  header.dtype = !valid ? "unknown" : png.color == 3 ? "palette" : "uint" + std::to_string(png.depth);
  header.pages = png.frames;
  return header;
}

// The first page's size, sample count and type, and the number of pages (the IFD chain's length).
inline ImageHeader tiff_header(const uint8_t* data, size_t size) {
  using header_detail::TiffReader;
  if (size < 8 || !((data[0] == 'I' && data[1] == 'I') || (data[0] == 'M' && data[1] == 'M')))
    throw DecodeError("not a TIFF file (bad byte order mark)");
  TiffReader tiff{data, size, data[0] == 'M'};
  const uint64_t version = tiff.read(2, 2);
  if (version != 42 && version != 43) throw DecodeError("not a TIFF file (bad version)");
  const bool big = version == 43;  // BigTIFF: 8-byte offsets and counts
  const int offset_size = big ? 8 : 4, count_size = big ? 8 : 2, entry_size = big ? 20 : 12;
  uint64_t ifd = tiff.read(big ? 8 : 4, offset_size);
  if (ifd == 0) throw DecodeError("TIFF file has no image (no first IFD)");

  ImageHeader header;
  int bits = 0, sample_format = 1;
  const uint64_t entries = tiff.read(ifd, count_size);
  if (entries > (size - ifd) / entry_size) throw DecodeError("truncated TIFF header (IFD)");
  for (uint64_t i = 0; i < entries; ++i) {
    const uint64_t entry = ifd + count_size + i * entry_size;
    const uint64_t tag = tiff.read(entry, 2), type = tiff.read(entry + 2, 2);
    const uint64_t count = tiff.read(entry + 4, offset_size);
    const int type_size = header_detail::tiff_type_size(type);
    if (type_size == 0 || count == 0) continue;
    // The first value: in the entry itself when all values fit there, else at the offset it holds.
    uint64_t at = entry + 4 + offset_size;
    if (count > static_cast<uint64_t>(offset_size / type_size)) at = tiff.read(at, offset_size);
    const uint64_t value = tiff.read(at, type_size);
    switch (tag) {
      case 256: header.width = static_cast<int64_t>(value); break;
      case 257: header.height = static_cast<int64_t>(value); break;
      case 258: bits = static_cast<int>(value); break;
      case 277: header.samples = static_cast<int>(value); break;
      case 339: sample_format = static_cast<int>(value); break;
      default: break;
    }
  }
  const char* kind = sample_format == 1 ? "uint" : sample_format == 2 ? "int" : sample_format == 3 ? "float" : "void";
  header.dtype = kind + std::to_string(bits);
  // Count the pages; a chain longer than the file could hold loops.
  const uint64_t max_pages = size / (count_size + offset_size) + 1;
  for (header.pages = 0; ifd != 0; ++header.pages) {
    if (static_cast<uint64_t>(header.pages) >= max_pages) throw DecodeError("corrupt TIFF: its pages form a loop");
    const uint64_t count = tiff.read(ifd, count_size);
    if (count > (size - ifd) / entry_size) throw DecodeError("truncated TIFF header (IFD)");
    ifd = tiff.read(ifd + count_size + count * entry_size, offset_size);
  }
  return header;
}

// The header of a PNG or TIFF file, told apart by their first bytes.
inline ImageHeader image_header(const uint8_t* data, size_t size) {
  if (size >= 8 && data[0] == 137 && data[1] == 'P') return image_header_of_png(png_header(data, size));
  if (size >= 2 && ((data[0] == 'I' && data[1] == 'I') || (data[0] == 'M' && data[1] == 'M')))
    return tiff_header(data, size);
  throw DecodeError("expected a PNG or TIFF file");
}

// What every image of a dataset must be (maefast.data.decode.ImageSpec).
struct ImageSpec {
  int64_t height = 0, width = 0;
  int bytes_per_pixel = 1;  // 1: uint8, 2: uint16

  std::string describe() const {
    return std::to_string(height) + "x" + std::to_string(width) + " uint" + std::to_string(8 * bytes_per_pixel) +
           ", one page";
  }
  // Throws DecodeError "expected <spec>, found <header>" when the header differs.
  void check(const ImageHeader& header) const {
    if (header.height != height || header.width != width || header.samples != 1 || header.pages != 1 ||
        header.dtype != "uint" + std::to_string(8 * bytes_per_pixel))
      throw DecodeError("expected " + describe() + ", found " + header.describe());
  }
};

}  // namespace maefast::decode
