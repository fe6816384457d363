#include "vecpack.h"

#include <cstdio>
#include <cstring>

#include "crc32c.h"

namespace headroom {

namespace {

// Header: magic 8, version u32, dim u32, count u64, covered_seq u64, generation u32,
// user_len u32, then the user id; labels at the next kPackAlign boundary, vectors at the one
// after the labels, the CRC in the last 4 bytes.
constexpr size_t kFixed = 40;

size_t AlignUp(size_t n) { return (n + kPackAlign - 1) & ~(kPackAlign - 1); }

template <class T>
void Put(std::string* out, size_t at, T v) {
  std::memcpy(&(*out)[at], &v, sizeof v);
}

template <class T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

const float* PackView::Find(uint64_t label) const {
  size_t lo = 0, hi = count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    uint64_t at = Get<uint64_t>(labels + mid * 8);
    if (at < label) {
      lo = mid + 1;
    } else if (at > label) {
      hi = mid;
    } else {
      return reinterpret_cast<const float*>(vectors + mid * size_t{dim} * 4);
    }
  }
  return nullptr;
}

std::string EncodePack(std::string_view user, uint32_t dim, uint32_t generation,
                       uint64_t covered_seq,
                       const std::vector<std::pair<uint64_t, const float*>>& rows) {
  const size_t labels_at = AlignUp(kFixed + user.size());
  const size_t vectors_at = AlignUp(labels_at + rows.size() * 8);
  const size_t row_bytes = size_t{dim} * 4;
  std::string out(vectors_at + rows.size() * row_bytes + 4, '\0');
  std::memcpy(&out[0], kPackMagic, 8);
  Put<uint32_t>(&out, 8, kPackVersion);
  Put<uint32_t>(&out, 12, dim);
  Put<uint64_t>(&out, 16, rows.size());
  Put<uint64_t>(&out, 24, covered_seq);
  Put<uint32_t>(&out, 32, generation);
  Put<uint32_t>(&out, 36, static_cast<uint32_t>(user.size()));
  if (!user.empty()) std::memcpy(&out[kFixed], user.data(), user.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    Put<uint64_t>(&out, labels_at + i * 8, rows[i].first);
    std::memcpy(&out[vectors_at + i * row_bytes], rows[i].second, row_bytes);
  }
  const size_t body = out.size() - 4;
  Put<uint32_t>(&out, body, MaskCrc(Crc32c(reinterpret_cast<const uint8_t*>(out.data()), body)));
  return out;
}

bool DecodePack(const uint8_t* p, size_t n, PackView* out) {
  if (n < kFixed + 4 || std::memcmp(p, kPackMagic, 8) != 0) return false;
  if (Get<uint32_t>(p + 8) != kPackVersion) return false;
  PackView v;
  v.dim = Get<uint32_t>(p + 12);
  v.count = Get<uint64_t>(p + 16);
  v.covered_seq = Get<uint64_t>(p + 24);
  v.generation = Get<uint32_t>(p + 32);
  const uint64_t user_len = Get<uint32_t>(p + 36);
  if (v.dim == 0 || v.dim > 65536 || user_len > 256) return false;
  const uint64_t labels_at = AlignUp(kFixed + user_len);
  // Sizes in 64 bits: count comes from the file and must not overflow anything.
  if (v.count > (n / 8)) return false;
  const uint64_t vectors_at = AlignUp(labels_at + v.count * 8);
  const uint64_t row_bytes = uint64_t{v.dim} * 4;
  if (vectors_at + 4 > n) return false;
  if (v.count && row_bytes > (n - vectors_at - 4) / v.count) return false;
  if (vectors_at + v.count * row_bytes + 4 != n) return false;
  if (UnmaskCrc(Get<uint32_t>(p + n - 4)) != Crc32c(p, n - 4)) return false;
  v.user = std::string_view(reinterpret_cast<const char*>(p + kFixed), user_len);
  v.labels = p + labels_at;
  v.vectors = p + vectors_at;
  for (uint64_t i = 1; i < v.count; ++i)
    if (Get<uint64_t>(v.labels + (i - 1) * 8) >= Get<uint64_t>(v.labels + i * 8)) return false;
  *out = v;
  return true;
}

std::string PackFileName(std::string_view user) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : user) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  char name[17];
  std::snprintf(name, sizeof name, "%016llx", static_cast<unsigned long long>(h));
  return std::string(name) + kPackSuffix;
}

}  // namespace headroom
