// libFuzzer target: arbitrary bytes as a segment file. Three readers see them:
//   1. FrameScanner over the bytes in memory (the mapping path), every valid frame's entries
//      applied to a State, then the State queried and its compaction filter asked;
//   2. the same bytes written as seg-1 of a store directory and opened as a Log (header
//      checks, the pread scanner, torn-tail truncation, replay), read back through records(),
//      appended to, compacted and reopened (the append must survive);
//   3. FrameScanner over that file through pread(2) (done before 2 compacts it away).
// The first byte steers: bit 0 puts a valid segment header in front of the rest (so the fuzzer
// reaches the frames without having to find the header's CRC first), bit 1 asks for the
// append, compaction and reopen (which fsync, so they are not done for every input).
//
// Built by .ci/native-checks with clang -fsanitize=fuzzer,address,undefined (CMake option
// HEADROOM_FUZZ); seeds in native/fuzz/corpus/.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "fileio.h"
#include "format.h"
#include "log.h"
#include "state.h"

namespace {

std::string Dir() {
  static std::string dir = [] {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : ".") + "/fuzz-replay-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) abort();
    return std::string(buf.data());
  }();
  return dir;
}

void Clear(const std::string& dir) {
  for (const std::string& name : {std::string("LOCK"), std::string("compact.tmp")})
    unlink((dir + "/" + name).c_str());
  for (uint64_t n : headroom::ListSegments(dir))
    unlink((dir + "/" + headroom::SegmentName(n)).c_str());
  for (const std::string& name : headroom::ListSegmentTemps(dir))
    unlink((dir + "/" + name).c_str());
}

void Query(const headroom::State& s) {
  for (const std::string& u : s.Users()) {
    for (const headroom::MemOut& m : s.List(u, 0, INT64_MIN, INT64_MAX)) s.History(u, m.id);
    const headroom::User* user = s.FindUser(u);
    if (user && user->dim) {
      std::vector<float> q(user->dim, 0.5f);
      s.Search(u, q.data(), user->dim, 5, 0, INT64_MIN, INT64_MAX);
      std::vector<double> sum;
      uint64_t seq;
      s.VectorSum(u, &sum, &seq);
      std::vector<uint64_t> removed, added;
      std::vector<float> vecs;
      s.Changes(u, 0, &removed, &added, &vecs);
      s.Resolve(u, added);
    }
  }
  s.Pending();
  s.Config();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes;
  if (size > 0 && (data[0] & 1)) {
    headroom::SegmentHeader h;
    h.number = 1;
    bytes = headroom::EncodeSegmentHeader(h);
    bytes.append(reinterpret_cast<const char*>(data) + 1, size - 1);
  } else {
    bytes.assign(reinterpret_cast<const char*>(data), size);
  }
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());

  // 1. In memory: scan, apply, query, compaction filter.
  {
    headroom::SegmentHeader h;
    uint64_t start = 0;
    if (headroom::DecodeSegmentHeader(p, bytes.size(), &h) == headroom::HeaderStatus::kOk)
      start = h.header_size;
    headroom::FrameScanner sc(p, start, bytes.size());
    headroom::State state;
    headroom::ScanStats st;
    std::vector<headroom::EntryView> entries;
    const uint8_t* payload;
    uint32_t len;
    uint64_t off;
    while (sc.Next(&payload, &len, &off, &st, &entries)) {
      for (const headroom::EntryView& e : entries) state.Apply(e, false);
    }
    if (sc.ValidEnd() > bytes.size()) abort();
    Query(state);
    headroom::FrameScanner again(p, start, bytes.size());
    while (again.Next(&payload, &len, &off, &st, &entries))
      for (const headroom::EntryView& e : entries) state.Keep(e);
  }

  // 2. (and 3.) As a store on disk.
  const std::string dir = Dir();
  Clear(dir);
  {
    const std::string seg = dir + "/" + headroom::SegmentName(1);
    int fd = open(seg.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) abort();
    if (!bytes.empty() &&
        write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
      abort();
    close(fd);
  }
  // 3. The file through pread(2), as the last segment of a live store is read.
  {
    int fd = open((dir + "/" + headroom::SegmentName(1)).c_str(), O_RDONLY);
    if (fd >= 0) {
      off_t end = lseek(fd, 0, SEEK_END);
      headroom::FrameScanner sc(fd, 0, static_cast<uint64_t>(end < 0 ? 0 : end));
      headroom::ScanStats st;
      std::vector<headroom::EntryView> entries;
      const uint8_t* payload;
      uint32_t len;
      uint64_t off;
      while (sc.Next(&payload, &len, &off, &st, &entries)) {
      }
      close(fd);
    }
  }
  // 2. Open it as a store.
  try {
    headroom::Log log(dir, headroom::SyncMode::kOff, 100, 1 << 20);
    log.Read([](const headroom::State& s) {
      Query(s);
      return 0;
    });
    headroom::RecordReader rr(log.LiveSegmentPaths());
    headroom::EntryOwned e;
    while (rr.Next(&e)) {
    }
    if (size == 0 || !(data[0] & 2)) return 0;  // the rest fsyncs: for half the inputs only
    headroom::EntryIn in;
    in.op = headroom::kAdd;
    in.category = 1;
    in.user = "fuzz";
    in.id = "appended-" + std::to_string(log.last_seq());
    in.text = "appended after the replay";
    log.Append({in});
    log.Compact();
    log.Close();
    headroom::Log again(dir, headroom::SyncMode::kOff, 100, 1 << 20);
    if (!again.Read([&](const headroom::State& s) { return s.Get("fuzz", in.id).has_value(); }))
      abort();  // an acknowledged append must survive a compaction and a reopen
  } catch (const headroom::Error&) {
    // A damaged header or a newer version: the store refuses to open, as specified.
  }

  return 0;
}
