// Reading what a data set is made of from files: channel images (PNG, TIFF, JPEG or JPEG 2000, told apart by
// their bytes), the headers of packed shards and illumination functions (.npy); and checking RxRx3-core's encoded
// channel images (PNG or JPEG 2000 bytes from its parquet shards). A data set's channel files are of one family:
// PNG and TIFF, which maefast decodes itself (ImageDecoder), or JPEG and JPEG 2000, which it checks
// (check_compressed) and DALI's decoders or Pillow decode. The DALI operators (csrc/dali) and
// maefast._C (the PyTorch loader and `maefast data check`) call these same functions, so every path opens,
// bounds, checks and decodes a file the same way.
//
// Files are opened without blocking and refused unless they are regular files (a FIFO named as an image
// would otherwise block the reader until a writer comes); a channel image larger than its spec's image can
// take is refused before it is read, and a header is checked against the spec before anything of the image's
// size is allocated.
//
// Header-only, C++17, POSIX.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "formats.h"
#include "header.h"
#include "jpeg.h"
#include "jpeg2000.h"
#include "npy.h"
#include "png.h"
#include "tiff.h"

namespace maefast::decode {

// Space past spec.image_bytes() that a decode target must have (the inflate's 8-byte match copies).
constexpr size_t kDecodeSlack = kInflateSlack;

// An open regular file (closed when it goes).
class RegularFile {
 public:
  explicit RegularFile(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd_ < 0) {
      const int error = errno;
      if (error == ENOENT || error == ENOTDIR) throw MissingFile("missing file");
      throw DecodeError(std::string("cannot open the file (") + std::strerror(error) + ")");
    }
    struct stat info;
    if (::fstat(fd_, &info) != 0) {
      const int error = errno;
      ::close(fd_);
      throw DecodeError(std::string("cannot read the file (") + std::strerror(error) + ")");
    }
    if (!S_ISREG(info.st_mode)) {
      ::close(fd_);
      const char* what = S_ISFIFO(info.st_mode) ? "a FIFO" : S_ISDIR(info.st_mode) ? "a directory"
                         : S_ISSOCK(info.st_mode) ? "a socket" : "a device";
      throw DecodeError(std::string("not a regular file (") + what + ")");
    }
    size_ = static_cast<size_t>(info.st_size);
  }
  ~RegularFile() { ::close(fd_); }
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  size_t size() const { return size_; }
  int descriptor() const { return fd_; }

  // Reads count bytes at offset; DecodeError when the file ends sooner (it changed while it was read).
  void read(uint64_t offset, uint8_t* out, size_t count) const {
    while (count > 0) {
      const ssize_t got = ::pread(fd_, out, count, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw DecodeError(std::string("read failed (") + std::strerror(errno) + ")");
      if (got == 0) throw DecodeError("read failed: the file is shorter than it was (changed while read?)");
      out += got;
      offset += static_cast<uint64_t>(got);
      count -= static_cast<size_t>(got);
    }
  }

 private:
  int fd_ = -1;
  size_t size_ = 0;
};

// A read-only memory map of a whole regular file (for headers that may lie anywhere in it, and for shards).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : file_(path) {
    if (file_.size() == 0) return;
    void* data = ::mmap(nullptr, file_.size(), PROT_READ, MAP_SHARED, file_.descriptor(), 0);
    if (data == MAP_FAILED) throw DecodeError(std::string("cannot map the file (") + std::strerror(errno) + ")");
    data_ = static_cast<const uint8_t*>(data);
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), file_.size());
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return file_.size(); }

 private:
  RegularFile file_;
  const uint8_t* data_ = nullptr;
};

inline bool is_png(const uint8_t* data, size_t size) { return size >= 8 && data[0] == 137 && data[1] == 'P'; }
inline bool is_tiff(const uint8_t* data, size_t size) {
  return size >= 2 && ((data[0] == 'I' && data[1] == 'I') || (data[0] == 'M' && data[1] == 'M'));
}

// The format of a channel image's bytes: "PNG", "TIFF", "JPEG", "JPEG 2000", or "" for none of them.
inline const char* image_format(const uint8_t* data, size_t size) {
  if (is_png(data, size)) return "PNG";
  if (is_tiff(data, size)) return "TIFF";
  if (is_jpeg(data, size)) return "JPEG";
  if (is_jpeg2000(data, size)) return "JPEG 2000";
  return "";
}

// The header of a channel image file's bytes (what maefast.data.decode.probe_channel reports).
inline ImageHeader image_header(const uint8_t* data, size_t size) {
  ImageHeader header;
  const std::string format = image_format(data, size);
  if (format == "PNG") header = image_header_of_png(png_header(data, size));
  else if (format == "TIFF") header = tiff_header(data, size);
  else if (format == "JPEG") header = jpeg_parse(data, size).header();
  else if (format == "JPEG 2000") header = jpeg2000_parse(data, size).header();
  else throw FormatError("expected a PNG, TIFF, JPEG or JPEG 2000 file");
  header.format = format;
  return header;
}

// Refuses a channel image of the other family than the data set's: "expected a PNG or TIFF file, found a JPEG
// file (the data set's images are PNG or TIFF)"; a file of no known format: "expected a PNG or TIFF file".
[[noreturn]] inline void refuse_family(const uint8_t* data, size_t size, bool compressed) {
  const std::string expected = compressed ? "a JPEG or JPEG 2000 file" : "a PNG or TIFF file";
  const std::string found = image_format(data, size);
  if (found.empty()) throw FormatError("expected " + expected);
  throw FormatError("expected " + expected + ", found a " + found + " file (the data set's images are " +
                    (compressed ? "JPEG or JPEG 2000)" : "PNG or TIFF)"));
}

// Checks a JPEG or JPEG 2000 image against `spec` and the table of formats.h, and that it is whole, before
// any decoder is handed its bytes (which the caller then decodes: DALI or Pillow).
inline void check_compressed(const uint8_t* data, size_t size, const ImageSpec& spec) {
  if (is_jpeg(data, size)) {
    jpeg_check(jpeg_parse(data, size), data, size, spec);
  } else if (is_jpeg2000(data, size)) {
    jpeg2000_check(jpeg2000_parse(data, size), size, spec);
  } else {
    refuse_family(data, size, true);
  }
}

// Reads a channel image file into `bytes`: refused unless it is a regular file of at most spec.max_file_bytes().
inline void read_channel_file(const std::string& path, const ImageSpec& spec, std::vector<uint8_t>& bytes) {
  RegularFile file(path);
  if (file.size() > spec.max_file_bytes()) {
    throw FormatError("a " + std::to_string(file.size()) + "-byte file is larger than a " + spec.describe() +
                      " image can be (at most " + std::to_string(spec.max_file_bytes()) + " bytes)");
  }
  bytes.resize(file.size());
  file.read(0, bytes.data(), bytes.size());
}

// A PNG of a height x width image of zeros (8- or 16-bit grayscale, as the spec says), its image data in stored
// (uncompressed) deflate blocks: what the DALI pipeline hands its decoder in place of a file that was refused,
// so that the image's error is reported and the rest of its batch decodes.
inline std::vector<uint8_t> blank_png(const ImageSpec& spec) {
  const size_t raw = (static_cast<size_t>(spec.width) * spec.bytes_per_pixel + 1) * static_cast<size_t>(spec.height);
  std::vector<uint8_t> zlib = {0x78, 0x01};
  zlib.reserve(raw + raw / 65535 * 5 + 16);
  for (size_t done = 0; done < raw;) {  // rows of a filter byte 0 and zero samples
    const size_t block = std::min<size_t>(raw - done, 65535);
    done += block;
    const uint8_t stored[5] = {static_cast<uint8_t>(done == raw),  // BFINAL; BTYPE 00: stored
                               static_cast<uint8_t>(block), static_cast<uint8_t>(block >> 8),
                               static_cast<uint8_t>(~block), static_cast<uint8_t>(~block >> 8)};
    zlib.insert(zlib.end(), stored, stored + 5);
    zlib.resize(zlib.size() + block, 0);
  }
  const uint32_t adler = static_cast<uint32_t>(raw % 65521) << 16 | 1;  // Adler-32 of raw zero bytes
  for (int shift = 24; shift >= 0; shift -= 8) zlib.push_back(static_cast<uint8_t>(adler >> shift));

  std::vector<uint8_t> png = {137, 80, 78, 71, 13, 10, 26, 10};
  auto chunk = [&png](const char* type, const uint8_t* payload, size_t length) {
    for (int shift = 24; shift >= 0; shift -= 8) png.push_back(static_cast<uint8_t>(length >> shift));
    const size_t start = png.size();
    png.insert(png.end(), type, type + 4);
    png.insert(png.end(), payload, payload + length);
    const uint32_t crc = png_detail::chunk_crc(png.data() + start, length + 4);
    for (int shift = 24; shift >= 0; shift -= 8) png.push_back(static_cast<uint8_t>(crc >> shift));
  };
  const uint32_t width = static_cast<uint32_t>(spec.width), height = static_cast<uint32_t>(spec.height);
  const uint8_t header[13] = {static_cast<uint8_t>(width >> 24), static_cast<uint8_t>(width >> 16),
                              static_cast<uint8_t>(width >> 8), static_cast<uint8_t>(width),
                              static_cast<uint8_t>(height >> 24), static_cast<uint8_t>(height >> 16),
                              static_cast<uint8_t>(height >> 8), static_cast<uint8_t>(height),
                              static_cast<uint8_t>(8 * spec.bytes_per_pixel), 0, 0, 0, 0};
  chunk("IHDR", header, sizeof(header));
  chunk("IDAT", zlib.data(), zlib.size());
  chunk("IEND", nullptr, 0);
  return png;
}

inline ImageHeader image_header(const std::string& path) {
  MappedFile file(path);
  return image_header(file.data(), file.size());
}

// RxRx3-core's channel images are PNG or JPEG 2000 bytes (a parquet row each): their header.
inline ImageHeader encoded_header(const uint8_t* data, size_t size) {
  if (!is_png(data, size) && !is_jpeg2000(data, size)) throw FormatError("expected a JPEG 2000 or PNG image");
  return image_header(data, size);
}

// Checks an encoded channel image of RxRx3-core against `spec` without decoding it (its header, a JPEG 2000's
// codestream structure, the table of formats.h, the ratio cap) and names its codec: "png" (then decoded by
// ImageDecoder, which checks it again as it decodes) or "jpeg2000" (then decoded by imagecodecs, whose
// allocations the checked header bounds).
inline const char* check_encoded(const uint8_t* data, size_t size, const ImageSpec& spec) {
  if (is_png(data, size)) {
    spec.check(image_header_of_png(png_header(data, size)));
    PngDecoder::info(data, size);
    spec.check_ratio(size);
    return "png";
  }
  if (is_jpeg2000(data, size)) {
    jpeg2000_check(jpeg2000_parse(data, size), size, spec);
    return "jpeg2000";
  }
  throw FormatError("expected a JPEG 2000 or PNG image");
}

// Decodes channel images; keeps its buffers between calls (one per thread).
class ImageDecoder {
 public:
  // Decodes the image in data[0:size], which must be what `spec` says, into out: spec.image_bytes() +
  // kDecodeSlack bytes, native-endian samples.
  void decode(const uint8_t* data, size_t size, const ImageSpec& spec, uint8_t* out) {
    if (is_png(data, size)) {
      png_.decode(data, size, spec, out);
    } else if (is_tiff(data, size)) {
      const TiffImage image = tiff_parse(data, size);
      tiff_check(image, size, spec);
      tiff_decode(image, data, spec, out);
    } else {
      refuse_family(data, size, false);
    }
  }

  // Reads and decodes the file at `path`: refused unless it is a regular file of at most
  // spec.max_file_bytes() bytes, then decode() above.
  void decode(const std::string& path, const ImageSpec& spec, uint8_t* out) {
    read_channel_file(path, spec, bytes_);
    decode(bytes_.data(), bytes_.size(), spec, out);
  }

 private:
  PngDecoder png_;
  std::vector<uint8_t> bytes_;
};

// Reads the header of an .npy file (at most kMaxNpyHeader bytes of it).
inline NpyHeader read_npy_header(const RegularFile& file) {
  std::vector<uint8_t> head(std::min(file.size(), kMaxNpyHeader + 12));
  file.read(0, head.data(), head.size());
  return npy_header(head.data(), head.size());
}

// "a shard of (n, 6, 96, 96) uint8 images": what a packed data set's shards must be.
inline std::string shard_description(int64_t channels, const ImageSpec& spec) {
  return "a shard of (n, " + std::to_string(channels) + ", " + std::to_string(spec.height) + ", " +
         std::to_string(spec.width) + ") uint" + std::to_string(8 * spec.bytes_per_pixel) + " images";
}

// Checks a shard's header: (n, channels, height, width), the spec's dtype ('|u1' or '<u2'), C order, whole.
inline void check_shard(const NpyHeader& header, size_t file_size, int64_t channels, const ImageSpec& spec) {
  static const char* const kUint8[] = {"|u1"};
  static const char* const kUint16[] = {"<u2"};
  const std::vector<int64_t> trailing = {channels, spec.height, spec.width};
  if (spec.bytes_per_pixel == 1) npy_check(header, file_size, kUint8, 4, trailing, shard_description(channels, spec));
  else npy_check(header, file_size, kUint16, 4, trailing, shard_description(channels, spec));
}

inline NpyHeader read_shard_header(const std::string& path, int64_t channels, const ImageSpec& spec) {
  RegularFile file(path);
  NpyHeader header = read_npy_header(file);
  check_shard(header, file.size(), channels, spec);
  return header;
}

// "the index names row 70, the shard holds 64 images" when row is outside the shard.
inline void check_shard_row(int64_t row, int64_t images) {
  if (row < 0 || row >= images)
    throw FormatError("the index names row " + std::to_string(row) + ", the shard holds " + std::to_string(images) +
                      " images");
}

// An illumination function: the (height, width) .npy array, float32 or float64, C order, every value finite
// and > 0; returned as float32 (as numpy's astype(float32) rounds).
inline std::vector<float> read_illumination(const std::string& path, int64_t height, int64_t width) {
  RegularFile file(path);
  const NpyHeader header = read_npy_header(file);
  const std::string what = "an illumination function of (" + std::to_string(height) + ", " + std::to_string(width) +
                           ") float32 or float64 values";
  npy_check(header, file.size(), formats::kIlluminationDescrs, 2, {height, width}, what);
  const size_t count = static_cast<size_t>(height) * static_cast<size_t>(width);
  std::vector<uint8_t> bytes(header.data_bytes());
  file.read(header.data_offset, bytes.data(), bytes.size());
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) {
    if (header.descr == "<f8") {
      double value;
      std::memcpy(&value, bytes.data() + 8 * i, 8);
      values[i] = static_cast<float>(value);
    } else {
      std::memcpy(&values[i], bytes.data() + 4 * i, 4);
    }
  }
  for (size_t i = 0; i < count; ++i) {
    if (!(std::isfinite(values[i]) && values[i] > 0)) {
      throw FormatError("illumination function value " + std::to_string(values[i]) + " at (" +
                        std::to_string(i / width) + ", " + std::to_string(i % width) +
                        ") is not a finite number > 0");
    }
  }
  return values;
}

// Illumination correction that keeps integer pixels, in float32 as numpy computes it (the reference is
// maefast.data.decode.apply_illumination): min(floor(raw / illum + 0.5), the dtype's maximum).
template <typename T>
void apply_illumination(T* plane, const float* illumination, size_t count) {
  constexpr float kMax = static_cast<float>(T(~T(0)));
  for (size_t i = 0; i < count; ++i) {
    const float corrected = std::floor(static_cast<float>(plane[i]) / illumination[i] + 0.5f);
    plane[i] = static_cast<T>(corrected < kMax ? corrected : kMax);
  }
}

}  // namespace maefast::decode
