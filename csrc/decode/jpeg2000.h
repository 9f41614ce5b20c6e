// JPEG 2000 channel images (RxRx3-core stores one per channel and site): the header and the codestream's
// structure read and checked against the data set's spec and the table of formats.h, without decoding. The
// decoding itself is imagecodecs' (OpenJPEG, maefast.data.rxrx3_core); this check comes first on every path, so
// that a header claiming a huge image, a truncated or malformed codestream or a file that would expand more
// than the ratio cap is refused with the same named reason everywhere, before the decoder allocates anything.
//
// Two forms: a JP2 file (boxes: the signature, ftyp, jp2h holding ihdr, then the codestream in jp2c) or a raw
// codestream (J2K). The codestream's SIZ marker gives the size, components and bit depth; a JP2's ihdr box
// must agree with it. Structure (DecodeError, "unreadable"): every box, marker segment and tile-part lies inside
// the data, every tile has a tile-part, and the codestream ends with its end marker. Kind (FormatError,
// "format"): the spec's size and dtype: one component (no palette, not subsampled) of unsigned samples of a
// depth the table lists (8 bits: uint8; 9 to 16 bits: uint16); at most kJpeg2000MaxTiles tiles; the ratio cap.
//
// One entry point per step: jpeg2000_header (bytes -> ImageHeader), jpeg2000_parse and jpeg2000_check; the
// refusals are worded as the JPEG / JPEG 2000 checks of the DALI decoder path word them, so that one parser can
// serve both.
//
// Header-only, C++17, no dependencies. Every read is bounds-checked: the input is untrusted.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "formats.h"
#include "header.h"

namespace maefast::decode {

struct Jpeg2000Image {
  int64_t width = 0, height = 0;
  int components = 0, precision = 0;  // precision: bits per sample of the first component
  bool is_signed = false;              // of the first component
  bool palette = false;                // a JP2 palette (pclr) box: the decoder would expand indices to colours
  uint32_t subsampling_x = 1, subsampling_y = 1;  // of the first component
  uint64_t tiles = 0;

  ImageHeader header() const {
    ImageHeader header;
    header.width = width;
    header.height = height;
    header.samples = components;
    // the table's depths decode to 8- or 16-bit samples (12 bits: uint16 holding values below 4096)
    const int sample_bits =
        !formats::contains(formats::kJpeg2000BitDepths, precision) ? precision : precision <= 8 ? 8 : 16;
    header.dtype = palette ? "palette" : (is_signed ? "int" : "uint") + std::to_string(sample_bits);
    return header;
  }
};

namespace jpeg2000_detail {

inline uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t be32(const uint8_t* p) { return header_detail::be32(p); }

constexpr uint8_t kJp2Signature[12] = {0, 0, 0, 12, 'j', 'P', ' ', ' ', 13, 10, 0x87, 10};
constexpr uint8_t kCodestreamStart[4] = {0xFF, 0x4F, 0xFF, 0x51};  // SOC, then SIZ

// One box of a JP2 file: its type and contents [begin, end) inside the data.
struct Box {
  std::string type;  // printable: other bytes show as '?'
  size_t begin = 0, end = 0;
};

// The box at pos of data[0:end]; DecodeError when its length runs past end.
inline Box read_box(const uint8_t* data, size_t pos, size_t end) {
  if (end - pos < 8) throw DecodeError("truncated JP2 (a box header runs past the end of the file)");
  Box box;
  for (int i = 4; i < 8; ++i) box.type += data[pos + i] >= 32 && data[pos + i] < 127 ? char(data[pos + i]) : '?';
  uint64_t length = be32(data + pos);
  size_t header = 8;
  if (length == 1) {  // the length follows as 8 bytes
    if (end - pos < 16) throw DecodeError("truncated JP2 (a box header runs past the end of the file)");
    length = static_cast<uint64_t>(be32(data + pos + 8)) << 32 | be32(data + pos + 12);
    header = 16;
  } else if (length == 0) {  // the last box: to the end
    length = end - pos;
  }
  if (length < header) throw DecodeError("corrupt JP2: box '" + box.type + "' shorter than its header");
  if (length > end - pos)
    throw DecodeError("truncated JP2 (box '" + box.type + "' of " + std::to_string(length) +
                      " bytes runs past the end of the file)");
  box.begin = pos + header;
  box.end = pos + static_cast<size_t>(length);
  return box;
}

// Checks the codestream in data[begin:end] and fills image from its SIZ marker.
inline void read_codestream(const uint8_t* data, size_t begin, size_t end, Jpeg2000Image& image) {
  const uint8_t* cs = data + begin;
  const size_t size = end - begin;
  if (size < 4 || std::memcmp(cs, kCodestreamStart, 4) != 0)
    throw DecodeError("corrupt JPEG 2000 codestream (no SOC and SIZ markers)");
  if (size < 42) throw DecodeError("truncated JPEG 2000 codestream (SIZ marker segment)");
  const size_t siz_length = be16(cs + 4);
  const uint8_t* siz = cs + 6;  // Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz, components
  const uint64_t x = be32(siz + 2), y = be32(siz + 6), x0 = be32(siz + 10), y0 = be32(siz + 14);
  const uint64_t tile_w = be32(siz + 18), tile_h = be32(siz + 22), tile_x0 = be32(siz + 26), tile_y0 = be32(siz + 30);
  const int components = be16(siz + 34);
  if (components == 0 || siz_length != 38 + 3 * static_cast<size_t>(components))
    throw DecodeError("corrupt JPEG 2000 SIZ marker segment");
  if (siz_length > size - 4) throw DecodeError("truncated JPEG 2000 codestream (SIZ marker segment)");
  if (x <= x0 || y <= y0) throw DecodeError("corrupt JPEG 2000 SIZ marker segment (an empty image)");
  if (tile_w == 0 || tile_h == 0 || tile_x0 > x0 || tile_y0 > y0 || tile_x0 + tile_w <= x0 || tile_y0 + tile_h <= y0)
    throw DecodeError("corrupt JPEG 2000 SIZ marker segment (its tile grid does not cover the image)");
  image.width = static_cast<int64_t>(x - x0);
  image.height = static_cast<int64_t>(y - y0);
  image.components = components;
  const uint8_t* first = siz + 36;
  image.precision = (first[0] & 0x7F) + 1;
  image.is_signed = (first[0] & 0x80) != 0;
  image.subsampling_x = first[1];
  image.subsampling_y = first[2];
  if (image.subsampling_x == 0 || image.subsampling_y == 0)
    throw DecodeError("corrupt JPEG 2000 SIZ marker segment (subsampling 0)");
  image.tiles = ((x - tile_x0 + tile_w - 1) / tile_w) * ((y - tile_y0 + tile_h - 1) / tile_h);
  if (image.tiles > formats::kJpeg2000MaxTiles) return;  // refused by the check, before the tile-parts are walked

  // The main header's marker segments, up to the first tile-part (SOT).
  size_t pos = 4 + siz_length;
  for (;;) {
    if (size - pos < 4) throw DecodeError("truncated JPEG 2000 codestream (in its main header)");
    const uint16_t marker = be16(cs + pos);
    if (marker == 0xFF90) break;
    if ((marker >> 8) != 0xFF || (marker & 0xFF) < 0x50)  // main header markers (COD, QCD, COM, ...) have segments
      throw DecodeError("corrupt JPEG 2000 codestream: no marker segment at byte " + std::to_string(pos));
    const size_t length = be16(cs + pos + 2);
    if (length < 2 || length > size - pos - 2)
      throw DecodeError("truncated JPEG 2000 codestream (a main header marker runs past its end)");
    pos += 2 + length;
  }
  // The tile-parts: SOT (Lsot = 10, tile index, tile-part length Psot, ...), each inside the codestream, then EOC.
  std::vector<bool> seen(image.tiles, false);
  for (;;) {
    if (size - pos < 2) throw DecodeError("truncated JPEG 2000 codestream (no end-of-codestream marker)");
    const uint16_t marker = be16(cs + pos);
    if (marker == 0xFFD9) break;
    if (marker != 0xFF90)
      throw DecodeError("corrupt JPEG 2000 codestream: expected a tile-part or its end at byte " + std::to_string(pos));
    if (size - pos < 12 || be16(cs + pos + 2) != 10)
      throw DecodeError("truncated JPEG 2000 codestream (in a tile-part header)");
    const uint32_t tile = be16(cs + pos + 4);
    uint64_t length = be32(cs + pos + 6);
    if (tile >= image.tiles)
      throw DecodeError("corrupt JPEG 2000 codestream: tile-part of tile " + std::to_string(tile) + " of " +
                        std::to_string(image.tiles));
    if (length == 0) {  // the last tile-part: up to the end-of-codestream marker
      if (size - pos < 14 || be16(cs + size - 2) != 0xFFD9)
        throw DecodeError("truncated JPEG 2000 codestream (no end-of-codestream marker)");
      length = size - 2 - pos;
    }
    if (length < 14 || length > size - pos)
      throw DecodeError("truncated JPEG 2000 codestream: tile-part of tile " + std::to_string(tile) + " (" +
                        std::to_string(length) + " bytes at byte " + std::to_string(pos) + ") runs past the end of the " +
                        std::to_string(size) + "-byte codestream");
    seen[tile] = true;
    pos += static_cast<size_t>(length);
  }
  for (uint64_t tile = 0; tile < image.tiles; ++tile)
    if (!seen[tile])
      throw DecodeError("corrupt JPEG 2000 codestream: no data for tile " + std::to_string(tile) + " of " +
                        std::to_string(image.tiles));
}

}  // namespace jpeg2000_detail

inline bool is_jpeg2000(const uint8_t* data, size_t size) {
  using namespace jpeg2000_detail;
  return (size >= 12 && std::memcmp(data, kJp2Signature, 12) == 0) ||
         (size >= 4 && std::memcmp(data, kCodestreamStart, 4) == 0);
}

// Parses a JP2 file or raw codestream (DecodeError when its structure is broken).
inline Jpeg2000Image jpeg2000_parse(const uint8_t* data, size_t size) {
  using namespace jpeg2000_detail;
  Jpeg2000Image image;
  if (size >= 4 && std::memcmp(data, kCodestreamStart, 4) == 0) {
    read_codestream(data, 0, size, image);
    return image;
  }
  if (size < 12 || std::memcmp(data, kJp2Signature, 12) != 0)
    throw DecodeError("not a JPEG 2000 file (no JP2 signature or SOC marker)");
  bool has_header = false;
  uint32_t ihdr_height = 0, ihdr_width = 0;
  for (size_t pos = 12; pos < size;) {
    const Box box = read_box(data, pos, size);
    if (box.type == "jp2h") {
      for (size_t inner = box.begin; inner < box.end;) {
        const Box part = read_box(data, inner, box.end);
        if (part.type == "ihdr") {
          if (part.end - part.begin < 14) throw DecodeError("corrupt JP2: ihdr box of the wrong size");
          ihdr_height = be32(data + part.begin);
          ihdr_width = be32(data + part.begin + 4);
          has_header = true;
        } else if (part.type == "pclr") {
          image.palette = true;
        }
        inner = part.end;
      }
    } else if (box.type == "jp2c") {
      if (!has_header) throw DecodeError("corrupt JP2: the codestream comes before the JP2 header (ihdr)");
      read_codestream(data, box.begin, box.end, image);
      if (ihdr_height != image.height || ihdr_width != image.width)
        throw DecodeError("corrupt JP2: its JP2 header says " + std::to_string(ihdr_height) + "x" +
                          std::to_string(ihdr_width) + ", its codestream " + std::to_string(image.height) + "x" +
                          std::to_string(image.width));
      return image;
    }
    pos = box.end;
  }
  throw DecodeError("JP2 file has no codestream (no jp2c box)");
}

// Refuses (FormatError) a JPEG 2000 image that is not `spec`'s or outside the table of formats.h, then the
// ratio cap: everything the decoder would allocate is then bounded by the spec.
inline void jpeg2000_check(const Jpeg2000Image& image, size_t size, const ImageSpec& spec) {
  spec.check(image.header());  // the size, one component, the bit depth (through the dtype it decodes to)
  if (image.tiles > formats::kJpeg2000MaxTiles)
    throw FormatError("JPEG 2000 image in " + std::to_string(image.tiles) + " tiles; maefast reads at most " +
                      std::to_string(formats::kJpeg2000MaxTiles));
  if (image.subsampling_x != 1 || image.subsampling_y != 1)
    throw FormatError("JPEG 2000 component subsampled " + std::to_string(image.subsampling_x) + "x" +
                      std::to_string(image.subsampling_y) + "; maefast reads images that are not subsampled");
  spec.check_ratio(size);
}

// The header of a JPEG 2000 file or codestream, in ImageHeader's terms (DecodeError when its structure is broken).
inline ImageHeader jpeg2000_header(const uint8_t* data, size_t size) { return jpeg2000_parse(data, size).header(); }

}  // namespace maefast::decode
