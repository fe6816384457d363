// CRC32C (Castagnoli), chosen at run time: SSE4.2 crc32 instructions when the CPU has them,
// a table-driven portable loop otherwise. Mask/unmask as LevelDB does, so that a CRC stored
// inside data that is itself CRC'd does not degrade the check.
#pragma once
#include <cstddef>
#include <cstdint>

namespace headroom {

// CRC32C of data, continuing from crc (0 for a fresh CRC). Same convention as LevelDB's
// crc32c::Extend: crc32c_extend(crc32c(a), b) == crc32c(a + b).
uint32_t Crc32cExtend(uint32_t crc, const uint8_t* data, size_t n);
inline uint32_t Crc32c(const uint8_t* data, size_t n) { return Crc32cExtend(0, data, n); }

constexpr uint32_t kCrcMaskDelta = 0xa282ead8u;
inline uint32_t MaskCrc(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kCrcMaskDelta; }
inline uint32_t UnmaskCrc(uint32_t masked) {
  uint32_t rot = masked - kCrcMaskDelta;
  return (rot >> 17) | (rot << 15);
}

// True when the hardware path is in use (reported by kernels()).
bool Crc32cIsHardware();
// Tests only: force the portable kernel (true) or go back to the CPU's best (false). The
// portable kernel is also forced at load by the environment variable
// HEADROOM_PORTABLE_KERNELS=1 (see PortableKernelsRequested).
void Crc32cForcePortable(bool portable);

// Whether HEADROOM_PORTABLE_KERNELS asks for the portable kernels (set, and not "" or "0").
bool PortableKernelsRequested();

}  // namespace headroom
