// The I/O layer: every write, fsync, truncate, create, rename, unlink and mkdir of the log goes
// through here, so a test can make the n-th next one fail with a chosen errno (the fault hook)
// or simulate a power loss (namespace powerloss below). Also flock(2) on LOCK, directory
// fsync, and segment file names.
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
// open(2) with O_CLOEXEC and mode 0644, retried on EINTR: the fd, or -1 with errno set.
int OpenFile(const std::string& path, int flags);
int RenameFile(const std::string& from, const std::string& to);  // 0 or an errno
int UnlinkFile(const std::string& path);                          // 0 or an errno
int MakeDir(const std::string& path);  // mkdir(path, 0755): 0 or an errno (EEXIST too)

std::string SegmentName(uint64_t number);  // "seg-00000000000000000001.log"
bool ParseSegmentName(const std::string& name, uint64_t* number);
// Segment numbers found in dir, ascending. Throws Error(kIo) when the dir cannot be read.
std::vector<uint64_t> ListSegments(const std::string& dir);
// Names of the segment files being written ("seg-….log.tmp") found in dir.
std::vector<std::string> ListSegmentTemps(const std::string& dir);

// Names of the files of the vector packs directory `dir` (packs and packs being written:
// "….vpk", "….vpk.tmp…"); empty when dir does not exist.
std::vector<std::string> ListPackFiles(const std::string& dir);

std::string ErrnoText(int err);

// A simulated power loss, for tests only (in the way of LevelDB's fault-injection test env).
// While enabled, the I/O calls above on files in directories under `root` are tracked:
//
// * a file holds, after a power loss, what it held at its last successful SyncFile (nothing
//   when it was never synced; files that existed before tracking began count as synced);
// * a directory holds the entries it had at its last successful SyncDir: a file created or
//   renamed into place since is gone, an entry unlinked since is back (with its synced
//   content); a directory made by MakeDir is gone while its parent was not synced since.
//
// Each tracked mutating call (create, write, fsync, truncate, rename, unlink, directory fsync,
// mkdir) is one step. CrashAt(n) makes the n-th next step crash: it and every tracked call
// after it fail with EIO without touching anything (the process is "dead"), so nothing after the crash
// point becomes durable; the test then drops the Log (abandon/close) and calls Image().
namespace powerloss {

enum class Mode {
  kDrop,  // every unsynced byte is lost (LevelDB's fault-injection env)
  kTorn,  // a random prefix of each file's unsynced appended bytes survives
  kZero,  // the file keeps its size but its unsynced appended bytes read as zeros
  kKeep,  // everything written survives (a process crash, not a power loss)
};

// Starts tracking files under `root` (an existing directory); forgets what was tracked before.
void Enable(const std::string& root);
void Disable();
bool Enabled();
void CrashAt(uint64_t step);  // the step-th next step crashes; 0: never
void CrashNow();
bool Crashed();
uint64_t Steps();  // tracked mutating calls since Enable
// The step of the last successful SyncFile (0: none yet). Every tracked write made before
// that step is in the synced content of its file (tracked calls are serialised).
uint64_t LastFileSyncStep();
// Writes what directory `dir` would hold after a power loss now into `out` (a directory that
// must not exist yet), or rewrites `dir` in place when `out` is empty. Returns false when the
// directory itself would be gone (then nothing is written; in place, `dir` is removed).
// `seed` picks the torn lengths. Throws Error(kIo / kInvalidInput).
bool Image(const std::string& dir, const std::string& out, Mode mode, uint64_t seed);

}  // namespace powerloss

}  // namespace headroom
