// Bytes that the replayed state points into. Entries read from a segment mapping keep
// pointing into that mapping (pinned for the life of the State); entries applied from any
// other buffer (an append's frame, a pread(2) buffer) are copied once into an Arena. Either
// way replay makes no per-record heap allocation for texts, ids and vectors.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace headroom {

// Append-only storage in chunks of at least 1 MiB. A copy stays at the same address until the
// Arena is destroyed (nothing is ever freed earlier: it grows by what was appended since the
// State was built, which a reload after compaction resets).
class Arena {
 public:
  // Copies n bytes and returns the copy (8-byte aligned).
  const uint8_t* Copy(const uint8_t* p, size_t n) {
    size_t need = (n + 7) & ~size_t{7};
    if (left_ < need) {
      size_t size = need > kChunk ? need : kChunk;
      chunks_.push_back(std::make_unique<uint8_t[]>(size));
      next_ = chunks_.back().get();
      left_ = size;
    }
    uint8_t* out = next_;
    if (n) std::memcpy(out, p, n);
    next_ += need;
    left_ -= need;
    return out;
  }

 private:
  static constexpr size_t kChunk = 1u << 20;
  std::vector<std::unique_ptr<uint8_t[]>> chunks_;
  uint8_t* next_ = nullptr;
  size_t left_ = 0;
};

// A read-only mapping of a file's bytes [0, size): unmapped when the last holder lets go.
class Mapping {
 public:
  // Maps fd; nullptr when mmap fails (the caller falls back to pread).
  static std::shared_ptr<const Mapping> Map(int fd, size_t size) {
    if (size == 0) return nullptr;
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) return nullptr;
    return std::shared_ptr<const Mapping>(new Mapping(static_cast<const uint8_t*>(p), size));
  }
  ~Mapping() { ::munmap(const_cast<uint8_t*>(p_), n_); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  Mapping(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  const uint8_t* p_;
  size_t n_;
};

}  // namespace headroom
