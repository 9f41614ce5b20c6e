// PNG decoding of single-channel microscopy images: grayscale, 8 or 16 bit, not interlaced (what
// RxRx-style screens store, and the table of csrc/decode/formats.h). Other PNG kinds raise FormatError
// naming what is unsupported; corrupt or truncated files DecodeError.
//
// The decoder checks what Pillow checks, so a file that Pillow refuses is refused here too: the
// signature, a complete IHDR, whole chunks with valid names and checksums before the image data, one run
// of IDAT chunks, no truncated chunk after it, a zlib stream that zlib accepts (header, complete Huffman
// codes) with a matching Adler-32, exactly height rows of data, valid filter types. It checks more than
// Pillow in places (the Adler-32 of a stream whose rows are complete before it ends). Fuzzed by
// csrc/fuzz/fuzz_png.cc against zlib. It returns native-endian pixels.
#pragma once

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "formats.h"
#include "header.h"
#include "inflate.h"

namespace maefast::decode {

struct PngInfo {
  int width = 0;
  int height = 0;
  int bytes_per_pixel = 0;  // 1 (8-bit) or 2 (16-bit)
};

namespace png_detail {

using header_detail::be32;

inline bool is_chunk_name(const uint8_t* type) {  // four of [A-Za-z0-9_], as Pillow requires
  for (int i = 0; i < 4; ++i) {
    const uint8_t c = type[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

// CRC-32 of PNG chunks (ISO 3309, reflected polynomial 0xEDB88320), table-driven.
inline uint32_t chunk_crc(const uint8_t* data, size_t size) {
  static const auto table = [] {
    std::array<uint32_t, 256> entries{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      entries[n] = c;
    }
    return entries;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// The Paeth predictor without branches (noisy images make its branches unpredictable): with
// p = left + up - up_left, the distances |p - left|, |p - up|, |p - up_left| are these.
inline int paeth(int left, int up, int up_left) {
  const int to_left = std::abs(up - up_left), to_up = std::abs(left - up_left);
  const int to_up_left = std::abs(left + up - 2 * up_left);
  const int up_or_up_left = to_up <= to_up_left ? up : up_left;
  return (to_left <= to_up) & (to_left <= to_up_left) ? left : up_or_up_left;
}

// The filters that predict from the left neighbour (Sub, Average, Paeth). The last Bpp reconstructed bytes
// and the bytes above them stay in registers: reloading out[i - Bpp] just after storing it would put a
// store-to-load forwarding delay on the chain from each byte to the next.
template <int Bpp, typename Predict>
inline void unfilter_from_left(const uint8_t* row, const uint8_t* prior, uint8_t* out, int length, Predict predict) {
  int left[Bpp] = {}, up_left[Bpp] = {};  // zeros left of the first pixel
  for (int i = 0; i < length; i += Bpp) {
    for (int k = 0; k < Bpp; ++k) {
      const int up = prior[i + k];
      const int value = (row[i + k] + predict(left[k], up, up_left[k])) & 0xFF;
      out[i + k] = static_cast<uint8_t>(value);
      left[k] = value;
      up_left[k] = up;
    }
  }
}

template <int Bpp>
inline void unfilter_row(int filter, const uint8_t* row, const uint8_t* prior, uint8_t* out, int length) {
  switch (filter) {
    case 0:
      std::memcpy(out, row, length);
      return;
    case 1:
      unfilter_from_left<Bpp>(row, prior, out, length, [](int left, int, int) { return left; });
      return;
    case 2:
      for (int i = 0; i < length; ++i) out[i] = static_cast<uint8_t>(row[i] + prior[i]);
      return;
    case 3:
      unfilter_from_left<Bpp>(row, prior, out, length, [](int left, int up, int) { return (left + up) >> 1; });
      return;
    case 4:
      unfilter_from_left<Bpp>(row, prior, out, length, paeth);
      return;
    default:
      throw DecodeError("corrupt PNG: invalid row filter type " + std::to_string(filter));
  }
}

// Reverses the PNG row filter of one row: `row` holds the filtered bytes, `prior` the previous row's
// reconstructed bytes (zeros for the first row); the result goes to `out`. bpp: 1 or 2 bytes per pixel.
inline void unfilter_row(int filter, const uint8_t* row, const uint8_t* prior, uint8_t* out, int length, int bpp) {
  if (bpp == 1) unfilter_row<1>(filter, row, prior, out, length);
  else unfilter_row<2>(filter, row, prior, out, length);
}

}  // namespace png_detail

// Decodes PNG files; keeps its buffers between calls (one decoder per thread).
class PngDecoder {
 public:
  // Reads the header only; refuses what this decoder does not decode (FormatError: outside formats.h's table).
  static PngInfo info(const uint8_t* data, size_t size) {
    const PngHeader header = png_header(data, size);
    const uint32_t width = header.width, height = header.height;
    if (width == 0 || height == 0 || width > (1u << 20) || height > (1u << 20))
      throw DecodeError("PNG has an invalid size " + std::to_string(width) + "x" + std::to_string(height));
    if (header.color != 0)
      throw FormatError("PNG color type " + std::to_string(header.color) + " is not single-channel grayscale");
    if (!formats::contains(formats::kPngBitDepths, header.depth))
      throw FormatError("PNG bit depth " + std::to_string(header.depth) + " (need 8 or 16)");
    if (header.compression != 0 || header.filter != 0)
      throw DecodeError("corrupt PNG: unknown compression or filter method");
    if (header.interlace != 0) throw FormatError("interlaced PNG is not supported (re-save without interlacing)");
    if (header.frames != 1) throw FormatError("animated PNG (" + std::to_string(header.frames) + " frames)");
    PngInfo info;
    info.width = static_cast<int>(width);
    info.height = static_cast<int>(height);
    info.bytes_per_pixel = header.depth / 8;
    return info;
  }

  // Decodes into pixels(): height x width native-endian uint8 or uint16 values, whatever size the header says
  // (up to 2^20 x 2^20: for tests and tools; the loaders decode against their data set's spec, below).
  PngInfo decode(const uint8_t* data, size_t size) {
    PngInfo png = info(data, size);
    size_t stream_size = 0;
    const uint8_t* stream = image_stream(data, size, png, stream_size);
    pixels_.resize(static_cast<size_t>(png.width) * png.bytes_per_pixel * png.height);
    decode_into(stream, stream_size, png, pixels_.data());
    return png;
  }

  // Decodes an image that must be what `spec` says into out (spec.image_bytes() bytes): the header is checked
  // against the spec, and the compressed size against its ratio cap, before anything of the image's size is
  // allocated, and the inflate stops at the spec's bytes.
  void decode(const uint8_t* data, size_t size, const ImageSpec& spec, uint8_t* out) {
    spec.check(image_header_of_png(png_header(data, size)));
    const PngInfo png = info(data, size);
    spec.check_ratio(size);
    size_t stream_size = 0;
    const uint8_t* stream = image_stream(data, size, png, stream_size);
    decode_into(stream, stream_size, png, out);
  }

  const uint8_t* pixels() const { return pixels_.data(); }

 private:
  // The zlib stream of the image data, refused when it is too short to inflate to the image's size (before
  // anything of that size is allocated).
  const uint8_t* image_stream(const uint8_t* data, size_t size, const PngInfo& png, size_t& stream_size) {
    const uint8_t* stream = image_data(data, size, stream_size);
    const size_t filtered_size = (static_cast<size_t>(png.width) * png.bytes_per_pixel + 1) * png.height;
    if (!can_inflate_to(stream_size, filtered_size)) {
      throw DecodeError("corrupt PNG: " + std::to_string(stream_size) + " bytes of image data cannot hold a " +
                        std::to_string(png.width) + "x" + std::to_string(png.height) + " image");
    }
    return stream;
  }

  void decode_into(const uint8_t* stream, size_t stream_size, const PngInfo& png, uint8_t* out) {
    using namespace png_detail;
    const size_t row_bytes = static_cast<size_t>(png.width) * png.bytes_per_pixel;
    const size_t filtered_size = (row_bytes + 1) * png.height;
    filtered_.resize(filtered_size + kInflateSlack);
    zlib_inflate(stream, stream_size, filtered_.data(), filtered_size);
    zero_row_.assign(row_bytes, 0);  // the "prior" of row 0
    for (int y = 0; y < png.height; ++y) {
      const uint8_t* row = filtered_.data() + (row_bytes + 1) * y;
      uint8_t* target = out + row_bytes * y;
      unfilter_row(row[0], row + 1, y ? target - row_bytes : zero_row_.data(), target, static_cast<int>(row_bytes),
                   png.bytes_per_pixel);
    }
    if (png.bytes_per_pixel == 2) {  // PNG stores 16-bit samples big-endian
      for (size_t i = 0; i < row_bytes * png.height; i += 2) std::swap(out[i], out[i + 1]);
    }
  }

  // The zlib stream: the data of the first run of consecutive IDAT chunks. Checks the chunks as Pillow
  // does, so that what Pillow refuses is refused: before the image data every chunk must be whole with a
  // valid name and checksum; after it, a named chunk must not run past the end of the file (IEND, the end
  // of the file or bytes that are not a chunk name end the walk; later checksums are not read).
  const uint8_t* image_data(const uint8_t* data, size_t size, size_t& stream_size) {
    using namespace png_detail;
    size_t pos = 8;
    for (;; pos += 12 + static_cast<size_t>(be32(data + pos))) {  // the chunks before the image data
      if (size - pos < 8) throw DecodeError("truncated PNG (no image data)");
      const uint32_t length = be32(data + pos);
      const uint8_t* type = data + pos + 4;
      if (!is_chunk_name(type)) throw DecodeError("corrupt PNG: invalid chunk name before the image data");
      if (std::memcmp(type, "IEND", 4) == 0) throw DecodeError("PNG has no image data (no IDAT chunk)");
      const bool image = std::memcmp(type, "IDAT", 4) == 0;
      if (length > size - pos - 8)
        throw DecodeError(image ? "truncated PNG (image data cut short)" : "truncated PNG (chunk runs past the end of the file)");
      if (image) break;
      if (size - pos - 8 - length < 4) throw DecodeError("truncated PNG (chunk checksum missing)");
      if (chunk_crc(type, length + 4) != be32(data + pos + 8 + length))
        throw DecodeError("corrupt PNG: bad checksum of chunk " + std::string(reinterpret_cast<const char*>(type), 4));
    }
    const uint8_t* stream = data + pos + 8;
    stream_size = be32(data + pos);
    idat_.clear();
    for (pos += 12 + stream_size; pos < size && size - pos >= 8;) {  // further IDAT chunks of the run
      const uint32_t length = be32(data + pos);
      if (std::memcmp(data + pos + 4, "IDAT", 4) != 0) break;
      if (length > size - pos - 8) throw DecodeError("truncated PNG (image data cut short)");
      if (idat_.empty()) idat_.assign(stream, stream + stream_size);
      idat_.insert(idat_.end(), data + pos + 8, data + pos + 8 + length);
      pos += 12 + static_cast<size_t>(length);
    }
    for (; pos < size && size - pos >= 8; pos += 12 + static_cast<size_t>(be32(data + pos))) {  // after it
      const uint8_t* type = data + pos + 4;
      if (!is_chunk_name(type) || std::memcmp(type, "IEND", 4) == 0) break;
      if (be32(data + pos) > size - pos - 8) throw DecodeError("truncated PNG (chunk runs past the end of the file)");
    }
    if (idat_.empty()) return stream;
    stream_size = idat_.size();
    return idat_.data();
  }

  std::vector<uint8_t> idat_, filtered_, pixels_, zero_row_;
};

}  // namespace maefast::decode
