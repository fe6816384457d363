// The I/O layer: every write, fsync and truncate of the log goes through here, so a test can
// make the n-th next one fail with a chosen errno (the fault hook). Also flock(2) on LOCK,
// directory fsync, and segment file names.
#pragma once
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace headroom {

enum class IoOp { kWrite = 0, kFsync = 1, kTruncate = 2 };

class FaultHook {
 public:
  // The `countdown`-th next call of `op` fails with `err` (0 clears the hook for that op).
  void Set(IoOp op, int countdown, int err);
  // Consumes one call of `op`; returns the errno to fail with, or 0.
  int Hit(IoOp op);

 private:
  std::atomic<int> countdown_[3] = {0, 0, 0};
  std::atomic<int> err_[3] = {0, 0, 0};
};

// Writes all of buf at offset (pwrite loop). Returns 0 or an errno. A write fault writes half
// of the bytes first, as a full disk does.
int WriteAt(int fd, const void* buf, size_t n, uint64_t offset, FaultHook* faults);
int SyncFile(int fd, FaultHook* faults);      // fdatasync
int TruncateFile(int fd, uint64_t size, FaultHook* faults);
int SyncDir(const std::string& dir);

std::string SegmentName(uint64_t number);  // "seg-00000000000000000001.log"
bool ParseSegmentName(const std::string& name, uint64_t* number);
// Segment numbers found in dir, ascending. Throws Error(kIo) when the dir cannot be read.
std::vector<uint64_t> ListSegments(const std::string& dir);

std::string ErrnoText(int err);

}  // namespace headroom
