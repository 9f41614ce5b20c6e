// Fuzz harness of maefast's PNG decoder (csrc/decode/png.h with its own inflate.h) and of the header
// parser the DALI operators check files with (csrc/decode/header.h).
//
// The property, for every input: maefast's decoder either raises DecodeError, or decodes exactly what
// zlib's inflate (RFC 1950, checksum verified) plus a plain reference of the PNG row filters give. No
// crash, hang, leak or out-of-bounds access: build it with -fsanitize=address,undefined.
//
// Deterministic mutation loop (any C++17 compiler; what tests/data/test_png_fuzz.py runs):
//   c++ -std=c++17 -O1 -g -fsanitize=address,undefined -D_GLIBCXX_SANITIZE_VECTOR fuzz_png.cc -lz -o fuzz_png
//   ./fuzz_png SEED_DIR ITERATIONS [RNG_SEED [SAVE_DIR]]
// It mutates the seed files (bit flips, byte values, truncation, insertions and deletions, splices, new
// IHDR sizes, and changes inside the compressed stream with the Adler-32 repaired so that they reach the
// pixels), checks each input, saves up to 200 decodable and 200 refused ones to SAVE_DIR (chunk CRCs
// repaired: decoded-<n>.png for a comparison with Pillow, refused-<n>.png and decoded-<n>.png for the parity
// run of every loader path in tests/data/test_png_fuzz.py) and any failing one as failure-<n>.png, and prints
// one JSON line of counts.
//
// libFuzzer (clang): clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -DMAEFAST_LIBFUZZER ...
#include <zlib.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../decode/image.h"
#include "mutate.h"

namespace {

using Bytes = std::vector<uint8_t>;
using maefast::decode::DecodeError;

using fuzz::get32;

// ------------------------------------------------------------------ the reference decoder

bool chunk_name(const uint8_t* p) {
  for (int i = 0; i < 4; ++i)
    if (!(std::isalnum(p[i]) || p[i] == '_')) return false;
  return true;
}

// The image data as Pillow finds it: chunks before it whole, named and with matching CRCs; then the
// first run of consecutive IDAT chunks (whole); after it, no named chunk that runs past the end of the
// file (IEND, the end, or a non-name ends the walk). Returns false when Pillow would refuse the file.
bool reference_idat(const Bytes& file, Bytes& idat) {
  if (file.size() < 33 || std::memcmp(file.data(), "\x89PNG\r\n\x1a\n", 8) != 0) return false;
  if (get32(&file[8]) != 13 || std::memcmp(&file[12], "IHDR", 4) != 0) return false;
  enum { kBefore, kData, kAfter } phase = kBefore;
  size_t pos = 8;
  while (pos + 8 <= file.size()) {
    const uint64_t length = get32(&file[pos]);
    const uint8_t* name = &file[pos + 4];
    const bool is_idat = std::memcmp(name, "IDAT", 4) == 0, fits = pos + 8 + length <= file.size();
    if (phase == kData && !is_idat) phase = kAfter;
    if (phase == kBefore) {
      if (!chunk_name(name) || std::memcmp(name, "IEND", 4) == 0 || !fits) return false;
      if (is_idat) {
        phase = kData;
      } else {
        if (pos + 12 + length > file.size()) return false;
        if (crc32(0, name, uInt(4 + length)) != get32(&file[pos + 8 + length])) return false;
      }
    }
    if (phase == kData) {
      if (!fits) return false;
      idat.insert(idat.end(), file.begin() + pos + 8, file.begin() + pos + 8 + length);
    }
    if (phase == kAfter) {
      if (!chunk_name(name) || std::memcmp(name, "IEND", 4) == 0) break;
      if (!fits) return false;
    }
    pos += 12 + length;
  }
  return phase != kBefore;
}

int paeth(int a, int b, int c) {
  int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  return (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
}

// zlib's inflate of the image data, then the PNG row filters one byte at a time. Returns false when refused.
bool reference_decode(const Bytes& file, Bytes& pixels, int& bytes_per_pixel) {
  Bytes idat;
  if (!reference_idat(file, idat)) return false;
  const uint8_t* ihdr = &file[16];
  uint32_t width = get32(ihdr), height = get32(ihdr + 4);
  int depth = ihdr[8];
  if (width == 0 || height == 0 || width > (1u << 20) || height > (1u << 20)) return false;
  if (ihdr[9] != 0 || (depth != 8 && depth != 16) || ihdr[10] || ihdr[11] || ihdr[12]) return false;
  bytes_per_pixel = depth / 8;
  const size_t row = size_t(width) * bytes_per_pixel, filtered_size = (row + 1) * height;
  if (filtered_size > idat.size() * 1032) return false;  // more than deflate can expand to (a 258-byte match in 2 bits)
  Bytes filtered(filtered_size + 1);
  z_stream stream{};
  if (inflateInit(&stream) != Z_OK) std::abort();
  stream.next_in = idat.data();
  stream.avail_in = static_cast<uInt>(idat.size());
  stream.next_out = filtered.data();
  stream.avail_out = static_cast<uInt>(filtered.size());
  int status = inflate(&stream, Z_FINISH);
  size_t produced = stream.total_out;
  inflateEnd(&stream);
  if (status != Z_STREAM_END || produced != filtered_size) return false;
  pixels.assign(row * height, 0);
  for (size_t y = 0; y < height; ++y) {
    const uint8_t* in = &filtered[y * (row + 1)];
    uint8_t* out = &pixels[y * row];
    const uint8_t* up = y ? out - row : nullptr;
    if (in[0] > 4) return false;
    for (size_t i = 0; i < row; ++i) {
      int a = i >= size_t(bytes_per_pixel) ? out[i - bytes_per_pixel] : 0;
      int b = up ? up[i] : 0;
      int c = (up && i >= size_t(bytes_per_pixel)) ? up[i - bytes_per_pixel] : 0;
      int predicted = in[0] == 0 ? 0 : in[0] == 1 ? a : in[0] == 2 ? b : in[0] == 3 ? (a + b) / 2 : paeth(a, b, c);
      out[i] = uint8_t(in[1 + i] + predicted);
    }
  }
  if (bytes_per_pixel == 2)  // to native (little-endian) order, as maefast's decoder returns
    for (size_t i = 0; i < pixels.size(); i += 2) std::swap(pixels[i], pixels[i + 1]);
  return true;
}

// ------------------------------------------------------------------ the check of one input

enum class Outcome { kDecoded, kRefused, kRefusedValid, kFailure };

Outcome check_input(const uint8_t* data, size_t size, std::string& why) {
  Bytes file(data, data + size);  // an exact-size heap copy: reads past the end are caught
  try {  // the header parser must only ever raise
    maefast::decode::image_header(file.data(), file.size());
  } catch (const DecodeError&) {
  }
  static thread_local maefast::decode::PngDecoder decoder;
  maefast::decode::PngInfo info;
  bool decoded = true;
  try {
    info = decoder.decode(file.data(), file.size());
  } catch (const DecodeError&) {
    decoded = false;
  }
  Bytes expected;
  int bytes_per_pixel = 0;
  bool valid = reference_decode(file, expected, bytes_per_pixel);
  if (!decoded) return valid ? Outcome::kRefusedValid : Outcome::kRefused;
  if (!valid) {
    why = "decoded an input that zlib / the reference refuses";
    return Outcome::kFailure;
  }
  size_t count = size_t(info.width) * info.height * info.bytes_per_pixel;
  if (info.bytes_per_pixel != bytes_per_pixel || count != expected.size() ||
      std::memcmp(decoder.pixels(), expected.data(), count) != 0) {
    why = "decoded pixels differ from the reference";
    return Outcome::kFailure;
  }
  return Outcome::kDecoded;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string why;
  if (check_input(data, size, why) == Outcome::kFailure) {
    std::fprintf(stderr, "fuzz_png: %s\n", why.c_str());
    std::abort();
  }
  return 0;
}

#ifndef MAEFAST_LIBFUZZER

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SEED_DIR ITERATIONS [RNG_SEED [SAVE_DIR]]\n", argv[0]);
    return 2;
  }
  std::vector<Bytes> seeds = fuzz::read_seeds(argv[1]);
  if (seeds.empty()) {
    std::fprintf(stderr, "fuzz_png: no seed files in %s\n", argv[1]);
    return 2;
  }
  const uint64_t iterations = std::strtoull(argv[2], nullptr, 10);
  fuzz::Mutator mutator(argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1, seeds);
  const std::string save_dir = argc > 4 ? argv[4] : "";
  uint64_t counts[4] = {0, 0, 0, 0}, saved = 0, saved_refused = 0;
  double slowest = 0;
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < iterations; ++i) {
    Bytes input = mutator.next();
    std::string why;
    const auto before = std::chrono::steady_clock::now();
    Outcome outcome = check_input(input.data(), input.size(), why);
    slowest = std::max(slowest, std::chrono::duration<double>(std::chrono::steady_clock::now() - before).count());
    counts[static_cast<int>(outcome)]++;
    if (outcome == Outcome::kFailure) {
      std::string path = (save_dir.empty() ? std::string(".") : save_dir) + "/failure-" + std::to_string(i) + ".png";
      fuzz::write_file(path, input);
      std::fprintf(stderr, "fuzz_png: input %llu: %s (saved to %s)\n", (unsigned long long)i, why.c_str(), path.c_str());
    } else if (outcome == Outcome::kDecoded && !save_dir.empty() && saved < 200 && mutator.last_was_mutated()) {
      fuzz::repair_crcs(input);
      fuzz::write_file(save_dir + "/decoded-" + std::to_string(saved++) + ".png", input);
    } else if (outcome != Outcome::kDecoded && !save_dir.empty() && saved_refused < 200 && mutator.last_was_mutated()) {
      fuzz::repair_crcs(input);
      fuzz::write_file(save_dir + "/refused-" + std::to_string(saved_refused++) + ".png", input);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"inputs\": %llu, \"decoded\": %llu, \"refused\": %llu, \"refused_valid\": %llu, \"failures\": %llu, "
              "\"seconds\": %.2f, \"slowest_input_s\": %.4f}\n",
              (unsigned long long)iterations, (unsigned long long)counts[0], (unsigned long long)counts[1],
              (unsigned long long)counts[2], (unsigned long long)counts[3], seconds, slowest);
  return counts[3] ? 1 : 0;
}
#endif
