// JPEG and JPEG 2000 channel images: their headers read and checked against the data set's spec and the table
// of formats.h, and their structure checked for truncation, before any decoder sees their bytes. maefast does
// not decode them itself: DALI's decoders do (nvJPEG / nvJPEG2000 on a GPU, libjpeg-turbo / OpenJPEG on the
// CPU), and Pillow in the PyTorch loader; every path runs these checks first, so that a file one path refuses
// the others refuse with the same reason, and no decoder is handed a file of another size or type.
//
// JPEG (ITU T.81): SOI, then marker segments up to the first scan (SOS); the frame header (SOFn) gives the
// process, the sample precision, the size and the components. The file must end with EOI (zero padding after
// it is allowed): a file cut short is refused here, not left to a decoder that would fill the rest with grey.
// EXIF orientation is not read: every path decodes the stored pixels (DALI's adjust_orientation is off).
//
// JPEG 2000 (ITU T.800): a raw codestream (SOC, SIZ, ...) or a JP2 file (boxes: the signature, jp2h with ihdr
// and an optional palette, jp2c holding the codestream). SIZ gives the size, the components, their precision,
// sign and subsampling. The codestream must end with EOC (zero padding after it is allowed).
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
inline uint32_t be32(const uint8_t* p) { return be16(p) << 16 | be16(p + 2); }
inline uint64_t be64(const uint8_t* p) { return static_cast<uint64_t>(be32(p)) << 32 | be32(p + 4); }

// The size of data[0:size] without the zero bytes that pad its end.
inline size_t without_padding(const uint8_t* data, size_t size) {
  while (size > 0 && data[size - 1] == 0) --size;
  return size;
}

// Whether data[0:size] ends with the marker FF <code> (EOI of JPEG, EOC of JPEG 2000: both D9).
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

inline bool is_jpeg2000(const uint8_t* data, size_t size) {
  static constexpr uint8_t kJp2Signature[12] = {0, 0, 0, 12, 'j', 'P', ' ', ' ', 0x0D, 0x0A, 0x87, 0x0A};
  static constexpr uint8_t kCodestream[4] = {0xFF, 0x4F, 0xFF, 0x51};  // SOC, then SIZ
  return (size >= 12 && std::memcmp(data, kJp2Signature, 12) == 0) ||
         (size >= 4 && std::memcmp(data, kCodestream, 4) == 0);
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

// A JPEG 2000 image: its SIZ marker segment (and, in a JP2 file, whether it holds a palette).
struct Jpeg2000Image {
  int64_t height = 0, width = 0;
  int components = 0, precision = 0;
  bool is_signed = false, palette = false;
  uint32_t subsampling_x = 1, subsampling_y = 1;  // of the first component
  const uint8_t* codestream = nullptr;
  size_t codestream_size = 0;

  ImageHeader header() const {
    ImageHeader header;
    header.height = height;
    header.width = width;
    header.samples = components;
    header.dtype = palette ? "palette" : (is_signed ? "int" : "uint") + std::to_string(precision);
    return header;
  }
};

namespace jpeg_detail {

// One box of a JP2 file: its type, payload and where the next box starts.
struct Box {
  uint32_t type = 0;
  const uint8_t* payload = nullptr;
  size_t payload_size = 0, end = 0;
};

inline uint32_t box_type(const char (&name)[5]) { return be32(reinterpret_cast<const uint8_t*>(name)); }

inline std::string box_name(uint32_t type) {
  std::string name(4, ' ');
  for (int i = 0; i < 4; ++i) {
    const char c = static_cast<char>(type >> (24 - 8 * i));
    name[i] = c >= 32 && c < 127 ? c : '?';
  }
  return name;
}

// The box at data[pos:size] (the file, or a superbox's payload).
inline Box read_box(const uint8_t* data, size_t pos, size_t size) {
  if (size - pos < 8) throw DecodeError("truncated JP2 (a box header runs past the end of the file)");
  Box box;
  uint64_t length = be32(data + pos);
  box.type = be32(data + pos + 4);
  size_t header = 8;
  if (length == 1) {  // the length follows as 64 bits
    if (size - pos < 16) throw DecodeError("truncated JP2 (a box header runs past the end of the file)");
    length = be64(data + pos + 8);
    header = 16;
  } else if (length == 0) {  // the box runs to the end
    length = size - pos;
  }
  if (length < header) throw DecodeError("corrupt JP2: box '" + box_name(box.type) + "' shorter than its header");
  if (length > size - pos)
    throw DecodeError("truncated JP2 (box '" + box_name(box.type) + "' of " + std::to_string(length) +
                      " bytes runs past the end of the file)");
  box.payload = data + pos + header;
  box.payload_size = static_cast<size_t>(length) - header;
  box.end = pos + static_cast<size_t>(length);
  return box;
}

}  // namespace jpeg_detail

// Reads a JP2 file's boxes or a raw codestream, then the SIZ marker segment. DecodeError when the structure is
// broken or cut short.
inline Jpeg2000Image jpeg2000_parse(const uint8_t* data, size_t size) {
  using namespace jpeg_detail;
  if (!is_jpeg2000(data, size)) throw DecodeError("not a JPEG 2000 file (no JP2 signature or SOC marker)");
  Jpeg2000Image image;
  if (data[0] == 0xFF) {
    image.codestream = data;
    image.codestream_size = size;
  } else {
    for (size_t pos = 12; image.codestream == nullptr;) {
      if (pos >= size) throw DecodeError("JP2 file has no codestream (no jp2c box)");
      const Box box = read_box(data, pos, size);
      if (box.type == box_type("jp2h")) {
        for (size_t inner = 0; inner < box.payload_size;) {
          const Box child = read_box(box.payload, inner, box.payload_size);
          if (child.type == box_type("pclr")) image.palette = true;
          inner = child.end;
        }
      } else if (box.type == box_type("jp2c")) {
        image.codestream = box.payload;
        image.codestream_size = box.payload_size;
      }
      pos = box.end;
    }
  }
  const uint8_t* cs = image.codestream;
  const size_t cs_size = image.codestream_size;
  if (cs_size < 4 || be16(cs) != 0xFF4F || be16(cs + 2) != 0xFF51)
    throw DecodeError("corrupt JPEG 2000 codestream (no SOC and SIZ markers)");
  // SOC, SIZ, Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz, then 3 bytes per component
  if (cs_size < 42) throw DecodeError("truncated JPEG 2000 codestream (SIZ marker segment)");
  const uint32_t length = be16(cs + 4);
  const uint32_t components = be16(cs + 40);
  if (components == 0 || length != 38 + 3 * components) throw DecodeError("corrupt JPEG 2000 SIZ marker segment");
  if (cs_size < 4 + static_cast<size_t>(length)) throw DecodeError("truncated JPEG 2000 codestream (SIZ marker segment)");
  const uint32_t x = be32(cs + 8), y = be32(cs + 12), x_offset = be32(cs + 16), y_offset = be32(cs + 20);
  if (x <= x_offset || y <= y_offset) throw DecodeError("corrupt JPEG 2000 SIZ marker segment (an empty image)");
  image.width = static_cast<int64_t>(x) - x_offset;
  image.height = static_cast<int64_t>(y) - y_offset;
  image.components = static_cast<int>(components);
  const uint8_t* component = cs + 42;  // the first component's Ssiz, XRsiz, YRsiz
  image.is_signed = (component[0] & 0x80) != 0;
  image.precision = (component[0] & 0x7F) + 1;
  image.subsampling_x = component[1];
  image.subsampling_y = component[2];
  if (image.subsampling_x == 0 || image.subsampling_y == 0)
    throw DecodeError("corrupt JPEG 2000 SIZ marker segment (subsampling 0)");
  return image;
}

// Refuses (FormatError) a JPEG 2000 image that is not `spec`'s image or outside the table of formats.h, and
// (DecodeError) a codestream cut short (no EOC at its end); then the ratio cap.
inline void jpeg2000_check(const Jpeg2000Image& image, size_t size, const ImageSpec& spec) {
  spec.check(image.header());
  if (image.subsampling_x != 1 || image.subsampling_y != 1)
    throw FormatError("JPEG 2000 component subsampled " + std::to_string(image.subsampling_x) + "x" +
                      std::to_string(image.subsampling_y) + "; maefast reads images that are not subsampled");
  if (!jpeg_detail::ends_with_marker(image.codestream, image.codestream_size, 0xD9))
    throw DecodeError("truncated JPEG 2000 codestream (no end-of-codestream marker)");
  spec.check_ratio(size);
}

}  // namespace maefast::decode
