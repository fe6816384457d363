#include "fileio.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <utility>

#include "errors.h"

namespace headroom {

// --- the power-loss tracker ---------------------------------------------------------------

namespace powerloss {
namespace {

using InodeKey = std::pair<uint64_t, uint64_t>;  // (st_dev, st_ino)

struct Tracker {
  std::mutex mu;
  std::atomic<bool> on{false};
  std::string root;  // realpath
  uint64_t steps = 0;
  uint64_t last_sync_step = 0;
  uint64_t crash_at = 0;
  bool crashed = false;
  uint64_t next_id = 1;
  // A file's identity: inodes are reused after an unlink, identities never are.
  std::map<InodeKey, uint64_t> ids;
  std::map<uint64_t, std::string> synced;  // identity -> content at its last sync
  std::map<std::string, std::map<std::string, uint64_t>> dirs;  // realpath -> synced entries
  std::map<std::string, bool> made;  // dirs made while tracking -> entry synced in the parent
};

Tracker& T() {
  static Tracker* t = new Tracker;  // leaked: I/O may run on threads at exit
  return *t;
}

std::string RealPath(const std::string& p) {
  char buf[PATH_MAX];
  if (!::realpath(p.c_str(), buf)) return std::string();
  return buf;
}

std::string DirOf(const std::string& path) {
  size_t i = path.rfind('/');
  if (i == std::string::npos) return ".";
  if (i == 0) return "/";
  return path.substr(0, i);
}

std::string BaseOf(const std::string& path) {
  size_t i = path.rfind('/');
  return i == std::string::npos ? path : path.substr(i + 1);
}

bool Under(const Tracker& t, const std::string& real) {
  if (real.empty()) return false;
  return real == t.root ||
         (real.size() > t.root.size() && real.compare(0, t.root.size(), t.root) == 0 &&
          real[t.root.size()] == '/');
}

bool ReadAll(int fd, std::string* out) {
  out->clear();
  char buf[65536];
  uint64_t off = 0;
  for (;;) {
    ssize_t r = ::pread(fd, buf, sizeof buf, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) return true;
    out->append(buf, static_cast<size_t>(r));
    off += static_cast<uint64_t>(r);
  }
}

bool ReadPath(const std::string& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ReadAll(fd, out);
  ::close(fd);
  return ok;
}

// Regular files of a directory: name -> inode.
std::map<std::string, InodeKey> ListFiles(const std::string& dir) {
  std::map<std::string, InodeKey> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* ent = ::readdir(d)) {
    struct stat st;
    std::string p = dir + "/" + ent->d_name;
    if (::lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode))
      out[ent->d_name] = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  }
  ::closedir(d);
  return out;
}

// Names of the subdirectories of dir (not "." and "..").
std::vector<std::string> ListSubdirs(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* ent = ::readdir(d)) {
    std::string name = ent->d_name;
    struct stat st;
    if (name != "." && name != ".." && ::lstat((dir + "/" + name).c_str(), &st) == 0 &&
        S_ISDIR(st.st_mode))
      out.push_back(name);
  }
  ::closedir(d);
  return out;
}

// The identity of a file seen for the first time: it predates tracking (or was made behind
// the I/O layer's back), so what it holds now counts as synced.
uint64_t Identify(Tracker& t, const InodeKey& key, const std::string& path) {
  auto it = t.ids.find(key);
  if (it != t.ids.end()) return it->second;
  uint64_t id = t.next_id++;
  t.ids[key] = id;
  std::string content;
  if (ReadPath(path, &content)) t.synced[id] = std::move(content);
  return id;
}

// The first time a directory is touched, its entries as they are count as synced.
void TouchDir(Tracker& t, const std::string& real) {
  if (t.dirs.count(real)) return;
  std::map<std::string, uint64_t>& entries = t.dirs[real];
  for (const auto& [name, key] : ListFiles(real)) entries[name] = Identify(t, key, real + "/" + name);
}

bool KeyOf(int fd, InodeKey* key) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return false;
  *key = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  return true;
}

// Counts one step of a tracked call; returns EIO when the call must not happen (the crash
// point, or after it).
int Gate(Tracker& t) {
  if (t.crashed) return EIO;
  ++t.steps;
  if (t.crash_at && t.steps >= t.crash_at) {
    t.crashed = true;
    return EIO;
  }
  return 0;
}

// A lock held by a tracked call for its whole duration (so a sync's snapshot of the file is
// exactly what the fsync covered); not held at all while tracking is off.
class Guard {
 public:
  Guard() : t_(T()) {
    if (t_.on.load(std::memory_order_acquire)) {
      lk_ = std::unique_lock<std::mutex>(t_.mu);
      if (!t_.on.load()) lk_.unlock();
    }
  }
  bool active() const { return lk_.owns_lock(); }
  Tracker& t() { return t_; }

 private:
  Tracker& t_;
  std::unique_lock<std::mutex> lk_;
};

// Whether a call on this fd is tracked: its file has an identity and lies under the root
// (an inode number is reused once its file is gone, for a file anywhere on the device).
bool TrackedFd(Guard& g, int fd, InodeKey* key) {
  if (!g.active()) return false;
  if (!KeyOf(fd, key) || g.t().ids.count(*key) == 0) return false;
  char link[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char buf[PATH_MAX];
  ssize_t n = ::readlink(link, buf, sizeof buf - 1);
  if (n <= 0) return true;  // no /proc: trust the inode
  std::string path(buf, static_cast<size_t>(n));
  const std::string deleted = " (deleted)";
  if (path.size() > deleted.size() &&
      path.compare(path.size() - deleted.size(), deleted.size(), deleted) == 0)
    path.resize(path.size() - deleted.size());
  return Under(g.t(), DirOf(path));
}

bool TrackedPath(Guard& g, const std::string& path, std::string* real_dir) {
  if (!g.active()) return false;
  *real_dir = RealPath(DirOf(path));
  return Under(g.t(), *real_dir);
}

void RemoveTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* d = ::opendir(path.c_str())) {
      std::vector<std::string> names;
      while (dirent* ent = ::readdir(d)) {
        std::string n = ent->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      ::closedir(d);
      for (const std::string& n : names) RemoveTree(path + "/" + n);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

void WriteWhole(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) Fail(ErrorKind::kIo, "cannot write " + path + ": " + ErrnoText(errno));
  // Not WriteAt: the caller holds the tracker's lock, and these writes are not the store's.
  int err = 0;
  for (size_t done = 0; done < bytes.size();) {
    ssize_t r = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      err = r < 0 ? errno : EIO;
      break;
    }
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  if (err) Fail(ErrorKind::kIo, "cannot write " + path + ": " + ErrnoText(err));
}

}  // namespace

void Enable(const std::string& root) {
  std::string real = RealPath(root);
  if (real.empty()) Fail(ErrorKind::kInvalidInput, "power-loss root " + root + " does not exist");
  Tracker& t = T();
  std::lock_guard<std::mutex> lk(t.mu);
  t.root = real;
  t.steps = t.crash_at = t.last_sync_step = 0;
  t.crashed = false;
  t.ids.clear();
  t.synced.clear();
  t.dirs.clear();
  t.made.clear();
  t.on.store(true, std::memory_order_release);
}

void Disable() {
  Tracker& t = T();
  std::lock_guard<std::mutex> lk(t.mu);
  t.on.store(false);
  t.crashed = false;
  t.crash_at = 0;
  t.ids.clear();
  t.synced.clear();
  t.dirs.clear();
  t.made.clear();
}

bool Enabled() { return T().on.load(); }

void CrashAt(uint64_t step) {
  Tracker& t = T();
  std::lock_guard<std::mutex> lk(t.mu);
  t.crash_at = step ? t.steps + step : 0;
}

void CrashNow() {
  Tracker& t = T();
  std::lock_guard<std::mutex> lk(t.mu);
  t.crashed = true;
}

bool Crashed() {
  Tracker& t = T();
  std::lock_guard<std::mutex> lk(t.mu);
  return t.crashed;
}

uint64_t Steps() {
  Tracker& t = T();
  std::lock_guard<std::mutex> lk(t.mu);
  return t.steps;
}

uint64_t LastFileSyncStep() {
  Tracker& t = T();
  std::lock_guard<std::mutex> lk(t.mu);
  return t.last_sync_step;
}

// Writes what directory `real` holds after a power loss into `target` (or rewrites it in
// place), then its subdirectories.
void ImageInto(Tracker& t, const std::string& real, const std::string& target, bool in_place,
               Mode mode, uint64_t seed) {
  // What each entry holds after the power loss.
  std::map<std::string, std::string> files;
  const std::map<std::string, InodeKey> now = ListFiles(real);
  auto current = [&](uint64_t id, std::string* content) {
    for (const auto& [name, key] : now) {
      auto it = t.ids.find(key);
      if (it != t.ids.end() && it->second == id) return ReadPath(real + "/" + name, content);
    }
    return false;
  };
  auto dit = t.dirs.find(real);
  if (mode == Mode::kKeep || dit == t.dirs.end()) {
    for (const auto& [name, key] : now) {
      std::string c;
      if (ReadPath(real + "/" + name, &c)) files[name] = std::move(c);
    }
  } else {
    for (const auto& [name, id] : dit->second) {
      auto sit = t.synced.find(id);
      std::string c = sit == t.synced.end() ? std::string() : sit->second;
      std::string cur;
      if (mode != Mode::kDrop && current(id, &cur) && cur.size() > c.size() &&
          cur.compare(0, c.size(), c) == 0) {
        size_t tail = cur.size() - c.size();
        if (mode == Mode::kTorn) {
          std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + std::hash<std::string>()(name));
          size_t keep = static_cast<size_t>(rng() % (tail + 1));
          c.append(cur, c.size(), keep);
        } else {
          c.append(tail, '\0');
        }
      }
      files[name] = std::move(c);
    }
  }
  if (in_place) {
    for (const auto& [name, key] : now) ::unlink((real + "/" + name).c_str());
  } else if (::mkdir(target.c_str(), 0755) != 0) {
    Fail(ErrorKind::kIo, "cannot create " + target + ": " + ErrnoText(errno));
  }
  for (const auto& [name, bytes] : files) WriteWhole(target + "/" + name, bytes);
  // Subdirectories (vector packs, index snapshots), each imaged alike; one made while
  // tracking whose entry was never synced into this directory is gone.
  for (const std::string& name : ListSubdirs(real)) {
    const std::string sub = real + "/" + name;
    auto made = t.made.find(sub);
    if (mode != Mode::kKeep && made != t.made.end() && !made->second) {
      if (in_place) RemoveTree(sub);
      continue;
    }
    ImageInto(t, sub, target + "/" + name, in_place, mode, seed);
  }
}


bool Image(const std::string& dir, const std::string& out, Mode mode, uint64_t seed) {
  Tracker& t = T();
  std::lock_guard<std::mutex> lk(t.mu);
  if (!t.on) Fail(ErrorKind::kInvalidInput, "power-loss tracking is not enabled");
  const std::string real = RealPath(dir);
  if (real.empty()) {
    if (errno == ENOENT) return false;  // never made (a crash before its mkdir)
    Fail(ErrorKind::kIo, "cannot resolve " + dir + ": " + ErrnoText(errno));
  }
  const bool in_place = out.empty();
  if (!in_place) {
    struct stat st;
    if (::lstat(out.c_str(), &st) == 0)
      Fail(ErrorKind::kInvalidInput, "the image target " + out + " exists");
  }
  // The directory itself (or a directory above it) was made and its entry never synced.
  if (mode != Mode::kKeep) {
    for (const auto& [made, synced] : t.made) {
      if (synced) continue;
      if (real == made || (real.size() > made.size() && real.compare(0, made.size(), made) == 0 &&
                           real[made.size()] == '/')) {
        if (in_place) RemoveTree(real);
        return false;
      }
    }
  }
  ImageInto(t, real, in_place ? real : out, in_place, mode, seed);
  return true;
}

}  // namespace powerloss

// --- fault hook ---------------------------------------------------------------------------

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

// --- tracked calls ------------------------------------------------------------------------

int WriteAt(int fd, const void* buf, size_t n, uint64_t offset, FaultHook* faults) {
  powerloss::Guard g;
  powerloss::InodeKey key;
  if (powerloss::TrackedFd(g, fd, &key)) {
    if (int err = powerloss::Gate(g.t())) return err;
  }
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
  powerloss::Guard g;
  powerloss::InodeKey key;
  const bool tracked = powerloss::TrackedFd(g, fd, &key);
  if (tracked) {
    if (int err = powerloss::Gate(g.t())) return err;
  }
  if (int err = faults ? faults->Hit(IoOp::kFsync) : 0) return err;
  if (::fdatasync(fd) != 0) return errno;
  if (tracked) {
    std::string content;
    if (powerloss::ReadAll(fd, &content)) g.t().synced[g.t().ids[key]] = std::move(content);
    g.t().last_sync_step = g.t().steps;
  }
  return 0;
}

int TruncateFile(int fd, uint64_t size, FaultHook* faults) {
  powerloss::Guard g;
  powerloss::InodeKey key;
  if (powerloss::TrackedFd(g, fd, &key)) {
    if (int err = powerloss::Gate(g.t())) return err;
  }
  if (int err = faults ? faults->Hit(IoOp::kTruncate) : 0) return err;
  while (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

int SyncDir(const std::string& dir) {
  powerloss::Guard g;
  std::string real;
  const bool tracked = g.active() && powerloss::Under(g.t(), real = powerloss::RealPath(dir));
  if (tracked) {
    powerloss::TouchDir(g.t(), real);
    if (int err = powerloss::Gate(g.t())) return err;
  }
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int rc = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  if (rc == 0 && tracked) {
    powerloss::Tracker& t = g.t();
    std::map<std::string, uint64_t>& entries = t.dirs[real];
    entries.clear();
    for (const auto& [name, key] : powerloss::ListFiles(real))
      entries[name] = powerloss::Identify(t, key, real + "/" + name);
    for (auto& [made, synced] : t.made)
      if (powerloss::DirOf(made) == real) synced = true;
  }
  return rc;
}

int OpenFile(const std::string& path, int flags) {
  powerloss::Guard g;
  std::string real_dir;
  const bool mutating = (flags & (O_CREAT | O_TRUNC)) != 0;
  const bool tracked = powerloss::TrackedPath(g, path, &real_dir);
  bool existed = true;
  if (tracked) {
    powerloss::TouchDir(g.t(), real_dir);
    struct stat st;
    existed = ::lstat(path.c_str(), &st) == 0;
    if (mutating) {
      if (int err = powerloss::Gate(g.t())) {
        errno = err;
        return -1;
      }
    }
  }
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd >= 0 && tracked) {
    int saved = errno;
    powerloss::InodeKey key;
    if (powerloss::KeyOf(fd, &key)) {
      powerloss::Tracker& t = g.t();
      if (!existed) {
        t.ids[key] = t.next_id++;  // a new file: nothing of it is synced yet
      } else {
        powerloss::Identify(t, key, real_dir + "/" + powerloss::BaseOf(path));
      }
    }
    errno = saved;
  }
  return fd;
}

int RenameFile(const std::string& from, const std::string& to) {
  powerloss::Guard g;
  std::string real_from, real_to;
  const bool from_tracked = powerloss::TrackedPath(g, from, &real_from);
  const bool to_tracked = powerloss::TrackedPath(g, to, &real_to);
  if (from_tracked || to_tracked) {
    if (from_tracked) powerloss::TouchDir(g.t(), real_from);
    if (to_tracked) powerloss::TouchDir(g.t(), real_to);
    if (int err = powerloss::Gate(g.t())) return err;
  }
  return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
}

int UnlinkFile(const std::string& path) {
  powerloss::Guard g;
  std::string real_dir;
  if (powerloss::TrackedPath(g, path, &real_dir)) {
    powerloss::TouchDir(g.t(), real_dir);
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) return errno;  // nothing to unlink: not a step
    if (int err = powerloss::Gate(g.t())) return err;
  }
  return ::unlink(path.c_str()) == 0 ? 0 : errno;
}

int MakeDir(const std::string& path) {
  powerloss::Guard g;
  std::string real_parent;
  const bool tracked = powerloss::TrackedPath(g, path, &real_parent);
  if (tracked) {
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) return EEXIST;  // nothing to make: not a step
    if (int err = powerloss::Gate(g.t())) return err;
  }
  if (::mkdir(path.c_str(), 0755) != 0) return errno;
  if (tracked) {
    std::string real = powerloss::RealPath(path);
    g.t().made[real] = false;
    g.t().dirs[real];  // empty, as synced: a directory is made empty
  }
  return 0;
}

// --- names --------------------------------------------------------------------------------

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

std::vector<std::string> ListSegmentTemps(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* ent = ::readdir(d)) {
    std::string name = ent->d_name;
    uint64_t n;
    if (name.size() == 32 && name.compare(28, 4, ".tmp") == 0 &&
        ParseSegmentName(name.substr(0, 28), &n))
      out.push_back(name);
  }
  ::closedir(d);
  return out;
}

std::vector<std::string> ListPackFiles(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* ent = ::readdir(d)) {
    std::string name = ent->d_name;
    size_t at = name.find(".vpk");
    if (at != std::string::npos && at > 0 &&
        (at + 4 == name.size() || name.compare(at + 4, 4, ".tmp") == 0))
      out.push_back(name);
  }
  ::closedir(d);
  return out;
}

std::string ErrnoText(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

}  // namespace headroom
