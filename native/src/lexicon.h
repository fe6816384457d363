// One user's lexical index: Okapi BM25 postings over the tokens of the user's live memories,
// each memory's token length, label (the seq of its live version) and created_at; plus the
// snapshot codec that lets a fresh process map it instead of re-tokenizing every text: a
// snapshot is laid out to be read in place (the index's base); later writes go to an overlay.
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

// How much of a snapshot Parse and MapFile check. kBounds: magic, version, size, checksum,
// and every offset, count, slot and term id the index reads in place within its section (so
// no query or write on the index reads outside the file, whatever its bytes). kFull adds what
// only a writer bug could break behind a valid checksum: that the postings and the documents'
// terms agree, no document repeats a term, and the id and label orders are strictly
// increasing. Searches map with kBounds and run kFull on a thread afterwards; verify uses kFull.
enum class LexCheck { kBounds, kFull };

class Lexicon {
 public:
  Lexicon(double k1, double b);

  double k1() const { return k1_; }
  double b() const { return b_; }
  size_t size() const { return base_live_ + by_id_.size(); }
  uint64_t total_length() const { return total_len_; }
  size_t vocabulary() const { return live_terms_; }
  // Whether a snapshot's bytes serve as the base (read in place; see Parse and MapFile).
  bool has_base() const { return base_owner_ != nullptr; }

  // Indexes `tokens` (in text order, repeats counted) as memory `id` with live label `label`,
  // replacing whatever `id` or `label` held before.
  void Add(uint64_t label, std::string_view id, int64_t created,
           const std::vector<std::string>& tokens);
  // Forgets the memory whose live label is `label`; false when no memory has it.
  bool RemoveLabel(uint64_t label);
  // Forgets memory `id`; false when unknown.
  bool RemoveId(std::string_view id);
  bool Contains(std::string_view id) const { return FindId(id) >= 0; }
  std::optional<int64_t> Created(std::string_view id) const;
  // The memory id of a live label.
  std::optional<std::string> IdOfLabel(uint64_t label) const;

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

  // The snapshot bytes (docs/lexicon-snapshot.md): header, CRC32C, a sorted term table,
  // postings, documents, id and label orders, strings; laid out to be read in place.
  std::string Serialize(const LexSnapshotMeta& meta) const;
  // Checks snapshot bytes (`check`) and serves the index from a private copy of them. nullptr
  // (and *why) when they are not an intact snapshot of this format: bad magic or version, CRC
  // mismatch, any length or reference out of bounds, and with kFull any order or relation
  // between sections broken.
  static std::unique_ptr<Lexicon> Parse(const uint8_t* data, size_t n, LexSnapshotMeta* meta,
                                        std::string* why, LexCheck check = LexCheck::kFull);
  // The same over the file at `path`, mapped read-only and served in place (its pages are
  // page cache, shared by every process mapping it). The file must never be changed in
  // place (snapshots are replaced by rename). nullptr and *why when it is not intact; *errno_out
  // is set (and nullptr returned) when it cannot be opened or mapped.
  static std::unique_ptr<Lexicon> MapFile(const std::string& path, LexSnapshotMeta* meta,
                                          std::string* why, int* errno_out,
                                          LexCheck check = LexCheck::kFull);
  // Only the header's record of the file at `path` (user, covered seq, generation, vector
  // sum). Format 3: reads the header, user id and vector sum alone and checks their own
  // checksum, the header's fields and the file's size (the rest of the file is not read: a
  // load checks it). Format 2: maps the file and checks the checksum of every byte, header
  // fields and section sizes. No index is built. False and *why (or *errno_out) as MapFile.
  static bool ReadMeta(const std::string& path, LexSnapshotMeta* meta, std::string* why,
                       int* errno_out);

 private:
  // The index is a base (a snapshot's bytes, read in place: documents in slots
  // [0, base_docs_), terms [0, base_terms_)) plus an in-memory overlay: documents added since
  // (slots from base_docs_ on), new terms, and which base documents were removed.
  //
  // Slots are handed out in insertion order and never reused, so a posting (base part, then
  // overlay part) is in slot order; Renumber closes the holes of removed documents (and moves
  // a base into memory).
  using TermTf = std::pair<uint32_t, uint32_t>;
  struct Doc {
    std::string id;
    uint64_t label = 0;
    int64_t created = 0;
    uint32_t length = 0;
    bool live = false;
    std::vector<TermTf> terms;  // (term, tf), first-occurrence order
  };
  // A document as the scorer sees it, base or overlay.
  struct DocView {
    std::string_view id;
    uint64_t label;
    int64_t created;
    uint32_t length;
    bool live;
    const TermTf* terms;
    uint32_t distinct;
  };
  struct Term {
    std::string text;  // empty for a base term (its text is in the base)
    // (slot, tf) in insertion order of the overlay's documents; entries of removed
    // documents stay until Sweep.
    std::vector<TermTf> posting;
    uint32_t df = 0;  // live documents (base and overlay) having the term
  };
  // A query term: its id (or -1 when no live document has it) and IDF.
  struct QueryTerm {
    int64_t id;
    double idf;
  };

  static std::unique_ptr<Lexicon> FromBase(std::shared_ptr<const void> owner,
                                           const uint8_t* data, size_t n,
                                           LexSnapshotMeta* meta, std::string* why,
                                           LexCheck check);
  // Sizes the overlay's per-term state over the base's terms (once, at the first write).
  void Thaw();
  uint32_t Intern(const std::string& token);
  // The term's id (base or overlay), or -1 when unknown.
  int64_t FindTerm(std::string_view token) const;
  // The term's id when a live document has it, else -1.
  int64_t LiveTerm(const std::string& token) const;
  uint32_t Df(uint32_t term) const;
  std::string_view TermText(uint32_t term) const;
  // The base part of a term's posting (empty for an overlay term).
  std::pair<const TermTf*, uint32_t> BasePosting(uint32_t term) const;
  DocView View(uint32_t slot) const;
  // The slot of a live document, or -1.
  int64_t FindId(std::string_view id) const;
  int64_t FindLabel(uint64_t label) const;
  void Unindex(uint32_t slot);
  void Append(uint64_t label, std::string_view id, int64_t created, std::vector<TermTf> terms,
              uint32_t length);
  void Sweep(Term* t);
  // Drops dead slots and unused terms, rebuilding the postings in the same order, all in
  // memory (a base is copied into the overlay and let go).
  void Renumber();
  double Idf(size_t df) const;
  double Avg() const;
  std::vector<QueryTerm> Resolve(const std::vector<std::string>& query) const;
  double DocScore(const DocView& d, const std::vector<QueryTerm>& q, double avg) const;
  static uint32_t TfIn(const DocView& d, uint32_t term);

  double k1_, b_;
  // The base: its bytes (kept alive by base_owner_) and section pointers.
  std::shared_ptr<const void> base_owner_;
  uint32_t base_docs_ = 0, base_terms_ = 0;
  size_t base_live_ = 0;
  const uint8_t* base_term_table_ = nullptr;  // 16 B per term
  const TermTf* base_postings_ = nullptr;     // (slot, tf)
  const uint8_t* base_doc_table_ = nullptr;   // 40 B per document
  const TermTf* base_doc_terms_ = nullptr;    // (term, tf)
  const uint32_t* base_by_id_ = nullptr;      // slots sorted by id
  const uint32_t* base_by_label_ = nullptr;   // slots sorted by label
  const char* base_pool_ = nullptr;
  std::vector<bool> base_dead_;  // removed base documents (sized at the first removal)

  std::vector<Doc> docs_;  // overlay documents, slot base_docs_ + index
  size_t dead_ = 0;        // slots of removed documents (base and overlay)
  std::unordered_map<std::string, uint32_t> by_id_;  // overlay documents only
  std::unordered_map<uint64_t, uint32_t> by_label_;
  std::vector<Term> terms_;  // every term once thawed (or none while only the base is read)
  std::unordered_map<std::string, uint32_t> term_ids_;  // overlay terms only
  size_t live_terms_ = 0;  // terms with df > 0
  uint64_t total_len_ = 0;
};

}  // namespace headroom
