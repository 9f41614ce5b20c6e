// TIFF channel images: the first IFD parsed strictly, checked against the data set's spec and the table of
// formats.h, and decoded by maefast itself (uncompressed, PackBits, LZW, Deflate; horizontal predictor), so
// that every loader path reads a TIFF the same way and no strip ever expands past the rows it holds.
//
// Structure (DecodeError, "unreadable"): the header, every IFD entry and every strip lie inside the file, no
// tag appears twice, the page chain ends, there are as many strips as the rows need. Kind (FormatError,
// "format"): one page of height x width unsigned 8- or 16-bit samples, one per pixel, as the spec says, then
// the table's compression, predictor, photometric interpretation, orientation, ImageDepth and layout (strips).
//
// Header-only, C++17, no dependencies. Every read is bounds-checked: the input is untrusted.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "formats.h"
#include "header.h"
#include "inflate.h"

namespace maefast::decode {

namespace tiff_detail {

// Reads little- or big-endian unsigned integers of a TIFF file, refusing reads past its end.
struct Reader {
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

inline int type_size(uint64_t type) {
  switch (type) {
    case 1: case 2: case 6: case 7: return 1;  // BYTE, ASCII, SBYTE, UNDEFINED
    case 3: case 8: return 2;                  // SHORT, SSHORT
    case 4: case 9: case 11: case 13: return 4;  // LONG, SLONG, FLOAT, IFD
    case 5: case 10: case 12: return 8;        // RATIONAL, SRATIONAL, DOUBLE
    case 16: case 17: case 18: return 8;       // LONG8, SLONG8, IFD8 (BigTIFF)
    default: return 0;
  }
}

inline const char* tag_name(uint64_t tag) {
  switch (tag) {
    case 256: return "ImageWidth";
    case 257: return "ImageLength";
    case 258: return "BitsPerSample";
    case 259: return "Compression";
    case 262: return "PhotometricInterpretation";
    case 266: return "FillOrder";
    case 273: return "StripOffsets";
    case 274: return "Orientation";
    case 277: return "SamplesPerPixel";
    case 278: return "RowsPerStrip";
    case 279: return "StripByteCounts";
    case 284: return "PlanarConfiguration";
    case 317: return "Predictor";
    case 322: return "TileWidth";
    case 323: return "TileLength";
    case 324: return "TileOffsets";
    case 325: return "TileByteCounts";
    case 339: return "SampleFormat";
    case 32997: return "ImageDepth";
    default: return "";
  }
}

inline std::string describe_tag(uint64_t tag) {
  const std::string name = tag_name(tag);
  return "tag " + std::to_string(tag) + (name.empty() ? "" : " (" + name + ")");
}

// PackBits (Apple's run-length code): exactly out_size bytes, or DecodeError.
inline void packbits_decode(const uint8_t* in, size_t in_size, uint8_t* out, size_t out_size) {
  size_t i = 0, o = 0;
  while (o < out_size) {
    if (i >= in_size) throw DecodeError("truncated PackBits strip: " + std::to_string(o) + " of " +
                                        std::to_string(out_size) + " bytes decoded");
    const int n = static_cast<int8_t>(in[i++]);
    if (n >= 0) {
      const size_t count = static_cast<size_t>(n) + 1;
      if (count > in_size - i) throw DecodeError("truncated PackBits strip (literal run)");
      if (count > out_size - o) throw DecodeError("PackBits strip decodes to more bytes than its rows hold");
      std::memcpy(out + o, in + i, count);
      i += count;
      o += count;
    } else if (n != -128) {
      const size_t count = static_cast<size_t>(1 - n);
      if (i >= in_size) throw DecodeError("truncated PackBits strip (repeat run)");
      if (count > out_size - o) throw DecodeError("PackBits strip decodes to more bytes than its rows hold");
      std::memset(out + o, in[i++], count);
      o += count;
    }
  }
}

// TIFF's LZW (codes of 9 to 12 bits, most significant bit first, the code width growing one code early, as
// libtiff writes): exactly out_size bytes, or DecodeError. Each table entry is a run of the output already
// written (an entry is the previous code's string plus the next string's first byte, which is what follows
// that string in the output), so decoding is copying.
inline void lzw_decode(const uint8_t* in, size_t in_size, uint8_t* out, size_t out_size) {
  constexpr uint32_t kClear = 256, kEnd = 257, kFirst = 258, kTableSize = 4096;
  std::vector<uint64_t> start(kTableSize), length(kTableSize);
  uint32_t next = kFirst, width = 9;
  uint64_t bits = 0;
  int available = 0;
  size_t i = 0, o = 0;
  int64_t previous = -1;
  auto truncated = [&] {
    return DecodeError("truncated LZW strip: " + std::to_string(o) + " of " + std::to_string(out_size) +
                       " bytes decoded");
  };
  for (;;) {
    while (available < static_cast<int>(width) && i < in_size) {
      bits = bits << 8 | in[i++];
      available += 8;
    }
    if (available < static_cast<int>(width)) {  // the input ended without an end-of-information code
      if (o != out_size) throw truncated();
      return;
    }
    const uint32_t code = static_cast<uint32_t>(bits >> (available - width)) & ((1u << width) - 1);
    available -= width;
    if (code == kEnd) break;
    if (code == kClear) {
      next = kFirst;
      width = 9;
      previous = -1;
      continue;
    }
    uint64_t from, count;
    if (code < 256) {
      from = o;  // a literal: written below, then it is its own entry
      count = 1;
    } else if (code < next) {
      from = start[code];
      count = length[code];
    } else if (code == next && previous >= 0) {  // the entry being defined: previous string + its first byte
      from = start[previous];
      count = length[previous] + 1;
    } else {
      throw DecodeError("corrupt LZW strip: code " + std::to_string(code) + " before it is defined");
    }
    if (count > out_size - o) throw DecodeError("LZW strip decodes to more bytes than its rows hold");
    if (code < 256) {
      out[o] = static_cast<uint8_t>(code);
    } else {
      for (uint64_t k = 0; k < count; ++k) out[o + k] = out[from + k];  // may overlap (code == next)
    }
    if (previous >= 0 && next < kTableSize) {  // a full table takes no more entries until a clear code
      start[next] = start[previous];
      length[next] = length[previous] + 1;
      ++next;
      if (next + 1 >= (1u << width) && width < 12) ++width;  // early change
    }
    if (code < 256) {
      start[code] = o;
      length[code] = 1;
    }
    previous = code;
    o += count;
  }
  if (o != out_size) throw truncated();
}

}  // namespace tiff_detail

// The first IFD of a TIFF file: what maefast needs to check and decode it.
struct TiffImage {
  bool big_endian = false;
  int64_t width = 0, height = 0, pages = 0;
  uint64_t bits = 1, samples = 1, sample_format = 1, compression = 1, photometric = 1, predictor = 1;
  uint64_t orientation = 1, planar = 1, fill_order = 1, image_depth = 1, rows_per_strip = UINT32_MAX;
  bool tiled = false, has_offsets = false, has_counts = false;
  std::vector<uint64_t> offsets, counts;

  ImageHeader header() const {
    ImageHeader header;
    header.width = width;
    header.height = height;
    header.samples = static_cast<int>(std::min<uint64_t>(samples, 1u << 16));
    const char* kind = photometric == 3 ? "palette" : sample_format == 1 ? "uint" : sample_format == 2 ? "int"
                                                    : sample_format == 3 ? "float" : "void";
    header.dtype = photometric == 3 ? kind : kind + std::to_string(bits);
    header.pages = pages;
    return header;
  }
};

// Parses the first IFD and counts the pages. DecodeError when the structure is broken.
inline TiffImage tiff_parse(const uint8_t* data, size_t size) {
  using tiff_detail::Reader;
  if (size < 8 || !((data[0] == 'I' && data[1] == 'I') || (data[0] == 'M' && data[1] == 'M')))
    throw DecodeError("not a TIFF file (bad byte order mark)");
  TiffImage image;
  image.big_endian = data[0] == 'M';
  Reader tiff{data, size, image.big_endian};
  const uint64_t version = tiff.read(2, 2);
  if (version != 42 && version != 43) throw DecodeError("not a TIFF file (bad version)");
  const bool big = version == 43;  // BigTIFF: 8-byte offsets and counts
  if (big && (tiff.read(4, 2) != 8 || tiff.read(6, 2) != 0)) throw DecodeError("corrupt BigTIFF header");
  const int offset_size = big ? 8 : 4, count_size = big ? 8 : 2, entry_size = big ? 20 : 12;
  const uint64_t first = tiff.read(big ? 8 : 4, offset_size);
  if (first == 0) throw DecodeError("TIFF file has no image (no first IFD)");

  const uint64_t entries = tiff.read(first, count_size);
  if (entries > (size - first) / entry_size) throw DecodeError("truncated TIFF header (IFD)");
  std::vector<bool> seen(1 << 16);  // tags are 16-bit: a bitmap keeps the check linear in the entries
  for (uint64_t i = 0; i < entries; ++i) {
    const uint64_t entry = first + count_size + i * entry_size;
    const uint64_t tag = tiff.read(entry, 2), type = tiff.read(entry + 2, 2);
    const uint64_t count = tiff.read(entry + 4, offset_size);
    if (seen[tag])
      throw DecodeError("corrupt TIFF: " + tiff_detail::describe_tag(tag) + " appears twice in the first IFD");
    seen[tag] = true;
    const int type_bytes = tiff_detail::type_size(type);
    if (type_bytes == 0 || count == 0) continue;  // unknown types are skipped, as libtiff does
    // The values: in the entry itself when they fit there, else at the offset it holds, inside the file.
    uint64_t at = entry + 4 + offset_size;
    if (count > static_cast<uint64_t>(offset_size / type_bytes)) {
      at = tiff.read(at, offset_size);
      if (count > size / type_bytes || at > size - count * type_bytes)
        throw DecodeError("corrupt TIFF: the values of " + tiff_detail::describe_tag(tag) + " lie outside the file");
    }
    const bool integral = type == 1 || type == 3 || type == 4 || type == 16;
    auto value = [&](uint64_t k) { return tiff.read(at + k * type_bytes, type_bytes); };
    auto single = [&]() -> uint64_t {
      if (!integral) throw DecodeError("corrupt TIFF: " + tiff_detail::describe_tag(tag) + " is not an integer");
      return value(0);
    };
    auto array = [&](std::vector<uint64_t>& out) {
      if (!integral) throw DecodeError("corrupt TIFF: " + tiff_detail::describe_tag(tag) + " is not an integer");
      out.resize(count);
      for (uint64_t k = 0; k < count; ++k) out[k] = value(k);
    };
    switch (tag) {
      case 256: image.width = static_cast<int64_t>(single()); break;
      case 257: image.height = static_cast<int64_t>(single()); break;
      case 258: image.bits = single(); break;  // one value per sample; the first describes the type
      case 259: image.compression = single(); break;
      case 262: image.photometric = single(); break;
      case 266: image.fill_order = single(); break;
      case 273: array(image.offsets); image.has_offsets = true; break;
      case 274: image.orientation = single(); break;
      case 277: image.samples = single(); break;
      case 278: image.rows_per_strip = single(); break;
      case 279: array(image.counts); image.has_counts = true; break;
      case 284: image.planar = single(); break;
      case 317: image.predictor = single(); break;
      case 322: case 323: case 324: case 325: image.tiled = true; break;
      case 339: image.sample_format = single(); break;
      case 32997: image.image_depth = single(); break;
      default: break;
    }
  }
  // Count the pages; a chain longer than the file could hold loops.
  const uint64_t max_pages = size / (count_size + offset_size) + 1;
  for (uint64_t ifd = first; ifd != 0; ++image.pages) {
    if (static_cast<uint64_t>(image.pages) >= max_pages) throw DecodeError("corrupt TIFF: its pages form a loop");
    const uint64_t count = tiff.read(ifd, count_size);
    if (count > (size - ifd) / entry_size) throw DecodeError("truncated TIFF header (IFD)");
    ifd = tiff.read(ifd + count_size + count * entry_size, offset_size);
  }
  return image;
}

// Refuses (FormatError) a TIFF that is not `spec`'s image or outside the table of formats.h, and (DecodeError)
// strips that do not fit the file or the rows; then the ratio cap.
inline void tiff_check(const TiffImage& image, size_t file_size, const ImageSpec& spec) {
  namespace f = formats;
  spec.check(image.header());
  if (!f::contains(f::kTiffCompressions, static_cast<uint32_t>(image.compression)))
    throw FormatError("TIFF compression " + f::describe(image.compression, f::kTiffCompressions,
                                                        f::kTiffCompressionNames) +
                      " is not supported; maefast reads " + f::listing(f::kTiffCompressions));
  if (!f::contains(f::kTiffPhotometrics, static_cast<uint32_t>(image.photometric)))
    throw FormatError("TIFF photometric interpretation " + f::describe(image.photometric, f::kTiffPhotometrics,
                                                                       f::kTiffPhotometricNames) +
                      "; maefast reads " + f::listing(f::kTiffPhotometrics));
  if (!f::contains(f::kTiffOrientations, static_cast<uint32_t>(image.orientation)))
    throw FormatError("TIFF orientation " + f::describe(image.orientation, f::kTiffOrientations,
                                                        f::kTiffOrientationNames) +
                      "; maefast reads " + f::listing(f::kTiffOrientations) + " (re-save without the Orientation tag)");
  if (image.image_depth != 1)
    throw FormatError("TIFF ImageDepth " + std::to_string(image.image_depth) + " (a volume); maefast reads 2-D images");
  if (!f::contains(f::kTiffPlanarConfigurations, static_cast<uint32_t>(image.planar)))
    throw FormatError("TIFF planar configuration " + std::to_string(image.planar));
  if (image.fill_order != 1) throw FormatError("TIFF fill order " + std::to_string(image.fill_order) + " (bit-reversed)");
  if (!f::contains(f::kTiffPredictors, static_cast<uint32_t>(image.predictor)))
    throw FormatError("TIFF predictor " + std::to_string(image.predictor) + " is not supported; maefast reads " +
                      f::listing(f::kTiffPredictors));
  if (image.predictor == 2 && image.compression != 5 && image.compression != 8 && image.compression != 32946)
    throw FormatError("TIFF predictor 2 with compression " + std::to_string(image.compression) +
                      " (a predictor goes with LZW or Deflate)");
  if (image.tiled) throw FormatError("tiled TIFF is not supported (maefast reads TIFFs in strips)");
  if (!image.has_offsets || !image.has_counts) throw DecodeError("corrupt TIFF: no StripOffsets or StripByteCounts");
  const uint64_t rows = image.rows_per_strip == 0 ? 0 : std::min<uint64_t>(image.rows_per_strip, image.height);
  if (rows == 0) throw DecodeError("corrupt TIFF: RowsPerStrip 0");
  const uint64_t strips = (static_cast<uint64_t>(image.height) + rows - 1) / rows;
  if (image.offsets.size() != strips || image.counts.size() != strips)
    throw DecodeError("corrupt TIFF: " + std::to_string(image.offsets.size()) + " strip offsets and " +
                      std::to_string(image.counts.size()) + " byte counts for the " + std::to_string(strips) +
                      " strips of " + std::to_string(image.height) + " rows");
  for (size_t s = 0; s < strips; ++s) {
    if (image.offsets[s] > file_size || image.counts[s] > file_size - image.offsets[s])
      throw DecodeError("corrupt TIFF: strip " + std::to_string(s) + " (offset " + std::to_string(image.offsets[s]) +
                        ", " + std::to_string(image.counts[s]) + " bytes) lies outside the " +
                        std::to_string(file_size) + "-byte file");
  }
  spec.check_ratio(file_size);
}

// Decodes the checked image into out: spec.image_bytes() bytes plus kInflateSlack, native-endian samples.
inline void tiff_decode(const TiffImage& image, const uint8_t* data, const ImageSpec& spec, uint8_t* out) {
  const size_t row_bytes = static_cast<size_t>(spec.width) * spec.bytes_per_pixel;
  const uint64_t rows = std::min<uint64_t>(image.rows_per_strip, image.height);
  for (size_t s = 0; s < image.offsets.size(); ++s) {
    const uint64_t strip_rows = std::min<uint64_t>(rows, image.height - s * rows);
    const size_t expected = strip_rows * row_bytes;
    const uint8_t* in = data + image.offsets[s];
    const size_t count = image.counts[s];
    uint8_t* target = out + s * rows * row_bytes;
    try {
      switch (image.compression) {
        case 1:
          if (count < expected)
            throw DecodeError("truncated strip: " + std::to_string(count) + " of " + std::to_string(expected) + " bytes");
          std::memcpy(target, in, expected);
          break;
        case 32773: tiff_detail::packbits_decode(in, count, target, expected); break;
        case 5: tiff_detail::lzw_decode(in, count, target, expected); break;
        default: zlib_inflate(in, count, target, expected); break;  // 8, 32946: Deflate (zlib streams)
      }
    } catch (const DecodeError& error) {
      throw DecodeError("TIFF strip " + std::to_string(s) + ": " + error.what());
    }
  }
  const size_t total = static_cast<size_t>(spec.height) * row_bytes;
  if (spec.bytes_per_pixel == 2 && image.big_endian) {
    for (size_t i = 0; i < total; i += 2) std::swap(out[i], out[i + 1]);
  }
  if (image.predictor == 2) {  // horizontal differencing: each sample is stored as its difference from the left
    for (int64_t y = 0; y < spec.height; ++y) {
      uint8_t* row = out + y * row_bytes;
      if (spec.bytes_per_pixel == 1) {
        for (int64_t x = 1; x < spec.width; ++x) row[x] = static_cast<uint8_t>(row[x] + row[x - 1]);
      } else {
        uint16_t left, value;
        std::memcpy(&left, row, 2);
        for (int64_t x = 1; x < spec.width; ++x) {
          std::memcpy(&value, row + 2 * x, 2);
          left = static_cast<uint16_t>(value + left);
          std::memcpy(row + 2 * x, &left, 2);
        }
      }
    }
  }
}

// The header of a TIFF file, in ImageHeader's terms (DecodeError when its structure is broken).
inline ImageHeader tiff_header(const uint8_t* data, size_t size) { return tiff_parse(data, size).header(); }

}  // namespace maefast::decode
