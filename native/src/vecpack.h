// Vector packs: one user's live vectors laid out contiguously in a file derived from the log
// (`packs/<hash of the user>.vpk` in the store directory), mapped read-only so that the exact
// scan streams through one block and every process of a store shares the bytes through the
// page cache instead of holding a private copy. docs/log-format.md ("Vector packs") is the
// spec.
//
// A pack is a cache, never the truth: it holds (label, vector) pairs, and a label (the seq of
// the entry that set the vector) names one vector of one user forever (seqs are never reused,
// a compaction keeps them), so any pack whose CRC holds tells the truth about every label in
// it; labels the state no longer has are simply not looked up. A damaged or foreign file is
// ignored and rewritten. Compaction deletes every pack (purged vectors must not survive).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace headroom {

constexpr char kPackMagic[8] = {'H', 'R', 'V', 'P', 'A', 'C', 'K', '1'};
constexpr uint32_t kPackVersion = 1;
// Labels and vectors start on this boundary of the file (a mapping is page-aligned).
constexpr size_t kPackAlign = 64;
constexpr const char* kPackDir = "packs";
constexpr const char* kPackSuffix = ".vpk";

// A validated pack: views into the bytes it was decoded from.
struct PackView {
  uint32_t dim = 0;
  uint32_t generation = 0;
  uint64_t count = 0;
  uint64_t covered_seq = 0;
  std::string_view user;
  const uint8_t* labels = nullptr;  // count little-endian u64, strictly increasing
  const uint8_t* vectors = nullptr;  // count * dim float32, 64-byte aligned in the file
  // The vector of `label`, or nullptr when the pack does not hold it (binary search).
  const float* Find(uint64_t label) const;
};

// The bytes of a pack of `rows` (label, pointer to dim floats), which must be sorted by label
// with no repeats. The last 4 bytes are the masked CRC32C of everything before them.
std::string EncodePack(std::string_view user, uint32_t dim, uint32_t generation,
                       uint64_t covered_seq,
                       const std::vector<std::pair<uint64_t, const float*>>& rows);

// Checks `n` bytes as a pack (magic, version, sizes, label order, CRC) and fills *out; false
// when anything is wrong.
bool DecodePack(const uint8_t* p, size_t n, PackView* out);

// The file name of a user's pack ("<16 hex digits>.vpk": a 64-bit FNV-1a of the user id, so
// ids never become file names; the header names the user, so a collision only costs a
// rewrite).
std::string PackFileName(std::string_view user);

}  // namespace headroom
