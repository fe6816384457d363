// The Log: one store directory of segments, replayed into a State at open, appended to with
// group commit under flock(LOCK_EX) on LOCK, kept current with other processes' appends, and
// compacted. docs/log-format.md is the on-disk spec; docs/architecture.md the API contract.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>

#include <sys/types.h>
#include <vector>

#include "fileio.h"
#include "format.h"
#include "state.h"

namespace headroom {

enum class SyncMode { kAlways, kInterval, kOff };

struct Recovery {
  uint64_t torn_tail_bytes = 0;
  uint64_t corrupt_bytes = 0;
  uint64_t corrupt_records = 0;
  uint64_t segments = 0;
  std::vector<std::string> damaged_segments;  // names of segments with bytes skipped or cut
};

struct CompactResult {
  uint64_t bytes_before = 0, bytes_after = 0;
  uint64_t records_before = 0, records_after = 0;  // frames
  uint64_t entries_before = 0, entries_after = 0;
};

struct LogStats {
  uint64_t users = 0, memories = 0, pending = 0, entries = 0, records = 0, skipped_entries = 0;
  uint64_t bytes = 0, segments = 0, last_seq = 0, generation = 0, fsyncs = 0;
};

// One entry read back from the files (records()).
struct EntryOwned {
  uint64_t seq = 0;
  int64_t ts = 0, created_at = 0;
  uint8_t op = 0, category = 0, source = 0;
  std::string user, id, text, meta, model;
  std::vector<float> vec;
  bool has_vec = false;
};

// Streams every entry of a list of segment files in log order (for records(): export and
// verify). Holds its own descriptors, so a concurrent compaction does not disturb it.
class RecordReader {
 public:
  explicit RecordReader(std::vector<std::string> paths);
  ~RecordReader();
  RecordReader(const RecordReader&) = delete;
  RecordReader& operator=(const RecordReader&) = delete;
  bool Next(EntryOwned* out);

 private:
  bool Advance();
  std::vector<int> fds_;
  size_t idx_ = 0;
  std::unique_ptr<FrameScanner> scanner_;
  std::vector<EntryView> views_;
  size_t vi_ = 0;
  ScanStats stats_;
};

class Log {
 public:
  Log(const std::string& path, SyncMode sync, int sync_interval_ms, uint64_t segment_bytes);
  ~Log();
  Log(const Log&) = delete;
  Log& operator=(const Log&) = delete;

  // One atomic batch; returns the seqs given to the entries.
  std::vector<uint64_t> Append(std::vector<EntryIn> entries);
  // Applies what other processes appended; returns how many entries were applied.
  uint64_t Refresh();
  // Runs f(const State&) on the current state after a refresh, under a shared lock.
  template <class F>
  auto Read(F&& f) {
    RefreshForRead();
    std::shared_lock<std::shared_mutex> lk(state_mu_);
    return f(static_cast<const State&>(*state_));
  }
  // As Read, for an exact search over `user`'s vectors: first makes them contiguous when they
  // lie scattered (State::NeedsPack), which makes the scan stream through memory (PackUser).
  template <class F>
  auto ReadPacked(const std::string& user, F&& f) {
    RefreshForRead();
    {
      std::shared_lock<std::shared_mutex> lk(state_mu_);
      if (!state_->NeedsPack(user)) return f(static_cast<const State&>(*state_));
    }
    PackUser(user);
    std::shared_lock<std::shared_mutex> lk(state_mu_);
    return f(static_cast<const State&>(*state_));
  }
  // Points the user's rows at a mapped vector pack (vecpack.h): the user's pack file when it
  // is valid and covers enough of them, else a new one written now (under the file lock, from
  // a state caught up with the log, so that it never holds a vector a finished compaction
  // purged). Falls back to State::Pack (a private copy) when no pack can be written or the
  // lock is busy. Pack files are never fsynced: a damaged one fails its CRC and is rewritten.
  void PackUser(const std::string& user);
  CompactResult Compact();
  // fsyncs everything appended so far (any sync mode). Throws kFailed when the fsync fails.
  void Flush();
  Recovery recovery();
  LogStats Stats();
  uint64_t last_seq();
  uint32_t generation();
  bool failed() const { return failed_.load(); }
  bool closed() const { return closed_.load(); }
  void Close();
  void Abandon();
  void SetFault(IoOp op, int countdown, int err) { faults_.Set(op, countdown, err); }
  // Paths of the live segments (after a refresh), oldest first: for records().
  std::vector<std::string> LiveSegmentPaths();

 private:
  struct Writer {
    std::vector<EntryIn> entries;
    std::string frame;             // 13 reserved header bytes + payload
    std::vector<size_t> offsets;   // of each entry within frame
    std::vector<uint64_t> seqs;
    std::exception_ptr error;
    bool done = false;
    bool committed = false;
    std::condition_variable cv;
  };

  void CheckOpen() const;
  // CheckOpen, and refuses when an earlier write or fsync failed (StoreFailedError).
  void CheckWritable() const;
  void RefreshForRead();
  // Loads the store: LiveSegments, then Replay.
  void LoadAll(bool locked);
  // The live segments with their headers, oldest first (the first one created for a new
  // store; leftovers of an interrupted compaction or write removed when `locked`).
  std::vector<std::pair<uint64_t, SegmentHeader>> LiveSegments(bool locked);
  // Replays `live` into a fresh state and swaps it in; truncates a torn tail when `locked`.
  void Replay(const std::vector<std::pair<uint64_t, SegmentHeader>>& live, bool locked);
  uint64_t RefreshLocked(bool locked);
  // Applies every frame the scanner yields; `pinned` when its bytes are a mapping the target
  // pins (else the target copies what it keeps).
  void ApplyFrames(State* target, bool lock, bool pinned, FrameScanner* scanner,
                   uint64_t* applied, Recovery* rec, uint64_t* frames);
  void CommitGroup(const std::vector<Writer*>& group);
  void MaybeRotate();
  void CreateSegment(const SegmentHeader& h);
  // Maps the pack file at `path` and attaches it to `user` (State::AttachPack) when it is
  // valid and of this generation (caller holds io_mu_ and state_mu_ exclusively).
  bool AttachPackFile(const std::string& user, const std::string& path);
  // Writes the user's pack file from the state (temp file, rename); false on any I/O failure
  // (caller holds io_mu_, the file lock and state_mu_ exclusively).
  bool WritePackFile(const std::string& user, const std::string& path);
  // Unlinks every pack file (and leftover temp file) and fsyncs the packs directory; false
  // when an unlink or the fsync failed (caller holds the file lock).
  bool RemovePackFiles();
  std::string PackDir() const { return dir_ + "/" + kPackDir; }
  void SetFailed(const std::string& why);
  void Lock();
  void Unlock();
  // Holds the cross-process file lock (Lock/Unlock) for its scope.
  struct FileLock {
    explicit FileLock(Log* log) : log_(log) { log_->Lock(); }
    ~FileLock() { log_->Unlock(); }
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;
    Log* log_;
  };
  void SyncLoop();
  std::string SegPath(uint64_t n) const { return dir_ + "/" + SegmentName(n); }

  const std::string dir_;
  const SyncMode sync_;
  const int interval_ms_;
  const uint64_t segment_bytes_;

  int lock_fd_ = -1;
  int cur_fd_ = -1;         // the last live segment
  uint64_t cur_num_ = 0;
  uint64_t cur_pos_ = 0;    // end of the last valid frame read or written in it
  uint32_t cur_version_ = kFormatVersion;  // format version of the last segment
  std::vector<uint64_t> segments_;
  uint32_t generation_ = 0;
  uint64_t frames_ = 0;
  Recovery recovery_;

  std::unique_ptr<State> state_;
  std::shared_mutex state_mu_;
  std::mutex io_mu_;        // file positions, refresh, commit, compaction
  std::mutex q_mu_;
  std::deque<Writer*> queue_;

  const pid_t pid_;  // the process that opened it; in a fork child the Log is unusable
  std::atomic<bool> closed_{false};
  std::atomic<bool> failed_{false};
  std::atomic<bool> dirty_{false};
  std::atomic<uint64_t> fsyncs_{0};  // successful fsyncs of appended data (stats)
  std::string failed_why_;
  FaultHook faults_;

  std::thread* sync_thread_ = nullptr;  // leaked on purpose by Abandon() (fork child)
  std::mutex bg_mu_;
  // On the heap: in a fork child it is leaked (released), because destroying a condition
  // variable that had a waiter (the parent's sync thread) blocks forever in glibc. Owned, so
  // that a constructor that throws frees it.
  std::unique_ptr<std::condition_variable> bg_cv_ = std::make_unique<std::condition_variable>();
  bool stop_ = false;
};

}  // namespace headroom
