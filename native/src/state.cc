#include "state.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "dot.h"
#include "errors.h"

namespace headroom {

// --- IdIndex ----------------------------------------------------------------------------

uint32_t IdIndex::Hash(std::string_view id) {
  return static_cast<uint32_t>(std::hash<std::string_view>()(id));
}

size_t IdIndex::Locate(std::string_view id, uint32_t h, const std::vector<Mem>& mems) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.mem == kEmpty || (s.hash == h && mems[s.mem].id == id)) return i;
  }
}

int64_t IdIndex::Find(std::string_view id, const std::vector<Mem>& mems) const {
  if (n_ == 0) return -1;
  const Slot& s = slots_[Locate(id, Hash(id), mems)];
  return s.mem == kEmpty ? -1 : static_cast<int64_t>(s.mem);
}

void IdIndex::Grow() {
  std::vector<Slot> old(slots_.empty() ? 16 : slots_.size() * 2, Slot{0, kEmpty});
  old.swap(slots_);
  const size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.mem == kEmpty) continue;
    size_t i = s.hash & mask;
    while (slots_[i].mem != kEmpty) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

void IdIndex::Insert(std::string_view id, uint32_t mem, const std::vector<Mem>& mems) {
  if ((n_ + 1) * 2 > slots_.size()) Grow();
  const uint32_t h = Hash(id);
  size_t i = Locate(id, h, mems);
  if (slots_[i].mem != kEmpty) return;  // present already: the caller checked it is not
  slots_[i] = Slot{h, mem};
  ++n_;
}

void IdIndex::Erase(std::string_view id, const std::vector<Mem>& mems) {
  if (n_ == 0) return;
  const size_t mask = slots_.size() - 1;
  size_t i = Locate(id, Hash(id), mems);
  if (slots_[i].mem == kEmpty) return;
  // Backward-shift deletion: move later members of the probe run into the hole when their
  // home slot is at or before it (cyclically), so no tombstones are needed.
  for (size_t j = (i + 1) & mask; slots_[j].mem != kEmpty; j = (j + 1) & mask) {
    const size_t home = slots_[j].hash & mask;
    const bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
    if (movable) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i] = Slot{0, kEmpty};
  --n_;
}

// --- apply ------------------------------------------------------------------------------

User* State::GetUser(std::string_view name, bool create) {
  if (last_user_ && last_user_name_ == name) return last_user_;
  std::string key(name);
  auto it = users_.find(key);
  if (it == users_.end()) {
    if (!create) return nullptr;
    it = users_.emplace(key, std::make_unique<User>()).first;
  }
  last_user_name_ = std::move(key);
  last_user_ = it->second.get();
  return last_user_;
}

uint32_t State::Model(std::string_view model) {
  if (model.empty()) return 0;
  if (model == models_[last_model_]) return last_model_;  // replay: mostly one model
  std::string key(model);
  auto it = model_idx_.find(key);
  if (it != model_idx_.end()) return last_model_ = it->second;
  uint32_t idx = static_cast<uint32_t>(models_.size());
  models_.push_back(key);
  model_idx_.emplace(std::move(key), idx);
  return last_model_ = idx;
}

void State::AddRow(User* u, uint32_t mi, const float* v, uint32_t dim) {
  Mem& m = u->mems[mi];
  if (u->rows.empty()) {
    u->dim = dim;
  } else if (u->dim != dim) {
    ++skipped_;  // a vector of another dim than the user's live ones: never written by us
    return;
  }
  m.row = static_cast<int32_t>(u->rows.size());
  u->rows.push_back(Row{v, m.label, m.created_at, mi, m.versions[m.cur].category});
  ++u->loose;
}

bool State::FindLive(const EntryView& e, User** user, uint32_t* mi) {
  User* u = GetUser(e.user, false);
  const int64_t found = u ? u->by_id.Find(e.id, u->mems) : -1;
  if (found < 0 || !u->mems[static_cast<size_t>(found)].live) {
    ++skipped_;  // an op on a memory that is not live: replay skips it
    return false;
  }
  u->last_seq = e.seq;
  *user = u;
  *mi = static_cast<uint32_t>(found);
  return true;
}

const float* State::Unlabel(User* u, uint32_t mi, uint64_t seq) {
  Mem& m = u->mems[mi];
  u->by_label.Erase(m.label);
  u->removed.emplace_back(seq, m.label);
  if (m.row < 0) return nullptr;
  size_t r = static_cast<size_t>(m.row);
  const float* vec = u->rows[r].vec;
  size_t last = u->rows.size() - 1;
  if (r != last) {
    u->rows[r] = u->rows[last];
    u->mems[u->rows[r].mem].row = static_cast<int32_t>(r);
  }
  u->rows.pop_back();
  m.row = -1;
  return vec;
}

void State::DropJobsOf(const std::string& user) {
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    if (it->second.user == user) {
      job_by_id_.erase(it->second.id);
      it = jobs_.erase(it);
    } else {
      ++it;
    }
  }
}

namespace {

// The entry's views moved from its bytes at e.raw to the same bytes at `to`.
EntryView Rebase(const EntryView& e, const uint8_t* to) {
  auto move = [&](std::string_view v) {
    if (v.empty()) return std::string_view();
    return std::string_view(reinterpret_cast<const char*>(to) +
                                (reinterpret_cast<const uint8_t*>(v.data()) - e.raw),
                            v.size());
  };
  EntryView o = e;
  o.user = move(e.user);
  o.id = move(e.id);
  o.text = move(e.text);
  o.meta = move(e.meta);
  o.model = move(e.model);
  if (e.vec) o.vec = to + (e.vec - e.raw);
  o.raw = to;
  return o;
}

}  // namespace

void State::Apply(const EntryView& in, bool pinned) {
  if (in.seq <= last_seq_) {
    ++skipped_;
    return;
  }
  last_seq_ = in.seq;
  ++entries_;
  // Only these ops keep views of the entry's bytes in the state.
  const bool keeps = in.op == kAdd || in.op == kUpdate || in.op == kRevector;
  const EntryView e = keeps && !pinned ? Rebase(in, arena_.Copy(in.raw, in.raw_len)) : in;
  const float* vec = reinterpret_cast<const float*>(e.vec);
  switch (e.op) {
    case kAdd:
      return ApplyAdd(e, vec);
    case kUpdate:
    case kRevector:
      return ApplyNewVersion(e, vec);
    case kDelete:
      return ApplyDelete(e);
    case kClear:
      return ApplyClear(e);
    case kPurge:
      return ApplyPurge(e);
    case kPending:
      return ApplyPending(e);
    case kDone:
      return ApplyDone(e);
    case kConfig:
      config_[std::string(e.id)] = {std::string(e.text), e.seq};
      return;
    default:
      ++skipped_;
  }
}

void State::ApplyAdd(const EntryView& e, const float* vec) {
  User* u = GetUser(e.user, true);
  u->last_seq = e.seq;
  if (u->by_id.Find(e.id, u->mems) >= 0) {
    ++skipped_;
    return;
  }
  uint32_t mi = static_cast<uint32_t>(u->mems.size());
  u->mems.emplace_back();
  Mem& m = u->mems.back();
  m.id = e.id;
  m.created_at = e.created_at;
  m.label = e.seq;
  m.first_seq = e.seq;
  m.live = true;
  m.model = Model(e.model);
  m.versions.push_back(Version{e.seq, e.ts, kAdd, e.category, e.source, 1, e.text, e.meta,
                               m.model});
  u->by_id.Insert(e.id, mi, u->mems);
  u->by_label.Add(e.seq, mi);
  ++u->live;
  if (vec) AddRow(u, mi, vec, e.dim);
}

void State::ApplyNewVersion(const EntryView& e, const float* vec) {
  User* u = nullptr;
  uint32_t mi = 0;
  if (!FindLive(e, &u, &mi)) return;
  const uint32_t old_dim = u->dim;
  const float* saved = Unlabel(u, mi, e.seq);
  Mem& m = u->mems[mi];
  const Version& cur = m.versions[m.cur];
  Version v{e.seq, e.ts, e.op, cur.category, cur.source, cur.number, {}, {}, cur.model};
  if (e.op == kUpdate) {
    if (e.category) v.category = e.category;
    if (e.source) v.source = e.source;
    v.number = cur.number + 1;
    v.text = e.text;
    v.meta = e.meta.empty() ? cur.meta : e.meta;
    if (e.created_at) m.created_at = e.created_at;
  }
  if (e.vec) m.model = Model(e.model);
  if (e.op == kUpdate) v.model = m.model;
  m.versions.push_back(v);
  if (e.op == kUpdate) m.cur = static_cast<uint32_t>(m.versions.size() - 1);
  m.label = e.seq;
  u->by_label.Add(e.seq, mi);
  if (vec) {
    AddRow(u, mi, vec, e.dim);
  } else if (saved) {
    AddRow(u, mi, saved, old_dim);
  }
}

void State::ApplyDelete(const EntryView& e) {
  User* u = nullptr;
  uint32_t mi = 0;
  if (!FindLive(e, &u, &mi)) return;
  Unlabel(u, mi, e.seq);
  Mem& m = u->mems[mi];
  m.live = false;
  --u->live;
  const Version& cur = m.versions[m.cur];
  m.versions.push_back(
      Version{e.seq, e.ts, kDelete, cur.category, cur.source, cur.number, {}, {}, cur.model});
}

void State::ApplyClear(const EntryView& e) {
  User* u = GetUser(e.user, false);
  if (!u) return;
  u->last_seq = e.seq;
  for (uint32_t mi = 0; mi < u->mems.size(); ++mi) {
    Mem& m = u->mems[mi];
    if (!m.live) continue;
    Unlabel(u, mi, e.seq);
    m.live = false;
    const Version& cur = m.versions[m.cur];
    m.versions.push_back(
        Version{e.seq, e.ts, kClear, cur.category, cur.source, cur.number, {}, {}, cur.model});
  }
  u->live = 0;
}

void State::ApplyPurge(const EntryView& e) {
  std::string user(e.user);
  DropJobsOf(user);
  if (e.id.empty()) {
    last_user_ = nullptr;
    users_.erase(user);
    return;
  }
  User* u = GetUser(e.user, false);
  if (!u) return;
  u->last_seq = e.seq;
  const int64_t found = u->by_id.Find(e.id, u->mems);
  if (found < 0) return;
  const uint32_t mi = static_cast<uint32_t>(found);
  Mem& m = u->mems[mi];
  if (m.live) {
    Unlabel(u, mi, e.seq);
    --u->live;
  }
  u->by_id.Erase(e.id, u->mems);
  m.live = false;
  m.purged = true;
  m.id = {};
  m.versions.clear();
}

void State::ApplyPending(const EntryView& e) {
  std::string id(e.id);
  if (job_by_id_.count(id)) {
    ++skipped_;
    return;
  }
  if (User* u = GetUser(e.user, true)) u->last_seq = e.seq;
  job_by_id_.emplace(id, e.seq);
  jobs_.emplace(e.seq, Job{id, std::string(e.user), std::string(e.text), e.created_at, e.seq});
}

void State::ApplyDone(const EntryView& e) {
  auto it = job_by_id_.find(std::string(e.id));
  if (it == job_by_id_.end()) return;
  jobs_.erase(it->second);
  job_by_id_.erase(it);
}

// --- queries ----------------------------------------------------------------------------

size_t State::live_total() const {
  size_t n = 0;
  for (const auto& kv : users_) n += kv.second->live;
  return n;
}

const User* State::FindUser(const std::string& user) const {
  auto it = users_.find(user);
  return it == users_.end() ? nullptr : it->second.get();
}

const Mem* State::FindMem(const std::string& user, const std::string& id) const {
  const User* u = FindUser(user);
  if (!u) return nullptr;
  const int64_t mi = u->by_id.Find(id, u->mems);
  return mi < 0 ? nullptr : &u->mems[static_cast<size_t>(mi)];
}

MemOut State::Out(const std::string& user, const Mem& m, size_t vi) const {
  // The content of item vi: its own for ADD/UPDATE, else the last content version before it.
  size_t ci = vi;
  while (ci > 0 && m.versions[ci].op != kAdd && m.versions[ci].op != kUpdate) --ci;
  const Version& v = m.versions[vi];
  const Version& c = m.versions[ci];
  MemOut o;
  o.id = m.id;
  o.user = user;
  o.text = c.text;
  o.meta = c.meta;
  o.category = v.category;
  o.source = v.source;
  o.op = v.op;
  o.created_at = m.created_at;
  o.updated_at = v.ts;
  o.seq = v.seq;
  o.version = v.number;
  o.model = models_[v.model];
  return o;
}

std::optional<MemOut> State::Get(const std::string& user, const std::string& id) const {
  const Mem* m = FindMem(user, id);
  if (!m || !m->live) return std::nullopt;
  MemOut o = Out(user, *m, m->cur);
  o.seq = m->label;
  o.model = models_[m->model];
  return o;
}

std::vector<MemOut> State::List(const std::string& user, uint32_t categories, int64_t t_min,
                                int64_t t_max) const {
  std::vector<MemOut> out;
  const User* u = FindUser(user);
  if (!u) return out;
  for (const Mem& m : u->mems) {
    if (!m.live) continue;
    uint8_t cat = m.versions[m.cur].category;
    if (categories && !(categories & (1u << cat))) continue;
    if (m.created_at < t_min || m.created_at > t_max) continue;
    MemOut o = Out(user, m, m.cur);
    o.seq = m.label;
    o.model = models_[m.model];
    out.push_back(std::move(o));
  }
  return out;
}

std::vector<MemOut> State::History(const std::string& user, const std::string& id) const {
  std::vector<MemOut> out;
  const Mem* m = FindMem(user, id);
  if (!m) return out;
  for (size_t i = 0; i < m->versions.size(); ++i) out.push_back(Out(user, *m, i));
  return out;
}

std::vector<std::string> State::Users() const {
  std::vector<std::string> out;
  out.reserve(users_.size());
  for (const auto& kv : users_) out.push_back(kv.first);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<Hit> State::Search(const std::string& user, const float* q, uint32_t dim, size_t k,
                               uint32_t categories, int64_t t_min, int64_t t_max) const {
  std::vector<Hit> out;
  const User* u = FindUser(user);
  if (!u || u->rows.empty() || k == 0) return out;
  if (dim != u->dim)
    Fail(ErrorKind::kInvalidVector, "query has dim " + std::to_string(dim) +
                                        "; this user's vectors have dim " + std::to_string(u->dim));
  struct Cand {
    float score;
    uint64_t label;
    uint32_t row;
  };
  // "Worse" first in the heap: lower score, or equal score and newer label.
  auto worse = [](const Cand& a, const Cand& b) {
    return a.score != b.score ? a.score > b.score : a.label < b.label;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  const size_t n = u->rows.size();
  for (size_t r = 0; r < n; ++r) {
    const Row& row = u->rows[r];
    if (categories && !(categories & (1u << row.category))) continue;
    if (row.created_at < t_min || row.created_at > t_max) continue;
    float s = Dot(q, row.vec, dim);
    Cand c{s, row.label, static_cast<uint32_t>(r)};
    if (heap.size() < k) {
      heap.push(c);
    } else if (worse(c, heap.top())) {
      heap.pop();
      heap.push(c);
    }
  }
  std::vector<Cand> cands;
  cands.reserve(heap.size());
  while (!heap.empty()) {
    cands.push_back(heap.top());
    heap.pop();
  }
  std::reverse(cands.begin(), cands.end());
  out.reserve(cands.size());
  for (const Cand& c : cands)
    out.push_back(Hit{std::string(u->mems[u->rows[c.row].mem].id), c.score});
  return out;
}

bool State::NeedsPack(const std::string& user) const {
  const User* u = FindUser(user);
  // Small users are cheap to scan wherever their vectors lie; otherwise pack when more than
  // an eighth are loose (a user receiving a steady trickle of adds repacks rarely).
  return u && u->rows.size() >= 64 && u->loose * 8 > u->rows.size();
}

namespace {

bool Inside(const float* v, const uint8_t* begin, size_t n) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(v);
  return p >= begin && p < begin + n;
}

// Drops the user's packs and packed copy that no row points into any more.
void DropUnused(User* u) {
  auto used = [u](const uint8_t* begin, size_t n) {
    for (const Row& r : u->rows)
      if (Inside(r.vec, begin, n)) return true;
    return false;
  };
  u->packs.erase(std::remove_if(u->packs.begin(), u->packs.end(),
                                [&](const std::shared_ptr<const Mapping>& m) {
                                  return !used(m->data(), m->size());
                                }),
                 u->packs.end());
  if (!u->packed.empty() &&
      !used(reinterpret_cast<const uint8_t*>(u->packed.data()), u->packed.size() * 4))
    std::vector<float>().swap(u->packed);
}

}  // namespace

void State::Pack(const std::string& user) {
  auto it = users_.find(user);
  if (it == users_.end()) return;
  User* u = it->second.get();
  const size_t d = u->dim;
  std::vector<float> block(u->rows.size() * d);
  float* out = block.data();
  for (Row& r : u->rows) {
    std::memcpy(out, r.vec, d * 4);
    r.vec = out;
    out += d;
  }
  u->packed.swap(block);
  u->loose = 0;
  DropUnused(u);
}

size_t State::AttachPack(const std::string& user, std::shared_ptr<const Mapping> map,
                         const PackView& view) {
  auto it = users_.find(user);
  if (it == users_.end() || view.user != user) return 0;
  User* u = it->second.get();
  if (u->rows.empty() || view.dim != u->dim) return 0;
  size_t in = 0;
  for (Row& r : u->rows) {
    if (const float* v = view.Find(r.label)) {
      r.vec = v;
      ++in;
    }
  }
  if (in) u->packs.push_back(std::move(map));
  u->loose = u->rows.size() - in;
  DropUnused(u);
  return in;
}

std::vector<std::pair<uint64_t, const float*>> State::PackRows(const std::string& user,
                                                              uint32_t* dim,
                                                              uint64_t* seq) const {
  std::vector<std::pair<uint64_t, const float*>> out;
  *dim = 0;
  *seq = 0;
  const User* u = FindUser(user);
  if (!u) return out;
  *dim = u->dim;
  *seq = u->last_seq;
  out.reserve(u->rows.size());
  for (const Row& r : u->rows) out.emplace_back(r.label, r.vec);
  std::sort(out.begin(), out.end(),
            [](const std::pair<uint64_t, const float*>& a,
               const std::pair<uint64_t, const float*>& b) { return a.first < b.first; });
  return out;
}

uint32_t State::Vectors(const std::string& user, std::vector<uint64_t>* labels,
                        std::vector<float>* vecs) const {
  const User* u = FindUser(user);
  if (!u) return 0;
  const size_t d = u->dim;
  labels->reserve(u->rows.size());
  vecs->resize(u->rows.size() * d);
  float* out = vecs->data();
  for (const Row& r : u->rows) {
    labels->push_back(r.label);
    std::memcpy(out, r.vec, d * 4);
    out += d;
  }
  return u->dim;
}

size_t State::VectorSum(const std::string& user, std::vector<double>* sum, uint64_t* seq) const {
  *seq = 0;
  const User* u = FindUser(user);
  if (!u) return 0;
  *seq = u->last_seq;
  const size_t d = u->dim;
  sum->assign(d, 0.0);
  double* acc = sum->data();
  for (const Row& r : u->rows)
    for (size_t j = 0; j < d; ++j) {
      float f;  // r.vec may be misaligned (see Row)
      std::memcpy(&f, r.vec + j, sizeof f);
      acc[j] += static_cast<double>(f);
    }
  return u->rows.size();
}

uint32_t State::Changes(const std::string& user, uint64_t since, std::vector<uint64_t>* removed,
                        std::vector<uint64_t>* added, std::vector<float>* vecs) const {
  const User* u = FindUser(user);
  if (!u) return 0;
  for (auto it = u->removed.rbegin(); it != u->removed.rend() && it->first > since; ++it)
    if (it->second <= since) removed->push_back(it->second);
  std::sort(removed->begin(), removed->end());
  for (size_t r = 0; r < u->rows.size(); ++r) {
    if (u->rows[r].label <= since) continue;
    added->push_back(u->rows[r].label);
    size_t at = vecs->size();
    vecs->resize(at + u->dim);
    std::memcpy(vecs->data() + at, u->rows[r].vec, static_cast<size_t>(u->dim) * 4);
  }
  return u->dim;
}

std::vector<std::optional<std::tuple<std::string, uint8_t, int64_t>>> State::Resolve(
    const std::string& user, const std::vector<uint64_t>& labels) const {
  std::vector<std::optional<std::tuple<std::string, uint8_t, int64_t>>> out(labels.size());
  const User* u = FindUser(user);
  if (!u) return out;
  for (size_t i = 0; i < labels.size(); ++i) {
    int64_t mi = u->by_label.Find(labels[i]);
    if (mi < 0) continue;
    const Mem& m = u->mems[static_cast<size_t>(mi)];
    out[i] = std::make_tuple(std::string(m.id), m.versions[m.cur].category, m.created_at);
  }
  return out;
}

std::vector<Job> State::Pending() const {
  std::vector<Job> out;
  out.reserve(jobs_.size());
  for (const auto& kv : jobs_) out.push_back(kv.second);
  return out;
}

std::map<std::string, std::string> State::Config() const {
  std::map<std::string, std::string> out;
  for (const auto& kv : config_) out.emplace(kv.first, kv.second.first);
  return out;
}

bool State::Keep(const EntryView& e) const {
  switch (e.op) {
    case kAdd:
    case kUpdate:
    case kRevector: {
      const Mem* m = FindMem(std::string(e.user), std::string(e.id));
      return m && m->live && e.seq >= m->first_seq;
    }
    case kPending: {
      auto it = job_by_id_.find(std::string(e.id));
      return it != job_by_id_.end() && it->second == e.seq;
    }
    case kConfig: {
      auto it = config_.find(std::string(e.id));
      return it != config_.end() && it->second.second == e.seq;
    }
    default:
      return false;  // DELETE, CLEAR, PURGE, DONE: their effect is already in what is kept
  }
}

// --- validation -------------------------------------------------------------------------

int8_t Validator::MemStatus(const std::string& user, const std::string& id) {
  auto uit = users_.find(user);
  if (uit != users_.end()) {
    auto mit = uit->second.mems.find(id);
    if (mit != uit->second.mems.end()) return mit->second;
    if (uit->second.purged) return 2;
  }
  const Mem* m = state_->FindMem(user, id);
  if (!m) return 2;
  if (uit != users_.end() && uit->second.cleared) return 0;
  return m->live ? 1 : 0;
}

void Validator::Check(const EntryIn& e) {
  switch (e.op) {
    case kAdd:
      if (MemStatus(e.user, e.id) != 2)
        Fail(ErrorKind::kInvalidInput, "memory id " + e.id + " already exists for this user");
      break;
    case kUpdate:
    case kRevector:
    case kDelete:
      if (MemStatus(e.user, e.id) != 1)
        Fail(ErrorKind::kNotFound, "no live memory " + e.id + " for this user");
      break;
    case kPending:
      if (state_->JobPending(e.id) || jobs_.count(e.id))
        Fail(ErrorKind::kInvalidInput, "job id " + e.id + " is already pending");
      break;
    default:
      break;
  }
  if (e.has_vec) {
    UserOv& ov = users_[e.user];
    const User* u = state_->FindUser(e.user);
    uint32_t dim = static_cast<uint32_t>(e.vec.size());
    uint32_t want = 0;
    if (u && !u->rows.empty() && !ov.cleared) {
      // An UPDATE/REVECTOR of the only live vector may change the dim; anything else must
      // match the user's live vectors.
      bool only = u->rows.size() == 1 && e.op != kAdd;
      if (!only) want = u->dim;
    }
    if (!want) want = ov.dim;
    if (want && want != dim)
      Fail(ErrorKind::kInvalidVector, "vector has dim " + std::to_string(dim) +
                                          "; this user's vectors have dim " + std::to_string(want));
    ov.dim = dim;
  }
  // Record the effect for later entries of the group.
  switch (e.op) {
    case kAdd:
      users_[e.user].mems[e.id] = 1;
      break;
    case kDelete:
      users_[e.user].mems[e.id] = 0;
      break;
    case kClear: {
      UserOv& ov = users_[e.user];
      ov.cleared = true;
      ov.dim = 0;
      for (auto& kv : ov.mems)
        if (kv.second == 1) kv.second = 0;
      break;
    }
    case kPurge: {
      UserOv& ov = users_[e.user];
      if (e.id.empty()) {
        ov.cleared = ov.purged = true;
        ov.dim = 0;
        ov.mems.clear();
      } else {
        ov.mems[e.id] = 2;
      }
      break;
    }
    case kPending:
      jobs_.insert(e.id);
      break;
    default:
      break;
  }
}

}  // namespace headroom
