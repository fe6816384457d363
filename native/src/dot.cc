#include "dot.h"

#include <atomic>
#include <cstring>

#include "crc32c.h"  // PortableKernelsRequested

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HEADROOM_X86 1
#endif

namespace headroom {
namespace {

// Vectors may lie at any byte offset (in a segment mapping or an arena copy of an entry), so
// every scalar load goes through memcpy: a misaligned `const float&` is undefined behaviour
// (UBSan flags it; a compiler may assume alignment when it vectorises).
inline float Ld(const float* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

float DotPortable(const float* a, const float* b, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += Ld(a + i) * Ld(b + i);
    s1 += Ld(a + i + 1) * Ld(b + i + 1);
    s2 += Ld(a + i + 2) * Ld(b + i + 2);
    s3 += Ld(a + i + 3) * Ld(b + i + 3);
  }
  for (; i < n; ++i) s0 += Ld(a + i) * Ld(b + i);
  return (s0 + s1) + (s2 + s3);
}

#ifdef HEADROOM_X86
__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b, size_t n) {
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps();
  __m256 acc3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  __m256 acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
  __m128 lo = _mm256_castps256_ps128(acc);
  __m128 hi = _mm256_extractf128_ps(acc, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  float r = _mm_cvtss_f32(s);
  for (; i < n; ++i) r += Ld(a + i) * Ld(b + i);
  return r;
}
#endif

using DotFn = float (*)(const float*, const float*, size_t);

DotFn Best() {
#ifdef HEADROOM_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return DotAvx2;
#endif
  return DotPortable;
}

std::atomic<DotFn> g_dot{PortableKernelsRequested() ? DotPortable : Best()};

}  // namespace

float Dot(const float* a, const float* b, size_t n) {
  return g_dot.load(std::memory_order_relaxed)(a, b, n);
}

const char* DotKernelName() { return g_dot.load() == DotPortable ? "portable" : "avx2+fma"; }

void DotForcePortable(bool portable) { g_dot.store(portable ? DotPortable : Best()); }

}  // namespace headroom
