// C++ unit tests of the core: CRC32C (both kernels), the segment header, frame encoding and
// scanning (resynchronisation, torn tails, every single-byte flip), the batch decoder's limits,
// the state machine (every op, skipped entries, compaction's Keep), the Validator, a Log end to
// end, and the power-loss simulation. Plain asserts that survive NDEBUG; run by ctest
// (CMake option HEADROOM_NATIVE_TESTS), once with each kernel path.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "crc32c.h"
#include "dot.h"
#include "errors.h"
#include "fileio.h"
#include "format.h"
#include "log.h"
#include "state.h"
#include "vecpack.h"

namespace {

using namespace headroom;

const uint8_t* U8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

std::string TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string t = std::string(base && *base ? base : ".") + "/native-tests-XXXXXX";
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) std::abort();
  return buf.data();
}

void RemoveTree(const std::string& path) {
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      std::string p = path + "/" + n;
      struct stat st;
      if (lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        RemoveTree(p);
      } else {
        unlink(p.c_str());
      }
    }
    closedir(d);
  }
  rmdir(path.c_str());
}

std::string ReadFile(const std::string& path) {
  std::string out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

EntryIn Entry(uint8_t op, std::string user, std::string id, std::string text = "",
              std::vector<float> vec = {}) {
  EntryIn e;
  e.op = op;
  e.user = std::move(user);
  e.id = std::move(id);
  e.text = std::move(text);
  if (op == kAdd) e.category = 2;
  if (!vec.empty()) {
    e.vec = std::move(vec);
    e.has_vec = true;
    e.model = "m";
  }
  return e;
}

// One sealed frame holding `entries` with seqs first_seq, first_seq + 1, ...
std::string Frame(const std::vector<EntryIn>& entries, uint64_t first_seq) {
  std::string f(kFrameHeaderSize + 4, '\0');
  uint32_t count = static_cast<uint32_t>(entries.size());
  std::memcpy(&f[kFrameHeaderSize], &count, 4);
  for (size_t i = 0; i < entries.size(); ++i) {
    size_t at = f.size();
    EncodeEntry(entries[i], &f);
    uint64_t seq = first_seq + i;
    int64_t ts = 1000 + static_cast<int64_t>(seq);
    std::memcpy(&f[at], &seq, 8);
    std::memcpy(&f[at + 8], &ts, 8);
  }
  SealFrame(&f);
  return f;
}

// Applies every frame of `bytes` (a frame sequence, no header) to `state`.
ScanStats ApplyAll(const std::string& bytes, State* state, uint64_t* valid_end = nullptr,
                   int* frames = nullptr) {
  FrameScanner sc(U8(bytes), 0, bytes.size());
  ScanStats st;
  std::vector<EntryView> entries;
  const uint8_t* payload;
  uint32_t len;
  uint64_t off;
  int n = 0;
  while (sc.Next(&payload, &len, &off, &st, &entries)) {
    for (const EntryView& e : entries) state->Apply(e);
    ++n;
  }
  if (valid_end) *valid_end = sc.ValidEnd();
  if (frames) *frames = n;
  return st;
}

// --- CRC32C -------------------------------------------------------------------------------

TEST(crc32c_known_vectors) {
  const std::string check = "123456789";
  CHECK(Crc32c(U8(check), check.size()) == 0xE3069283u);
  CHECK(Crc32c(nullptr, 0) == 0);
  // RFC 3720, appendix B.4.
  std::string zeros(32, '\0'), ones(32, '\xff'), inc(32, '\0'), dec(32, '\0');
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<char>(i);
    dec[i] = static_cast<char>(31 - i);
  }
  CHECK(Crc32c(U8(zeros), 32) == 0x8A9136AAu);
  CHECK(Crc32c(U8(ones), 32) == 0x62A8AB43u);
  CHECK(Crc32c(U8(inc), 32) == 0x46DD794Eu);
  CHECK(Crc32c(U8(dec), 32) == 0x113FDB5Cu);
}

TEST(crc32c_extend_and_both_kernels_agree) {
  std::mt19937 rng(1);
  std::string data(40000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  const bool hw = Crc32cIsHardware();
  for (size_t off = 0; off < 8; ++off) {
    for (size_t n : {0, 1, 7, 8, 9, 63, 64, 4095, 12288, 12289, 30001}) {
      const uint8_t* p = U8(data) + off;
      Crc32cForcePortable(true);
      uint32_t portable = Crc32c(p, n);
      Crc32cForcePortable(false);
      uint32_t best = Crc32c(p, n);
      CHECK(portable == best);
      size_t cut = n / 3;
      CHECK(Crc32cExtend(Crc32c(p, cut), p + cut, n - cut) == best);
    }
  }
  Crc32cForcePortable(!hw);
  CHECK(Crc32cIsHardware() == hw);
}

TEST(crc_mask_round_trips) {
  std::mt19937 rng(2);
  for (int i = 0; i < 1000; ++i) {
    uint32_t c = rng();
    CHECK(UnmaskCrc(MaskCrc(c)) == c);
  }
  CHECK(MaskCrc(0) == kCrcMaskDelta);
}

TEST(dot_kernels_agree) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (size_t n : {1, 3, 8, 31, 32, 33, 384, 1000}) {
    std::vector<float> a(n + 1), b(n + 1);
    for (auto& x : a) x = nd(rng);
    for (auto& x : b) x = nd(rng);
    double exact = 0;
    for (size_t i = 0; i < n; ++i) exact += double(a[i + 1]) * double(b[i]);
    DotForcePortable(true);
    float portable = Dot(a.data() + 1, b.data(), n);
    DotForcePortable(false);
    float best = Dot(a.data() + 1, b.data(), n);
    CHECK(std::abs(portable - exact) <= 1e-4 * double(n));
    CHECK(std::abs(best - exact) <= 1e-4 * double(n));
  }
  // Misaligned by one byte: both kernels must read it (memcpy loads).
  std::string buf(4 * 40 + 1, '\0');
  std::vector<float> v(40, 0.5f);
  std::memcpy(&buf[1], v.data(), 160);
  const float* odd = reinterpret_cast<const float*>(buf.data() + 1);
  DotForcePortable(true);
  CHECK(Dot(odd, v.data(), 40) == 10.0f);
  DotForcePortable(false);
  CHECK(Dot(odd, v.data(), 40) == 10.0f);
  DotForcePortable(PortableKernelsRequested());
}

// --- segment header -----------------------------------------------------------------------

TEST(segment_header_round_trip_and_checks) {
  SegmentHeader h;
  h.number = 7;
  h.replaces = 6;
  h.seq_floor = 99;
  h.generation = 3;
  std::string b = EncodeSegmentHeader(h);
  CHECK(b.size() == kSegmentHeaderSize);
  SegmentHeader out;
  CHECK(DecodeSegmentHeader(U8(b), b.size(), &out) == HeaderStatus::kOk);
  CHECK(out.number == 7 && out.replaces == 6 && out.seq_floor == 99 && out.generation == 3);
  CHECK(DecodeSegmentHeader(U8(b), 10, &out) == HeaderStatus::kShort);
  CHECK(DecodeSegmentHeader(U8(b), 47, &out) == HeaderStatus::kShort);
  for (size_t i = 0; i < b.size(); ++i) {  // every byte flip is caught
    std::string bad = b;
    bad[i] ^= 0x20;
    CHECK(DecodeSegmentHeader(U8(bad), bad.size(), &out) != HeaderStatus::kOk);
  }
  std::string magic = b;
  magic[0] = 'X';
  CHECK(DecodeSegmentHeader(U8(magic), magic.size(), &out) == HeaderStatus::kBadMagic);
  std::string size = b;
  size[12] = 8;
  CHECK(DecodeSegmentHeader(U8(size), size.size(), &out) == HeaderStatus::kBadSize);
  std::string newer = b;  // version 2 with a valid CRC
  newer[8] = 2;
  uint32_t crc = MaskCrc(Crc32c(U8(newer), kSegmentHeaderSize - 4));
  std::memcpy(&newer[kSegmentHeaderSize - 4], &crc, 4);
  CHECK(DecodeSegmentHeader(U8(newer), newer.size(), &out) == HeaderStatus::kNewerVersion);
}

// --- frames -------------------------------------------------------------------------------

TEST(frame_round_trip) {
  std::vector<EntryIn> in = {Entry(kAdd, "u", "a", "alpha", {1, 2, 3}),
                             Entry(kUpdate, "u", "a", "beta"), Entry(kPurge, "u", "")};
  in[0].meta = "{\"k\":1}";
  in[0].created_at = -5;
  std::string f = Frame(in, 10);
  uint32_t len;
  std::memcpy(&len, &f[4], 4);
  CHECK(len == f.size() - kFrameHeaderSize);
  std::vector<EntryView> out;
  CHECK(DecodeBatch(U8(f) + kFrameHeaderSize, len, &out));
  CHECK(out.size() == 3);
  CHECK(out[0].seq == 10 && out[1].seq == 11 && out[2].seq == 12);
  CHECK(out[0].op == kAdd && out[0].user == "u" && out[0].id == "a" && out[0].text == "alpha");
  CHECK(out[0].meta == "{\"k\":1}" && out[0].created_at == -5 && out[0].dim == 3);
  float v2;
  std::memcpy(&v2, out[0].vec + 4, 4);
  CHECK(v2 == 2.0f);
  CHECK(out[1].vec == nullptr && out[2].op == kPurge && out[2].id.empty());
}

TEST(every_single_byte_change_of_a_frame_is_caught) {
  std::string f = Frame({Entry(kAdd, "u", "a", "some text", {0.5f, -1})}, 1);
  int caught = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    for (uint8_t x : {0x01, 0x80, 0xff}) {
      std::string bad = f;
      bad[i] = static_cast<char>(bad[i] ^ x);
      State s;
      uint64_t end = 1;
      int frames = -1;
      ApplyAll(bad, &s, &end, &frames);
      CHECK(frames == 0 && end == 0 && s.entries() == 0);
      caught += frames == 0;
    }
  }
  CHECK(caught == static_cast<int>(3 * f.size()));
}

TEST(scanner_resynchronises_past_damage_and_stops_at_a_torn_tail) {
  std::string a = Frame({Entry(kAdd, "u", "a", "alpha")}, 1);
  std::string b = Frame({Entry(kAdd, "u", "b", "bravo")}, 2);
  std::string c = Frame({Entry(kAdd, "u", "c", "charlie")}, 3);
  std::string garbage(17, '\x5a');
  garbage[3] = static_cast<char>(0xB7);  // a stray first byte of the sync magic
  std::string bytes = a + garbage + b + c.substr(0, c.size() - 3);
  State s;
  uint64_t end = 0;
  int frames = 0;
  ScanStats st = ApplyAll(bytes, &s, &end, &frames);
  CHECK(frames == 2);
  CHECK(st.corrupt_bytes == garbage.size() && st.corrupt_records == 1);
  CHECK(end == a.size() + garbage.size() + b.size());  // the torn tail is after it
  CHECK(s.Get("u", "a") && s.Get("u", "b") && !s.Get("u", "c"));
  // The same through pread(2) on a file.
  std::string dir = TempDir();
  std::string path = dir + "/f";
  WriteFile(path, bytes);
  int fd = open(path.c_str(), O_RDONLY);
  FrameScanner sc(fd, 0, bytes.size());
  ScanStats st2;
  std::vector<EntryView> entries;
  const uint8_t* payload;
  uint32_t len;
  uint64_t off;
  int n = 0;
  while (sc.Next(&payload, &len, &off, &st2, &entries)) ++n;
  close(fd);
  CHECK(n == 2 && sc.ValidEnd() == end && st2.corrupt_bytes == st.corrupt_bytes);
  RemoveTree(dir);
}

TEST(batch_decoder_rejects_what_the_spec_rejects) {
  std::string f = Frame({Entry(kAdd, "u", "a", "alpha", {1})}, 1);
  std::string p = f.substr(kFrameHeaderSize);
  std::vector<EntryView> out;
  CHECK(DecodeBatch(U8(p), p.size(), &out));
  auto mutated = [&](size_t at, uint32_t v, size_t width) {
    std::string q = p;
    std::memcpy(&q[at], &v, width);
    return DecodeBatch(U8(q), q.size(), &out);
  };
  CHECK(!mutated(0, 0, 4));                // count 0
  CHECK(!mutated(0, 2, 4));                // count past the payload
  CHECK(!mutated(4 + 24, 0, 1));           // op 0
  CHECK(!mutated(4 + 24, 10, 1));          // op 10
  CHECK(!mutated(4 + 25, 4, 1));           // category 4
  CHECK(!mutated(4 + 26, 5, 1));           // source 5
  CHECK(!mutated(4 + 27, 2, 1));           // dtype 2
  CHECK(!mutated(4 + 28, 0, 4));           // dim 0 with a vector
  CHECK(!mutated(4 + 28, kMaxDim + 1, 4));  // dim over the limit
  CHECK(!mutated(4 + 32, 257, 4));         // user over the limit
  CHECK(!mutated(4 + 40, 1u << 30, 4));    // text runs past the payload
  std::string trailing = p + "x";
  CHECK(!DecodeBatch(U8(trailing), trailing.size(), &out));
  CHECK(!DecodeBatch(U8(p), 3, &out));
}

// --- the state machine --------------------------------------------------------------------

TEST(state_applies_every_op) {
  std::string log;
  uint64_t seq = 1;
  auto put = [&](std::vector<EntryIn> es) {
    log += Frame(es, seq);
    seq += es.size();
  };
  put({Entry(kAdd, "u", "a", "alpha", {1, 0}), Entry(kAdd, "u", "b", "bravo", {0, 1})});
  put({Entry(kUpdate, "u", "a", "alpha two")});          // keeps a's vector
  put({Entry(kRevector, "u", "b", "", {0.5f, 0.5f})});  // b: new vector, same version
  put({Entry(kAdd, "u", "c", "charlie", {1, 1})});
  put({Entry(kDelete, "u", "c")});
  put({Entry(kPending, "u", "job1", "{}"), Entry(kPending, "v", "job2", "{}")});
  put({Entry(kDone, "", "job1")});
  EntryIn cfg = Entry(kConfig, "", "key", "\"one\"");
  EntryIn cfg2 = Entry(kConfig, "", "key", "\"two\"");
  put({cfg, cfg2});
  put({Entry(kAdd, "w", "x", "xray"), Entry(kAdd, "w", "y", "yankee")});
  put({Entry(kClear, "w", "")});
  State s;
  ApplyAll(log, &s);
  CHECK(s.skipped() == 0);
  auto a = s.Get("u", "a");
  CHECK(a && a->text == "alpha two" && a->version == 2);
  auto b = s.Get("u", "b");
  CHECK(b && b->version == 1 && b->text == "bravo");
  CHECK(!s.Get("u", "c") && s.History("u", "c").size() == 2);
  CHECK(s.History("u", "a").size() == 2 && s.History("u", "b").size() == 2);
  CHECK(s.List("u", 0, INT64_MIN, INT64_MAX).size() == 2);
  CHECK(s.List("w", 0, INT64_MIN, INT64_MAX).empty());
  auto jobs = s.Pending();
  CHECK(jobs.size() == 1 && jobs[0].id == "job2");
  CHECK(s.Config().at("key") == "\"two\"");
  const float q[2] = {1, 0};
  auto hits = s.Search("u", q, 2, 5, 0, INT64_MIN, INT64_MAX);
  CHECK(hits.size() == 2 && hits[0].id == "a" && hits[0].score == 1.0f);
  CHECK(hits[1].id == "b" && hits[1].score == 0.5f);
  // Compaction keeps a's and b's history, the open job and the latest config only.
  FrameScanner sc(U8(log), 0, log.size());
  ScanStats st;
  std::vector<EntryView> entries;
  const uint8_t* payload;
  uint32_t len;
  uint64_t off;
  std::vector<std::string> kept;
  while (sc.Next(&payload, &len, &off, &st, &entries))
    for (const EntryView& e : entries)
      if (s.Keep(e)) kept.push_back(std::string(OpName(e.op)) + ":" + std::string(e.id));
  std::vector<std::string> want = {"ADD:a", "ADD:b", "UPDATE:a", "REVECTOR:b", "PENDING:job2",
                                   "CONFIG:key"};
  CHECK(kept == want);
  // PURGE frees the id; a replayed entry with an old seq is skipped.
  std::string more = Frame({Entry(kPurge, "u", "a")}, seq) + Frame({Entry(kAdd, "u", "a", "new")}, seq + 1) +
                     Frame({Entry(kAdd, "u", "z", "stale")}, 3);
  ApplyAll(more, &s);
  CHECK(s.Get("u", "a") && s.Get("u", "a")->text == "new" && s.Get("u", "a")->version == 1);
  CHECK(s.History("u", "a").size() == 1);
  CHECK(!s.Get("u", "z") && s.skipped() == 1);
  // PURGE of a whole user drops its jobs too.
  ApplyAll(Frame({Entry(kPurge, "v", "")}, seq + 2), &s);
  CHECK(s.Pending().empty());
}

TEST(validator_checks_meaning) {
  State s;
  ApplyAll(Frame({Entry(kAdd, "u", "a", "alpha", {1, 0})}, 1), &s);
  Validator v(&s);
  CHECK_THROWS(kInvalidInput, v.Check(Entry(kAdd, "u", "a", "again")));
  CHECK_THROWS(kNotFound, v.Check(Entry(kUpdate, "u", "nope", "x")));
  CHECK_THROWS(kInvalidVector, v.Check(Entry(kAdd, "u", "b", "three dims", {1, 2, 3})));
  v.Check(Entry(kAdd, "u", "b", "bravo", {0, 1}));
  CHECK_THROWS(kInvalidInput, v.Check(Entry(kAdd, "u", "b", "bravo again")));  // the overlay
  CHECK_THROWS(kInvalidInput, CheckEntryShape(Entry(kAdd, "", "a", "no user")));
  CHECK_THROWS(kInvalidInput, CheckEntryShape(Entry(kAdd, "u", "a", "")));
  CHECK_THROWS(kInvalidVector, CheckEntryShape(Entry(kDelete, "u", "a", "", {1})));
  EntryIn nan = Entry(kAdd, "u", "n", "nan", {1});
  nan.vec[0] = std::nanf("");
  CHECK_THROWS(kInvalidVector, CheckEntryShape(nan));
}

// --- a Log end to end, and the power-loss simulation ---------------------------------------

TEST(log_appends_recovers_a_torn_tail_and_compacts_purged_text_away) {
  std::string dir = TempDir() + "/store";
  const std::string secret = "a secret the compaction must remove";
  {
    Log log(dir, SyncMode::kAlways, 100, 4096);
    log.Append({Entry(kAdd, "u", "a", "alpha", {1, 0})});
    log.Append({Entry(kAdd, "u", "s", secret, {0, 1})});
    log.Append({Entry(kPurge, "u", "s")});
    log.Close();
  }
  std::string seg = dir + "/" + SegmentName(1);
  std::string bytes = ReadFile(seg);
  CHECK(bytes.find(secret) != std::string::npos);  // purged, not yet compacted
  WriteFile(seg, bytes + std::string("\xb7\xc3\xa9\xe1garbage", 11));
  {
    Log log(dir, SyncMode::kAlways, 100, 4096);
    CHECK(log.recovery().torn_tail_bytes == 11 && log.recovery().corrupt_bytes == 0);
    CHECK(log.Read([](const State& s) { return s.Get("u", "a").has_value(); }));
    CHECK(log.last_seq() == 3);
    CompactResult r = log.Compact();
    CHECK(r.entries_after == 1 && log.generation() == 1);
    auto seqs = log.Append({Entry(kAdd, "u", "b", "bravo", {1, 1})});
    CHECK(seqs.size() == 1 && seqs[0] == 4);  // seqs never go back
    log.Close();
  }
  std::string all;
  for (uint64_t n : ListSegments(dir)) all += ReadFile(dir + "/" + SegmentName(n));
  CHECK(ListSegments(dir).size() == 1 && all.find(secret) == std::string::npos);
  // A damaged header: the open throws, and frees what it had made (under ASan's leak check
  // this once leaked the flusher's condition variable).
  std::string bad = dir.substr(0, dir.rfind('/')) + "/bad";
  mkdir(bad.c_str(), 0755);
  WriteFile(bad + "/" + SegmentName(1), std::string(48, 'x'));
  CHECK_THROWS(kCorruption, Log(bad, SyncMode::kInterval, 100, 4096));
  RemoveTree(dir.substr(0, dir.rfind('/')));
}

TEST(pack_round_trip_and_every_damage_is_caught) {
  const uint32_t dim = 5;
  std::vector<std::vector<float>> vecs;
  std::vector<std::pair<uint64_t, const float*>> rows;
  for (int i = 0; i < 7; ++i) vecs.push_back({float(i), 1.5f, -2.0f, float(i * i), 0.25f});
  for (int i = 0; i < 7; ++i) rows.emplace_back(10 + 3 * i, vecs[i].data());
  const std::string bytes = EncodePack("alice", dim, 4, 99, rows);
  CHECK(bytes.size() % 4 == 0);
  PackView v;
  CHECK(DecodePack(U8(bytes), bytes.size(), &v));
  CHECK(v.user == "alice" && v.dim == dim && v.count == 7 && v.generation == 4 &&
        v.covered_seq == 99);
  CHECK(static_cast<size_t>(v.vectors - U8(bytes)) % kPackAlign == 0);
  for (int i = 0; i < 7; ++i) {
    const float* f = v.Find(10 + 3 * i);
    CHECK(f && std::memcmp(f, vecs[i].data(), dim * 4) == 0);
    CHECK(v.Find(11 + 3 * i) == nullptr);
  }
  CHECK(v.Find(0) == nullptr && v.Find(UINT64_MAX) == nullptr);
  for (size_t i = 0; i < bytes.size(); ++i) {  // every byte is under the CRC, padding too
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x40);
    PackView w;
    CHECK(!DecodePack(U8(bad), bad.size(), &w));
  }
  for (size_t n : {size_t{0}, size_t{8}, size_t{43}, bytes.size() - 1}) {
    PackView w;
    CHECK(!DecodePack(U8(bytes), n, &w));
  }
  // Labels out of order (a CRC that holds over a bad layout) are refused too.
  std::vector<std::pair<uint64_t, const float*>> unsorted = {rows[1], rows[0]};
  const std::string u = EncodePack("alice", dim, 4, 99, unsorted);
  PackView w;
  CHECK(!DecodePack(U8(u), u.size(), &w));
  const std::string empty = EncodePack("bob", dim, 0, 1, {});
  CHECK(DecodePack(U8(empty), empty.size(), &w) && w.count == 0 && w.Find(1) == nullptr);
  CHECK(PackFileName("alice") == PackFileName("alice") &&
        PackFileName("alice") != PackFileName("alicf") && PackFileName("").size() == 20);
}

// A user's exact search after a reopen: the rows point into a pack file written by the first
// search and reused by the next process; the answer equals a brute-force scan throughout.
TEST(log_packs_a_scattered_user_into_a_shared_file_and_compaction_drops_it) {
  const std::string root = TempDir();
  const std::string dir = root + "/store";
  const uint32_t dim = 8;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<std::vector<float>> mine;
  {
    Log log(dir, SyncMode::kOff, 100, 1 << 20);
    for (int i = 0; i < 200; ++i) {
      std::vector<float> a(dim), b(dim);
      for (float& x : a) x = nd(rng);
      for (float& x : b) x = nd(rng);
      mine.push_back(a);
      log.Append({Entry(kAdd, "u", "m" + std::to_string(i), "t", a),
                  Entry(kAdd, "v", "o" + std::to_string(i), "t", b)});
    }
    log.Close();
  }
  std::vector<float> q(dim);
  for (float& x : q) x = nd(rng);
  auto brute = [&](size_t k) {
    std::vector<std::pair<float, int>> all;
    for (size_t i = 0; i < mine.size(); ++i) {
      float s = 0;
      for (uint32_t j = 0; j < dim; ++j) s += q[j] * mine[i][j];
      all.emplace_back(-s, static_cast<int>(i));
    }
    std::sort(all.begin(), all.end());
    std::vector<std::string> ids;
    for (size_t i = 0; i < k; ++i) ids.push_back("m" + std::to_string(all[i].second));
    return ids;
  };
  auto search = [&](Log& log) {
    auto hits = log.ReadPacked("u", [&](const State& s) {
      return s.Search("u", q.data(), dim, 10, 0, INT64_MIN, INT64_MAX);
    });
    std::vector<std::string> ids;
    for (const Hit& h : hits) ids.push_back(h.id);
    return ids;
  };
  const std::string pack = dir + "/packs/" + PackFileName("u");
  struct stat st1, st2;
  {
    Log log(dir, SyncMode::kOff, 100, 1 << 20);
    CHECK(search(log) == brute(10));
    CHECK(stat(pack.c_str(), &st1) == 0);
    PackView v;
    std::string bytes = ReadFile(pack);
    CHECK(DecodePack(U8(bytes), bytes.size(), &v) && v.count == 200 && v.user == "u");
    CHECK(stat((dir + "/packs/" + PackFileName("v")).c_str(), &st2) != 0);  // never searched
    log.Close();
  }
  {
    Log log(dir, SyncMode::kOff, 100, 1 << 20);  // the next process reuses the pack
    CHECK(search(log) == brute(10));
    CHECK(stat(pack.c_str(), &st2) == 0 && st2.st_ino == st1.st_ino);
    // A trickle of adds stays loose (an eighth) and is scanned where it lies.
    for (int i = 200; i < 220; ++i) {
      std::vector<float> a(dim);
      for (float& x : a) x = nd(rng);
      mine.push_back(a);
      log.Append({Entry(kAdd, "u", "m" + std::to_string(i), "t", a)});
    }
    CHECK(search(log) == brute(10));
    log.Close();
  }
  {  // a damaged pack is ignored and rewritten
    std::string bytes = ReadFile(pack);
    bytes[bytes.size() / 2] ^= 1;
    WriteFile(pack, bytes);
    Log log(dir, SyncMode::kOff, 100, 1 << 20);
    CHECK(search(log) == brute(10));
    std::string again = ReadFile(pack);
    PackView v;
    CHECK(DecodePack(U8(again), again.size(), &v) && v.count == 220);
    // Compaction removes every pack before it commits; the next search writes a new one.
    log.Append({Entry(kPurge, "u", "m0")});
    mine.erase(mine.begin());
    log.Compact();
    CHECK(ListPackFiles(dir + "/packs").empty());
    std::vector<std::string> want = brute(10);
    for (std::string& id : want) id = "m" + std::to_string(std::stoi(id.substr(1)) + 1);
    CHECK(search(log) == want);
    std::string fresh = ReadFile(pack);
    CHECK(DecodePack(U8(fresh), fresh.size(), &v) && v.count == 219 && v.generation == 1);
    log.Close();
  }
  RemoveTree(root);
}

TEST(power_loss_keeps_what_was_synced_and_nothing_else) {
  std::string root = TempDir();
  for (SyncMode mode : {SyncMode::kAlways, SyncMode::kOff}) {
    const bool always = mode == SyncMode::kAlways;
    std::string dir = root + (always ? "/always" : "/off");
    powerloss::Enable(root);
    {
      Log log(dir, mode, 100, 1 << 20);
      log.Append({Entry(kAdd, "u", "a", "alpha")});
      if (!always) log.Flush();
      log.Append({Entry(kAdd, "u", "b", "bravo")});
      powerloss::CrashNow();
      log.Close();  // its fsync fails: the crash came first
    }
    CHECK(powerloss::Crashed());
    const std::string img = dir + "-image";
    CHECK(powerloss::Image(dir, img, powerloss::Mode::kDrop, 0));
    powerloss::Disable();
    Log log(img, SyncMode::kOff, 100, 1 << 20);
    CHECK(log.Read([](const State& s) { return s.Get("u", "a").has_value(); }));
    CHECK(log.Read([](const State& s) { return s.Get("u", "b").has_value(); }) == always);
    log.Close();
  }
  // A crash point: the step fails and changes nothing.
  powerloss::Enable(root);
  std::string dir = root + "/crash";
  uint64_t before = powerloss::Steps();
  powerloss::CrashAt(1);  // the mkdir
  CHECK_THROWS(kIo, Log(dir, SyncMode::kAlways, 100, 4096));
  struct stat st;
  CHECK(stat(dir.c_str(), &st) != 0 && powerloss::Steps() == before + 1);
  CHECK(!powerloss::Image(dir, dir + "-image", powerloss::Mode::kDrop, 0));
  powerloss::Disable();
  RemoveTree(root);
}

}  // namespace

int main() {
  const int tests = headroom_test::RunAll();
  std::printf("native tests: %d tests, %d checks, %d failed (crc32c %s, dot %s)\n", tests,
              headroom_test::g_checks, headroom_test::g_failures,
              Crc32cIsHardware() ? "sse4.2" : "portable", DotKernelName());
  return headroom_test::g_failures ? 1 : 0;
}
