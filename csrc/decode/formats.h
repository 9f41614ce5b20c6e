// The one table of what maefast reads: channel images (PNG, TIFF, JPEG, JPEG 2000; PNG or JPEG 2000 in RxRx3-core's
// parquet shards), packed shards and illumination functions (.npy). Every reader (the DALI operators, the PyTorch
// loader and `maefast data check`, through maefast._C) checks files against these lists with the same code, so that
// what one path accepts the others accept with the same pixels, and what one refuses the others refuse for the same
// named reason. maefast._C exports the table (accepted_formats()), and docs/data.md shows it
// (tests/data/test_formats.py compares the two).
//
// Header-only, C++17, no dependencies.
#pragma once

#include <cstdint>
#include <string>

namespace maefast::decode::formats {

struct Code {
  uint32_t value;
  const char* name;
};

// PNG: grayscale (colour type 0), 8 or 16 bits, not interlaced, one frame.
constexpr int kPngBitDepths[] = {8, 16};

// TIFF: one page of one sample per pixel, unsigned 8 or 16 bits, in strips, either byte order, classic or
// BigTIFF. Photometric BlackIsZero (or no tag), orientation top-left (or no tag), no ImageDepth other than 1.
constexpr int kTiffBitDepths[] = {8, 16};
constexpr Code kTiffCompressions[] = {{1, "none"}, {5, "LZW"}, {8, "Deflate"}, {32946, "Deflate"},
                                      {32773, "PackBits"}};
constexpr Code kTiffPredictors[] = {{1, "none"}, {2, "horizontal differencing"}};  // 2: LZW and Deflate only
constexpr Code kTiffPhotometrics[] = {{1, "BlackIsZero"}};
constexpr Code kTiffOrientations[] = {{1, "top-left"}};
constexpr Code kTiffPlanarConfigurations[] = {{1, "contiguous"}, {2, "separate"}};  // the same for one sample

// JPEG: one component (grayscale) of 8-bit samples, Huffman-coded sequential or progressive: the processes that
// nvJPEG decodes on a GPU, as libjpeg-turbo and Pillow do on the CPU. Decoded by DALI or Pillow, not by maefast.
constexpr int kJpegBitDepths[] = {8};
constexpr Code kJpegProcesses[] = {{0, "baseline"}, {1, "extended sequential"}, {2, "progressive"}};
// JPEG 2000 (a JP2 file or a raw codestream: per-channel files, RxRx3-core's channel images): one component of
// unsigned samples, 8 bits (uint8) or 9 to 16 bits (uint16: 12-bit samples decode to values below 4096), not
// subsampled, no palette; lossless or lossy. Decoded by DALI (nvJPEG2000 on a GPU, OpenJPEG on the CPU),
// imagecodecs or Pillow (OpenJPEG). Tiles cost the decoder memory each, whatever their size: at most
// kJpeg2000MaxTiles.
constexpr int kJpeg2000BitDepths[] = {8, 9, 10, 11, 12, 13, 14, 15, 16};
constexpr uint64_t kJpeg2000MaxTiles = 4096;

// Packed shards: numpy .npy (format 1, 2 or 3), a 4-D C-order array (n, channels, height, width).
constexpr const char* kShardDescrs[] = {"|u1", "<u2"};  // uint8, little-endian uint16
// Illumination functions: numpy .npy, a 2-D C-order array (height, width) of finite values > 0.
constexpr const char* kIlluminationDescrs[] = {"<f4", "<f8"};  // little-endian float32, float64

// Names of values that are refused, for the messages (the refusal names the value either way).
constexpr Code kTiffCompressionNames[] = {{2, "CCITT RLE"}, {3, "CCITT fax 3"}, {4, "CCITT fax 4"},
                                          {6, "old-style JPEG"}, {7, "JPEG"}, {34712, "JPEG 2000"},
                                          {34925, "LZMA"}, {50000, "Zstandard"}, {50001, "WebP"},
                                          {34887, "LERC"}, {50002, "JPEG XL"}};
constexpr Code kTiffPhotometricNames[] = {{0, "WhiteIsZero (inverted)"}, {2, "RGB"}, {3, "palette (indexed colour)"},
                                          {4, "transparency mask"}, {5, "CMYK"}, {6, "YCbCr"}, {8, "CIELab"}};
constexpr Code kJpegProcessNames[] = {{3, "lossless"}, {5, "differential sequential"}, {6, "differential progressive"},
                                      {7, "differential lossless"}, {9, "arithmetic-coded sequential"},
                                      {10, "arithmetic-coded progressive"}, {11, "arithmetic-coded lossless"},
                                      {13, "arithmetic-coded differential sequential"},
                                      {14, "arithmetic-coded differential progressive"},
                                      {15, "arithmetic-coded differential lossless"}};
constexpr Code kTiffOrientationNames[] = {{2, "mirrored"}, {3, "rotated 180 degrees"}, {4, "flipped"},
                                          {5, "transposed"}, {6, "rotated 90 degrees"}, {7, "transversed"},
                                          {8, "rotated 270 degrees"}};

template <size_t N>
bool contains(const Code (&codes)[N], uint32_t value) {
  for (const Code& code : codes)
    if (code.value == value) return true;
  return false;
}

template <size_t N>
bool contains(const int (&values)[N], int value) {
  for (int v : values)
    if (v == value) return true;
  return false;
}

template <size_t N>
bool contains(const char* const (&values)[N], const std::string& value) {
  for (const char* v : values)
    if (value == v) return true;
  return false;
}

// "5 (LZW)" for a listed value, "50000 (Zstandard)" for a named refused one, "7" otherwise.
template <size_t N, size_t M>
std::string describe(uint32_t value, const Code (&accepted)[N], const Code (&others)[M]) {
  for (const Code& code : accepted)
    if (code.value == value) return std::to_string(value) + " (" + code.name + ")";
  for (const Code& code : others)
    if (code.value == value) return std::to_string(value) + " (" + code.name + ")";
  return std::to_string(value);
}

// "1 (none), 5 (LZW), ..." : the accepted values, for the messages.
template <size_t N>
std::string listing(const Code (&codes)[N]) {
  std::string text;
  for (const Code& code : codes) {
    const std::string item = std::to_string(code.value) + " (" + code.name + ")";
    text += (text.empty() ? "" : ", ") + item;
  }
  return text;
}

}  // namespace maefast::decode::formats
