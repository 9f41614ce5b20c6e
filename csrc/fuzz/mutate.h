// The deterministic mutator of fuzz_png.cc: PNG files changed blindly (bits, bytes, lengths) and
// knowingly (IHDR fields, the compressed stream with its Adler-32 repaired so the change reaches the
// pixels). A pure function of the RNG seed and the seed files.
#pragma once

#include <dirent.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace fuzz {

using Bytes = std::vector<uint8_t>;

inline uint32_t get32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
inline void set32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24), p[1] = uint8_t(v >> 16), p[2] = uint8_t(v >> 8), p[3] = uint8_t(v);
}

inline std::vector<Bytes> read_seeds(const std::string& folder) {
  std::vector<std::string> names;
  if (DIR* dir = opendir(folder.c_str())) {
    while (dirent* entry = readdir(dir))
      if (entry->d_name[0] != '.') names.push_back(entry->d_name);
    closedir(dir);
  }
  std::sort(names.begin(), names.end());  // a deterministic order
  std::vector<Bytes> seeds;
  for (const std::string& name : names) {
    if (FILE* file = std::fopen((folder + "/" + name).c_str(), "rb")) {
      Bytes bytes;
      uint8_t buffer[65536];
      for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), file)) > 0;) bytes.insert(bytes.end(), buffer, buffer + n);
      std::fclose(file);
      seeds.push_back(std::move(bytes));
    }
  }
  return seeds;
}

inline void write_file(const std::string& path, const Bytes& bytes) {
  if (FILE* file = std::fopen(path.c_str(), "wb")) {
    std::fwrite(bytes.data(), 1, bytes.size(), file);
    std::fclose(file);
  }
}

// Recomputes the CRC of every whole chunk (maefast's decoder ignores them; Pillow checks them).
inline void repair_crcs(Bytes& png) {
  for (size_t pos = 8; pos + 12 <= png.size();) {
    uint64_t length = get32(&png[pos]);
    if (pos + 12 + length > png.size()) break;
    uLong crc = crc32(0, &png[pos + 4], static_cast<uInt>(4 + length));
    set32(&png[pos + 8 + length], static_cast<uint32_t>(crc));
    pos += 12 + length;
  }
}

class Mutator {
 public:
  Mutator(uint64_t seed, const std::vector<Bytes>& seeds) : state_(seed), seeds_(seeds) {}

  // The next input: a seed with one to four mutations (one input in 16 is a seed as it is).
  Bytes next() {
    Bytes input = seeds_[below(seeds_.size())];
    mutated_ = below(16) != 0;
    if (!mutated_) return input;
    for (size_t n = 1 + below(4); n > 0; --n) {
      switch (below(8)) {
        case 0: flip_bits(input); break;
        case 1: set_bytes(input); break;
        case 2: truncate(input); break;
        case 3: insert_bytes(input); break;
        case 4: erase_bytes(input); break;
        case 5: splice(input); break;
        case 6: change_header(input); break;
        default: change_stream(input); break;
      }
    }
    return input;
  }
  bool last_was_mutated() const { return mutated_; }

 private:
  uint64_t random() {  // splitmix64
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? static_cast<size_t>(random() % n) : 0; }
  uint8_t interesting_byte() {
    static constexpr uint8_t kValues[] = {0, 1, 0x7F, 0x80, 0xFF, 0xFE, 16, 32, 64, 8};
    return below(2) ? uint8_t(random()) : kValues[below(sizeof(kValues))];
  }

  void flip_bits(Bytes& b) {
    for (size_t n = 1 + below(4); n > 0 && !b.empty(); --n) b[below(b.size())] ^= uint8_t(1u << below(8));
  }
  void set_bytes(Bytes& b) {
    for (size_t n = 1 + below(3); n > 0 && !b.empty(); --n) b[below(b.size())] = interesting_byte();
  }
  void truncate(Bytes& b) { b.resize(below(b.size() + 1)); }
  void insert_bytes(Bytes& b) {
    size_t at = below(b.size() + 1), n = 1 + below(16);
    Bytes extra(n);
    for (auto& v : extra) v = interesting_byte();
    b.insert(b.begin() + at, extra.begin(), extra.end());
  }
  void erase_bytes(Bytes& b) {
    if (b.empty()) return;
    size_t at = below(b.size()), n = std::min(b.size() - at, 1 + below(32));
    b.erase(b.begin() + at, b.begin() + at + n);
  }
  void splice(Bytes& b) {
    const Bytes& other = seeds_[below(seeds_.size())];
    size_t keep = below(b.size() + 1), from = below(other.size() + 1);
    b.resize(keep);
    b.insert(b.end(), other.begin() + from, other.end());
  }
  // New IHDR values: sizes small, large and absurd; other depths, color types, interlacing.
  void change_header(Bytes& b) {
    if (b.size() < 33) return;
    static constexpr uint32_t kSizes[] = {0, 1, 2, 3, 7, 64, 65535, 1u << 20, (1u << 20) + 1, 0xFFFFFFFFu};
    switch (below(5)) {
      case 0: set32(&b[16], below(2) ? kSizes[below(10)] : get32(&b[16]) + uint32_t(below(5)) - 2); break;
      case 1: set32(&b[20], below(2) ? kSizes[below(10)] : get32(&b[20]) + uint32_t(below(5)) - 2); break;
      case 2: b[24] = uint8_t(std::vector<int>{0, 1, 2, 4, 7, 8, 16, 32}[below(8)]); break;
      case 3: b[25] = uint8_t(below(8)); break;
      default: b[28] = uint8_t(below(3)); break;
    }
  }
  // Changes the compressed stream (biased to its start, where block headers and code tables lie), then
  // repairs its Adler-32 from what zlib decodes and fits IHDR's height to it, so that the change is
  // checked against the pixels rather than stopped by the checksum.
  void change_stream(Bytes& b) {
    Bytes stream, others;
    size_t first_idat = 0;
    if (!split_png(b, stream, others, first_idat) || stream.size() < 7) return;
    size_t span = below(2) ? std::min<size_t>(stream.size(), 64) : stream.size();
    for (size_t n = 1 + below(3); n > 0; --n) {
      size_t at = below(span);
      if (below(2)) stream[at] ^= uint8_t(1u << below(8));
      else stream[at] = interesting_byte();
    }
    repair_stream(b, stream);
    Bytes chunk(12 + stream.size());
    set32(&chunk[0], static_cast<uint32_t>(stream.size()));
    std::memcpy(&chunk[4], "IDAT", 4);
    std::memcpy(&chunk[8], stream.data(), stream.size());
    others.insert(others.begin() + first_idat, chunk.begin(), chunk.end());
    b = std::move(others);
  }
  // The IDAT data concatenated, and the file without its IDAT chunks (first_idat: where they were).
  static bool split_png(const Bytes& b, Bytes& stream, Bytes& others, size_t& first_idat) {
    if (b.size() < 33) return false;
    others.assign(b.begin(), b.begin() + 8);
    size_t pos = 8;
    for (; pos + 12 <= b.size();) {
      uint64_t length = get32(&b[pos]);
      if (pos + 12 + length > b.size()) break;
      if (std::memcmp(&b[pos + 4], "IDAT", 4) == 0) {
        if (stream.empty()) first_idat = others.size();
        stream.insert(stream.end(), b.begin() + pos + 8, b.begin() + pos + 8 + length);
      } else {
        others.insert(others.end(), b.begin() + pos, b.begin() + pos + 12 + length);
      }
      pos += 12 + length;
    }
    others.insert(others.end(), b.begin() + pos, b.end());
    return !stream.empty();
  }
  static void repair_stream(Bytes& png, Bytes& stream) {
    const size_t row = size_t(get32(&png[16])) * std::max(1, png[24] / 8) + 1;
    if (row > (1u << 16)) return;
    static thread_local Bytes out(4u << 20);
    z_stream z{};
    if (inflateInit(&z) != Z_OK) return;
    z.next_in = stream.data();
    z.avail_in = static_cast<uInt>(stream.size());
    z.next_out = out.data();
    z.avail_out = static_cast<uInt>(out.size());
    int status = inflate(&z, Z_FINISH);
    const bool checksum_only = status == Z_DATA_ERROR && z.msg && std::strcmp(z.msg, "incorrect data check") == 0;
    const size_t produced = z.total_out, consumed = z.total_in;
    inflateEnd(&z);
    if ((status != Z_STREAM_END && !checksum_only) || consumed < 6) return;
    set32(&stream[consumed - 4], static_cast<uint32_t>(adler32(adler32(0, nullptr, 0), out.data(), uInt(produced))));
    if (produced && produced % row == 0) set32(&png[20], static_cast<uint32_t>(produced / row));
  }

  uint64_t state_;
  const std::vector<Bytes>& seeds_;
  bool mutated_ = false;
};

}  // namespace fuzz
