// Headers of the channel files maefast reads (PNG here, TIFF in tiff.h), parsed without decoding, the
// check of an image against what its dataset declares (maefast.data.decode.ImageSpec: height x width,
// uint8 or uint16, one sample per pixel, one page) and the three kinds of refusal every reader reports.
//
// Header-only, C++17, no dependencies. Every read is bounds-checked: the input is untrusted.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "inflate.h"  // DecodeError

namespace maefast::decode {

// How a file is refused, as maefast.data.ImageReadError.kind says it: DecodeError (inflate.h) for data that is
// corrupt or truncated ("unreadable"), FormatError for a well-formed file that is not what the data set
// accepts ("format": another size or type, or a feature outside the table of formats.h), MissingFile when
// there is no file ("missing").
struct FormatError : DecodeError {
  using DecodeError::DecodeError;
};
struct MissingFile : DecodeError {
  using DecodeError::DecodeError;
};

inline const char* kind_of(const DecodeError& error) {
  if (dynamic_cast<const FormatError*>(&error) != nullptr) return "format";
  if (dynamic_cast<const MissingFile*>(&error) != nullptr) return "missing";
  return "unreadable";
}

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
  std::string format;       // "PNG", "TIFF", "JPEG", "JPEG 2000"

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

// What every image of a dataset must be (maefast.data.decode.ImageSpec), and the bounds that follow from it:
// no reader allocates more than the spec's bytes for an image, reads a file larger than such an image can
// take, or decodes a file that claims to expand more than max_ratio-fold.
struct ImageSpec {
  int64_t height = 0, width = 0;
  int bytes_per_pixel = 1;  // 1: uint8, 2: uint16
  double max_ratio = 1100;  // the most decoded bytes per byte of file (maefast.data.decode.max_ratio())

  // What a file may hold beyond its pixels: headers, metadata (OME-XML), a compressor's worst-case growth.
  static constexpr size_t kFileSlack = size_t(64) << 20;

  size_t image_bytes() const { return static_cast<size_t>(height) * static_cast<size_t>(width) * bytes_per_pixel; }
  size_t max_file_bytes() const { return 2 * image_bytes() + kFileSlack; }

  std::string describe() const {
    return std::to_string(height) + "x" + std::to_string(width) + " uint" + std::to_string(8 * bytes_per_pixel) +
           ", one page";
  }
  // Throws FormatError "expected <spec>, found <header>" when the header differs.
  void check(const ImageHeader& header) const {
    if (header.height != height || header.width != width || header.samples != 1 || header.pages != 1 ||
        header.dtype != "uint" + std::to_string(8 * bytes_per_pixel))
      throw FormatError("expected " + describe() + ", found " + header.describe());
  }
  // Throws FormatError when the image would decode to more than max_ratio times the file's size.
  void check_ratio(size_t file_size) const {
    const double ratio = static_cast<double>(image_bytes()) / static_cast<double>(file_size ? file_size : 1);
    if (ratio > max_ratio) {
      throw FormatError("a " + std::to_string(file_size) + "-byte file that decodes to " +
                        std::to_string(image_bytes()) + " bytes (" + std::to_string(static_cast<int64_t>(ratio)) +
                        ":1) exceeds the decompression ratio cap of " +
                        std::to_string(static_cast<int64_t>(max_ratio)) + ":1 (MAEFAST_MAX_DECOMPRESSION_RATIO)");
    }
  }
};

}  // namespace maefast::decode
