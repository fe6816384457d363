// One user's lexical index: Okapi BM25 postings over the tokens of the user's live memories,
// each memory's token length, label (the seq of its live version) and created_at; plus the
// snapshot codec that lets a fresh process load it instead of re-tokenizing every text.
//
// Tokens come from the caller (headroom.memory.store.ranking.tokenize, run once per memory
// when the change feed delivers it). Scores are computed with exactly the floating-point
// operations, in exactly the order, of the Python reference (ranking.LexicalIndex), so both
// give the same float64 bits; tests/test_lexicon_native.py pins them together.
//
// Not thread-safe by itself: the caller serialises writers against readers (the Python
// RankingState lock). Const methods may run concurrently with each other.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace headroom {

// What a snapshot records besides the index: the point it is exact at, and the user's vector
// sum (float64, as the local backend keeps it; dim 0 when none was recorded).
struct LexSnapshotMeta {
  std::string user;
  uint64_t covered_seq = 0;
  uint32_t generation = 0;  // the log's compaction count when it was taken
  std::vector<double> vector_sum;
  uint64_t vector_count = 0;
  uint64_t vector_seq = 0;
};

class Lexicon {
 public:
  Lexicon(double k1, double b);

  double k1() const { return k1_; }
  double b() const { return b_; }
  size_t size() const { return by_id_.size(); }
  uint64_t total_length() const { return total_len_; }
  size_t vocabulary() const { return live_terms_; }

  // Indexes `tokens` (in text order, repeats counted) as memory `id` with live label `label`,
  // replacing whatever `id` or `label` held before.
  void Add(uint64_t label, std::string_view id, int64_t created,
           const std::vector<std::string>& tokens);
  // Forgets the memory whose live label is `label`; false when no memory has it.
  bool RemoveLabel(uint64_t label);
  // Forgets memory `id`; false when unknown.
  bool RemoveId(std::string_view id);
  bool Contains(std::string_view id) const { return by_id_.count(std::string(id)) > 0; }
  std::optional<int64_t> Created(std::string_view id) const;
  // The memory id of a live label, or nullptr.
  const std::string* IdOfLabel(uint64_t label) const;

  // BM25 of each key for the query tokens (0.0 for an unknown key): LexicalIndex.scores.
  std::vector<double> Scores(const std::vector<std::string>& query,
                             const std::vector<std::string>& keys) const;
  // Each group of keys as one document: LexicalIndex.group_scores.
  std::vector<double> GroupScores(const std::vector<std::string>& query,
                                  const std::vector<std::vector<std::string>>& groups) const;
  // The k best (id, exact score), best first, candidates from the rarest terms within
  // `budget` postings: LexicalIndex.top.
  std::vector<std::pair<std::string, double>> Top(const std::vector<std::string>& query,
                                                  size_t k, size_t budget) const;

  // The snapshot bytes (docs/lexicon-snapshot.md): header, CRC32C, vocabulary, documents.
  std::string Serialize(const LexSnapshotMeta& meta) const;
  // Parses snapshot bytes. nullptr (and *why) when they are not an intact snapshot of this
  // format: bad magic or version, CRC mismatch, any length or reference out of bounds.
  static std::unique_ptr<Lexicon> Parse(const uint8_t* data, size_t n, LexSnapshotMeta* meta,
                                        std::string* why);

 private:
  // Slots are handed out in insertion order and never reused, so a posting (appended to in
  // insertion order) is in slot order; Renumber closes the holes of removed documents.
  struct Doc {
    std::string id;
    uint64_t label = 0;
    int64_t created = 0;
    uint32_t length = 0;
    bool live = false;
    std::vector<std::pair<uint32_t, uint32_t>> terms;  // (term, tf), first-occurrence order
  };
  struct Term {
    std::string text;
    // (slot, tf) in insertion order; entries of removed documents stay until Sweep.
    std::vector<std::pair<uint32_t, uint32_t>> posting;
    uint32_t df = 0;  // live entries
  };
  // A query term: its id (or -1 when no live document has it) and IDF.
  struct QueryTerm {
    int64_t id;
    double idf;
  };

  uint32_t Intern(const std::string& token);
  // The term's id when a live document has it, else -1.
  int64_t LiveTerm(const std::string& token) const;
  void Unindex(uint32_t slot);
  void Append(uint64_t label, std::string_view id, int64_t created,
              std::vector<std::pair<uint32_t, uint32_t>> terms, uint32_t length);
  void Sweep(Term* t);
  // Drops dead slots and unused terms, rebuilding the postings in the same order.
  void Renumber();
  double Idf(size_t df) const;
  double Avg() const;
  std::vector<QueryTerm> Resolve(const std::vector<std::string>& query) const;
  double DocScore(const Doc& d, const std::vector<QueryTerm>& q, double avg) const;
  static uint32_t TfIn(const Doc& d, uint32_t term);

  double k1_, b_;
  std::vector<Doc> docs_;  // by slot
  size_t dead_ = 0;        // slots of removed documents
  std::unordered_map<std::string, uint32_t> by_id_;
  std::unordered_map<uint64_t, uint32_t> by_label_;
  std::vector<Term> terms_;
  std::unordered_map<std::string, uint32_t> term_ids_;
  size_t live_terms_ = 0;  // terms with df > 0
  uint64_t total_len_ = 0;
};

}  // namespace headroom
