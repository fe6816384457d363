// The on-disk format (docs/log-format.md is the spec): segment header, frames, entries.
// Everything is little-endian. Nothing here touches a file descriptor except FrameScanner,
// which reads through pread(2) and never trusts a length it has not checked.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace headroom {

// --- versions and limits --------------------------------------------------------------
constexpr uint32_t kFormatVersion = 1;  // readers read every version <= this one
constexpr char kSegmentMagic[8] = {'H', 'R', 'M', 'E', 'M', 'L', 'O', 'G'};
constexpr size_t kSegmentHeaderSize = 48;   // of version 1
constexpr size_t kMaxSegmentHeaderSize = 4096;
constexpr uint32_t kSyncMagic = 0xE1A9C3B7u;  // bytes B7 C3 A9 E1
constexpr size_t kFrameHeaderSize = 13;       // sync u32, length u32, type u8, crc u32
constexpr uint8_t kFrameBatch = 1;
constexpr uint32_t kMinPayload = 4;
constexpr uint32_t kMaxPayload = 64u << 20;
constexpr size_t kEntryFixedSize = 52;
constexpr size_t kMaxUserBytes = 256;
constexpr size_t kMaxIdBytes = 256;
constexpr size_t kMaxModelBytes = 256;
constexpr size_t kMaxTextBytes = 1u << 20;
constexpr size_t kMaxMetaBytes = 1u << 20;
constexpr uint32_t kMaxDim = 65536;
constexpr uint32_t kMaxEntriesPerBatch = 1u << 20;

enum Op : uint8_t {
  kAdd = 1,
  kUpdate = 2,
  kDelete = 3,
  kClear = 4,
  kPurge = 5,
  kPending = 6,
  kDone = 7,
  kConfig = 8,
  kRevector = 9,
};
constexpr uint8_t kMaxOp = 9;
constexpr uint8_t kDtypeNone = 0;
constexpr uint8_t kDtypeF32 = 1;
constexpr uint8_t kMaxCategory = 3;
constexpr uint8_t kMaxSource = 4;

const char* OpName(uint8_t op);

// --- segment header -----------------------------------------------------------------------
struct SegmentHeader {
  uint32_t version = kFormatVersion;
  uint32_t header_size = kSegmentHeaderSize;
  uint64_t number = 0;      // the segment number (also in the file name)
  uint64_t replaces = 0;    // compaction output: highest segment number it replaces; else 0
  uint64_t seq_floor = 0;   // every seq in this segment (and after it) is > seq_floor
  uint32_t generation = 0;  // how many compactions the store has had
};

std::string EncodeSegmentHeader(const SegmentHeader& h);
enum class HeaderStatus { kOk, kShort, kBadMagic, kBadSize, kBadCrc, kNewerVersion };
// Decodes `n` bytes (the start of a segment file).
HeaderStatus DecodeSegmentHeader(const uint8_t* p, size_t n, SegmentHeader* out);

// --- entries -------------------------------------------------------------------------------
// A decoded entry. Strings and the vector point into the payload it came from.
struct EntryView {
  uint64_t seq = 0;
  int64_t ts = 0;
  int64_t created_at = 0;
  uint8_t op = 0;
  uint8_t category = 0;
  uint8_t source = 0;
  uint8_t dtype = 0;
  uint32_t dim = 0;
  std::string_view user, id, text, meta, model;
  const uint8_t* vec = nullptr;  // dim * 4 bytes, little-endian float32, possibly unaligned
  const uint8_t* raw = nullptr;  // the whole encoded entry (compaction copies it as is)
  size_t raw_len = 0;
};

// An entry to write (owned). `ts` 0 means "now" at commit.
struct EntryIn {
  uint8_t op = 0;
  uint8_t category = 0;
  uint8_t source = 0;
  int64_t created_at = 0;
  int64_t ts = 0;
  std::string user, id, text, meta, model;
  std::vector<float> vec;  // empty = no vector
  bool has_vec = false;
};

// Checks an entry's shape and limits (not its meaning against the live state).
// Throws Error(kInvalidInput / kInvalidVector).
void CheckEntryShape(const EntryIn& e);

// Appends the encoded entry to `out`; seq and ts are written as 0 and patched at commit
// (they sit at offsets 0 and 8 of the entry).
void EncodeEntry(const EntryIn& e, std::string* out);

// Decodes a batch payload; false when anything is malformed (out is then unspecified).
bool DecodeBatch(const uint8_t* p, size_t n, std::vector<EntryView>* out);

// Fills the 13-byte frame header in front of a payload (buf[0..13) reserved).
void SealFrame(std::string* buf);

// --- scanning frames in a file ------------------------------------------------------------
struct ScanStats {
  uint64_t corrupt_bytes = 0;
  uint64_t corrupt_records = 0;
};

// Reads the frames of one segment file in [start, end) through pread(2): returns each valid
// frame's payload, resynchronising past damage (counted in stats). A frame is valid when the
// sync magic matches, kMinPayload <= length <= kMaxPayload, the frame fits before `end`, the
// type is known, the masked CRC32C over type+payload matches and the payload decodes.
class FrameScanner {
 public:
  FrameScanner(int fd, uint64_t start, uint64_t end);
  // Scans a mapping of the file's bytes [0, end) instead of reading through pread(2). Only for
  // files nobody can truncate meanwhile (a truncation under a mapping raises SIGBUS).
  FrameScanner(const uint8_t* map, uint64_t start, uint64_t end);
  // Next valid frame: true and sets *payload/*len/*offset (valid until the next call), or
  // false at the end; then ValidEnd() is the end of the last valid frame (bytes after it are
  // a tail no valid frame follows).
  bool Next(const uint8_t** payload, uint32_t* len, uint64_t* offset, ScanStats* stats,
            std::vector<EntryView>* entries);
  uint64_t ValidEnd() const { return valid_end_; }
  bool IoError() const { return io_error_; }

 private:
  const uint8_t* Get(uint64_t off, size_t n);
  bool TryFrame(uint64_t off, std::vector<EntryView>* entries, uint32_t* len);
  uint64_t FindNext(uint64_t from, std::vector<EntryView>* entries, uint64_t* magic_count);

  int fd_;
  uint64_t pos_;
  uint64_t end_;
  uint64_t valid_end_;
  const uint8_t* map_ = nullptr;
  std::vector<uint8_t> buf_;
  uint64_t buf_off_ = 0;
  size_t buf_len_ = 0;
  bool io_error_ = false;
};

}  // namespace headroom
