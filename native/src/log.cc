#include "log.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <system_error>
#include <utility>

#include "errors.h"

namespace headroom {
namespace {

int64_t NowMicros() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// The directory that holds `path` ("." for a bare name).
std::string ParentDir(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t i = path.rfind('/');
  if (i == std::string::npos) return ".";
  return i == 0 ? "/" : path.substr(0, i);
}

// Makes the store directory and any missing directory above it. Each directory made above
// the store's is fsynced into its parent at once; the store directory's own entry is fsynced
// into its parent when its first segment is created (LoadAll), so that a store directory left
// by a crash before that is made durable too.
void MakeDirs(const std::string& path) {
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty()) {
      int err = MakeDir(cur);
      if (err && err != EEXIST)
        Fail(ErrorKind::kIo, "cannot create the store directory " + path + ": " + ErrnoText(err));
      if (!err && j < path.size() && path.find_first_not_of('/', j) != std::string::npos) {
        if (int e = SyncDir(ParentDir(cur)))
          Fail(ErrorKind::kIo, "cannot fsync the directory above " + cur + ": " + ErrnoText(e));
      }
    }
    i = j + 1;
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    Fail(ErrorKind::kInvalidInput, "the store path " + path + " exists and is not a directory");
}

uint64_t FileSize(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) Fail(ErrorKind::kIo, "fstat failed: " + ErrnoText(errno));
  return static_cast<uint64_t>(st.st_size);
}

// Reads and checks a segment header. Throws kVersion / kCorruption.
SegmentHeader ReadHeader(int fd, const std::string& path) {
  uint8_t buf[kMaxSegmentHeaderSize];
  ssize_t n;
  do {
    n = ::pread(fd, buf, sizeof buf, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) Fail(ErrorKind::kIo, "cannot read " + path + ": " + ErrnoText(errno));
  SegmentHeader h;
  switch (DecodeSegmentHeader(buf, static_cast<size_t>(n), &h)) {
    case HeaderStatus::kOk:
      return h;
    case HeaderStatus::kNewerVersion:
      Fail(ErrorKind::kVersion, path + " was written by a newer version of the store format than "
                                       "this library reads (it reads up to version " +
                                       std::to_string(kFormatVersion) +
                                       "); upgrade headroom-memory to open this store");
    default:
      Fail(ErrorKind::kCorruption,
           path + " has a damaged segment header; the store cannot be opened as is. Move the "
                  "file out of the store directory to open the rest (its records are lost)");
  }
}

// A segment file opened for replay, with its mapping when it may be mapped. Owns the fd.
struct OpenedSegment {
  int fd = -1;
  uint64_t size = 0;
  std::shared_ptr<const Mapping> map;

  OpenedSegment() = default;
  OpenedSegment(OpenedSegment&& o) noexcept
      : fd(std::exchange(o.fd, -1)), size(o.size), map(std::move(o.map)) {}
  OpenedSegment& operator=(OpenedSegment&& o) noexcept {
    if (this != &o) {
      if (fd >= 0) ::close(fd);
      fd = std::exchange(o.fd, -1);
      size = o.size;
      map = std::move(o.map);
    }
    return *this;
  }
  OpenedSegment(const OpenedSegment&) = delete;
  OpenedSegment& operator=(const OpenedSegment&) = delete;
  ~OpenedSegment() {
    if (fd >= 0) ::close(fd);
  }
  int Release() { return std::exchange(fd, -1); }
};

}  // namespace

// --- open / close -------------------------------------------------------------------------

Log::Log(const std::string& path, SyncMode sync, int sync_interval_ms, uint64_t segment_bytes)
    : dir_(path),
      sync_(sync),
      interval_ms_(sync_interval_ms),
      segment_bytes_(segment_bytes),
      pid_(::getpid()) {
  if (path.empty()) Fail(ErrorKind::kInvalidInput, "the store path must not be empty");
  if (sync_interval_ms < 1) Fail(ErrorKind::kInvalidInput, "sync_interval_ms must be >= 1");
  if (segment_bytes < 4096) Fail(ErrorKind::kInvalidInput, "segment_bytes must be >= 4096");
  MakeDirs(dir_);
  lock_fd_ = OpenFile(dir_ + "/LOCK", O_RDWR | O_CREAT);
  if (lock_fd_ < 0) Fail(ErrorKind::kIo, "cannot open " + dir_ + "/LOCK: " + ErrnoText(errno));
  try {
    bool locked = ::flock(lock_fd_, LOCK_EX | LOCK_NB) == 0;
    if (!locked && ListSegments(dir_).empty()) {
      Lock();  // creating the first segment needs the lock
      locked = true;
    }
    try {
      LoadAll(locked);
    } catch (...) {
      if (locked) Unlock();
      throw;
    }
    if (locked) Unlock();
  } catch (...) {
    if (cur_fd_ >= 0) ::close(cur_fd_);
    ::close(lock_fd_);
    throw;
  }
  if (sync_ == SyncMode::kInterval) sync_thread_ = new std::thread([this] { SyncLoop(); });
}

Log::~Log() {
  try {
    Close();
  } catch (...) {
  }
  if (::getpid() != pid_) (void)bg_cv_.release();  // a fork child: see bg_cv_
}

void Log::Close() {
  if (::getpid() != pid_) {  // a fork child: the parent's threads and locks are not ours
    Abandon();
    return;
  }
  if (closed_.exchange(true)) return;
  {
    std::lock_guard<std::mutex> lk(bg_mu_);
    stop_ = true;
  }
  bg_cv_->notify_all();
  if (sync_thread_) {
    sync_thread_->join();
    delete sync_thread_;
    sync_thread_ = nullptr;
  }
  std::lock_guard<std::mutex> io(io_mu_);
  if (dirty_.exchange(false) && !failed_) SyncFile(cur_fd_, nullptr);
  if (cur_fd_ >= 0) ::close(cur_fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
  cur_fd_ = lock_fd_ = -1;
}

void Log::Abandon() {
  if (::getpid() == pid_) {  // not a fork child: a normal close (never leak a live thread)
    Close();
    return;
  }
  // In a fork child: the threads do not exist here and mutexes may be held by threads of the
  // parent. Touch neither; drop the descriptors (the parent's copies stay open and locked).
  if (closed_.exchange(true)) return;
  sync_thread_ = nullptr;  // leaked: joining or destroying it would abort the child
  if (cur_fd_ >= 0) ::close(cur_fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
  cur_fd_ = lock_fd_ = -1;
}

void Log::CheckOpen() const {
  if (closed_) Fail(ErrorKind::kClosed, "the store is closed (or was opened by a parent process)");
  if (::getpid() != pid_)
    Fail(ErrorKind::kClosed, "this store handle was opened by the parent of this forked process; "
                             "open the store again in the child");
}

void Log::CheckWritable() const {
  CheckOpen();
  if (failed_)
    Fail(ErrorKind::kFailed, "an earlier write failed (" + failed_why_ +
                                 "); the store refuses writes until it is reopened");
}

void Log::Lock() {
  while (::flock(lock_fd_, LOCK_EX) != 0) {
    if (errno != EINTR) Fail(ErrorKind::kIo, "flock(LOCK_EX) failed: " + ErrnoText(errno));
  }
}

void Log::Unlock() { ::flock(lock_fd_, LOCK_UN); }

void Log::SetFailed(const std::string& why) {
  if (!failed_.exchange(true)) failed_why_ = why;
}

// --- loading and catching up ----------------------------------------------------------------

void Log::ApplyFrames(State* target, bool lock, bool pinned, FrameScanner* scanner,
                      uint64_t* applied, Recovery* rec, uint64_t* frames) {
  const uint8_t* payload;
  uint32_t len;
  uint64_t off;
  ScanStats st;
  std::vector<EntryView> entries;
  std::unique_lock<std::shared_mutex> lk(state_mu_, std::defer_lock);
  while (scanner->Next(&payload, &len, &off, &st, &entries)) {
    if (lock && !lk.owns_lock()) lk.lock();
    for (const EntryView& e : entries) target->Apply(e, pinned);
    *applied += entries.size();
    ++*frames;
  }
  rec->corrupt_bytes += st.corrupt_bytes;
  rec->corrupt_records += st.corrupt_records;
}

void Log::LoadAll(bool locked) { Replay(LiveSegments(locked), locked); }

std::vector<std::pair<uint64_t, SegmentHeader>> Log::LiveSegments(bool locked) {
  // Which segments are live: those above the highest `replaces` of any segment header.
  std::vector<uint64_t> nums = ListSegments(dir_);
  if (nums.empty()) {
    if (!locked) Fail(ErrorKind::kIo, "the store has no segment and the lock is not held");
    SegmentHeader h;
    h.number = 1;
    CreateSegment(h);
    // A new store: its directory's entry must be durable before any write is acknowledged
    // (a power loss would take the whole directory otherwise).
    if (int err = SyncDir(ParentDir(dir_)))
      Fail(ErrorKind::kIo, "cannot fsync the directory holding " + dir_ + ": " + ErrnoText(err));
    nums.push_back(1);
  }
  uint64_t replaced = 0;
  std::vector<std::pair<uint64_t, SegmentHeader>> headers;
  for (uint64_t n : nums) {
    std::string p = SegPath(n);
    int fd = OpenFile(p, O_RDONLY);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // unlinked by a compaction meanwhile
      Fail(ErrorKind::kIo, "cannot open " + p + ": " + ErrnoText(errno));
    }
    try {
      SegmentHeader h = ReadHeader(fd, p);
      ::close(fd);
      if (h.replaces > replaced) replaced = h.replaces;
      headers.emplace_back(n, h);
    } catch (const Error& err) {
      ::close(fd);
      headers.emplace_back(n, SegmentHeader{0, 0, n, 0, 0, 0});  // version 0 marks "bad"
      if (err.kind() == ErrorKind::kIo) throw;
    }
  }
  std::vector<std::pair<uint64_t, SegmentHeader>> live;
  for (auto& nh : headers) {
    if (nh.first <= replaced) {
      if (locked) UnlinkFile(SegPath(nh.first));  // left by an interrupted compaction
      continue;
    }
    if (nh.second.version == 0) {
      int fd = OpenFile(SegPath(nh.first), O_RDONLY);
      if (fd >= 0) {
        try {
          ReadHeader(fd, SegPath(nh.first));  // throws the precise error
        } catch (...) {
          ::close(fd);
          throw;
        }
        ::close(fd);
      }
    }
    live.push_back(nh);
  }
  if (locked) {  // files being written by a writer that crashed: never part of the store
    UnlinkFile(dir_ + "/compact.tmp");
    for (const std::string& name : ListSegmentTemps(dir_)) UnlinkFile(dir_ + "/" + name);
    for (const std::string& name : ListPackFiles(PackDir()))
      if (name.find(".tmp") != std::string::npos) UnlinkFile(PackDir() + "/" + name);
  }
  if (live.empty()) Fail(ErrorKind::kCorruption, "the store " + dir_ + " has no live segment");
  return live;
}

void Log::Replay(const std::vector<std::pair<uint64_t, SegmentHeader>>& live, bool locked) {
  auto fresh = std::make_unique<State>();
  Recovery rec;
  uint64_t frames = 0;
  uint32_t gen = 0;
  int last_fd = -1;
  uint64_t last_pos = 0;
  // Opens (and maps) segment i. Map what nobody can truncate while we scan it: an earlier
  // segment (only the last one is ever truncated), or the last one while we hold the lock.
  // Else it is read through pread(2). The state keeps pointing into the mapping of an earlier
  // segment (zero-copy replay) and pins it: an unlink by a compaction leaves it readable, and
  // no writer ever truncates it. The last segment is pinned too when we scanned it holding the
  // lock: then no commit was in progress, and the only truncations there are (a torn tail cut
  // by a lock holder, a failed commit undone by its writer) cut after the frames we kept, so no
  // page we point into ever lies past the end of the file. Without the lock it copies what it
  // keeps: a commit in progress may be undone (truncated) after we read its frames.
  auto open_segment = [this, &live, locked](size_t i) {
    const bool last = i + 1 == live.size();
    std::string p = SegPath(live[i].first);
    OpenedSegment o;
    o.fd = OpenFile(p, last ? O_RDWR : O_RDONLY);
    if (o.fd < 0) Fail(ErrorKind::kIo, "cannot open " + p + ": " + ErrnoText(errno));
    o.size = FileSize(o.fd);
    if (!last || locked) o.map = Mapping::Map(o.fd, static_cast<size_t>(o.size));
    return o;
  };
  {
    OpenedSegment cur = open_segment(0);
    // Segment i+1 is opened and mapped (MAP_POPULATE: the kernel's page-table work) on a
    // helper thread while segment i is checked and applied here. Declared after `cur`: on an
    // exception it is destroyed first, which waits for the helper and closes what it opened.
    std::future<OpenedSegment> ahead;
    for (size_t i = 0; i < live.size(); ++i) {
      const bool last = i + 1 == live.size();
      if (!last) {
        try {
          ahead = std::async(std::launch::async, open_segment, i + 1);
        } catch (const std::system_error&) {  // no thread to be had: open it when needed
          ahead = std::async(std::launch::deferred, open_segment, i + 1);
        }
      }
      SegmentHeader h = live[i].second;
      if (h.generation > gen) gen = h.generation;
      const uint64_t size = cur.size;
      const bool pinned = cur.map && (!last || locked);
      if (pinned) fresh->Pin(cur.map);
      std::unique_ptr<FrameScanner> scp =
          cur.map ? std::make_unique<FrameScanner>(cur.map->data(), h.header_size, size)
                  : std::make_unique<FrameScanner>(cur.fd, h.header_size, size);
      FrameScanner& sc = *scp;
      uint64_t applied = 0;
      const uint64_t damage_before = rec.corrupt_bytes + rec.torn_tail_bytes;
      ApplyFrames(fresh.get(), false, pinned, &sc, &applied, &rec, &frames);
      // After the segment's own records: a compaction output holds seqs below its floor.
      fresh->NoteSeqFloor(h.seq_floor);
      uint64_t end = sc.ValidEnd();
      if (end < size) {
        if (!last) {
          rec.corrupt_bytes += size - end;
          rec.corrupt_records += 1;
        } else if (locked) {
          rec.torn_tail_bytes += size - end;
          TruncateFile(cur.fd, end, nullptr);
        }
      }
      if (rec.corrupt_bytes + rec.torn_tail_bytes > damage_before)
        rec.damaged_segments.push_back(SegmentName(live[i].first));
      if (last) {
        last_pos = end;
        last_fd = cur.Release();
      } else {
        cur = ahead.get();
      }
    }
  }
  // The report is cumulative over the life of this Log object.
  recovery_.torn_tail_bytes += rec.torn_tail_bytes;
  recovery_.corrupt_bytes += rec.corrupt_bytes;
  recovery_.corrupt_records += rec.corrupt_records;
  recovery_.segments = live.size();
  for (std::string& name : rec.damaged_segments) recovery_.damaged_segments.push_back(name);
  {
    std::unique_lock<std::shared_mutex> lk(state_mu_);
    state_.swap(fresh);
  }
  fresh.reset();
  frames_ = frames;
  if (cur_fd_ >= 0) ::close(cur_fd_);
  cur_fd_ = last_fd;
  cur_version_ = live.back().second.version;
  cur_num_ = live.back().first;
  cur_pos_ = last_pos;
  segments_.clear();
  for (auto& nh : live) segments_.push_back(nh.first);
  generation_ = gen;
}

uint64_t Log::RefreshLocked(bool locked) {
  uint64_t applied = 0;
  for (;;) {
    struct stat st;
    if (::fstat(cur_fd_, &st) != 0) Fail(ErrorKind::kIo, "fstat failed: " + ErrnoText(errno));
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (st.st_nlink == 0 || size < cur_pos_) {  // compacted away, or a failed batch truncated
      uint64_t before = state_->entries();
      LoadAll(locked);
      return applied + (state_->entries() > before ? state_->entries() - before : 0);
    }
    struct stat nst;
    const bool next = ::stat(SegPath(cur_num_ + 1).c_str(), &nst) == 0;
    if (next && ::fstat(cur_fd_, &st) == 0) size = static_cast<uint64_t>(st.st_size);
    if (size > cur_pos_) {
      FrameScanner sc(cur_fd_, cur_pos_, size);
      ApplyFrames(state_.get(), true, false, &sc, &applied, &recovery_, &frames_);
      uint64_t end = sc.ValidEnd();
      if (end < size) {
        if (next) {
          recovery_.corrupt_bytes += size - end;
          recovery_.corrupt_records += 1;
        } else if (locked) {
          recovery_.torn_tail_bytes += size - end;
          if (int err = TruncateFile(cur_fd_, end, &faults_))
            Fail(ErrorKind::kIo, "cannot truncate the torn tail: " + ErrnoText(err));
        }
      }
      cur_pos_ = end;
    }
    if (!next) return applied;
    std::string p = SegPath(cur_num_ + 1);
    int fd = OpenFile(p, O_RDWR);
    if (fd < 0) {
      uint64_t before = state_->entries();
      LoadAll(locked);  // gone again: compacted meanwhile
      return applied + (state_->entries() > before ? state_->entries() - before : 0);
    }
    SegmentHeader h;
    try {
      h = ReadHeader(fd, p);
    } catch (...) {
      ::close(fd);
      throw;
    }
    if (h.replaces >= cur_num_) {  // a compaction by another process
      ::close(fd);
      uint64_t before = state_->entries();
      LoadAll(locked);
      return applied + (state_->entries() > before ? state_->entries() - before : 0);
    }
    ::close(cur_fd_);
    cur_fd_ = fd;
    cur_num_ += 1;
    cur_pos_ = h.header_size;
    cur_version_ = h.version;
    segments_.push_back(cur_num_);
    recovery_.segments = segments_.size();
    {
      std::unique_lock<std::shared_mutex> lk(state_mu_);
      state_->NoteSeqFloor(h.seq_floor);
    }
  }
}

void Log::RefreshForRead() {
  CheckOpen();
  std::lock_guard<std::mutex> io(io_mu_);
  CheckOpen();
  RefreshLocked(false);
}

uint64_t Log::Refresh() {
  CheckOpen();
  std::lock_guard<std::mutex> io(io_mu_);
  CheckOpen();
  return RefreshLocked(false);
}

// --- vector packs ---------------------------------------------------------------------------

void Log::PackUser(const std::string& user) {
  CheckOpen();
  std::lock_guard<std::mutex> io(io_mu_);
  CheckOpen();
  const std::string path = PackDir() + "/" + PackFileName(user);
  {
    std::unique_lock<std::shared_mutex> lk(state_mu_);
    if (!state_->NeedsPack(user)) return;
    if (AttachPackFile(user, path) && !state_->NeedsPack(user)) return;
  }
  // Write a new pack: under the file lock, so no compaction (which removes every pack before
  // it commits) runs meanwhile, and from a state that has applied every append so far (so the
  // pack holds no vector that an earlier PURGE and compaction already took out). A busy lock
  // (a writer or a compaction in another process) is not waited for: the private copy serves.
  bool attached = false;
  if (!failed_ && ::flock(lock_fd_, LOCK_EX | LOCK_NB) == 0) {
    struct Unlocker {
      Log* log;
      ~Unlocker() { log->Unlock(); }
    } unlocker{this};
    RefreshLocked(true);
    // The log is made durable first, so a pack never covers an entry a power loss could take:
    // that entry's seq would be reused by a later write, which the pack would then give the
    // lost entry's vector. A failed fsync writes no pack (the private copy serves) and fails the
    // log for writes, as any failed fsync does.
    const int sync_err = cur_fd_ < 0 ? 0 : SyncFile(cur_fd_, &faults_);
    if (sync_err) SetFailed("fsync failed: " + ErrnoText(sync_err));
    const bool durable = sync_err == 0;
    std::unique_lock<std::shared_mutex> lk(state_mu_);
    if (!state_->NeedsPack(user)) return;
    attached = durable && WritePackFile(user, path) && AttachPackFile(user, path);
  }
  std::unique_lock<std::shared_mutex> lk(state_mu_);
  if (!attached || state_->NeedsPack(user)) {
    if (state_->NeedsPack(user)) state_->Pack(user);
  }
}

bool Log::AttachPackFile(const std::string& user, const std::string& path) {
  int fd = OpenFile(path, O_RDONLY);
  if (fd < 0) return false;
  struct stat st;
  std::shared_ptr<const Mapping> map;
  if (::fstat(fd, &st) == 0 && st.st_size > 0)
    map = Mapping::Map(fd, static_cast<size_t>(st.st_size));
  ::close(fd);
  PackView view;
  // A pack ahead of the log covers entries the log no longer has (lost to a power loss before
  // it was written durably): never used.
  if (!map || !DecodePack(map->data(), map->size(), &view) || view.generation != generation_ ||
      view.covered_seq > state_->last_seq())
    return false;
  return state_->AttachPack(user, std::move(map), view) > 0;
}

bool Log::WritePackFile(const std::string& user, const std::string& path) {
  uint32_t dim = 0;
  uint64_t seq = 0;
  std::vector<std::pair<uint64_t, const float*>> rows = state_->PackRows(user, &dim, &seq);
  if (rows.empty()) return false;
  const std::string bytes = EncodePack(user, dim, generation_, seq, rows);
  const int mk = MakeDir(PackDir());
  if (mk && mk != EEXIST) return false;
  const std::string tmp = path + ".tmp";  // we hold the file lock: no other writer of packs
  int fd = OpenFile(tmp, O_WRONLY | O_CREAT | O_TRUNC);
  if (fd < 0) return false;
  int err = WriteAt(fd, bytes.data(), bytes.size(), 0, nullptr);
  ::close(fd);
  if (!err) err = RenameFile(tmp, path);
  if (err) UnlinkFile(tmp);
  return err == 0;
}

bool Log::RemovePackFiles() {
  const std::vector<std::string> names = ListPackFiles(PackDir());
  bool ok = true;
  for (const std::string& name : names) {
    int err = UnlinkFile(PackDir() + "/" + name);
    if (err && err != ENOENT) ok = false;
  }
  if (!names.empty() && SyncDir(PackDir()) != 0) ok = false;
  return ok;
}

// --- appending ----------------------------------------------------------------------------

std::vector<uint64_t> Log::Append(std::vector<EntryIn> entries) {
  CheckOpen();
  if (entries.empty()) return {};
  if (entries.size() > kMaxEntriesPerBatch)
    Fail(ErrorKind::kInvalidInput, "a batch holds at most " + std::to_string(kMaxEntriesPerBatch) +
                                       " entries");
  Writer w;
  w.frame.assign(kFrameHeaderSize + 4, '\0');
  uint32_t count = static_cast<uint32_t>(entries.size());
  std::memcpy(&w.frame[kFrameHeaderSize], &count, 4);
  for (const EntryIn& e : entries) {
    CheckEntryShape(e);  // shape only; meaning is checked against the state at commit
    w.offsets.push_back(w.frame.size());
    EncodeEntry(e, &w.frame);
    if (w.frame.size() - kFrameHeaderSize > kMaxPayload)
      Fail(ErrorKind::kInvalidInput, "the batch is larger than the frame limit of 64 MiB");
  }
  w.entries = std::move(entries);

  std::unique_lock<std::mutex> lk(q_mu_);
  queue_.push_back(&w);
  while (!w.done && queue_.front() != &w) w.cv.wait(lk);
  if (!w.done) {
    // The leader: commit every writer queued so far (up to 8 MiB) in one write.
    std::vector<Writer*> group;
    size_t bytes = 0;
    for (Writer* x : queue_) {
      if (!group.empty() && bytes + x->frame.size() > (8u << 20)) break;
      group.push_back(x);
      bytes += x->frame.size();
    }
    lk.unlock();
    try {
      CommitGroup(group);
    } catch (...) {
      for (Writer* x : group) {
        if (x->committed || x->error) continue;
        x->error = std::current_exception();
        x->seqs.clear();
      }
    }
    lk.lock();
    for (Writer* x : group) {
      queue_.pop_front();
      x->done = true;
      if (x != &w) x->cv.notify_one();
    }
    if (!queue_.empty()) queue_.front()->cv.notify_one();
  }
  lk.unlock();
  if (w.error) std::rethrow_exception(w.error);
  return w.seqs;
}

void Log::CommitGroup(const std::vector<Writer*>& group) {
  std::lock_guard<std::mutex> io(io_mu_);
  CheckWritable();
  FileLock file_lock(this);
  RefreshLocked(true);

  Validator accepted(state_.get());
  std::vector<Writer*> ok;
  uint64_t seq = state_->last_seq();
  const int64_t now = NowMicros();
  for (Writer* w : group) {
    Validator trial = accepted;
    try {
      for (const EntryIn& e : w->entries) trial.Check(e);
    } catch (...) {
      w->error = std::current_exception();
      continue;
    }
    accepted = std::move(trial);
    for (size_t i = 0; i < w->entries.size(); ++i) {
      uint64_t s = ++seq;
      int64_t ts = w->entries[i].ts ? w->entries[i].ts : now;
      std::memcpy(&w->frame[w->offsets[i]], &s, 8);
      std::memcpy(&w->frame[w->offsets[i] + 8], &ts, 8);
      w->seqs.push_back(s);
    }
    SealFrame(&w->frame);
    ok.push_back(w);
  }
  if (ok.empty()) return;
  MaybeRotate();

  std::string joined;
  const std::string* out = &ok[0]->frame;
  if (ok.size() > 1) {
    for (Writer* w : ok) joined += w->frame;
    out = &joined;
  }
  auto fail_all = [&](const std::string& what, int err) {
    // Undo the partial write if we can; otherwise its CRC makes it a torn tail.
    TruncateFile(cur_fd_, cur_pos_, &faults_);
    SetFailed(what + " failed: " + ErrnoText(err));
    for (Writer* w : ok) {
      w->seqs.clear();
      w->error = std::make_exception_ptr(
          Error(ErrorKind::kFailed, "the " + what + " of this batch failed (" + ErrnoText(err) +
                                        "); it was not stored and the store refuses further "
                                        "writes until it is reopened"));
    }
  };
  if (int err = WriteAt(cur_fd_, out->data(), out->size(), cur_pos_, &faults_)) {
    fail_all("write", err);
    return;
  }
  if (sync_ == SyncMode::kAlways) {
    if (int err = SyncFile(cur_fd_, &faults_)) {
      fail_all("fsync", err);
      return;
    }
    ++fsyncs_;
  } else {
    dirty_ = true;
  }
  cur_pos_ += out->size();
  for (Writer* w : ok) w->committed = true;
  // Apply by decoding the bytes just written: one code path for replay and append.
  std::unique_lock<std::shared_mutex> lk(state_mu_);
  std::vector<EntryView> views;
  for (Writer* w : ok) {
    DecodeBatch(reinterpret_cast<const uint8_t*>(w->frame.data()) + kFrameHeaderSize,
                w->frame.size() - kFrameHeaderSize, &views);
    for (const EntryView& e : views) state_->Apply(e);
    ++frames_;
  }
}

void Log::CreateSegment(const SegmentHeader& h) {
  std::string tmp = dir_ + "/" + SegmentName(h.number) + ".tmp";
  int fd = OpenFile(tmp, O_RDWR | O_CREAT | O_TRUNC);
  if (fd < 0) Fail(ErrorKind::kIo, "cannot create " + tmp + ": " + ErrnoText(errno));
  std::string bytes = EncodeSegmentHeader(h);
  int err = WriteAt(fd, bytes.data(), bytes.size(), 0, &faults_);
  if (!err) err = SyncFile(fd, &faults_);
  ::close(fd);
  if (!err) err = RenameFile(tmp, SegPath(h.number));
  if (!err) err = SyncDir(dir_);
  if (err) {
    UnlinkFile(tmp);
    Fail(ErrorKind::kIo, "cannot create segment " + SegPath(h.number) + ": " + ErrnoText(err));
  }
}

void Log::MaybeRotate() {
  // Full, or written by an older format version (never appended to in place).
  if (cur_pos_ < segment_bytes_ && cur_version_ == kFormatVersion) return;
  if (sync_ != SyncMode::kAlways) {
    if (int err = SyncFile(cur_fd_, &faults_)) {
      SetFailed("fsync failed: " + ErrnoText(err));
      Fail(ErrorKind::kFailed, "fsync of the full segment failed: " + ErrnoText(err));
    }
  }
  SegmentHeader h;
  h.number = cur_num_ + 1;
  h.seq_floor = state_->last_seq();
  h.generation = generation_;
  CreateSegment(h);
  int fd = OpenFile(SegPath(h.number), O_RDWR);
  if (fd < 0) Fail(ErrorKind::kIo, "cannot open the new segment: " + ErrnoText(errno));
  ::close(cur_fd_);
  cur_fd_ = fd;
  cur_num_ = h.number;
  cur_pos_ = kSegmentHeaderSize;
  cur_version_ = kFormatVersion;
  segments_.push_back(h.number);
  recovery_.segments = segments_.size();
}

// --- background fsync ---------------------------------------------------------------------

void Log::SyncLoop() {
  std::unique_lock<std::mutex> lk(bg_mu_);
  while (!stop_) {
    bg_cv_->wait_for(lk, std::chrono::milliseconds(interval_ms_));
    if (stop_) break;
    if (!dirty_.exchange(false)) continue;
    lk.unlock();
    int fd = -1;
    {
      std::lock_guard<std::mutex> io(io_mu_);
      if (!closed_ && cur_fd_ >= 0) fd = ::dup(cur_fd_);
    }
    if (fd >= 0) {
      if (int err = SyncFile(fd, &faults_)) {
        SetFailed("background fsync failed: " + ErrnoText(err));
      } else {
        ++fsyncs_;
      }
      ::close(fd);
    }
    lk.lock();
  }
}

// --- compaction ---------------------------------------------------------------------------

CompactResult Log::Compact() {
  CheckOpen();
  std::lock_guard<std::mutex> io(io_mu_);
  CheckWritable();
  FileLock file_lock(this);
  RefreshLocked(true);
  // Make what was appended durable before the rewrite, which may take seconds: the flusher of
  // "interval" mode waits for the I/O lock held here, and writes acknowledged before the
  // compaction would otherwise stay unsynced (and be lost to a power loss) until it ends.
  if (sync_ != SyncMode::kAlways && dirty_.exchange(false)) {
    if (int err = SyncFile(cur_fd_, &faults_)) {
      SetFailed("fsync failed: " + ErrnoText(err));
      Fail(ErrorKind::kFailed, "fsync before the compaction failed (" + ErrnoText(err) +
                                   "); the store refuses writes until it is reopened");
    }
    ++fsyncs_;
  }

  CompactResult res;
  const std::string tmp = dir_ + "/compact.tmp";
  int out = OpenFile(tmp, O_RDWR | O_CREAT | O_TRUNC);
  if (out < 0) Fail(ErrorKind::kIo, "cannot create " + tmp + ": " + ErrnoText(errno));
  SegmentHeader h;
  h.number = cur_num_ + 1;
  h.replaces = cur_num_;
  h.seq_floor = state_->last_seq();
  h.generation = generation_ + 1;
  std::string batch;
  uint32_t batch_count = 0;
  uint64_t out_pos = 0;
  int err = 0;
  auto put = [&](const std::string& bytes) {
    if (!err) err = WriteAt(out, bytes.data(), bytes.size(), out_pos, &faults_);
    out_pos += bytes.size();
  };
  auto flush = [&] {
    if (!batch_count) return;
    std::memcpy(&batch[kFrameHeaderSize], &batch_count, 4);
    SealFrame(&batch);
    put(batch);
    ++res.records_after;
    batch_count = 0;
  };
  put(EncodeSegmentHeader(h));
  {
    std::shared_lock<std::shared_mutex> lk(state_mu_);
    for (uint64_t n : segments_) {
      std::string p = SegPath(n);
      int fd = OpenFile(p, O_RDONLY);
      if (fd < 0) {
        err = errno;
        break;
      }
      SegmentHeader sh = ReadHeader(fd, p);
      uint64_t size = n == cur_num_ ? cur_pos_ : FileSize(fd);
      res.bytes_before += FileSize(fd);
      FrameScanner sc(fd, sh.header_size, size);
      const uint8_t* payload;
      uint32_t len;
      uint64_t off;
      ScanStats st;
      std::vector<EntryView> entries;
      while (sc.Next(&payload, &len, &off, &st, &entries)) {
        ++res.records_before;
        for (const EntryView& e : entries) {
          ++res.entries_before;
          if (!state_->Keep(e)) continue;
          if (!batch_count) batch.assign(kFrameHeaderSize + 4, '\0');
          batch.append(reinterpret_cast<const char*>(e.raw), e.raw_len);
          ++batch_count;
          ++res.entries_after;
          if (batch.size() > (1u << 20)) flush();
        }
      }
      ::close(fd);
    }
  }
  flush();
  if (!err) err = SyncFile(out, &faults_);
  ::close(out);
  // Every vector pack goes before the commit point (a pack may hold vectors this compaction
  // purges); under the file lock no pack is written meanwhile. They are rebuilt on demand.
  if (!err && !RemovePackFiles()) err = EIO;
  if (!err) err = RenameFile(tmp, SegPath(h.number));
  if (err) {
    UnlinkFile(tmp);
    Fail(ErrorKind::kIo, "compaction failed: " + ErrnoText(err) + "; the store is unchanged");
  }
  // The rename was the commit point. Make it durable, then drop the replaced segments. A
  // directory fsync that fails leaves the compaction (and every write appended after it, to
  // the new segment) at the mercy of a power loss: the Log fails, as for a failed fsync.
  int derr = SyncDir(dir_);
  if (!derr) {
    for (uint64_t n : segments_) UnlinkFile(SegPath(n));
    derr = SyncDir(dir_);
  }
  dirty_ = false;
  if (derr) {
    SetFailed("directory fsync failed: " + ErrnoText(derr));
    try {
      LoadAll(true);  // reads see the committed compaction
    } catch (...) {
    }
    Fail(ErrorKind::kFailed, "the compaction was committed but its directory fsync failed (" +
                                 ErrnoText(derr) +
                                 "); the store refuses writes until it is reopened");
  }
  LoadAll(true);
  res.bytes_after = out_pos;
  return res;
}

void Log::Flush() {
  CheckOpen();
  std::lock_guard<std::mutex> io(io_mu_);
  CheckWritable();
  dirty_ = false;
  if (int err = SyncFile(cur_fd_, &faults_)) {
    SetFailed("fsync failed: " + ErrnoText(err));
    Fail(ErrorKind::kFailed, "fsync failed (" + ErrnoText(err) +
                                 "); the store refuses writes until it is reopened");
  }
}

// --- reporting ----------------------------------------------------------------------------

Recovery Log::recovery() {
  std::lock_guard<std::mutex> io(io_mu_);
  return recovery_;
}

uint64_t Log::last_seq() {
  RefreshForRead();
  std::shared_lock<std::shared_mutex> lk(state_mu_);
  return state_->last_seq();
}

uint32_t Log::generation() {
  RefreshForRead();
  std::lock_guard<std::mutex> io(io_mu_);
  return generation_;
}

LogStats Log::Stats() {
  RefreshForRead();
  std::lock_guard<std::mutex> io(io_mu_);
  std::shared_lock<std::shared_mutex> lk(state_mu_);
  LogStats s;
  s.users = state_->user_count();
  s.memories = state_->live_total();
  s.pending = state_->pending_count();
  s.entries = state_->entries();
  s.skipped_entries = state_->skipped();
  s.records = frames_;
  s.segments = segments_.size();
  s.last_seq = state_->last_seq();
  s.generation = generation_;
  s.fsyncs = fsyncs_.load();
  for (uint64_t n : segments_) {
    struct stat st;
    if (::stat(SegPath(n).c_str(), &st) == 0) s.bytes += static_cast<uint64_t>(st.st_size);
  }
  return s;
}

std::vector<std::string> Log::LiveSegmentPaths() {
  RefreshForRead();
  std::lock_guard<std::mutex> io(io_mu_);
  std::vector<std::string> out;
  for (uint64_t n : segments_) out.push_back(SegPath(n));
  return out;
}

// --- RecordReader -------------------------------------------------------------------------

RecordReader::RecordReader(std::vector<std::string> paths) {
  for (const std::string& p : paths) {
    int fd = OpenFile(p, O_RDONLY);
    if (fd < 0) {
      for (int f : fds_) ::close(f);
      fds_.clear();
      Fail(ErrorKind::kIo, "cannot open " + p + ": " + ErrnoText(errno) +
                               " (compacted meanwhile? call records() again)");
    }
    fds_.push_back(fd);
  }
}

RecordReader::~RecordReader() {
  for (int f : fds_) ::close(f);
}

bool RecordReader::Advance() {
  for (;;) {
    if (scanner_) {
      const uint8_t* payload;
      uint32_t len;
      uint64_t off;
      if (scanner_->Next(&payload, &len, &off, &stats_, &views_)) {
        vi_ = 0;
        return true;
      }
      scanner_.reset();
      ++idx_;
    }
    if (idx_ >= fds_.size()) return false;
    SegmentHeader h = ReadHeader(fds_[idx_], "segment");
    scanner_ = std::make_unique<FrameScanner>(fds_[idx_], h.header_size, FileSize(fds_[idx_]));
  }
}

bool RecordReader::Next(EntryOwned* out) {
  while (!scanner_ || vi_ >= views_.size()) {
    if (!Advance()) return false;
  }
  const EntryView& e = views_[vi_++];
  out->seq = e.seq;
  out->ts = e.ts;
  out->created_at = e.created_at;
  out->op = e.op;
  out->category = e.category;
  out->source = e.source;
  out->user.assign(e.user);
  out->id.assign(e.id);
  out->text.assign(e.text);
  out->meta.assign(e.meta);
  out->model.assign(e.model);
  out->has_vec = e.vec != nullptr;
  out->vec.resize(e.dim);
  if (e.dim) std::memcpy(out->vec.data(), e.vec, static_cast<size_t>(e.dim) * 4);
  return true;
}

}  // namespace headroom
