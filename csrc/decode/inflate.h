// A fast zlib (RFC 1950) / DEFLATE (RFC 1951) decoder for whole buffers of known output size.
//
// Why not zlib: PNG decoding of microscopy channels is ~80% inflate, and zlib's streaming inflate runs
// at about half the speed a whole-buffer decoder reaches. This one keeps a 64-bit bit buffer refilled
// branch-free (one refill covers a full length/distance pair: at most 15+5+15+13 = 48 bits), decodes
// Huffman codes of up to kTableBits bits with one table lookup (longer, rare codes take a canonical
// bit-by-bit path), and copies matches 8 bytes at a time. The Adler-32 trailer is verified, so
// corrupt or truncated data raises instead of decoding to wrong pixels.
//
// Header-only, C++17, no dependencies: built into maefast._C and into the DALI plugin.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <cstring>
#include <stdexcept>
#include <string>

namespace maefast::decode {

struct DecodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace inflate_detail {

constexpr int kMaxBits = 15;
constexpr int kLitLenSymbols = 288;
constexpr int kDistSymbols = 32;

constexpr uint16_t kLengthBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLengthExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistBase[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
                                    193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6,
                                    6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

// What a decoded symbol means, precomputed per symbol so that the hot loop does no further lookups:
// bits 0-7 the code length (0 in the table: longer code, take the slow path), bits 8-11 the kind, bits
// 12-15 the number of extra bits, bits 16-31 the value (literal byte, length base or distance base).
enum : uint32_t { kLiteral = 1u << 8, kLength = 1u << 9, kEndOfBlock = 1u << 10, kInvalid = 1u << 11 };
// A literal/length table entry may hold two literals (bits 16-23, then 24-31) whose codes both fit in the
// table's bits: then bit 7 is set, bits 0-5 hold both codes' length and bits 12-15 the first code's.
constexpr uint32_t kLiteralPair = 1u << 7;

inline uint32_t make_info(uint32_t value, uint32_t kind, uint32_t extra) { return value << 16 | extra << 12 | kind; }

// The code length of an entry. Masking with 63 is free on x86 (its shifts mask their count that way), so
// the lookup -> shift -> lookup chain that bounds literal decoding has no extra instruction.
inline int code_length(uint32_t entry) { return static_cast<int>(entry & 63); }
inline int extra_bits(uint32_t entry) { return static_cast<int>((entry >> 12) & 15); }

inline uint32_t litlen_info(int symbol) {
  if (symbol < 256) return make_info(symbol, kLiteral, 0);
  if (symbol == 256) return make_info(0, kEndOfBlock, 0);
  if (symbol < 286) return make_info(kLengthBase[symbol - 257], kLength, kLengthExtra[symbol - 257]);
  return make_info(0, kInvalid, 0);
}

inline uint32_t dist_info(int symbol) {
  return symbol < 30 ? make_info(kDistBase[symbol], 0, kDistExtra[symbol]) : make_info(0, kInvalid, 0);
}

inline uint32_t codelen_info(int symbol) { return make_info(symbol, 0, 0); }

struct BitReader {
  BitReader(const uint8_t* data, size_t size) : next_(data), end_(data + size) {}

  // Makes at least 56 bits available (zeros past the end of the input, counted as overrun).
  inline void refill() {
    if (end_ - next_ >= 8) {
      uint64_t word;
      std::memcpy(&word, next_, 8);  // little-endian hosts (x86-64, aarch64)
      buffer_ |= word << bits_;
      next_ += (63 - bits_) >> 3;
      bits_ |= 56;
    } else {
      while (bits_ <= 56) {
        if (next_ < end_) buffer_ |= static_cast<uint64_t>(*next_++) << bits_;
        else overrun_ += 8;
        bits_ += 8;
      }
    }
  }
  inline uint64_t peek() const { return buffer_; }
  inline int available() const { return bits_; }
  inline void consume(int n) {
    buffer_ >>= n;
    bits_ -= n;
  }
  inline uint32_t take(int n) {  // n <= 32, after refill
    uint32_t value = static_cast<uint32_t>(buffer_ & ((uint64_t{1} << n) - 1));
    consume(n);
    return value;
  }
  // Drops the bits to the next byte boundary and returns the position of the next unread byte.
  const uint8_t* align_to_byte() {
    consume(bits_ & 7);
    if (overran()) throw DecodeError("truncated deflate stream");
    const uint8_t* position = next_ - (bits_ - overrun_) / 8;  // real bytes still buffered go back
    buffer_ = 0;
    bits_ = 0;
    overrun_ = 0;
    next_ = position;
    return position;
  }
  void seek(const uint8_t* position) { next_ = position; }
  const uint8_t* end() const { return end_; }
  // True when more bits were consumed than the input holds.
  bool overran() const { return overrun_ > bits_; }

 private:
  const uint8_t* next_;
  const uint8_t* end_;
  uint64_t buffer_ = 0;
  int bits_ = 0;
  int overrun_ = 0;
};

// A canonical Huffman code: a direct table of entries for codes of up to TableBits bits, and the
// canonical counts and sorted symbols for decoding the longer ones bit by bit.
template <int TableBits, int Symbols, uint32_t (*Info)(int)>
struct Huffman {
  static constexpr int kTableBits = TableBits;
  uint32_t table[1 << TableBits];
  bool paired = false;  // literal/length codes: whether pair_literals() made two-literal entries
  uint16_t count[kMaxBits + 1];
  uint16_t symbols[Symbols];

  // lengths[s] is the code length of symbol s (0: unused). Refuses over-subscribed codes, and incomplete
  // ones as zlib does: all of them, except a single 1-bit code where single_code_ok (literal/length and
  // distance codes) and a code with no symbols (caught when one of its symbols is needed).
  void build(const uint8_t* lengths, int num_symbols, bool single_code_ok) {
    std::memset(count, 0, sizeof(count));
    for (int s = 0; s < num_symbols; ++s) count[lengths[s]]++;
    count[0] = 0;
    int left = 1, longest = 0;
    for (int len = 1; len <= kMaxBits; ++len) {
      left = (left << 1) - count[len];
      if (left < 0) throw DecodeError("corrupt deflate stream: over-subscribed Huffman code");
      if (count[len]) longest = len;
    }
    if (left > 0 && longest > 0 && !(single_code_ok && longest == 1))
      throw DecodeError("corrupt deflate stream: incomplete Huffman code");
    uint16_t offsets[kMaxBits + 2];
    offsets[1] = 0;
    for (int len = 1; len <= kMaxBits; ++len) offsets[len + 1] = offsets[len] + count[len];
    for (int s = 0; s < num_symbols; ++s)
      if (lengths[s]) symbols[offsets[lengths[s]]++] = static_cast<uint16_t>(s);
    // A complete code without codes longer than the table fills every slot; otherwise the slots left
    // must read as "no entry" (0: decode bit by bit).
    if (left != 0 || longest > TableBits) std::memset(table, 0, sizeof(table));
    // Canonical codes in (length, symbol) order; each fills the table slots whose low bits are the
    // bit-reversed code (DEFLATE sends Huffman codes most significant bit first). `reversed` is kept
    // bit-reversed while counting up, so no per-code reversal loop is needed.
    int index = 0;
    uint32_t reversed = 0;
    for (int len = 1; len <= std::min(kMaxBits, TableBits); ++len) {
      for (int i = 0; i < count[len]; ++i, ++index) {
        uint32_t entry = Info(symbols[index]) | static_cast<uint32_t>(len);
        for (uint32_t slot = reversed; slot < (1u << TableBits); slot += 1u << len) table[slot] = entry;
        // Increment the bit-reversed len-bit counter: clear trailing ones from the top, set the next bit.
        uint32_t bit = 1u << (len - 1);
        while (reversed & bit) {
          reversed ^= bit;
          bit >>= 1;
        }
        reversed |= bit;
      }
      // Codes of the next length start at (last code + 1) << 1: in reversed form the same bits.
    }
  }

  // The entry of the next symbol, its code length in the low 4 bits; does not consume (the caller has
  // refilled and consumes code_length(entry) bits).
  inline uint32_t lookup(uint64_t word) const {
    const uint32_t entry = table[word & ((1u << TableBits) - 1)];
    return code_length(entry) ? entry : lookup_long(word);
  }
  inline uint32_t decode(BitReader& bits) const {
    const uint32_t entry = lookup(bits.peek());
    bits.consume(code_length(entry));
    return entry;
  }

 private:
  // A code longer than the table, or none: canonical decoding bit by bit (rare).
  uint32_t lookup_long(uint64_t word) const {
    int first = 0, index = 0, value = 0;
    for (int len = 1; len <= kMaxBits; ++len) {
      value |= static_cast<int>((word >> (len - 1)) & 1);
      int n = count[len];
      if (value - first < n) return Info(symbols[index + value - first]) | static_cast<uint32_t>(len);
      index += n;
      first = (first + n) << 1;
      value <<= 1;
    }
    throw DecodeError("corrupt deflate stream: invalid Huffman code");
  }
};

// Literal/length codes of noisy images are often 11-12 bits long: a 12-bit table decodes nearly all
// symbols with one lookup. Distance and code-length codes are shorter.
using LitLenCode = Huffman<12, kLitLenSymbols, litlen_info>;
using DistCode = Huffman<10, kDistSymbols, dist_info>;
using CodeLenCode = Huffman<7, 19, codelen_info>;

// The chance, by the literal code lengths, that a literal's code and the next literal's code fit in the
// table's bits together. Pairs pay off where it is high (8-bit images: short codes); where it is low
// (noisy 16-bit images: long codes for the low bytes) the pairing pass and the wider stores cost more
// than the few pairs save.
inline double pair_chance(const uint8_t* litlen_lengths) {
  uint64_t mass[kMaxBits + 1] = {0};  // per code length, the share of the code space of its literals, in 2^-15
  for (int s = 0; s < 256; ++s)
    if (litlen_lengths[s]) mass[litlen_lengths[s]] += uint64_t{1} << (kMaxBits - litlen_lengths[s]);
  uint64_t chance = 0;
  for (int first = 1; first < LitLenCode::kTableBits; ++first)
    for (int second = 1; first + second <= LitLenCode::kTableBits; ++second) chance += mass[first] * mass[second];
  return std::ldexp(static_cast<double>(chance), -2 * kMaxBits);
}
// Measured on 512x512 channels (bench_loader.py): about 0.9 for 8-bit blocks, where pairs make inflate 25%
// faster; about 0.3 for 16-bit ones, whose bytes alternate between short and long codes (5% pairs).
constexpr double kPairChanceWorthIt = 0.5;

// Turns the entries of table slots whose bits hold two whole literal codes into pairs, so that the hot
// loop writes two bytes per lookup, if pair_chance() says it pays. In descending slot order, the second
// code's entry (at the slot shifted by the first code's length, a smaller slot) is still a single
// literal when it is read.
inline void pair_literals(LitLenCode& code, const uint8_t* litlen_lengths) {
  code.paired = pair_chance(litlen_lengths) >= kPairChanceWorthIt;
  if (!code.paired) return;
  for (int slot = (1 << LitLenCode::kTableBits) - 1; slot >= 0; --slot) {
    const uint32_t first = code.table[slot];
    if (!(first & kLiteral)) continue;
    const uint32_t first_length = static_cast<uint32_t>(code_length(first));
    const uint32_t second = code.table[slot >> first_length];
    const uint32_t length = first_length + static_cast<uint32_t>(code_length(second));
    if (!(second & kLiteral) || length > LitLenCode::kTableBits) continue;
    code.table[slot] = (first >> 16 | (second >> 16) << 8) << 16 | first_length << 12 | kLiteral | kLiteralPair | length;
  }
}

inline const LitLenCode& fixed_litlen() {
  static const LitLenCode code = [] {
    LitLenCode h;
    uint8_t lengths[kLitLenSymbols];
    for (int s = 0; s < 144; ++s) lengths[s] = 8;
    for (int s = 144; s < 256; ++s) lengths[s] = 9;
    for (int s = 256; s < 280; ++s) lengths[s] = 7;
    for (int s = 280; s < 288; ++s) lengths[s] = 8;
    h.build(lengths, kLitLenSymbols, true);
    pair_literals(h, lengths);
    return h;
  }();
  return code;
}

inline const DistCode& fixed_dist() {
  static const DistCode code = [] {
    DistCode h;
    uint8_t lengths[kDistSymbols];
    std::memset(lengths, 5, sizeof(lengths));
    h.build(lengths, kDistSymbols, true);
    return h;
  }();
  return code;
}

inline void read_dynamic_codes(BitReader& bits, LitLenCode& litlen, DistCode& dist) {
  static constexpr uint8_t kOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
  bits.refill();
  int num_litlen = static_cast<int>(bits.take(5)) + 257;
  int num_dist = static_cast<int>(bits.take(5)) + 1;
  int num_codelen = static_cast<int>(bits.take(4)) + 4;
  if (num_litlen > 286 || num_dist > 30) throw DecodeError("corrupt deflate stream: too many code lengths");
  uint8_t codelen_lengths[19] = {0};
  for (int i = 0; i < num_codelen; ++i) {
    bits.refill();
    codelen_lengths[kOrder[i]] = static_cast<uint8_t>(bits.take(3));
  }
  CodeLenCode codelen;
  codelen.build(codelen_lengths, 19, false);
  uint8_t lengths[kLitLenSymbols + kDistSymbols] = {0};
  int total = num_litlen + num_dist;
  for (int i = 0; i < total;) {
    bits.refill();
    int symbol = static_cast<int>(codelen.decode(bits) >> 16);
    if (symbol < 16) {
      lengths[i++] = static_cast<uint8_t>(symbol);
      continue;
    }
    int repeat, value = 0;
    if (symbol == 16) {
      if (i == 0) throw DecodeError("corrupt deflate stream: repeat of no previous code length");
      value = lengths[i - 1];
      repeat = 3 + static_cast<int>(bits.take(2));
    } else if (symbol == 17) {
      repeat = 3 + static_cast<int>(bits.take(3));
    } else {
      repeat = 11 + static_cast<int>(bits.take(7));
    }
    if (i + repeat > total) throw DecodeError("corrupt deflate stream: code lengths overflow");
    std::memset(lengths + i, value, repeat);
    i += repeat;
  }
  if (lengths[256] == 0) throw DecodeError("corrupt deflate stream: no end-of-block code");
  litlen.build(lengths, num_litlen, true);
  pair_literals(litlen, lengths);
  dist.build(lengths + num_litlen, num_dist, true);
}

inline void adler32_scalar(const uint8_t* data, size_t size, uint32_t& a, uint32_t& b) {
  while (size) {
    size_t block = size < 5552 ? size : 5552;  // the most bytes before b can overflow 32 bits
    size -= block;
    for (; block; --block) {
      a += *data++;
      b += a;
    }
    a %= 65521;
    b %= 65521;
  }
}

inline uint32_t adler32(const uint8_t* data, size_t size) {
  uint32_t a = 1, b = 0;
#if defined(__SSE2__)
  // 16 bytes at a time. Over n bytes x_0..x_{n-1}, a grows by sum(x_i) and b by n * a + sum((n - i) x_i);
  // per 16-byte chunk that is 16 * (a before the chunk) + sum((16 - j) x_j): the chunk's byte sum comes
  // from _mm_sad_epu8, the weighted sum from _mm_madd_epi16, and the sums before each chunk accumulate in
  // `before` (64-bit lanes). The totals are reduced modulo 65521 every 5552 bytes.
  const __m128i zero = _mm_setzero_si128();
  const __m128i weights_low = _mm_setr_epi16(16, 15, 14, 13, 12, 11, 10, 9);
  const __m128i weights_high = _mm_setr_epi16(8, 7, 6, 5, 4, 3, 2, 1);
  while (size >= 16) {
    const size_t chunks = (size < 5552 ? size : 5552) / 16;
    __m128i sums = zero, before = zero, weighted = zero;
    for (size_t k = 0; k < chunks; ++k, data += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(data));
      before = _mm_add_epi64(before, sums);
      sums = _mm_add_epi64(sums, _mm_sad_epu8(bytes, zero));
      weighted = _mm_add_epi32(weighted, _mm_madd_epi16(_mm_unpacklo_epi8(bytes, zero), weights_low));
      weighted = _mm_add_epi32(weighted, _mm_madd_epi16(_mm_unpackhi_epi8(bytes, zero), weights_high));
    }
    alignas(16) uint64_t sum_lanes[2], before_lanes[2];
    alignas(16) uint32_t weighted_lanes[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(sum_lanes), sums);
    _mm_store_si128(reinterpret_cast<__m128i*>(before_lanes), before);
    _mm_store_si128(reinterpret_cast<__m128i*>(weighted_lanes), weighted);
    const uint64_t n = 16 * chunks;
    const uint64_t new_b = b + n * a + 16 * (before_lanes[0] + before_lanes[1]) + weighted_lanes[0] + weighted_lanes[1] +
                           weighted_lanes[2] + weighted_lanes[3];
    a = static_cast<uint32_t>((a + sum_lanes[0] + sum_lanes[1]) % 65521);
    b = static_cast<uint32_t>(new_b % 65521);
    size -= n;
  }
#endif
  adler32_scalar(data, size, a, b);
  return b << 16 | a;
}

// Decodes the symbols of one Huffman block until its end-of-block code. The bit reader and the output
// position are local copies, so that they live in registers: every byte stored through `out` could
// otherwise alias them and force a reload. Far from the end of the output (kFastMargin bytes) it skips
// the bounds checks, decodes up to four table lookups of literals per refill, and copies
// matches 8 bytes at a time; near the end it checks every write.
template <bool Paired>
inline void decode_block(BitReader& reader, const LitLenCode& lit_code, const DistCode& dist_code, uint8_t* const begin,
                         uint8_t*& position, uint8_t* const end) {
  constexpr int64_t kFastMargin = 258 + 8;  // the longest match and a chunk's overshoot (a refill's literals: 9)
  constexpr uint64_t kMask = (1u << LitLenCode::kTableBits) - 1;
  BitReader bits = reader;
  uint8_t* out = position;
  for (;;) {
    bits.refill();
    const bool fast = end - out >= kFastMargin;
    uint32_t entry = lit_code.table[bits.peek() & kMask];
    if (fast && (entry & kLiteral)) {
      // Up to four lookups per refill (4 x 12 bits <= 56), each of one or two literals; a single literal
      // also writes a second byte, which the next one overwrites. Literal-heavy data (noisy 16-bit
      // images) takes every branch here the same way.
      for (int lookups = 0; lookups < 4 && (entry & kLiteral); ++lookups) {
        bits.consume(code_length(entry));
        if constexpr (Paired) {
          const uint16_t literals = static_cast<uint16_t>(entry >> 16);
          std::memcpy(out, &literals, 2);  // little-endian: the first literal first
          out += 1 + ((entry & kLiteralPair) != 0);
        } else {
          *out++ = static_cast<uint8_t>(entry >> 16);
        }
        entry = lit_code.table[bits.peek() & kMask];
      }
      continue;
    }
    entry = lit_code.lookup(bits.peek());
    if (entry & kLiteral) {  // near the end: one literal at a time, checked
      if (out == end) throw DecodeError("deflate stream decodes to more bytes than the image holds");
      bits.consume(entry & kLiteralPair ? static_cast<int>((entry >> 12) & 15) : code_length(entry));
      *out++ = static_cast<uint8_t>(entry >> 16);
      continue;
    }
    bits.consume(code_length(entry));
    if (entry & kEndOfBlock) break;
    if (entry & kInvalid) throw DecodeError("corrupt deflate stream: invalid length symbol");
    const int length = static_cast<int>(entry >> 16) + static_cast<int>(bits.take(extra_bits(entry)));
    const uint32_t dist_entry = dist_code.lookup(bits.peek());
    bits.consume(code_length(dist_entry));
    if (dist_entry & kInvalid) throw DecodeError("corrupt deflate stream: invalid distance symbol");
    const int distance = static_cast<int>(dist_entry >> 16) + static_cast<int>(bits.take(extra_bits(dist_entry)));
    if (distance > out - begin) throw DecodeError("corrupt deflate stream: distance before the start");
    const uint8_t* from = out - distance;
    if (fast && distance >= 8) {  // 8-byte chunks; may write up to 7 bytes past the match (within the margin)
      for (int i = 0; i < length; i += 8) std::memcpy(out + i, from + i, 8);
    } else {
      if (end - out < length) throw DecodeError("deflate stream decodes to more bytes than the image holds");
      if (distance == 1) std::memset(out, from[0], length);
      else for (int i = 0; i < length; ++i) out[i] = from[i];
    }
    out += length;
  }
  reader = bits;
  position = out;
}

}  // namespace inflate_detail

// Space to allocate past the expected output size: lets match copies run 8 bytes at a time.
constexpr size_t kInflateSlack = 8;

// DEFLATE expands at most 1032-fold (a 258-byte match in 2 bits): a header that announces more output
// than its compressed data can hold is refused before anything of that size is allocated.
constexpr size_t kMaxInflateRatio = 1032;
inline bool can_inflate_to(size_t in_size, size_t out_size) { return out_size / kMaxInflateRatio <= in_size; }

// Inflates the zlib stream in[0:in_size] into out, which must hold out_size + kInflateSlack bytes.
// The stream must decode to exactly out_size bytes and its Adler-32 must match; otherwise DecodeError.
inline void zlib_inflate(const uint8_t* in, size_t in_size, uint8_t* out, size_t out_size) {
  using namespace inflate_detail;
  if (in_size < 6) throw DecodeError("truncated zlib stream");
  if ((in[0] & 15) != 8 || ((in[0] << 8) | in[1]) % 31 != 0)
    throw DecodeError("not a zlib stream (bad header)");
  if ((in[0] >> 4) > 7) throw DecodeError("not a zlib stream (window size over 32 KiB)");
  if (in[1] & 32) throw DecodeError("zlib stream needs a preset dictionary");
  BitReader bits(in + 2, in_size - 2);
  uint8_t* const begin = out;
  uint8_t* const end = out + out_size;
  LitLenCode litlen;
  DistCode dist;
  bool last = false;
  while (!last) {
    bits.refill();
    last = bits.take(1);
    int type = static_cast<int>(bits.take(2));
    if (type == 0) {  // stored block
      const uint8_t* at = bits.align_to_byte();
      if (bits.end() - at < 4) throw DecodeError("truncated deflate stream (stored block header)");
      int length = at[0] | at[1] << 8, complement = at[2] | at[3] << 8;
      if ((length ^ 0xffff) != complement) throw DecodeError("corrupt deflate stream: stored block length");
      at += 4;
      if (bits.end() - at < length) throw DecodeError("truncated deflate stream (stored block)");
      if (end - out < length) throw DecodeError("deflate stream decodes to more bytes than the image holds");
      std::memcpy(out, at, length);
      out += length;
      bits.seek(at + length);
      continue;
    }
    if (type == 3) throw DecodeError("corrupt deflate stream: reserved block type");
    const LitLenCode* lit_code = &fixed_litlen();
    const DistCode* dist_code = &fixed_dist();
    if (type == 2) {
      read_dynamic_codes(bits, litlen, dist);
      lit_code = &litlen;
      dist_code = &dist;
    }
    if (lit_code->paired) decode_block<true>(bits, *lit_code, *dist_code, begin, out, end);
    else decode_block<false>(bits, *lit_code, *dist_code, begin, out, end);
    if (bits.overran()) throw DecodeError("truncated deflate stream");
  }
  if (out != end) {
    throw DecodeError("truncated image data: " + std::to_string(out - begin) + " of " + std::to_string(out_size) +
                      " bytes decoded");
  }
  const uint8_t* trailer = bits.align_to_byte();
  if (bits.end() - trailer < 4) throw DecodeError("truncated zlib stream (no checksum)");
  uint32_t expected = static_cast<uint32_t>(trailer[0]) << 24 | trailer[1] << 16 | trailer[2] << 8 | trailer[3];
  if (adler32(begin, out_size) != expected) throw DecodeError("corrupt image data (Adler-32 checksum mismatch)");
}

}  // namespace maefast::decode
