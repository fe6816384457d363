// The live state replayed from the log: per user, the memories (current version, history,
// tombstones), the live vectors as rows pointing at their bytes, and a label index; plus
// pending jobs and config. Not thread-safe by itself: Log guards it with a shared_mutex.
//
// Zero-copy replay: texts, ids and vectors are views of the entry bytes they came from. Those
// bytes are either a segment mapping the State pins (Pin) or a copy in the State's Arena, so
// every view stays valid for the life of the State, whatever happens to the files.
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <string_view>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "arena.h"
#include "format.h"
#include "vecpack.h"

namespace headroom {

struct Version {
  uint64_t seq = 0;
  int64_t ts = 0;
  uint8_t op = 0;
  uint8_t category = 0;
  uint8_t source = 0;
  uint32_t number = 0;  // version number (1-based) this entry belongs to
  std::string_view text;  // empty for DELETE/CLEAR/REVECTOR (they carry the previous content)
  std::string_view meta;
  uint32_t model = 0;   // index into State::models_
};

// A memory's versions, oldest first: the first inline (most memories never get a second, and
// replay then makes no allocation for them), later ones on the heap.
class VersionList {
 public:
  size_t size() const { return n_; }
  const Version& operator[](size_t i) const { return i == 0 ? first_ : rest_[i - 1]; }
  void push_back(const Version& v) {
    if (n_ == 0) {
      first_ = v;
    } else {
      rest_.push_back(v);
    }
    ++n_;
  }
  void clear() {
    first_ = Version{};
    std::vector<Version>().swap(rest_);
    n_ = 0;
  }

 private:
  Version first_;
  std::vector<Version> rest_;
  uint32_t n_ = 0;
};

// label -> index in User::mems for the live labels. Labels are seqs, so they arrive in
// increasing order: a sorted vector (append, binary search), removals marked and swept when
// they are the majority.
class LabelIndex {
 public:
  void Add(uint64_t label, uint32_t mem) {
    if (!items_.empty() && items_.back().first >= label) return;  // cannot happen (seq order)
    items_.emplace_back(label, mem);
  }
  void Erase(uint64_t label) {
    auto it = Lower(label);
    if (it == items_.end() || it->first != label || it->second == kGone) return;
    it->second = kGone;
    if (++gone_ > 64 && gone_ * 2 > items_.size()) Sweep();
  }
  // The mem of a live label, or -1.
  int64_t Find(uint64_t label) const {
    auto it = std::lower_bound(items_.begin(), items_.end(), label,
                               [](const std::pair<uint64_t, uint32_t>& a, uint64_t b) {
                                 return a.first < b;
                               });
    if (it == items_.end() || it->first != label || it->second == kGone) return -1;
    return it->second;
  }

 private:
  static constexpr uint32_t kGone = UINT32_MAX;
  std::vector<std::pair<uint64_t, uint32_t>>::iterator Lower(uint64_t label) {
    return std::lower_bound(items_.begin(), items_.end(), label,
                            [](const std::pair<uint64_t, uint32_t>& a, uint64_t b) {
                              return a.first < b;
                            });
  }
  void Sweep() {
    items_.erase(std::remove_if(items_.begin(), items_.end(),
                                [](const std::pair<uint64_t, uint32_t>& a) {
                                  return a.second == kGone;
                                }),
                 items_.end());
    gone_ = 0;
  }
  std::vector<std::pair<uint64_t, uint32_t>> items_;
  size_t gone_ = 0;
};

struct Mem {
  std::string_view id;
  int64_t created_at = 0;
  VersionList versions;
  uint64_t label = 0;      // seq of the entry that set the live content or vector
  uint64_t first_seq = 0;  // seq of the ADD that started this memory
  int32_t row = -1;        // row in User::rows, -1 when it has no live vector
  uint32_t cur = 0;        // index in versions of the live content (ADD/UPDATE)
  uint32_t model = 0;      // model of the live vector
  bool live = false;
  bool purged = false;
};

// id -> index in User::mems for every unpurged memory. Open addressing (linear probing,
// backward-shift deletion, load <= 1/2) over (hash, mem index) slots; the ids themselves are
// the mems' views, so an insert allocates nothing but an occasional doubling.
class IdIndex {
 public:
  // The mem index of `id`, or -1.
  int64_t Find(std::string_view id, const std::vector<Mem>& mems) const;
  // Adds `id` (which must be absent) for mems[mem].
  void Insert(std::string_view id, uint32_t mem, const std::vector<Mem>& mems);
  // Removes `id` if present.
  void Erase(std::string_view id, const std::vector<Mem>& mems);

 private:
  struct Slot {
    uint32_t hash;
    uint32_t mem;  // kEmpty when free
  };
  static constexpr uint32_t kEmpty = UINT32_MAX;
  static uint32_t Hash(std::string_view id);
  size_t Locate(std::string_view id, uint32_t h, const std::vector<Mem>& mems) const;
  void Grow();
  std::vector<Slot> slots_;  // size 0 or a power of two
  size_t n_ = 0;
};

struct Row {
  const float* vec;  // dim floats (little-endian, possibly unaligned) in a pinned mapping or arena
  uint64_t label;
  int64_t created_at;
  uint32_t mem;
  uint8_t category;
};

struct User {
  IdIndex by_id;                                    // every unpurged memory
  std::vector<Mem> mems;                            // in creation order (purged = holes)
  LabelIndex by_label;                              // live labels
  uint32_t dim = 0;
  std::vector<Row> rows;  // the live vectors, in no particular order
  // Where rows point besides the segment mappings and the arena: mapped vector packs
  // (State::AttachPack) and a private contiguous copy (State::Pack, when no pack can be
  // written); each is dropped once no row points into it.
  std::vector<std::shared_ptr<const Mapping>> packs;
  std::vector<float> packed;
  size_t loose = 0;  // rows whose vectors lie scattered (not in a pack or the packed copy)
  uint64_t last_seq = 0;
  size_t live = 0;
  std::vector<std::pair<uint64_t, uint64_t>> removed;  // (seq of removal, label)
};

struct Job {
  std::string id, user, text;
  int64_t created_at = 0;
  uint64_t seq = 0;
};

// A memory (or a history item) copied out of the state.
struct MemOut {
  std::string id, user, text, meta, model;
  uint8_t category = 0, source = 0, op = 0;
  int64_t created_at = 0, updated_at = 0;
  uint64_t seq = 0;
  uint32_t version = 0;
};

struct Hit {
  std::string id;
  float score;
};

class State {
 public:
  // Applies one decoded entry. Entries whose seq is not above last_seq, or which do not make
  // sense against the state (never written by this library), are skipped and counted.
  // `pinned`: e's bytes lie in a mapping passed to Pin() (kept as views); otherwise the bytes
  // the state keeps are copied into its arena first.
  void Apply(const EntryView& e, bool pinned = false);
  // Keeps a mapping alive as long as this State: entries applied with pinned=true point into it.
  void Pin(std::shared_ptr<const Mapping> m) { pins_.push_back(std::move(m)); }
  void NoteSeqFloor(uint64_t floor) {
    if (floor > last_seq_) last_seq_ = floor;
  }

  uint64_t last_seq() const { return last_seq_; }
  uint64_t entries() const { return entries_; }
  uint64_t skipped() const { return skipped_; }
  size_t live_total() const;
  size_t user_count() const { return users_.size(); }
  size_t pending_count() const { return jobs_.size(); }

  const User* FindUser(const std::string& user) const;
  const Mem* FindMem(const std::string& user, const std::string& id) const;
  bool JobPending(const std::string& id) const { return job_by_id_.count(id) > 0; }

  // Queries.
  std::optional<MemOut> Get(const std::string& user, const std::string& id) const;
  std::vector<MemOut> List(const std::string& user, uint32_t categories, int64_t t_min,
                           int64_t t_max) const;
  std::vector<MemOut> History(const std::string& user, const std::string& id) const;
  std::vector<std::string> Users() const;
  std::vector<Hit> Search(const std::string& user, const float* q, uint32_t dim, size_t k,
                          uint32_t categories, int64_t t_min, int64_t t_max) const;
  // Whether exact search would gain from Pack: enough of the user's live vectors lie scattered
  // (in the segment mappings or the arena, one page walk each) rather than in one block.
  bool NeedsPack(const std::string& user) const;
  // Copies the user's live vectors into one contiguous block the user owns and points the rows
  // at it (the previous block is freed: nothing else points into it). The fallback of
  // AttachPack, when no pack file can be written (a read-only store, a full disk).
  void Pack(const std::string& user);
  // Points every row of `user` whose label `view` holds at the pack's copy of its vector and
  // keeps `map` (which holds view's bytes) alive while a row points into it; returns how many
  // rows point into the pack. Does nothing (returns 0) when the pack is of another user or
  // another dim. Correct for any pack whose CRC holds: a label names one vector forever.
  size_t AttachPack(const std::string& user, std::shared_ptr<const Mapping> map,
                    const PackView& view);
  // The user's live (label, vector) rows sorted by label, for writing a pack; *dim and *seq
  // (the user's last seq) describe them. Empty for an unknown user.
  std::vector<std::pair<uint64_t, const float*>> PackRows(const std::string& user, uint32_t* dim,
                                                          uint64_t* seq) const;
  uint32_t Vectors(const std::string& user, std::vector<uint64_t>* labels,
                   std::vector<float>* vecs) const;
  // The sum of the user's live vectors, in double precision (zeros of the user's dimension, or
  // empty for an unknown user), and how many were summed; *seq is the user's last seq, the
  // point the sum is exact at (every live label is <= it).
  size_t VectorSum(const std::string& user, std::vector<double>* sum, uint64_t* seq) const;
  uint32_t Changes(const std::string& user, uint64_t since, std::vector<uint64_t>* removed,
                   std::vector<uint64_t>* added, std::vector<float>* vecs) const;
  std::vector<std::optional<std::tuple<std::string, uint8_t, int64_t>>> Resolve(
      const std::string& user, const std::vector<uint64_t>& labels) const;
  std::vector<Job> Pending() const;
  std::map<std::string, std::string> Config() const;

  // Compaction: whether a record's entry is still needed to rebuild this state.
  bool Keep(const EntryView& e) const;

 private:
  User* GetUser(std::string_view name, bool create);
  // The live memory an UPDATE/REVECTOR/DELETE names: sets *user and *mi, records the entry's
  // seq on the user and returns true; counts the entry as skipped and returns false otherwise.
  // The ops of Apply, one each (e is already rebased when the state keeps its bytes).
  void ApplyAdd(const EntryView& e, const float* vec);
  void ApplyNewVersion(const EntryView& e, const float* vec);  // UPDATE and REVECTOR
  void ApplyDelete(const EntryView& e);
  void ApplyClear(const EntryView& e);
  void ApplyPurge(const EntryView& e);
  void ApplyPending(const EntryView& e);
  void ApplyDone(const EntryView& e);
  bool FindLive(const EntryView& e, User** user, uint32_t* mi);
  uint32_t Model(std::string_view model);
  void AddRow(User* u, uint32_t mi, const float* v, uint32_t dim);
  // Removes the live label of a memory (and its row), recording the removal at `seq`;
  // returns the row's vector (nullptr when it had none).
  const float* Unlabel(User* u, uint32_t mi, uint64_t seq);
  void DropJobsOf(const std::string& user);
  MemOut Out(const std::string& user, const Mem& m, size_t vi) const;

  std::vector<std::shared_ptr<const Mapping>> pins_;  // before users_: destroyed after them
  Arena arena_;
  std::unordered_map<std::string, std::unique_ptr<User>> users_;
  std::map<uint64_t, Job> jobs_;
  std::unordered_map<std::string, uint64_t> job_by_id_;
  std::map<std::string, std::pair<std::string, uint64_t>> config_;
  std::vector<std::string> models_{""};
  std::unordered_map<std::string, uint32_t> model_idx_{{"", 0}};
  uint32_t last_model_ = 0;  // the model of the last Model() call
  uint64_t last_seq_ = 0;
  uint64_t entries_ = 0;
  uint64_t skipped_ = 0;
  std::string last_user_name_;
  User* last_user_ = nullptr;
};

// Checks the meaning of entries against the state plus the entries accepted before them in
// the same commit group (an overlay), without changing the state. Throws Error(kNotFound /
// kInvalidInput / kInvalidVector). Copy it to try a batch and keep the copy on success.
class Validator {
 public:
  explicit Validator(const State* state) : state_(state) {}
  void Check(const EntryIn& e);

 private:
  struct UserOv {
    bool cleared = false;  // every memory of the state is dead
    bool purged = false;   // every memory of the state is gone
    uint32_t dim = 0;      // dim fixed by a vector earlier in the group (user had none live)
    std::unordered_map<std::string, int8_t> mems;  // 1 live, 0 dead, 2 gone
  };
  int8_t MemStatus(const std::string& user, const std::string& id);  // 1, 0, 2 (absent)
  const State* state_;
  std::unordered_map<std::string, UserOv> users_;
  std::unordered_set<std::string> jobs_;
};

}  // namespace headroom
