// Okapi BM25 over one user's memories, and its snapshot codec (see lexicon.h).
//
// Bit-identical scores: every formula below is the Python reference's (ranking.LexicalIndex)
// written with the same operations in the same order, in float64, with integers converted to
// double where Python mixes int and float (exact below 2**53). The build compiles this file
// with -ffp-contract=off so no multiply-add is fused.
#include "lexicon.h"

#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arena.h"
#include "crc32c.h"
#include "format.h"

namespace headroom {

namespace {

constexpr char kLexMagic[8] = {'H', 'R', 'L', 'E', 'X', 'I', 'C', 'N'};
constexpr uint32_t kLexVersion = 3;  // written; format 2 (no header checksum) is still read
constexpr uint32_t kLexVersionNoHeaderCrc = 2;
constexpr size_t kLexHeaderSize = 128;
constexpr size_t kTermRecord = 16;  // u32 text offset, u32 text bytes, u32 posting start, u32 df
constexpr size_t kDocRecord = 40;   // u64 label, i64 created, u32 id offset, u32 id bytes,
                                    // u32 length, u32 terms start, u32 distinct, u32 0
constexpr size_t kMaxTermBytes = kMaxTextBytes;

template <class T>
void Put(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}

template <class T>
void PutAt(std::string* out, size_t at, T v) {
  std::memcpy(&(*out)[at], &v, sizeof(T));
}

template <class T>
T Rd(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// A 64-bit mix of a posting entry (splitmix64's finalizer), summed into per-term digests.
uint64_t Mix(uint32_t slot, uint32_t tf) {
  uint64_t z = (uint64_t{slot} << 32 | tf) + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr uint64_t Pad8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

void PadTo8(std::string* out) { out->append(Pad8(out->size()) - out->size(), '\0'); }

// The header's own checksum (format 3): CRC32C of bytes [16, 112) and [120, vsum_end), i.e.
// the header but this field, the user id and the vector sum; what read_header checks.
uint32_t HeaderCrc(const uint8_t* data, size_t vsum_end) {
  return Crc32cExtend(Crc32c(data + 16, 96), data + 120, vsum_end - 120);
}

// Scratch positions by term id, reset after each use (thread_local: const methods may run
// concurrently).
std::vector<int32_t>& TermScratch(size_t terms) {
  thread_local std::vector<int32_t> scratch;
  if (scratch.size() < terms) scratch.resize(terms, -1);
  return scratch;
}

// The full check's second half, over sections already bounds-checked by FromBase: postings
// and documents hold the same relation (exact counts per term, and per term a sum of a 64-bit
// mix of its entries that the documents' terms must cancel: both read once, in order, where
// checking each entry against its posting would read the postings in random order), no
// document repeats a term, and the id and label orders are strictly increasing (so each is a
// permutation of the slots). nullptr when consistent, else what is not.
const char* Inconsistency(const uint8_t* term_table, const std::pair<uint32_t, uint32_t>* postings,
                          const uint8_t* doc_table,
                          const std::pair<uint32_t, uint32_t>* doc_terms, const uint32_t* by_id,
                          const uint32_t* by_label, const char* strings, uint32_t nterms,
                          uint32_t ndocs) {
  std::vector<uint64_t> digest(nterms, 0);
  for (uint32_t t = 0; t < nterms; ++t) {
    const uint8_t* r = term_table + kTermRecord * t;
    const auto* e = postings + Rd<uint32_t>(r + 8);
    const uint32_t df = Rd<uint32_t>(r + 12);
    uint64_t d = 0;
    for (uint32_t k = 0; k < df; ++k) d += Mix(e[k].first, e[k].second);
    digest[t] = d;
  }
  std::vector<uint32_t> seen(nterms, UINT32_MAX), count(nterms, 0);
  for (uint32_t i = 0; i < ndocs; ++i) {
    const uint8_t* r = doc_table + kDocRecord * i;
    const uint32_t first = Rd<uint32_t>(r + 28), distinct = Rd<uint32_t>(r + 32);
    for (uint32_t j = 0; j < distinct; ++j) {
      const auto [t, tf] = doc_terms[first + j];
      if (seen[t] == i) return "bad document term";
      seen[t] = i;
      ++count[t];
      digest[t] -= Mix(i, tf);
    }
  }
  for (uint32_t t = 0; t < nterms; ++t) {
    if (digest[t] != 0 || count[t] != Rd<uint32_t>(term_table + kTermRecord * t + 12))
      return "a posting differs from the documents";
  }
  auto doc_id = [&](uint32_t s) {
    const uint8_t* r = doc_table + kDocRecord * s;
    return std::string_view(strings + Rd<uint32_t>(r + 16), Rd<uint32_t>(r + 20));
  };
  auto doc_label = [&](uint32_t s) { return Rd<uint64_t>(doc_table + kDocRecord * s); };
  for (uint32_t i = 1; i < ndocs; ++i) {
    if (!(doc_id(by_id[i - 1]) < doc_id(by_id[i]))) return "repeated document";
    if (!(doc_label(by_label[i - 1]) < doc_label(by_label[i]))) return "repeated label";
  }
  return nullptr;
}

}  // namespace

static_assert(sizeof(std::pair<uint32_t, uint32_t>) == 8, "postings are read in place");

Lexicon::Lexicon(double k1, double b) : k1_(k1), b_(b) {}

// --- the base and the overlay ------------------------------------------------------------------

std::string_view Lexicon::TermText(uint32_t term) const {
  if (term < base_terms_) {
    const uint8_t* r = base_term_table_ + kTermRecord * term;
    return std::string_view(base_pool_ + Rd<uint32_t>(r), Rd<uint32_t>(r + 4));
  }
  return terms_[term].text;
}

std::pair<const Lexicon::TermTf*, uint32_t> Lexicon::BasePosting(uint32_t term) const {
  if (term >= base_terms_) return {nullptr, 0};
  const uint8_t* r = base_term_table_ + kTermRecord * term;
  return {base_postings_ + Rd<uint32_t>(r + 8), Rd<uint32_t>(r + 12)};
}

uint32_t Lexicon::Df(uint32_t term) const {
  if (term < terms_.size()) return terms_[term].df;
  return BasePosting(term).second;  // a base not yet thawed: every base document is live
}

Lexicon::DocView Lexicon::View(uint32_t slot) const {
  if (slot < base_docs_) {
    const uint8_t* r = base_doc_table_ + kDocRecord * slot;
    return DocView{std::string_view(base_pool_ + Rd<uint32_t>(r + 16), Rd<uint32_t>(r + 20)),
                   Rd<uint64_t>(r),
                   Rd<int64_t>(r + 8),
                   Rd<uint32_t>(r + 24),
                   base_dead_.empty() || !base_dead_[slot],
                   base_doc_terms_ + Rd<uint32_t>(r + 28),
                   Rd<uint32_t>(r + 32)};
  }
  const Doc& d = docs_[slot - base_docs_];
  return DocView{d.id,   d.label, d.created, d.length, d.live, d.terms.data(),
                 static_cast<uint32_t>(d.terms.size())};
}

int64_t Lexicon::FindTerm(std::string_view token) const {
  size_t lo = 0, hi = base_terms_;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    const int c = TermText(static_cast<uint32_t>(mid)).compare(token);
    if (c == 0) return static_cast<int64_t>(mid);
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (term_ids_.empty()) return -1;
  auto it = term_ids_.find(std::string(token));
  return it == term_ids_.end() ? -1 : static_cast<int64_t>(it->second);
}

int64_t Lexicon::FindId(std::string_view id) const {
  if (!by_id_.empty()) {
    auto it = by_id_.find(std::string(id));
    if (it != by_id_.end()) return it->second;
  }
  size_t lo = 0, hi = base_docs_;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    const uint32_t slot = base_by_id_[mid];
    const int c = View(slot).id.compare(id);
    if (c == 0) return View(slot).live ? static_cast<int64_t>(slot) : -1;
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return -1;
}

int64_t Lexicon::FindLabel(uint64_t label) const {
  if (!by_label_.empty()) {
    auto it = by_label_.find(label);
    if (it != by_label_.end()) return it->second;
  }
  size_t lo = 0, hi = base_docs_;
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    const uint32_t slot = base_by_label_[mid];
    const uint64_t at = Rd<uint64_t>(base_doc_table_ + kDocRecord * slot);
    if (at == label) return View(slot).live ? static_cast<int64_t>(slot) : -1;
    if (at < label) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return -1;
}

void Lexicon::Thaw() {
  if (terms_.size() >= base_terms_) return;
  terms_.resize(base_terms_);
  for (uint32_t t = 0; t < base_terms_; ++t) terms_[t].df = BasePosting(t).second;
}

// --- writes ------------------------------------------------------------------------------------

uint32_t Lexicon::Intern(const std::string& token) {
  const int64_t found = FindTerm(token);
  if (found >= 0) return static_cast<uint32_t>(found);
  uint32_t id = static_cast<uint32_t>(terms_.size());
  terms_.push_back(Term{token, {}, 0});
  term_ids_.emplace(token, id);
  return id;
}

int64_t Lexicon::LiveTerm(const std::string& token) const {
  const int64_t id = FindTerm(token);
  if (id < 0 || Df(static_cast<uint32_t>(id)) == 0) return -1;
  return id;
}

void Lexicon::Add(uint64_t label, std::string_view id, int64_t created,
                  const std::vector<std::string>& tokens) {
  Thaw();
  int64_t old = FindId(id);
  if (old >= 0) Unindex(static_cast<uint32_t>(old));
  old = FindLabel(label);  // looked up again: an Unindex may have renumbered
  if (old >= 0) Unindex(static_cast<uint32_t>(old));
  std::vector<TermTf> terms;
  std::vector<uint32_t> ids;
  ids.reserve(tokens.size());
  for (const std::string& t : tokens) ids.push_back(Intern(t));
  std::vector<int32_t>& pos = TermScratch(terms_.size());
  for (uint32_t t : ids) {
    if (pos[t] < 0) {
      pos[t] = static_cast<int32_t>(terms.size());
      terms.emplace_back(t, 0);
    }
    ++terms[pos[t]].second;
  }
  for (const auto& [t, tf] : terms) pos[t] = -1;
  Append(label, id, created, std::move(terms), static_cast<uint32_t>(tokens.size()));
}

void Lexicon::Append(uint64_t label, std::string_view id, int64_t created,
                     std::vector<TermTf> terms, uint32_t length) {
  uint32_t slot = static_cast<uint32_t>(base_docs_ + docs_.size());
  for (const auto& [t, tf] : terms) {
    Term& term = terms_[t];
    if (term.df++ == 0) ++live_terms_;
    term.posting.emplace_back(slot, tf);
  }
  Doc d;
  d.id = std::string(id);
  d.label = label;
  d.created = created;
  d.length = length;
  d.live = true;
  d.terms = std::move(terms);
  by_id_.emplace(d.id, slot);
  by_label_.emplace(label, slot);
  total_len_ += length;
  docs_.push_back(std::move(d));
}

void Lexicon::Unindex(uint32_t slot) {
  const DocView v = View(slot);
  if (!v.live) return;
  total_len_ -= v.length;
  for (uint32_t j = 0; j < v.distinct; ++j) {
    Term& term = terms_[v.terms[j].first];
    if (--term.df == 0) --live_terms_;
    // Entries of removed documents are skipped by every walk; the overlay's are swept once
    // they are the majority, so a walk costs at most twice the live entries (the base's are
    // bounded by Renumber below).
    if (term.posting.size() > 2 * static_cast<size_t>(term.df) + 8) Sweep(&term);
  }
  if (slot < base_docs_) {
    if (base_dead_.empty()) base_dead_.assign(base_docs_, false);
    base_dead_[slot] = true;
    --base_live_;
  } else {
    Doc& d = docs_[slot - base_docs_];
    d.live = false;
    by_id_.erase(d.id);
    by_label_.erase(d.label);
    std::string().swap(d.id);
    std::vector<TermTf>().swap(d.terms);
  }
  if (++dead_ > 1024 && dead_ > size()) Renumber();
}

void Lexicon::Sweep(Term* t) {
  auto& p = t->posting;
  p.erase(std::remove_if(p.begin(), p.end(),
                         [this](const TermTf& e) { return !docs_[e.first - base_docs_].live; }),
          p.end());
}

void Lexicon::Renumber() {
  Lexicon fresh(k1_, b_);
  const uint32_t slots = static_cast<uint32_t>(base_docs_ + docs_.size());
  for (uint32_t slot = 0; slot < slots; ++slot) {
    const DocView v = View(slot);
    if (!v.live) continue;
    std::vector<TermTf> terms(v.distinct);
    for (uint32_t j = 0; j < v.distinct; ++j) {
      terms[j] = {fresh.Intern(std::string(TermText(v.terms[j].first))), v.terms[j].second};
    }
    fresh.Append(v.label, v.id, v.created, std::move(terms), v.length);
  }
  *this = std::move(fresh);
}

bool Lexicon::RemoveLabel(uint64_t label) {
  const int64_t slot = FindLabel(label);
  if (slot < 0) return false;
  Thaw();
  Unindex(static_cast<uint32_t>(slot));
  return true;
}

bool Lexicon::RemoveId(std::string_view id) {
  const int64_t slot = FindId(id);
  if (slot < 0) return false;
  Thaw();
  Unindex(static_cast<uint32_t>(slot));
  return true;
}

std::optional<int64_t> Lexicon::Created(std::string_view id) const {
  const int64_t slot = FindId(id);
  if (slot < 0) return std::nullopt;
  return View(static_cast<uint32_t>(slot)).created;
}

std::optional<std::string> Lexicon::IdOfLabel(uint64_t label) const {
  const int64_t slot = FindLabel(label);
  if (slot < 0) return std::nullopt;
  return std::string(View(static_cast<uint32_t>(slot)).id);
}

// --- scoring -----------------------------------------------------------------------------------

double Lexicon::Idf(size_t df) const {
  // math.log(1.0 + (n - df + 0.5) / (df + 0.5))
  const size_t n = size();
  return std::log(1.0 + (static_cast<double>(n - df) + 0.5) / (static_cast<double>(df) + 0.5));
}

double Lexicon::Avg() const {
  // self._total_len / len(self._docs) or 1.0
  double avg = static_cast<double>(total_len_) / static_cast<double>(size());
  return avg == 0.0 ? 1.0 : avg;
}

std::vector<Lexicon::QueryTerm> Lexicon::Resolve(const std::vector<std::string>& query) const {
  std::vector<QueryTerm> out;
  out.reserve(query.size());
  for (const std::string& t : query) {
    int64_t id = LiveTerm(t);
    out.push_back({id, id < 0 ? 0.0 : Idf(Df(static_cast<uint32_t>(id)))});
  }
  return out;
}

uint32_t Lexicon::TfIn(const DocView& d, uint32_t term) {
  for (uint32_t j = 0; j < d.distinct; ++j) {
    if (d.terms[j].first == term) return d.terms[j].second;
  }
  return 0;
}

double Lexicon::DocScore(const DocView& d, const std::vector<QueryTerm>& q, double avg) const {
  // sum(idf[t] * self._term_score(doc[t], length, avg) for t in terms if t in doc), where
  // _term_score is tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg)).
  double total = 0.0;
  const double len = static_cast<double>(d.length);
  for (const QueryTerm& t : q) {
    if (t.id < 0) continue;
    uint32_t tf = TfIn(d, static_cast<uint32_t>(t.id));
    if (!tf) continue;
    const double f = static_cast<double>(tf);
    total += t.idf * (f * (k1_ + 1.0) / (f + k1_ * ((1.0 - b_) + b_ * len / avg)));
  }
  return total;
}

std::vector<double> Lexicon::Scores(const std::vector<std::string>& query,
                                    const std::vector<std::string>& keys) const {
  std::vector<double> out(keys.size(), 0.0);
  if (query.empty() || size() == 0) return out;
  const double avg = Avg();
  const std::vector<QueryTerm> q = Resolve(query);
  for (size_t i = 0; i < keys.size(); ++i) {
    const int64_t slot = FindId(keys[i]);
    if (slot >= 0) out[i] = DocScore(View(static_cast<uint32_t>(slot)), q, avg);
  }
  return out;
}

std::vector<double> Lexicon::GroupScores(
    const std::vector<std::string>& query,
    const std::vector<std::vector<std::string>>& groups) const {
  std::vector<double> out(groups.size(), 0.0);
  // list(dict.fromkeys(tokenize(query))): distinct terms, first-occurrence order.
  std::vector<std::string> distinct;
  for (const std::string& t : query) {
    if (std::find(distinct.begin(), distinct.end(), t) == distinct.end()) distinct.push_back(t);
  }
  if (distinct.empty() || size() == 0) return out;
  const std::vector<QueryTerm> q = Resolve(distinct);
  std::vector<uint64_t> counts(q.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    std::fill(counts.begin(), counts.end(), 0);
    for (const std::string& key : groups[g]) {
      const int64_t slot = FindId(key);
      if (slot < 0) continue;
      const DocView d = View(static_cast<uint32_t>(slot));
      for (size_t j = 0; j < q.size(); ++j) {
        if (q[j].id >= 0) counts[j] += TfIn(d, static_cast<uint32_t>(q[j].id));
      }
    }
    // sum(idf[t] * tf * (k1 + 1) / (tf + k1) for t, tf in counts.items() if tf)
    double total = 0.0;
    for (size_t j = 0; j < q.size(); ++j) {
      if (!counts[j]) continue;
      const double tf = static_cast<double>(counts[j]);
      total += q[j].idf * tf * (k1_ + 1.0) / (tf + k1_);
    }
    out[g] = total;
  }
  return out;
}

std::vector<std::pair<std::string, double>> Lexicon::Top(const std::vector<std::string>& query,
                                                         size_t k, size_t budget) const {
  std::vector<std::pair<std::string, double>> out;
  if (k == 0 || query.empty() || size() == 0) return out;
  const double avg = Avg();
  const double k1 = k1_, k1p1 = k1_ + 1.0, b = b_;
  // sorted(terms, key=lambda t: len(postings.get(t, ()))): stable, by live document count.
  std::vector<int64_t> ids;
  ids.reserve(query.size());
  for (const std::string& t : query) ids.push_back(LiveTerm(t));
  auto df = [&](int64_t id) -> size_t { return id < 0 ? 0 : Df(static_cast<uint32_t>(id)); };
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int64_t a, int64_t c) { return df(a) < df(c); });
  // acc: the candidates in first-seen order with their walk scores.
  std::vector<std::pair<uint32_t, double>> acc;
  std::unordered_map<uint32_t, uint32_t> where;
  where.reserve(std::min<size_t>(budget, size()) + 1);
  std::vector<int64_t> common;
  size_t walked = 0;
  for (int64_t id : ids) {
    if (id < 0) continue;  // no live posting
    const size_t term_df = df(id);
    if (!common.empty() || walked + term_df > budget) {
      common.push_back(id);
      continue;
    }
    walked += term_df;
    const double idf = Idf(term_df);
    auto visit = [&](uint32_t slot, uint32_t tf) {
      const DocView d = View(slot);
      if (!d.live) return;
      const double f = static_cast<double>(tf);
      const double part =
          f * k1p1 / (f + k1 * ((1.0 - b) + b * static_cast<double>(d.length) / avg));
      auto [it, fresh] = where.emplace(slot, static_cast<uint32_t>(acc.size()));
      if (fresh) {
        acc.emplace_back(slot, 0.0 + idf * part);
      } else {
        acc[it->second].second = acc[it->second].second + idf * part;
      }
    };
    // The base's part of the posting (lower slots) first, then the overlay's: slot order.
    const auto [base, in_base] = BasePosting(static_cast<uint32_t>(id));
    for (uint32_t i = 0; i < in_base; ++i) visit(base[i].first, base[i].second);
    if (static_cast<size_t>(id) < terms_.size()) {
      for (const auto& [slot, tf] : terms_[id].posting) visit(slot, tf);
    }
  }
  if (!common.empty() && !acc.empty()) {
    std::vector<double> idfs;
    for (int64_t id : common) idfs.push_back(Idf(df(id)));
    for (auto& [slot, score] : acc) {
      const DocView d = View(slot);
      const double norm = k1 * ((1.0 - b) + b * static_cast<double>(d.length) / avg);
      double more = 0.0;
      for (size_t j = 0; j < common.size(); ++j) {
        uint32_t count = TfIn(d, static_cast<uint32_t>(common[j]));
        if (count) {
          const double c = static_cast<double>(count);
          more += idfs[j] * (c * k1p1 / (c + norm));
        }
      }
      if (more != 0.0) score += more;
    }
  }
  // heapq.nlargest(k, acc.items(), key=score): the first k of a stable descending sort.
  std::vector<uint32_t> order(acc.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  const size_t take = std::min(k, order.size());
  std::partial_sort(order.begin(), order.begin() + take, order.end(),
                    [&](uint32_t a, uint32_t c) {
                      if (acc[a].second != acc[c].second) return acc[a].second > acc[c].second;
                      return a < c;
                    });
  // The exact scores (those of Scores()), then a stable sort by them, best first.
  const std::vector<QueryTerm> q = Resolve(query);
  out.reserve(take);
  for (size_t i = 0; i < take; ++i) {
    const DocView d = View(acc[order[i]].first);
    out.emplace_back(std::string(d.id), DocScore(d, q, avg));
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const std::pair<std::string, double>& a,
                      const std::pair<std::string, double>& c) { return a.second > c.second; });
  return out;
}

// --- snapshots ---------------------------------------------------------------------------------
//
// Layout (little-endian; docs/lexicon-snapshot.md). Every section starts 8-byte aligned, so a
// mapping of the file is read in place.
//   0 magic "HRLEXICN"          8 u32 version (3)       12 u32 masked CRC32C of [16, size)
//  16 u64 size                 24 u64 covered_seq      32 u32 generation
//  36 u32 user bytes           40 f64 k1               48 f64 b
//  56 u32 terms                60 u32 documents        64 u32 vector dim
//  68 u32 0                    72 u64 vector count     80 u64 vector seq
//  88 u64 total length         96 u64 postings entries 104 u64 string bytes
// 112 u32 masked CRC32C of the header's own bytes ([16, 112) and [120, end of the vector
//     sum); version 2: 0)       116 u32 0              120 u64 0
// 128 user id (padded to 8); the vector sum (f64 x dim); the term table, sorted by the terms'
//     bytes (per term: u32 text offset, u32 text bytes, u32 first posting entry, u32 df); the
//     postings, term by term, each in slot order (u32 slot, u32 tf); the documents in
//     insertion order (u64 label, i64 created_at, u32 id offset, u32 id bytes, u32 length,
//     u32 first term entry, u32 distinct terms, u32 0); their terms, document by document in
//     first-occurrence order (u32 term, u32 tf); the slots sorted by id (u32 each, padded);
//     the slots sorted by label (padded); the strings: every term in table order, then every
//     id in slot order (padded).

std::string Lexicon::Serialize(const LexSnapshotMeta& meta) const {
  const uint32_t slots = static_cast<uint32_t>(base_docs_ + docs_.size());
  std::vector<uint32_t> live;
  for (uint32_t s = 0; s < slots; ++s) {
    if (View(s).live) live.push_back(s);
  }
  // Only terms a live document has, renumbered in byte order of their texts.
  std::vector<int64_t> remap(std::max<size_t>(terms_.size(), base_terms_), -1);
  std::vector<uint32_t> used;
  for (uint32_t s : live) {
    const DocView v = View(s);
    for (uint32_t j = 0; j < v.distinct; ++j) {
      const uint32_t t = v.terms[j].first;
      if (remap[t] < 0) {
        remap[t] = 0;
        used.push_back(t);
      }
    }
  }
  std::sort(used.begin(), used.end(),
            [this](uint32_t a, uint32_t c) { return TermText(a) < TermText(c); });
  for (uint32_t i = 0; i < used.size(); ++i) remap[used[i]] = i;
  const uint32_t nterms = static_cast<uint32_t>(used.size());
  const uint32_t ndocs = static_cast<uint32_t>(live.size());
  std::vector<uint32_t> df(nterms, 0), start(nterms, 0);
  uint64_t entries = 0;
  for (uint32_t s : live) {
    const DocView v = View(s);
    for (uint32_t j = 0; j < v.distinct; ++j) ++df[remap[v.terms[j].first]];
    entries += v.distinct;
  }
  for (uint32_t t = 1; t < nterms; ++t) start[t] = start[t - 1] + df[t - 1];
  std::vector<TermTf> postings(entries), doc_terms;
  doc_terms.reserve(entries);
  std::vector<uint32_t> fill(nterms, 0);
  for (uint32_t i = 0; i < ndocs; ++i) {
    const DocView v = View(live[i]);
    for (uint32_t j = 0; j < v.distinct; ++j) {
      const uint32_t t = static_cast<uint32_t>(remap[v.terms[j].first]);
      postings[start[t] + fill[t]++] = {i, v.terms[j].second};
      doc_terms.emplace_back(t, v.terms[j].second);
    }
  }
  std::vector<uint32_t> by_id(ndocs), by_label(ndocs);
  for (uint32_t i = 0; i < ndocs; ++i) by_id[i] = by_label[i] = i;
  std::sort(by_id.begin(), by_id.end(),
            [&](uint32_t a, uint32_t c) { return View(live[a]).id < View(live[c]).id; });
  std::sort(by_label.begin(), by_label.end(),
            [&](uint32_t a, uint32_t c) { return View(live[a]).label < View(live[c]).label; });

  std::string out(kLexHeaderSize, '\0');
  std::memcpy(&out[0], kLexMagic, 8);
  out.append(meta.user);
  PadTo8(&out);
  for (double v : meta.vector_sum) Put(&out, v);
  uint32_t pool = 0;
  for (uint32_t t = 0; t < nterms; ++t) {
    const std::string_view text = TermText(used[t]);
    Put(&out, pool);
    Put(&out, static_cast<uint32_t>(text.size()));
    Put(&out, start[t]);
    Put(&out, df[t]);
    pool += static_cast<uint32_t>(text.size());
  }
  for (const TermTf& e : postings) {
    Put(&out, e.first);
    Put(&out, e.second);
  }
  uint32_t first = 0;
  for (uint32_t i = 0; i < ndocs; ++i) {
    const DocView v = View(live[i]);
    Put(&out, v.label);
    Put(&out, v.created);
    Put(&out, pool);
    Put(&out, static_cast<uint32_t>(v.id.size()));
    Put(&out, v.length);
    Put(&out, first);
    Put(&out, v.distinct);
    Put(&out, uint32_t{0});
    pool += static_cast<uint32_t>(v.id.size());
    first += v.distinct;
  }
  for (const TermTf& e : doc_terms) {
    Put(&out, e.first);
    Put(&out, e.second);
  }
  for (uint32_t s : by_id) Put(&out, s);
  PadTo8(&out);
  for (uint32_t s : by_label) Put(&out, s);
  PadTo8(&out);
  for (uint32_t t = 0; t < nterms; ++t) out.append(TermText(used[t]));
  for (uint32_t s : live) out.append(View(s).id);
  PadTo8(&out);
  PutAt(&out, 8, kLexVersion);
  PutAt(&out, 16, static_cast<uint64_t>(out.size()));
  PutAt(&out, 24, meta.covered_seq);
  PutAt(&out, 32, meta.generation);
  PutAt(&out, 36, static_cast<uint32_t>(meta.user.size()));
  PutAt(&out, 40, k1_);
  PutAt(&out, 48, b_);
  PutAt(&out, 56, nterms);
  PutAt(&out, 60, ndocs);
  PutAt(&out, 64, static_cast<uint32_t>(meta.vector_sum.size()));
  PutAt(&out, 72, meta.vector_count);
  PutAt(&out, 80, meta.vector_seq);
  PutAt(&out, 88, total_len_);
  PutAt(&out, 96, entries);
  PutAt(&out, 104, static_cast<uint64_t>(pool));
  const auto* p = reinterpret_cast<const uint8_t*>(out.data());
  const size_t vsum_end = kLexHeaderSize + Pad8(meta.user.size()) + 8 * meta.vector_sum.size();
  PutAt(&out, 112, MaskCrc(HeaderCrc(p, vsum_end)));
  PutAt(&out, 12, MaskCrc(Crc32c(p + 16, out.size() - 16)));
  return out;
}

std::unique_ptr<Lexicon> Lexicon::Parse(const uint8_t* data, size_t n, LexSnapshotMeta* meta,
                                        std::string* why, LexCheck check) {
  // A private copy, 8-byte aligned (the sections are read in place).
  auto copy = std::make_shared<std::vector<uint64_t>>((n + 7) / 8);
  if (n) std::memcpy(copy->data(), data, n);
  const auto* p = reinterpret_cast<const uint8_t*>(copy->data());
  return FromBase(std::move(copy), p, n, meta, why, check);
}

namespace {

// A snapshot's header fields and where its sections start, read by ReadLayout.
struct LexLayout {
  uint64_t size, covered, vcount, vseq, total, entries, pool;
  uint32_t generation, user_len, nterms, ndocs, dim;
  double k1, b;
  uint64_t user_at, vsum_at, terms_at, postings_at, docs_at, doc_terms_at, by_id_at,
      by_label_at, pool_at;
};

// Reads the header's fields (the first kLexHeaderSize bytes) into *l and checks what they
// alone can say: magic, version, the reserved fields, the bounds on the user id, dimension,
// counts and BM25 parameters. nullptr when they hold, else what does not. *version is set.
const char* ReadHeader(const uint8_t* data, LexLayout* l, uint32_t* version) {
  if (std::memcmp(data, kLexMagic, 8) != 0) return "not a lexicon snapshot (magic)";
  *version = Rd<uint32_t>(data + 8);
  l->size = Rd<uint64_t>(data + 16);
  l->covered = Rd<uint64_t>(data + 24);
  l->generation = Rd<uint32_t>(data + 32);
  l->user_len = Rd<uint32_t>(data + 36);
  l->k1 = Rd<double>(data + 40);
  l->b = Rd<double>(data + 48);
  l->nterms = Rd<uint32_t>(data + 56);
  l->ndocs = Rd<uint32_t>(data + 60);
  l->dim = Rd<uint32_t>(data + 64);
  l->vcount = Rd<uint64_t>(data + 72);
  l->vseq = Rd<uint64_t>(data + 80);
  l->total = Rd<uint64_t>(data + 88);
  l->entries = Rd<uint64_t>(data + 96);
  l->pool = Rd<uint64_t>(data + 104);
  if (*version != kLexVersion && *version != kLexVersionNoHeaderCrc)
    return "unknown snapshot version";
  // Format 3 keeps the header checksum in the u32 at 112; format 2 has zeros there.
  const uint32_t header_crc_or_zero = *version == kLexVersion ? 0 : Rd<uint32_t>(data + 112);
  if (Rd<uint32_t>(data + 68) != 0 || header_crc_or_zero != 0 || Rd<uint32_t>(data + 116) != 0 ||
      Rd<uint64_t>(data + 120) != 0 || l->user_len > kMaxUserBytes || l->dim > kMaxDim ||
      l->entries > UINT32_MAX || l->pool > UINT32_MAX)
    return "bad header";
  if (!(l->k1 >= 0) || !(l->b >= 0 && l->b <= 1)) return "bad BM25 parameters";
  l->user_at = kLexHeaderSize;
  l->vsum_at = l->user_at + Pad8(l->user_len);
  return nullptr;
}

// Format 3's header checksum over the first vsum_end bytes (those must be present).
bool HeaderIntact(const uint8_t* data, const LexLayout& l) {
  return UnmaskCrc(Rd<uint32_t>(data + 112)) == HeaderCrc(data, l.vsum_at + 8 * size_t{l.dim});
}

// Checks what the header vouches for: magic, version, size, the checksum of every byte (and
// the header's own, format 3), the header's fields, section sizes that follow from its
// counts, zero padding. nullptr (and *l filled) when they hold, else what does not.
const char* ReadLayout(const uint8_t* data, size_t n, LexLayout* l) {
  if (n < kLexHeaderSize) return "shorter than the header";
  uint32_t version = 0;
  if (const char* bad = ReadHeader(data, l, &version)) return bad;
  if (l->size != n) return "size differs from the header's";
  if (UnmaskCrc(Rd<uint32_t>(data + 12)) != Crc32c(data + 16, n - 16)) return "checksum mismatch";
  // Where each section starts (no overflow: every count is below 2**32).
  uint64_t off = l->vsum_at + 8 * uint64_t{l->dim};
  l->terms_at = off;
  off += kTermRecord * uint64_t{l->nterms};
  l->postings_at = off;
  off += 8 * l->entries;
  l->docs_at = off;
  off += kDocRecord * uint64_t{l->ndocs};
  l->doc_terms_at = off;
  off += 8 * l->entries;
  l->by_id_at = off;
  off += Pad8(4 * uint64_t{l->ndocs});
  l->by_label_at = off;
  off += Pad8(4 * uint64_t{l->ndocs});
  l->pool_at = off;
  off += Pad8(l->pool);
  if (off != n) return "sections differ from the header's counts";
  if (version == kLexVersion && !HeaderIntact(data, *l)) return "header checksum mismatch";
  auto zeros = [&](uint64_t from, uint64_t to) {
    for (uint64_t i = from; i < to; ++i) {
      if (data[i]) return false;
    }
    return true;
  };
  if (!zeros(l->user_at + l->user_len, l->vsum_at) ||
      !zeros(l->by_id_at + 4 * uint64_t{l->ndocs}, l->by_label_at) ||
      !zeros(l->by_label_at + 4 * uint64_t{l->ndocs}, l->pool_at) ||
      !zeros(l->pool_at + l->pool, n))
    return "bad padding";
  return nullptr;
}

void FillMeta(const uint8_t* data, const LexLayout& l, LexSnapshotMeta* meta) {
  meta->user = std::string(reinterpret_cast<const char*>(data + l.user_at), l.user_len);
  meta->covered_seq = l.covered;
  meta->generation = l.generation;
  meta->vector_sum.resize(l.dim);
  if (l.dim) std::memcpy(meta->vector_sum.data(), data + l.vsum_at, 8 * size_t{l.dim});
  meta->vector_count = l.vcount;
  meta->vector_seq = l.vseq;
}

// Maps the file at `path` read-only (*errno_out set and nullptr when it cannot be opened or
// mapped; nullptr and *why when it is shorter than a header).
std::shared_ptr<const Mapping> MapSnapshot(const std::string& path, std::string* why,
                                           int* errno_out) {
  *errno_out = 0;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *errno_out = errno;
    return nullptr;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    *errno_out = errno;
    ::close(fd);
    return nullptr;
  }
  const size_t n = static_cast<size_t>(st.st_size);
  if (n < kLexHeaderSize) {
    ::close(fd);
    *why = "shorter than the header";
    return nullptr;
  }
  std::shared_ptr<const Mapping> map = Mapping::Map(fd, n);
  const int map_errno = errno;
  ::close(fd);
  if (!map) *errno_out = map_errno ? map_errno : EIO;
  return map;
}

// Reads the header from fd into *head and, format 3, the user id and vector sum after it,
// checked against the header's own checksum and the file's size (the rest of the file is not
// read). nullptr when they hold, else what does not; nullptr with *err set when a read fails.
const char* ReadHeaderPart(int fd, std::vector<uint8_t>* head, LexLayout* l, uint32_t* version,
                           int* err) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    *err = errno;
    return nullptr;
  }
  // head grows to its first n bytes of the file; false on a short file or a failed read.
  auto read_to = [&](size_t n) {
    const size_t have = head->size();
    head->resize(n);
    const ssize_t got = ::pread(fd, head->data() + have, n - have, static_cast<off_t>(have));
    if (got < 0) *err = errno;
    return got >= 0 && static_cast<size_t>(got) == n - have;
  };
  if (!read_to(kLexHeaderSize)) return *err ? nullptr : "shorter than the header";
  if (const char* bad = ReadHeader(head->data(), l, version)) return bad;
  if (*version != kLexVersion) return nullptr;
  if (l->size != static_cast<uint64_t>(st.st_size)) return "size differs from the header's";
  const size_t vsum_end = l->vsum_at + 8 * size_t{l->dim};
  if (vsum_end > l->size || !read_to(vsum_end))
    return *err ? nullptr : "sections differ from the header's counts";
  return HeaderIntact(head->data(), *l) ? nullptr : "header checksum mismatch";
}

}  // namespace

bool Lexicon::ReadMeta(const std::string& path, LexSnapshotMeta* meta, std::string* why,
                       int* errno_out) {
  *errno_out = 0;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *errno_out = errno;
    return false;
  }
  std::vector<uint8_t> head;
  LexLayout l;
  uint32_t version = 0;
  const char* bad = ReadHeaderPart(fd, &head, &l, &version, errno_out);
  ::close(fd);
  if (*errno_out) return false;
  if (bad) {
    *why = bad;
    return false;
  }
  if (version == kLexVersion) {
    FillMeta(head.data(), l, meta);
    return true;
  }
  // Format 2 has no header checksum: the whole file's, as a load checks it.
  std::shared_ptr<const Mapping> map = MapSnapshot(path, why, errno_out);
  if (!map) return false;
  if (const char* broken = ReadLayout(map->data(), map->size(), &l)) {
    *why = broken;
    return false;
  }
  FillMeta(map->data(), l, meta);
  return true;
}

std::unique_ptr<Lexicon> Lexicon::MapFile(const std::string& path, LexSnapshotMeta* meta,
                                          std::string* why, int* errno_out, LexCheck check) {
  std::shared_ptr<const Mapping> map = MapSnapshot(path, why, errno_out);
  if (!map) return nullptr;
  const uint8_t* p = map->data();
  const size_t n = map->size();
  return FromBase(std::move(map), p, n, meta, why, check);
}

std::unique_ptr<Lexicon> Lexicon::FromBase(std::shared_ptr<const void> owner, const uint8_t* data,
                                           size_t n, LexSnapshotMeta* meta, std::string* why,
                                           LexCheck check) {
  auto bad = [&](const char* what) -> std::unique_ptr<Lexicon> {
    *why = what;
    return nullptr;
  };
  LexLayout l;
  if (const char* broken = ReadLayout(data, n, &l)) return bad(broken);
  const uint64_t covered = l.covered, total = l.total, entries = l.entries, pool = l.pool;
  const uint32_t nterms = l.nterms, ndocs = l.ndocs;
  const uint64_t terms_at = l.terms_at, docs_at = l.docs_at;
  const uint64_t by_id_at = l.by_id_at, by_label_at = l.by_label_at;
  const char* strings = reinterpret_cast<const char*>(data + l.pool_at);
  const auto* postings = reinterpret_cast<const TermTf*>(data + l.postings_at);
  const auto* doc_terms = reinterpret_cast<const TermTf*>(data + l.doc_terms_at);
  // The term table: strings in order, strictly sorted, postings back to back, none empty.
  uint64_t pool_run = 0, post_run = 0;
  std::string_view prev;
  for (uint32_t t = 0; t < nterms; ++t) {
    const uint8_t* r = data + terms_at + kTermRecord * t;
    const uint32_t text_off = Rd<uint32_t>(r), len = Rd<uint32_t>(r + 4);
    const uint32_t start = Rd<uint32_t>(r + 8), df = Rd<uint32_t>(r + 12);
    if (text_off != pool_run || len > kMaxTermBytes || pool - pool_run < len)
      return bad("bad term");
    const std::string_view text(strings + text_off, len);
    if (t > 0 && !(prev < text)) return bad("terms not strictly sorted");
    if (start != post_run || df == 0 || df > ndocs) return bad("bad term posting");
    prev = text;
    pool_run += len;
    post_run += df;
  }
  if (post_run != entries) return bad("postings differ from the header's count");
  // Each posting: slots in range and strictly increasing, tf > 0 (one pass in file order).
  for (uint32_t t = 0; t < nterms; ++t) {
    const uint8_t* r = data + terms_at + kTermRecord * t;
    const TermTf* e = postings + Rd<uint32_t>(r + 8);
    const uint32_t df = Rd<uint32_t>(r + 12);
    for (uint32_t k = 0; k < df; ++k) {
      if (e[k].first >= ndocs || (k > 0 && e[k].first <= e[k - 1].first) || e[k].second == 0)
        return bad("bad posting entry");
    }
  }
  // The documents: strings in order, terms back to back and in range, lengths their sums.
  uint64_t dt_run = 0, length_sum = 0;
  for (uint32_t i = 0; i < ndocs; ++i) {
    const uint8_t* r = data + docs_at + kDocRecord * i;
    const uint64_t label = Rd<uint64_t>(r);
    const uint32_t id_off = Rd<uint32_t>(r + 16), id_len = Rd<uint32_t>(r + 20);
    const uint32_t length = Rd<uint32_t>(r + 24), first = Rd<uint32_t>(r + 28);
    const uint32_t distinct = Rd<uint32_t>(r + 32);
    if (id_off != pool_run || id_len > kMaxIdBytes || pool - pool_run < id_len ||
        Rd<uint32_t>(r + 36) != 0 || first != dt_run || entries - dt_run < distinct)
      return bad("bad document");
    if (label > covered) return bad("a label past the covered seq");
    pool_run += id_len;
    dt_run += distinct;
    uint64_t sum = 0;
    for (uint32_t j = 0; j < distinct; ++j) {
      const auto [t, tf] = doc_terms[first + j];
      if (t >= nterms || tf == 0) return bad("bad document term");
      sum += tf;
    }
    if (sum != length) return bad("a document's length differs from its terms");
    length_sum += length;
  }
  if (dt_run != entries || pool_run != pool) return bad("documents differ from the header");
  if (length_sum != total) return bad("total length differs");
  // The id and label orders: slots in range.
  const auto* by_id = reinterpret_cast<const uint32_t*>(data + by_id_at);
  const auto* by_label = reinterpret_cast<const uint32_t*>(data + by_label_at);
  for (uint32_t i = 0; i < ndocs; ++i) {
    if (by_id[i] >= ndocs || by_label[i] >= ndocs) return bad("bad order entry");
  }
  // Everything read in place is now within the file: no query or write can read outside it.
  // The full check also proves the sections agree with each other (what a writer bug could
  // break behind a valid checksum); kBounds leaves it to a later check.
  if (check == LexCheck::kFull) {
    const char* inconsistent =
        Inconsistency(data + terms_at, postings, data + docs_at, doc_terms, by_id, by_label,
                      strings, nterms, ndocs);
    if (inconsistent) return bad(inconsistent);
  }
  auto lex = std::make_unique<Lexicon>(l.k1, l.b);
  lex->base_owner_ = std::move(owner);
  lex->base_docs_ = ndocs;
  lex->base_terms_ = nterms;
  lex->base_live_ = ndocs;
  lex->base_term_table_ = data + terms_at;
  lex->base_postings_ = postings;
  lex->base_doc_table_ = data + docs_at;
  lex->base_doc_terms_ = doc_terms;
  lex->base_by_id_ = by_id;
  lex->base_by_label_ = by_label;
  lex->base_pool_ = strings;
  lex->live_terms_ = nterms;
  lex->total_len_ = total;
  FillMeta(data, l, meta);
  return lex;
}

}  // namespace headroom
