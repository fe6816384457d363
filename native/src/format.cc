#include "format.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "crc32c.h"
#include "errors.h"

namespace headroom {
namespace {

void Put32(std::string* o, uint32_t v) { o->append(reinterpret_cast<const char*>(&v), 4); }
void Put64(std::string* o, uint64_t v) { o->append(reinterpret_cast<const char*>(&v), 8); }
uint32_t Get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

bool ValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += len;
  }
  return true;
}

void CheckString(std::string_view s, size_t max, const char* what) {
  if (s.size() > max)
    Fail(ErrorKind::kInvalidInput, std::string(what) + " is " + std::to_string(s.size()) +
                                       " bytes; the limit is " + std::to_string(max));
  if (!ValidUtf8(s)) Fail(ErrorKind::kInvalidInput, std::string(what) + " is not valid UTF-8");
}

}  // namespace

const char* OpName(uint8_t op) {
  static const char* const kNames[] = {"?",     "ADD",  "UPDATE", "DELETE", "CLEAR",
                                       "PURGE", "PENDING", "DONE", "CONFIG", "REVECTOR"};
  return op <= kMaxOp ? kNames[op] : "?";
}

std::string EncodeSegmentHeader(const SegmentHeader& h) {
  std::string o(kSegmentMagic, 8);
  Put32(&o, h.version);
  Put32(&o, static_cast<uint32_t>(kSegmentHeaderSize));
  Put64(&o, h.number);
  Put64(&o, h.replaces);
  Put64(&o, h.seq_floor);
  Put32(&o, h.generation);
  Put32(&o, MaskCrc(Crc32c(reinterpret_cast<const uint8_t*>(o.data()), o.size())));
  return o;
}

HeaderStatus DecodeSegmentHeader(const uint8_t* p, size_t n, SegmentHeader* out) {
  if (n < 16) return HeaderStatus::kShort;
  if (std::memcmp(p, kSegmentMagic, 8) != 0) return HeaderStatus::kBadMagic;
  uint32_t version = Get32(p + 8);
  uint32_t size = Get32(p + 12);
  // Frozen across versions: magic, version, header size, and a masked CRC32C of everything
  // before it in the header's last 4 bytes.
  if (size < kSegmentHeaderSize || size > kMaxSegmentHeaderSize) return HeaderStatus::kBadSize;
  if (n < size) return HeaderStatus::kShort;
  if (UnmaskCrc(Get32(p + size - 4)) != Crc32c(p, size - 4)) return HeaderStatus::kBadCrc;
  if (version > kFormatVersion || version == 0) return HeaderStatus::kNewerVersion;
  out->version = version;
  out->header_size = size;
  out->number = Get64(p + 16);
  out->replaces = Get64(p + 24);
  out->seq_floor = Get64(p + 32);
  out->generation = Get32(p + 40);
  return HeaderStatus::kOk;
}

void CheckEntryShape(const EntryIn& e) {
  if (e.op < 1 || e.op > kMaxOp)
    Fail(ErrorKind::kInvalidInput, "op must be 1..9; got " + std::to_string(e.op));
  if (e.category > kMaxCategory)
    Fail(ErrorKind::kInvalidInput, "category code must be 0..3; got " + std::to_string(e.category));
  if (e.source > kMaxSource)
    Fail(ErrorKind::kInvalidInput, "source code must be 0..4; got " + std::to_string(e.source));
  CheckString(e.user, kMaxUserBytes, "user id");
  CheckString(e.id, kMaxIdBytes, "memory id");
  CheckString(e.text, kMaxTextBytes, "text");
  CheckString(e.meta, kMaxMetaBytes, "metadata");
  CheckString(e.model, kMaxModelBytes, "model id");
  for (unsigned char c : e.user)
    if (c < 0x20 || c == 0x7f)
      Fail(ErrorKind::kInvalidInput, "user id must not contain control characters");
  const bool needs_user = e.op != kConfig && e.op != kDone;  // a job id is global
  if (needs_user && e.user.empty()) Fail(ErrorKind::kInvalidInput, "user id must not be empty");
  if (e.op == kConfig && !e.user.empty())
    Fail(ErrorKind::kInvalidInput, "a CONFIG entry has an empty user id");
  const bool needs_id = e.op != kClear && e.op != kPurge;
  if (needs_id && e.id.empty())
    Fail(ErrorKind::kInvalidInput, std::string("a ") + OpName(e.op) + " entry needs an id");
  if ((e.op == kAdd || e.op == kUpdate) && e.text.empty())
    Fail(ErrorKind::kInvalidInput, std::string("a ") + OpName(e.op) + " entry needs a text");
  if (e.op == kAdd && (e.category < 1))
    Fail(ErrorKind::kInvalidInput, "an ADD entry needs a category code 1..3");
  if (e.op == kRevector && !e.has_vec)
    Fail(ErrorKind::kInvalidVector, "a REVECTOR entry needs a vector");
  if (e.has_vec) {
    if (e.op != kAdd && e.op != kUpdate && e.op != kRevector)
      Fail(ErrorKind::kInvalidVector, std::string("a ") + OpName(e.op) + " entry takes no vector");
    if (e.vec.empty() || e.vec.size() > kMaxDim)
      Fail(ErrorKind::kInvalidVector,
           "vector dim must be 1.." + std::to_string(kMaxDim) + "; got " + std::to_string(e.vec.size()));
    for (float f : e.vec)
      if (!std::isfinite(f)) Fail(ErrorKind::kInvalidVector, "vector holds NaN or infinite values");
  }
}

void EncodeEntry(const EntryIn& e, std::string* out) {
  Put64(out, 0);  // seq, patched at commit
  Put64(out, 0);  // ts, patched at commit
  Put64(out, static_cast<uint64_t>(e.created_at));
  out->push_back(static_cast<char>(e.op));
  out->push_back(static_cast<char>(e.category));
  out->push_back(static_cast<char>(e.source));
  out->push_back(static_cast<char>(e.has_vec ? kDtypeF32 : kDtypeNone));
  Put32(out, e.has_vec ? static_cast<uint32_t>(e.vec.size()) : 0);
  Put32(out, static_cast<uint32_t>(e.user.size()));
  Put32(out, static_cast<uint32_t>(e.id.size()));
  Put32(out, static_cast<uint32_t>(e.text.size()));
  Put32(out, static_cast<uint32_t>(e.meta.size()));
  Put32(out, static_cast<uint32_t>(e.model.size()));
  out->append(e.user);
  out->append(e.id);
  out->append(e.text);
  out->append(e.meta);
  out->append(e.model);
  if (e.has_vec) out->append(reinterpret_cast<const char*>(e.vec.data()), e.vec.size() * 4);
}

bool DecodeBatch(const uint8_t* p, size_t n, std::vector<EntryView>* out) {
  out->clear();
  if (n < 4) return false;
  uint32_t count = Get32(p);
  if (count == 0 || count > kMaxEntriesPerBatch || count > (n - 4) / kEntryFixedSize) return false;
  out->reserve(count);
  size_t off = 4;
  for (uint32_t i = 0; i < count; ++i) {
    if (n - off < kEntryFixedSize) return false;
    const uint8_t* q = p + off;
    EntryView e;
    e.seq = Get64(q);
    e.ts = static_cast<int64_t>(Get64(q + 8));
    e.created_at = static_cast<int64_t>(Get64(q + 16));
    e.op = q[24];
    e.category = q[25];
    e.source = q[26];
    e.dtype = q[27];
    e.dim = Get32(q + 28);
    uint32_t lens[5];
    for (int k = 0; k < 5; ++k) lens[k] = Get32(q + 32 + 4 * k);
    if (e.op < 1 || e.op > kMaxOp || e.category > kMaxCategory || e.source > kMaxSource)
      return false;
    if (e.dtype == kDtypeNone) {
      if (e.dim != 0) return false;
    } else if (e.dtype == kDtypeF32) {
      if (e.dim == 0 || e.dim > kMaxDim) return false;
    } else {
      return false;
    }
    if (lens[0] > kMaxUserBytes || lens[1] > kMaxIdBytes || lens[2] > kMaxTextBytes ||
        lens[3] > kMaxMetaBytes || lens[4] > kMaxModelBytes)
      return false;
    size_t need = kEntryFixedSize + static_cast<size_t>(lens[0]) + lens[1] + lens[2] + lens[3] +
                  lens[4] + static_cast<size_t>(e.dim) * 4;
    if (n - off < need) return false;
    const char* s = reinterpret_cast<const char*>(q + kEntryFixedSize);
    e.user = std::string_view(s, lens[0]);
    s += lens[0];
    e.id = std::string_view(s, lens[1]);
    s += lens[1];
    e.text = std::string_view(s, lens[2]);
    s += lens[2];
    e.meta = std::string_view(s, lens[3]);
    s += lens[3];
    e.model = std::string_view(s, lens[4]);
    s += lens[4];
    e.vec = e.dim ? reinterpret_cast<const uint8_t*>(s) : nullptr;
    e.raw = q;
    e.raw_len = need;
    off += need;
    out->push_back(e);
  }
  return off == n;
}

void SealFrame(std::string* buf) {
  auto* p = reinterpret_cast<uint8_t*>(&(*buf)[0]);
  uint32_t len = static_cast<uint32_t>(buf->size() - kFrameHeaderSize);
  uint32_t magic = kSyncMagic;
  std::memcpy(p, &magic, 4);
  std::memcpy(p + 4, &len, 4);
  p[8] = kFrameBatch;
  uint32_t crc = Crc32cExtend(Crc32c(p + 8, 1), p + kFrameHeaderSize, len);
  uint32_t masked = MaskCrc(crc);
  std::memcpy(p + 9, &masked, 4);
}

// --- FrameScanner -----------------------------------------------------------------------

FrameScanner::FrameScanner(int fd, uint64_t start, uint64_t end)
    : fd_(fd), pos_(start), end_(end), valid_end_(start) {}

FrameScanner::FrameScanner(const uint8_t* map, uint64_t start, uint64_t end)
    : fd_(-1), pos_(start), end_(end), valid_end_(start), map_(map) {}

const uint8_t* FrameScanner::Get(uint64_t off, size_t n) {
  if (off + n > end_) return nullptr;
  if (map_) return map_ + off;
  if (off >= buf_off_ && off + n <= buf_off_ + buf_len_) return buf_.data() + (off - buf_off_);
  size_t want = n < (4u << 20) ? (4u << 20) : n;
  if (off + want > end_) want = static_cast<size_t>(end_ - off);
  if (buf_.size() < want) buf_.resize(want);
  size_t got = 0;
  while (got < want) {
    ssize_t r = ::pread(fd_, buf_.data() + got, want - got, static_cast<off_t>(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  buf_off_ = off;
  buf_len_ = got;
  if (got < n) {
    // The file is shorter than we were told (truncated under us): stop here.
    if (got < want) end_ = off + got;
    io_error_ = io_error_ || got < want;
    return nullptr;
  }
  return buf_.data();
}

bool FrameScanner::TryFrame(uint64_t off, std::vector<EntryView>* entries, uint32_t* len_out) {
  const uint8_t* h = Get(off, kFrameHeaderSize);
  if (!h) return false;
  if (Get32(h) != kSyncMagic) return false;
  uint32_t len = Get32(h + 4);
  uint8_t type = h[8];
  uint32_t crc = UnmaskCrc(Get32(h + 9));
  if (type != kFrameBatch || len < kMinPayload || len > kMaxPayload) return false;
  if (end_ - off - kFrameHeaderSize < len) return false;
  const uint8_t* all = Get(off, kFrameHeaderSize + len);
  if (!all) return false;
  if (Crc32cExtend(Crc32c(all + 8, 1), all + kFrameHeaderSize, len) != crc) return false;
  if (!DecodeBatch(all + kFrameHeaderSize, len, entries)) return false;
  *len_out = len;
  return true;
}

uint64_t FrameScanner::FindNext(uint64_t from, std::vector<EntryView>* entries,
                                uint64_t* magic_count) {
  const uint8_t first = static_cast<uint8_t>(kSyncMagic & 0xff);
  uint64_t off = from;
  while (off + kFrameHeaderSize <= end_) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(end_ - off, 1u << 20));
    const uint8_t* p = Get(off, chunk);
    if (!p) return UINT64_MAX;
    const void* hit = std::memchr(p, first, chunk);
    if (!hit) {
      off += chunk;
      continue;
    }
    uint64_t cand = off + static_cast<uint64_t>(static_cast<const uint8_t*>(hit) - p);
    const uint8_t* h = Get(cand, 4);
    if (h && Get32(h) == kSyncMagic) {
      uint32_t len;
      if (TryFrame(cand, entries, &len)) return cand;
      ++*magic_count;
    }
    off = cand + 1;
  }
  return UINT64_MAX;
}

bool FrameScanner::Next(const uint8_t** payload, uint32_t* len, uint64_t* offset,
                        ScanStats* stats, std::vector<EntryView>* entries) {
  while (pos_ < end_) {
    uint32_t l;
    if (!TryFrame(pos_, entries, &l)) {
      uint64_t magics = 0;
      const uint8_t* h = Get(pos_, 4);
      if (h && Get32(h) == kSyncMagic) magics = 1;
      uint64_t next = FindNext(pos_ + 1, entries, &magics);
      if (next == UINT64_MAX) return false;  // a tail no valid frame follows
      stats->corrupt_bytes += next - pos_;
      stats->corrupt_records += magics ? magics : 1;
      pos_ = next;
      if (!TryFrame(pos_, entries, &l)) return false;  // cannot happen: FindNext checked it
    }
    *payload = Get(pos_, kFrameHeaderSize + l) + kFrameHeaderSize;
    *len = l;
    *offset = pos_;
    pos_ += kFrameHeaderSize + l;
    valid_end_ = pos_;
    return true;
  }
  return false;
}

}  // namespace headroom
