#include "fileio.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "errors.h"

namespace headroom {

void FaultHook::Set(IoOp op, int countdown, int err) {
  int i = static_cast<int>(op);
  err_[i].store(err);
  countdown_[i].store(err ? countdown : 0);
}

int FaultHook::Hit(IoOp op) {
  int i = static_cast<int>(op);
  int c = countdown_[i].load();
  while (c > 0) {
    if (countdown_[i].compare_exchange_weak(c, c - 1)) return c == 1 ? err_[i].load() : 0;
  }
  return 0;
}

int WriteAt(int fd, const void* buf, size_t n, uint64_t offset, FaultHook* faults) {
  const char* p = static_cast<const char*>(buf);
  if (int err = faults ? faults->Hit(IoOp::kWrite) : 0) {
    size_t half = n / 2;
    while (half > 0) {
      ssize_t r = ::pwrite(fd, p, half, static_cast<off_t>(offset));
      if (r <= 0) break;
      p += r;
      offset += static_cast<uint64_t>(r);
      half -= static_cast<size_t>(r);
    }
    return err;
  }
  while (n > 0) {
    ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) return EIO;
    p += r;
    offset += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
  return 0;
}

int SyncFile(int fd, FaultHook* faults) {
  if (int err = faults ? faults->Hit(IoOp::kFsync) : 0) return err;
  return ::fdatasync(fd) == 0 ? 0 : errno;
}

int TruncateFile(int fd, uint64_t size, FaultHook* faults) {
  if (int err = faults ? faults->Hit(IoOp::kTruncate) : 0) return err;
  while (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

int SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int rc = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

std::string SegmentName(uint64_t number) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "seg-%020llu.log", static_cast<unsigned long long>(number));
  return buf;
}

bool ParseSegmentName(const std::string& name, uint64_t* number) {
  if (name.size() != 28 || name.compare(0, 4, "seg-") != 0 || name.compare(24, 4, ".log") != 0)
    return false;
  uint64_t v = 0;
  for (size_t i = 4; i < 24; ++i) {
    char c = name[i];
    if (c < '0' || c > '9') return false;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *number = v;
  return v > 0;
}

std::vector<uint64_t> ListSegments(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) Fail(ErrorKind::kIo, "cannot read the store directory " + dir + ": " + ErrnoText(errno));
  std::vector<uint64_t> out;
  while (dirent* ent = ::readdir(d)) {
    uint64_t n;
    if (ParseSegmentName(ent->d_name, &n)) out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string ErrnoText(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

}  // namespace headroom
