// Dot product of float32 vectors, kernel chosen at run time (AVX2+FMA when the CPU has it,
// a portable loop otherwise). Never compiled with -march=native.
#pragma once
#include <cstddef>

namespace headroom {

float Dot(const float* a, const float* b, size_t n);
// Name of the kernel in use ("avx2+fma" or "portable"), reported by kernels().
const char* DotKernelName();
// Tests only: force the portable kernel (true) or go back to the CPU's best (false). Forced at
// load by HEADROOM_PORTABLE_KERNELS=1 too (crc32c.h).
void DotForcePortable(bool portable);

}  // namespace headroom
