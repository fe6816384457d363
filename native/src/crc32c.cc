#include "crc32c.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define HEADROOM_X86 1
#endif

namespace headroom {
namespace {

constexpr uint32_t kPoly = 0x82f63b78u;  // reflected Castagnoli polynomial

struct Table {
  uint32_t t[8][256];
  Table() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kPoly & (0u - (c & 1u)));
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};

const Table& GetTable() {
  static const Table table;
  return table;
}

// Portable slicing-by-8 over the raw (pre-inverted) register.
uint32_t ExtendPortable(uint32_t crc, const uint8_t* p, size_t n) {
  const Table& tb = GetTable();
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t lo;
    uint32_t hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;  // little-endian hosts only (checked in CMake)
    c = tb.t[7][lo & 0xff] ^ tb.t[6][(lo >> 8) & 0xff] ^ tb.t[5][(lo >> 16) & 0xff] ^
        tb.t[4][lo >> 24] ^ tb.t[3][hi & 0xff] ^ tb.t[2][(hi >> 8) & 0xff] ^
        tb.t[1][(hi >> 16) & 0xff] ^ tb.t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ tb.t[0][(c ^ *p++) & 0xff];
  return ~c;
}

#ifdef HEADROOM_X86
// Three interleaved streams hide the crc32 instruction's 3-cycle latency. Each round covers
// 3 x kBlock bytes; the streams are joined by "shifting" a register over kBlock zero bytes,
// a linear map precomputed as four byte tables (the technique of Mark Adler's crc32c.c).
constexpr size_t kBlock = 4096;

struct ShiftTable {
  uint32_t t[4][256];
  ShiftTable() {
    const Table& tb = GetTable();
    auto shift = [&](uint32_t r) {  // raw register after kBlock zero bytes
      for (size_t i = 0; i < kBlock; ++i) r = (r >> 8) ^ tb.t[0][r & 0xff];
      return r;
    };
    uint32_t basis[32];
    for (int b = 0; b < 32; ++b) basis[b] = shift(1u << b);
    for (int k = 0; k < 4; ++k)
      for (uint32_t v = 0; v < 256; ++v) {
        uint32_t r = 0;
        for (int b = 0; b < 8; ++b)
          if (v & (1u << b)) r ^= basis[8 * k + b];
        t[k][v] = r;
      }
  }
  uint32_t operator()(uint32_t r) const {
    return t[0][r & 0xff] ^ t[1][(r >> 8) & 0xff] ^ t[2][(r >> 16) & 0xff] ^ t[3][r >> 24];
  }
};

const ShiftTable& GetShift() {
  static const ShiftTable table;
  return table;
}

__attribute__((target("sse4.2"))) uint32_t ExtendSse42(uint32_t crc, const uint8_t* p,
                                                        size_t n) {
  uint64_t c0 = ~crc;
  if (n >= 3 * kBlock) {
    const ShiftTable& shift = GetShift();
    while (n >= 3 * kBlock) {
      uint64_t c1 = 0;
      uint64_t c2 = 0;
      for (size_t i = 0; i < kBlock; i += 8) {
        uint64_t a, b, d;
        std::memcpy(&a, p + i, 8);
        std::memcpy(&b, p + kBlock + i, 8);
        std::memcpy(&d, p + 2 * kBlock + i, 8);
        c0 = _mm_crc32_u64(c0, a);
        c1 = _mm_crc32_u64(c1, b);
        c2 = _mm_crc32_u64(c2, d);
      }
      c0 = shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
      c0 = shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c2);
      p += 3 * kBlock;
      n -= 3 * kBlock;
    }
  }
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c0 = _mm_crc32_u64(c0, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c0);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}
#endif

using ExtendFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);

ExtendFn Best() {
#ifdef HEADROOM_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) return ExtendSse42;
#endif
  return ExtendPortable;
}

std::atomic<ExtendFn> g_extend{PortableKernelsRequested() ? ExtendPortable : Best()};

}  // namespace

bool PortableKernelsRequested() {
  const char* v = std::getenv("HEADROOM_PORTABLE_KERNELS");
  return v && *v && std::strcmp(v, "0") != 0;
}

uint32_t Crc32cExtend(uint32_t crc, const uint8_t* data, size_t n) {
  return g_extend.load(std::memory_order_relaxed)(crc, data, n);
}

bool Crc32cIsHardware() { return g_extend.load() != ExtendPortable; }

void Crc32cForcePortable(bool portable) { g_extend.store(portable ? ExtendPortable : Best()); }

}  // namespace headroom
