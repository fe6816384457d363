// Okapi BM25 over one user's memories, and its snapshot codec (see lexicon.h).
//
// Bit-identical scores: every formula below is the Python reference's (ranking.LexicalIndex)
// written with the same operations in the same order, in float64, with integers converted to
// double where Python mixes int and float (exact below 2**53). The build compiles this file
// with -ffp-contract=off so no multiply-add is fused.
#include "lexicon.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "crc32c.h"
#include "format.h"

namespace headroom {

namespace {

constexpr char kLexMagic[8] = {'H', 'R', 'L', 'E', 'X', 'I', 'C', 'N'};
constexpr uint32_t kLexVersion = 1;
constexpr size_t kLexHeaderSize = 96;
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

// A bounds-checked little-endian reader over untrusted bytes.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  template <class T>
  bool Get(T* v) {
    if (n_ - off_ < sizeof(T)) return false;
    std::memcpy(v, p_ + off_, sizeof(T));
    off_ += sizeof(T);
    return true;
  }
  bool Bytes(size_t len, std::string_view* v) {
    if (n_ - off_ < len) return false;
    *v = std::string_view(reinterpret_cast<const char*>(p_ + off_), len);
    off_ += len;
    return true;
  }
  size_t left() const { return n_ - off_; }
  void Seek(size_t off) { off_ = off; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t off_ = 0;
};

// Scratch positions by term id, reset after each use (thread_local: const methods may run
// concurrently).
std::vector<int32_t>& TermScratch(size_t terms) {
  thread_local std::vector<int32_t> scratch;
  if (scratch.size() < terms) scratch.resize(terms, -1);
  return scratch;
}

}  // namespace

Lexicon::Lexicon(double k1, double b) : k1_(k1), b_(b) {}

// --- writes ------------------------------------------------------------------------------------

uint32_t Lexicon::Intern(const std::string& token) {
  auto it = term_ids_.find(token);
  if (it != term_ids_.end()) return it->second;
  uint32_t id = static_cast<uint32_t>(terms_.size());
  terms_.push_back(Term{token, {}, 0});
  term_ids_.emplace(token, id);
  return id;
}

int64_t Lexicon::LiveTerm(const std::string& token) const {
  auto it = term_ids_.find(token);
  if (it == term_ids_.end() || terms_[it->second].df == 0) return -1;
  return it->second;
}

void Lexicon::Add(uint64_t label, std::string_view id, int64_t created,
                  const std::vector<std::string>& tokens) {
  auto old = by_id_.find(std::string(id));
  if (old != by_id_.end()) Unindex(old->second);
  auto same_label = by_label_.find(label);
  if (same_label != by_label_.end()) Unindex(same_label->second);
  std::vector<std::pair<uint32_t, uint32_t>> terms;
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
                     std::vector<std::pair<uint32_t, uint32_t>> terms, uint32_t length) {
  uint32_t slot = static_cast<uint32_t>(docs_.size());
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
  Doc& d = docs_[slot];
  if (!d.live) return;
  d.live = false;
  total_len_ -= d.length;
  for (const auto& [t, tf] : d.terms) {
    Term& term = terms_[t];
    if (--term.df == 0) --live_terms_;
    // Entries of removed documents are skipped by every walk; swept once they are the
    // majority, so a walk costs at most twice the live entries.
    if (term.posting.size() > 2 * static_cast<size_t>(term.df) + 8) Sweep(&term);
  }
  by_id_.erase(d.id);
  by_label_.erase(d.label);
  std::string().swap(d.id);
  std::vector<std::pair<uint32_t, uint32_t>>().swap(d.terms);
  if (++dead_ > 1024 && dead_ > by_id_.size()) Renumber();
}

void Lexicon::Sweep(Term* t) {
  auto& p = t->posting;
  p.erase(std::remove_if(p.begin(), p.end(),
                         [this](const std::pair<uint32_t, uint32_t>& e) {
                           return !docs_[e.first].live;
                         }),
          p.end());
}

void Lexicon::Renumber() {
  std::vector<Doc> docs;
  docs.swap(docs_);
  std::vector<Term> old_terms;
  old_terms.swap(terms_);
  term_ids_.clear();
  by_id_.clear();
  by_label_.clear();
  live_terms_ = 0;
  total_len_ = 0;
  dead_ = 0;
  std::vector<int64_t> remap(old_terms.size(), -1);
  for (Doc& d : docs) {
    if (!d.live) continue;
    for (auto& [t, tf] : d.terms) {
      if (remap[t] < 0) remap[t] = Intern(old_terms[t].text);
      t = static_cast<uint32_t>(remap[t]);
    }
    Append(d.label, d.id, d.created, std::move(d.terms), d.length);
  }
}

bool Lexicon::RemoveLabel(uint64_t label) {
  auto it = by_label_.find(label);
  if (it == by_label_.end()) return false;
  Unindex(it->second);
  return true;
}

bool Lexicon::RemoveId(std::string_view id) {
  auto it = by_id_.find(std::string(id));
  if (it == by_id_.end()) return false;
  Unindex(it->second);
  return true;
}

std::optional<int64_t> Lexicon::Created(std::string_view id) const {
  auto it = by_id_.find(std::string(id));
  if (it == by_id_.end()) return std::nullopt;
  return docs_[it->second].created;
}

const std::string* Lexicon::IdOfLabel(uint64_t label) const {
  auto it = by_label_.find(label);
  return it == by_label_.end() ? nullptr : &docs_[it->second].id;
}

// --- scoring -----------------------------------------------------------------------------------

double Lexicon::Idf(size_t df) const {
  // math.log(1.0 + (n - df + 0.5) / (df + 0.5))
  const size_t n = by_id_.size();
  return std::log(1.0 + (static_cast<double>(n - df) + 0.5) / (static_cast<double>(df) + 0.5));
}

double Lexicon::Avg() const {
  // self._total_len / len(self._docs) or 1.0
  double avg = static_cast<double>(total_len_) / static_cast<double>(by_id_.size());
  return avg == 0.0 ? 1.0 : avg;
}

std::vector<Lexicon::QueryTerm> Lexicon::Resolve(const std::vector<std::string>& query) const {
  std::vector<QueryTerm> out;
  out.reserve(query.size());
  for (const std::string& t : query) {
    int64_t id = LiveTerm(t);
    out.push_back({id, id < 0 ? 0.0 : Idf(terms_[id].df)});
  }
  return out;
}

uint32_t Lexicon::TfIn(const Doc& d, uint32_t term) {
  for (const auto& [t, tf] : d.terms) {
    if (t == term) return tf;
  }
  return 0;
}

double Lexicon::DocScore(const Doc& d, const std::vector<QueryTerm>& q, double avg) const {
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
  if (query.empty() || by_id_.empty()) return out;
  const double avg = Avg();
  const std::vector<QueryTerm> q = Resolve(query);
  for (size_t i = 0; i < keys.size(); ++i) {
    auto it = by_id_.find(keys[i]);
    if (it != by_id_.end()) out[i] = DocScore(docs_[it->second], q, avg);
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
  if (distinct.empty() || by_id_.empty()) return out;
  const std::vector<QueryTerm> q = Resolve(distinct);
  std::vector<uint64_t> counts(q.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    std::fill(counts.begin(), counts.end(), 0);
    for (const std::string& key : groups[g]) {
      auto it = by_id_.find(key);
      if (it == by_id_.end()) continue;
      const Doc& d = docs_[it->second];
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
  if (k == 0 || query.empty() || by_id_.empty()) return out;
  const double avg = Avg();
  const double k1 = k1_, k1p1 = k1_ + 1.0, b = b_;
  // sorted(terms, key=lambda t: len(postings.get(t, ()))): stable, by live document count.
  std::vector<int64_t> ids;
  ids.reserve(query.size());
  for (const std::string& t : query) ids.push_back(LiveTerm(t));
  auto df = [&](int64_t id) -> size_t { return id < 0 ? 0 : terms_[id].df; };
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int64_t a, int64_t c) { return df(a) < df(c); });
  // acc: the candidates in first-seen order with their walk scores.
  std::vector<std::pair<uint32_t, double>> acc;
  std::unordered_map<uint32_t, uint32_t> where;
  where.reserve(std::min<size_t>(budget, by_id_.size()) + 1);
  std::vector<int64_t> common;
  size_t walked = 0;
  for (int64_t id : ids) {
    if (id < 0) continue;  // no live posting
    const Term& term = terms_[id];
    if (!common.empty() || walked + term.df > budget) {
      common.push_back(id);
      continue;
    }
    walked += term.df;
    const double idf = Idf(term.df);
    for (const auto& [slot, tf] : term.posting) {
      const Doc& d = docs_[slot];
      if (!d.live) continue;
      const double f = static_cast<double>(tf);
      const double part =
          f * k1p1 / (f + k1 * ((1.0 - b) + b * static_cast<double>(d.length) / avg));
      auto [it, fresh] = where.emplace(slot, static_cast<uint32_t>(acc.size()));
      if (fresh) {
        acc.emplace_back(slot, 0.0 + idf * part);
      } else {
        acc[it->second].second = acc[it->second].second + idf * part;
      }
    }
  }
  if (!common.empty() && !acc.empty()) {
    std::vector<double> idfs;
    for (int64_t id : common) idfs.push_back(Idf(terms_[id].df));
    for (auto& [slot, score] : acc) {
      const Doc& d = docs_[slot];
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
    const Doc& d = docs_[acc[order[i]].first];
    out.emplace_back(d.id, DocScore(d, q, avg));
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const std::pair<std::string, double>& a,
                      const std::pair<std::string, double>& c) { return a.second > c.second; });
  return out;
}

// --- snapshots ---------------------------------------------------------------------------------
//
// Layout (little-endian; docs/lexicon-snapshot.md):
//   0 magic "HRLEXICN"          8 u32 version           12 u32 masked CRC32C of [16, size)
//  16 u64 size                 24 u64 covered_seq      32 u32 generation
//  36 u32 user bytes           40 f64 k1               48 f64 b
//  56 u32 terms                60 u32 documents        64 u32 vector dim
//  68 u32 reserved (0)         72 u64 vector count     80 u64 vector seq
//  88 u64 total length
//  96 user id, then f64 x dim (the vector sum), then each term (u32 bytes, bytes), then each
//     document in insertion order (u64 label, i64 created_at, u32 id bytes, u32 length,
//     u32 distinct terms, id, then (u32 term, u32 tf) per distinct term).

std::string Lexicon::Serialize(const LexSnapshotMeta& meta) const {
  std::string out(kLexHeaderSize, '\0');
  std::memcpy(&out[0], kLexMagic, 8);
  out.append(meta.user);
  for (double v : meta.vector_sum) Put(&out, v);
  // Only terms a live document has, renumbered in first-use order.
  std::vector<int64_t> remap(terms_.size(), -1);
  uint32_t nterms = 0;
  for (const Doc& d : docs_) {
    if (!d.live) continue;
    for (const auto& [t, tf] : d.terms) {
      if (remap[t] < 0) {
        remap[t] = nterms++;
        Put(&out, static_cast<uint32_t>(terms_[t].text.size()));
        out.append(terms_[t].text);
      }
    }
  }
  uint32_t ndocs = 0;
  for (const Doc& d : docs_) {
    if (!d.live) continue;
    ++ndocs;
    Put(&out, d.label);
    Put(&out, d.created);
    Put(&out, static_cast<uint32_t>(d.id.size()));
    Put(&out, d.length);
    Put(&out, static_cast<uint32_t>(d.terms.size()));
    out.append(d.id);
    for (const auto& [t, tf] : d.terms) {
      Put(&out, static_cast<uint32_t>(remap[t]));
      Put(&out, tf);
    }
  }
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
  const auto* p = reinterpret_cast<const uint8_t*>(out.data());
  PutAt(&out, 12, MaskCrc(Crc32c(p + 16, out.size() - 16)));
  return out;
}

std::unique_ptr<Lexicon> Lexicon::Parse(const uint8_t* data, size_t n, LexSnapshotMeta* meta,
                                        std::string* why) {
  auto bad = [&](const char* what) -> std::unique_ptr<Lexicon> {
    *why = what;
    return nullptr;
  };
  if (n < kLexHeaderSize) return bad("shorter than the header");
  if (std::memcmp(data, kLexMagic, 8) != 0) return bad("not a lexicon snapshot (magic)");
  Reader r(data, n);
  r.Seek(8);
  uint32_t version = 0, crc = 0, generation = 0, user_len = 0, nterms = 0, ndocs = 0, dim = 0,
           reserved = 0;
  uint64_t size = 0, covered = 0, vcount = 0, vseq = 0, total = 0;
  double k1 = 0, b = 0;
  r.Get(&version);
  r.Get(&crc);
  r.Get(&size);
  r.Get(&covered);
  r.Get(&generation);
  r.Get(&user_len);
  r.Get(&k1);
  r.Get(&b);
  r.Get(&nterms);
  r.Get(&ndocs);
  r.Get(&dim);
  r.Get(&reserved);
  r.Get(&vcount);
  r.Get(&vseq);
  r.Get(&total);
  if (version != kLexVersion) return bad("unknown snapshot version");
  if (size != n) return bad("size differs from the header's");
  if (UnmaskCrc(crc) != Crc32c(data + 16, n - 16)) return bad("checksum mismatch");
  if (reserved != 0 || user_len > kMaxUserBytes || dim > kMaxDim) return bad("bad header");
  if (!(k1 >= 0) || !(b >= 0 && b <= 1)) return bad("bad BM25 parameters");
  std::string_view user;
  if (!r.Bytes(user_len, &user)) return bad("truncated user id");
  if (r.left() / 8 < dim) return bad("truncated vector sum");
  std::vector<double> vsum(dim);
  for (double& v : vsum) r.Get(&v);
  auto lex = std::make_unique<Lexicon>(k1, b);
  if (r.left() / 4 < nterms) return bad("truncated vocabulary");
  lex->terms_.reserve(nterms);
  lex->term_ids_.reserve(nterms);
  for (uint32_t i = 0; i < nterms; ++i) {
    uint32_t len = 0;
    std::string_view text;
    if (!r.Get(&len) || len > kMaxTermBytes || !r.Bytes(len, &text)) return bad("bad term");
    if (lex->Intern(std::string(text)) != i) return bad("repeated term");
  }
  if (r.left() / 28 < ndocs) return bad("truncated documents");
  // Two passes over the documents: the first checks them and counts each term's documents
  // (so every posting is allocated once, at its size), the second builds the index.
  const size_t docs_at = n - r.left();
  std::vector<uint32_t> seen(nterms, UINT32_MAX);
  std::vector<uint32_t> df(nterms, 0);
  for (uint32_t i = 0; i < ndocs; ++i) {
    uint64_t label = 0;
    int64_t created = 0;
    uint32_t id_len = 0, length = 0, distinct = 0;
    std::string_view id;
    if (!r.Get(&label) || !r.Get(&created) || !r.Get(&id_len) || !r.Get(&length) ||
        !r.Get(&distinct) || id_len > kMaxIdBytes || !r.Bytes(id_len, &id) ||
        r.left() / 8 < distinct)
      return bad("bad document");
    if (label > covered) return bad("a label past the covered seq");
    uint64_t sum = 0;
    for (uint32_t j = 0; j < distinct; ++j) {
      uint32_t t = 0, tf = 0;
      r.Get(&t);
      r.Get(&tf);
      if (t >= nterms || tf == 0 || seen[t] == i) return bad("bad document term");
      seen[t] = i;
      ++df[t];
      sum += tf;
    }
    if (sum != length) return bad("a document's length differs from its terms");
  }
  if (r.left() != 0) return bad("trailing bytes");
  for (uint32_t t = 0; t < nterms; ++t) lex->terms_[t].posting.reserve(df[t]);
  lex->docs_.reserve(ndocs);
  lex->by_id_.reserve(ndocs);
  lex->by_label_.reserve(ndocs);
  r.Seek(docs_at);
  for (uint32_t i = 0; i < ndocs; ++i) {
    uint64_t label = 0;
    int64_t created = 0;
    uint32_t id_len = 0, length = 0, distinct = 0;
    std::string_view id;
    r.Get(&label);
    r.Get(&created);
    r.Get(&id_len);
    r.Get(&length);
    r.Get(&distinct);
    r.Bytes(id_len, &id);
    std::vector<std::pair<uint32_t, uint32_t>> terms(distinct);
    for (auto& [t, tf] : terms) {
      r.Get(&t);
      r.Get(&tf);
    }
    lex->Append(label, id, created, std::move(terms), length);
    if (lex->by_id_.size() != i + 1 || lex->by_label_.size() != i + 1)
      return bad("repeated document");
  }
  if (lex->total_len_ != total) return bad("total length differs");
  if (lex->live_terms_ != nterms) return bad("a term no document has");
  meta->user = std::string(user);
  meta->covered_seq = covered;
  meta->generation = generation;
  meta->vector_sum = std::move(vsum);
  meta->vector_count = vcount;
  meta->vector_seq = vseq;
  return lex;
}

}  // namespace headroom
