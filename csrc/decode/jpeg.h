// JPEG channel images: their headers read and checked against the data set's spec and the table of formats.h,
// and their structure checked for truncation, before any decoder sees their bytes. maefast does not decode them
// itself: DALI's decoders do (nvJPEG on a GPU, libjpeg-turbo on the CPU), and Pillow in the PyTorch loader; every
// path runs these checks first, so that a file one path refuses the others refuse with the same reason, and no
// decoder is handed a file of another size or type. (JPEG 2000: jpeg2000.h, the one parser of every path.)
//
// JPEG (ITU T.81): SOI, then marker segments up to the first scan (SOS); the frame header (SOFn) gives the
// process, the sample precision, the size and the components. The file must end with EOI (zero padding after
// it is allowed): a file cut short is refused here, not left to a decoder that would fill the rest with grey.
// EXIF orientation is not read: every path decodes the stored pixels (DALI's adjust_orientation is off).
//
// Header-only, C++17, no dependencies. Every read is bounds-checked: the input is untrusted.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "formats.h"
#include "header.h"

namespace maefast::decode {

namespace jpeg_detail {

inline uint32_t be16(const uint8_t* p) { return static_cast<uint32_t>(p[0]) << 8 | p[1]; }

// The size of data[0:size] without the zero bytes that pad its end.
inline size_t without_padding(const uint8_t* data, size_t size) {
  while (size > 0 && data[size - 1] == 0) --size;
  return size;
}

// Whether data[0:size] ends with the marker FF <code> (EOI: D9).
inline bool ends_with_marker(const uint8_t* data, size_t size, uint8_t code) {
  size = without_padding(data, size);
  return size >= 2 && data[size - 2] == 0xFF && data[size - 1] == code;
}

inline bool is_frame_header(int marker) {
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

}  // namespace jpeg_detail

inline bool is_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

// A JPEG's frame header (SOFn).
struct JpegImage {
  int process = -1;    // n of the SOFn marker (0: baseline, 1: extended sequential, 2: progressive, ...)
  int precision = 0;   // bits per sample
  int64_t height = 0, width = 0;
  int components = 0;

  ImageHeader header() const {
    ImageHeader header;
    header.height = height;
    header.width = width;
    header.samples = components;
    header.dtype = "uint" + std::to_string(precision);
    return header;
  }
};

// Reads the marker segments up to the first scan. DecodeError when the structure is broken or cut short.
inline JpegImage jpeg_parse(const uint8_t* data, size_t size) {
  using jpeg_detail::be16;
  if (!is_jpeg(data, size)) throw DecodeError("not a JPEG file (no SOI marker)");
  JpegImage image;
  for (size_t pos = 2;;) {
    if (pos >= size || data[pos] != 0xFF)
      throw DecodeError(pos >= size ? "truncated JPEG (no image data)" : "corrupt JPEG: expected a marker at byte " +
                                                                            std::to_string(pos));
    while (pos < size && data[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= size) throw DecodeError("truncated JPEG (no image data)");
    const int marker = data[pos++];
    if (marker == 0xD9) throw DecodeError("corrupt JPEG: it ends before its image data");
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;  // markers without a segment
    if (size - pos < 2) throw DecodeError("truncated JPEG (a segment runs past the end of the file)");
    const uint32_t length = be16(data + pos);
    if (length < 2 || length > size - pos) throw DecodeError("truncated JPEG (a segment runs past the end of the file)");
    const uint8_t* segment = data + pos + 2;
    if (jpeg_detail::is_frame_header(marker)) {
      if (image.process >= 0) throw DecodeError("corrupt JPEG: two frame headers");
      if (length < 8) throw DecodeError("corrupt JPEG: short frame header");
      image.process = marker - 0xC0;
      image.precision = segment[0];
      image.height = be16(segment + 1);
      image.width = be16(segment + 3);
      image.components = segment[5];
      if (length < 8 + 3u * image.components) throw DecodeError("corrupt JPEG: short frame header");
      if (image.width == 0 || image.components == 0) throw DecodeError("corrupt JPEG: an empty frame");
    } else if (marker == 0xDA) {  // SOS: the first scan; the header is complete
      if (image.process < 0) throw DecodeError("corrupt JPEG: image data before the frame header");
      return image;
    }
    pos += length;
  }
}

// Refuses (FormatError) a JPEG that is not `spec`'s image or outside the table of formats.h, and (DecodeError)
// one cut short (no EOI at its end); then the ratio cap.
inline void jpeg_check(const JpegImage& image, const uint8_t* data, size_t size, const ImageSpec& spec) {
  namespace f = formats;
  if (image.height == 0) throw FormatError("JPEG whose height a DNL marker gives is not supported");
  spec.check(image.header());
  if (!f::contains(f::kJpegProcesses, static_cast<uint32_t>(image.process)))
    throw FormatError("JPEG process " + f::describe(image.process, f::kJpegProcesses, f::kJpegProcessNames) +
                      " (SOF" + std::to_string(image.process) + ") is not supported; maefast reads " +
                      f::listing(f::kJpegProcesses));
  if (!jpeg_detail::ends_with_marker(data, size, 0xD9)) throw DecodeError("truncated JPEG (no end-of-image marker)");
  spec.check_ratio(size);
}

}  // namespace maefast::decode
