// C++ unit tests of the lexical index (lexicon.h): BM25 scores against the formula computed
// here from scratch, the candidate walk and its budget, adds/replacements/removals, the
// renumbering after many removals, and the snapshot codec (round trip, every single-byte
// change and every truncation refused). Plain checks that survive NDEBUG; run by ctest.
// (The bit-for-bit comparison with the Python reference is tests/test_lexicon_native.py.)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "check.h"
#include "crc32c.h"
#include "lexicon.h"

#include <unistd.h>

namespace {

using namespace headroom;
using Tokens = std::vector<std::string>;

constexpr double kK1 = 1.2, kB = 0.3;

// BM25 of one document from scratch over a corpus (the documented formula, same order).
double Brute(const std::map<std::string, Tokens>& docs, const Tokens& query,
             const std::string& key) {
  auto it = docs.find(key);
  if (it == docs.end() || query.empty()) return 0.0;
  const double n = static_cast<double>(docs.size());
  uint64_t total = 0;
  for (const auto& [k, d] : docs) total += d.size();
  double avg = static_cast<double>(total) / n;
  if (avg == 0.0) avg = 1.0;
  double score = 0.0;
  for (const std::string& t : query) {
    uint32_t tf = 0;
    for (const std::string& w : it->second) tf += w == t;
    if (!tf) continue;
    size_t df = 0;
    for (const auto& [k, d] : docs) {
      for (const std::string& w : d) {
        if (w == t) {
          ++df;
          break;
        }
      }
    }
    const double idf = std::log(1.0 + (n - static_cast<double>(df) + 0.5) /
                                          (static_cast<double>(df) + 0.5));
    const double f = tf, len = static_cast<double>(it->second.size());
    score += idf * (f * (kK1 + 1.0) / (f + kK1 * ((1.0 - kB) + kB * len / avg)));
  }
  return score;
}

TEST(scores_follow_the_formula_through_adds_replacements_and_removals) {
  Lexicon lex(kK1, kB);
  std::map<std::string, Tokens> docs = {
      {"a", {"zebra", "garden", "zebra"}},
      {"b", {"violin", "garden"}},
      {"c", {"tea"}},
      {"d", {}},
  };
  uint64_t label = 0;
  for (const auto& [k, d] : docs) {
    ++label;
    lex.Add(label, k, 100 + label, d);
  }
  CHECK(lex.size() == 4);
  CHECK(lex.total_length() == 6);
  // Replace "b" (a new label), remove "c" by its label.
  docs["b"] = {"violin", "violin", "tea", "zebra"};
  lex.Add(++label, "b", 7, docs["b"]);
  CHECK(lex.RemoveLabel(3));
  docs.erase("c");
  CHECK(!lex.RemoveLabel(3));
  CHECK(!lex.RemoveLabel(2));  // b's old label went with the replacement
  CHECK(*lex.IdOfLabel(label) == "b");
  CHECK(lex.Created("b").value() == 7);
  CHECK(!lex.Created("c").has_value());
  const Tokens query = {"zebra", "tea", "zebra", "unseen"};
  const Tokens keys = {"a", "b", "c", "d", "nobody"};
  std::vector<double> got = lex.Scores(query, keys);
  for (size_t i = 0; i < keys.size(); ++i) CHECK(got[i] == Brute(docs, query, keys[i]));
  CHECK(got[0] > 0 && got[1] > 0 && got[2] == 0 && got[3] == 0 && got[4] == 0);
  // Groups: summed counts, each distinct term once, no length normalisation.
  std::vector<double> groups = lex.GroupScores(query, {{"a", "b"}, {"d"}, {}});
  CHECK(groups.size() == 3 && groups[0] > 0 && groups[1] == 0 && groups[2] == 0);
}

TEST(top_is_the_exact_top_k_within_the_budget_and_walks_rare_terms_first) {
  Lexicon lex(kK1, kB);
  for (uint64_t i = 0; i < 50; ++i) {
    Tokens d = {"user", "likes"};
    if (i % 10 == 3) d.push_back("zebra");
    lex.Add(i + 1, "m" + std::to_string(i), 0, d);
  }
  lex.Add(100, "rare", 0, {"user", "zanzibar"});
  auto top = lex.Top({"user", "zanzibar"}, 3, 2000);
  CHECK(top.size() == 3 && top[0].first == "rare");
  CHECK(top[0].second >= top[1].second && top[1].second >= top[2].second);
  // With a budget of 10 postings, "user" (51) generates no candidates but still scores.
  auto capped = lex.Top({"user", "zanzibar"}, 3, 10);
  CHECK(capped.size() == 1 && capped[0].first == "rare");
  CHECK(capped[0].second == lex.Scores({"user", "zanzibar"}, {"rare"})[0]);
  // A rarest term that alone exceeds the budget: no candidates at all.
  CHECK(lex.Top({"user"}, 3, 10).empty());
  CHECK(lex.Top({"user"}, 0, 2000).empty());
  CHECK(lex.Top({}, 3, 2000).empty());
}

TEST(removing_most_documents_renumbers_and_answers_as_a_fresh_index) {
  Lexicon lex(kK1, kB), fresh(kK1, kB);
  const Tokens words = {"tea", "coffee", "zebra", "violin", "garden", "python"};
  auto doc = [&](int i) {
    Tokens d;
    for (int j = 0; j <= i % 7; ++j) d.push_back(words[(i + j) % 6]);
    return d;
  };
  for (int i = 0; i < 3000; ++i) lex.Add(i + 1, "k" + std::to_string(i), i, doc(i));
  for (int i = 0; i < 3000; ++i) {
    if (i % 3) CHECK(lex.RemoveLabel(i + 1));
  }
  for (int i = 0; i < 3000; i += 3) fresh.Add(i + 1, "k" + std::to_string(i), i, doc(i));
  CHECK(lex.size() == fresh.size() && lex.total_length() == fresh.total_length());
  CHECK(lex.vocabulary() == fresh.vocabulary());
  const Tokens q = {"zebra", "violin", "tea"};
  for (size_t budget : {size_t{0}, size_t{100}, size_t{2000}}) {
    CHECK(lex.Top(q, 25, budget) == fresh.Top(q, 25, budget));
  }
  LexSnapshotMeta meta;
  CHECK(lex.Serialize(meta) == fresh.Serialize(meta));
}

TEST(a_snapshot_read_in_place_grows_and_shrinks_as_the_index_in_memory) {
  // The base (the snapshot's bytes, read in place) plus the overlay of later writes answers,
  // serializes and renumbers exactly as an index that was never snapshotted.
  Lexicon mem(kK1, kB);
  const Tokens words = {"tea", "coffee", "zebra", "violin", "garden", "python", "rare"};
  auto doc = [&](int i) {
    Tokens d;
    for (int j = 0; j <= i % 5; ++j) d.push_back(words[(i * 3 + j) % 7]);
    return d;
  };
  for (int i = 0; i < 2500; ++i) mem.Add(i + 1, "k" + std::to_string(i), i, doc(i));
  LexSnapshotMeta meta;
  meta.covered_seq = 2500;
  const std::string bytes = mem.Serialize(meta);
  LexSnapshotMeta back;
  std::string why;
  std::unique_ptr<Lexicon> base =
      Lexicon::Parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &back, &why);
  CHECK(base != nullptr && base->has_base());
  if (!base) return;
  const Tokens q = {"rare", "zebra", "violin", "tea", "unknown"};
  auto same = [&](const char* when) {
    bool ok = base->size() == mem.size() && base->total_length() == mem.total_length() &&
              base->vocabulary() == mem.vocabulary() && base->Serialize(meta) == mem.Serialize(meta);
    for (size_t budget : {size_t{0}, size_t{40}, size_t{5000}}) {
      ok = ok && base->Top(q, 30, budget) == mem.Top(q, 30, budget);
    }
    const Tokens keys = {"k0", "k1", "k7", "k2499", "new1", "nobody"};
    ok = ok && base->Scores(q, keys) == mem.Scores(q, keys);
    ok = ok && base->GroupScores(q, {{"k1", "k2"}, {"new2"}}) ==
                   mem.GroupScores(q, {{"k1", "k2"}, {"new2"}});
    if (!ok) std::fprintf(stderr, "differs %s\n", when);
    CHECK(ok);
  };
  same("as loaded");
  for (int i = 0; i < 300; ++i) {  // replacements of base documents and new ones
    for (Lexicon* x : {base.get(), &mem}) {
      x->Add(3000 + i, "k" + std::to_string(i * 5), 7, {"rare", "python", "rare"});
      x->Add(4000 + i, "new" + std::to_string(i), 8, {"violin", "brandnew"});
    }
  }
  for (int i = 1; i < 2500; i += 7) CHECK(base->RemoveLabel(i) == mem.RemoveLabel(i));
  CHECK(base->RemoveId("new3") && mem.RemoveId("new3"));
  // k0 was replaced: its base slot is dead, the overlay holds the live one.
  const bool removed_base = base->RemoveId("k0"), removed_mem = mem.RemoveId("k0");
  CHECK(removed_base && removed_mem);
  CHECK(!base->RemoveId("k0") && !base->Contains("k0") && base->Created("k0") == std::nullopt);
  CHECK(base->Created("k5") == mem.Created("k5") && base->Created("k5") == 7);
  CHECK(base->IdOfLabel(2) == mem.IdOfLabel(2) && base->IdOfLabel(1) == std::nullopt);
  CHECK(base->has_base());
  same("after writes over the base");
  for (int i = 0; i < 2500; i += 2) {
    base->RemoveLabel(i + 1);
    mem.RemoveLabel(i + 1);
  }
  CHECK(!base->has_base());  // renumbered into memory
  same("after renumbering");
}

TEST(a_snapshot_whose_postings_differ_from_its_documents_is_refused_despite_its_checksum) {
  Lexicon lex(kK1, kB);
  lex.Add(1, "a", 1, {"tea", "zebra", "tea"});
  lex.Add(2, "b", 2, {"zebra", "violin"});
  LexSnapshotMeta meta;
  meta.user = "u";  // padded to 8 bytes
  meta.covered_seq = 2;
  const std::string good = lex.Serialize(meta);
  uint32_t nterms = 0;
  std::memcpy(&nterms, good.data() + 56, 4);
  const size_t postings_at = 128 + 8 + 16 * size_t{nterms};
  auto reparse = [&](std::string bytes, std::string* why) {
    const uint32_t crc = MaskCrc(Crc32c(reinterpret_cast<const uint8_t*>(bytes.data()) + 16,
                                        bytes.size() - 16));
    std::memcpy(&bytes[12], &crc, 4);
    LexSnapshotMeta m;
    return Lexicon::Parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &m, why);
  };
  std::string why;
  CHECK(reparse(good, &why) != nullptr);
  // Each posting entry (slot, tf) changed in turn: its tf raised by one, its slot moved to the
  // other document; the CRC recomputed, so only the structural checks can refuse it.
  uint64_t entries = 0;
  std::memcpy(&entries, good.data() + 96, 8);
  int refused = 0, tried = 0;
  for (size_t k = 0; k < entries; ++k) {
    for (int field : {0, 1}) {
      std::string bad = good;
      uint32_t v = 0;
      std::memcpy(&v, &bad[postings_at + 8 * k + 4 * field], 4);
      v = field == 1 ? v + 1 : v ^ 1;
      std::memcpy(&bad[postings_at + 8 * k + 4 * field], &v, 4);
      ++tried;
      refused += reparse(bad, &why) == nullptr;
    }
  }
  CHECK(entries == 4 && tried == 8 && refused == tried);
}

TEST(a_snapshot_round_trips_and_every_damaged_byte_or_truncation_is_refused) {
  Lexicon lex(kK1, kB);
  lex.Add(3, "a", 11, {"zebra", "garden", "zebra"});
  lex.Add(4, "b", 12, {"violin"});
  lex.Add(5, "c", 13, {"violin", "tea"});
  CHECK(lex.RemoveLabel(4));
  LexSnapshotMeta meta;
  meta.user = "alice";
  meta.covered_seq = 5;
  meta.generation = 2;
  meta.vector_sum = {0.5, -1.25};
  meta.vector_count = 2;
  meta.vector_seq = 5;
  const std::string bytes = lex.Serialize(meta);
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  LexSnapshotMeta back;
  std::string why;
  std::unique_ptr<Lexicon> loaded = Lexicon::Parse(p, bytes.size(), &back, &why);
  CHECK(loaded != nullptr);
  if (!loaded) return;
  CHECK(back.user == "alice" && back.covered_seq == 5 && back.generation == 2);
  CHECK(back.vector_sum == meta.vector_sum && back.vector_count == 2 && back.vector_seq == 5);
  CHECK(loaded->Serialize(meta) == bytes);
  CHECK(loaded->Top({"violin", "zebra"}, 5, 2000) == lex.Top({"violin", "zebra"}, 5, 2000));
  CHECK(loaded->vocabulary() == 4);  // "violin" stays (c has it); b's own terms are gone
  int refused = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (uint8_t flip : {uint8_t{0x01}, uint8_t{0x80}}) {
      std::string bad = bytes;
      bad[i] = static_cast<char>(bad[i] ^ flip);
      LexSnapshotMeta m;
      refused += Lexicon::Parse(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), &m,
                                &why) == nullptr;
    }
  }
  CHECK(refused == static_cast<int>(2 * bytes.size()));
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    LexSnapshotMeta m;
    CHECK(Lexicon::Parse(p, cut, &m, &why) == nullptr);
  }
}

// Bytes with their CRC recomputed, so only the structural checks can refuse them.
std::string Resealed(std::string bytes) {
  const uint32_t crc =
      MaskCrc(Crc32c(reinterpret_cast<const uint8_t*>(bytes.data()) + 16, bytes.size() - 16));
  std::memcpy(&bytes[12], &crc, 4);
  return bytes;
}

std::unique_ptr<Lexicon> ParseAs(const std::string& bytes, LexCheck check) {
  LexSnapshotMeta m;
  std::string why;
  return Lexicon::Parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &m, &why,
                        check);
}

void Put32(std::string* bytes, size_t at, uint32_t v) { std::memcpy(&(*bytes)[at], &v, 4); }

// Where a snapshot's sections start (docs/lexicon-snapshot.md), for a user id of 1-8 bytes and
// no vector sum.
struct Sections {
  uint32_t nterms = 0, ndocs = 0;
  uint64_t entries = 0;
  size_t postings_at, docs_at, doc_terms_at, by_id_at, by_label_at;
  explicit Sections(const std::string& bytes) {
    std::memcpy(&nterms, bytes.data() + 56, 4);
    std::memcpy(&ndocs, bytes.data() + 60, 4);
    std::memcpy(&entries, bytes.data() + 96, 8);
    postings_at = 128 + 8 + 16 * size_t{nterms};
    docs_at = postings_at + 8 * entries;
    doc_terms_at = docs_at + 40 * size_t{ndocs};
    by_id_at = doc_terms_at + 8 * entries;
    by_label_at = by_id_at + ((4 * size_t{ndocs} + 7) & ~size_t{7});
  }
};

TEST(the_bounds_check_refuses_every_reference_out_of_range_and_only_the_full_check_the_rest) {
  Lexicon lex(kK1, kB);
  lex.Add(1, "a", 1, {"tea", "zebra", "tea"});
  lex.Add(2, "b", 2, {"zebra", "violin"});
  lex.Add(3, "c", 3, {"violin"});
  LexSnapshotMeta meta;
  meta.user = "u";
  meta.covered_seq = 3;
  const std::string good = lex.Serialize(meta);
  const Sections at(good);
  const uint32_t nterms = at.nterms, ndocs = at.ndocs;
  const size_t postings_at = at.postings_at, doc_terms_at = at.doc_terms_at;
  const size_t by_id_at = at.by_id_at, by_label_at = at.by_label_at;
  CHECK(ParseAs(good, LexCheck::kBounds) != nullptr && ParseAs(good, LexCheck::kFull));
  // Out of range: a posting's slot, a document's term, an order entry. Both levels refuse.
  for (size_t at : {postings_at, doc_terms_at, by_id_at, by_label_at}) {
    std::string bad = good;
    Put32(&bad, at, at == doc_terms_at ? nterms : ndocs);
    bad = Resealed(bad);
    CHECK(ParseAs(bad, LexCheck::kBounds) == nullptr);
    CHECK(ParseAs(bad, LexCheck::kFull) == nullptr);
  }
  // In range but inconsistent: the id order's two first entries swapped (no longer sorted),
  // a posting's tf raised (no longer the document's). Only the full check refuses; the index
  // the bounds check accepts still answers every call without reading outside its bytes
  // (ASan and UBSan runs of this test check that).
  std::string swapped = good;
  uint32_t first = 0, second = 0;
  std::memcpy(&first, good.data() + by_id_at, 4);
  std::memcpy(&second, good.data() + by_id_at + 4, 4);
  Put32(&swapped, by_id_at, second);
  Put32(&swapped, by_id_at + 4, first);
  std::string raised = good;
  uint32_t tf = 0;
  std::memcpy(&tf, good.data() + postings_at + 4, 4);
  Put32(&raised, postings_at + 4, tf + 1);
  for (std::string bad : {swapped, raised}) {
    bad = Resealed(bad);
    CHECK(ParseAs(bad, LexCheck::kFull) == nullptr);
    std::unique_ptr<Lexicon> loose = ParseAs(bad, LexCheck::kBounds);
    CHECK(loose != nullptr);
    if (!loose) continue;
    loose->Top({"zebra", "violin", "tea"}, 3, 2000);
    loose->Scores({"zebra"}, {"a", "b", "c", "zz"});
    loose->GroupScores({"tea"}, {{"a", "c"}});
    loose->RemoveId("b");
    loose->Add(4, "d", 4, {"tea", "new"});
    loose->RemoveLabel(1);
    LexSnapshotMeta after = meta;
    after.covered_seq = 4;
    CHECK(ParseAs(loose->Serialize(after), LexCheck::kBounds) != nullptr);
  }
}

TEST(read_meta_reads_the_header_under_its_own_checksum_and_format_2_in_full) {
  Lexicon lex(kK1, kB);
  lex.Add(7, "a", 1, {"tea"});
  LexSnapshotMeta meta;
  meta.user = "bob";
  meta.covered_seq = 7;
  meta.generation = 3;
  meta.vector_sum = {1.0, 2.5};
  meta.vector_count = 1;
  meta.vector_seq = 7;
  const std::string bytes = lex.Serialize(meta);
  char dir[] = "/tmp/lexicon-tests-XXXXXX";
  CHECK(::mkdtemp(dir) != nullptr);
  const std::string path = std::string(dir) + "/u.lex";
  auto write = [&](const std::string& data) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    CHECK(f != nullptr);
    if (!f) return;
    std::fwrite(data.data(), 1, data.size(), f);
    std::fclose(f);
  };
  write(bytes);
  LexSnapshotMeta back;
  std::string why;
  int err = 0;
  CHECK(Lexicon::ReadMeta(path, &back, &why, &err) && err == 0);
  CHECK(back.user == "bob" && back.covered_seq == 7 && back.generation == 3);
  CHECK(back.vector_sum == meta.vector_sum && back.vector_count == 1 && back.vector_seq == 7);
  // Format 3 reads the header, user id and vector sum under their own checksum: damage past
  // them is the load's to find; damage in them is refused here.
  std::string body = bytes;
  body[bytes.size() - 1] = static_cast<char>(body[bytes.size() - 1] ^ 1);
  write(body);
  CHECK(Lexicon::ReadMeta(path, &back, &why, &err) && back.vector_sum == meta.vector_sum);
  CHECK(ParseAs(body, LexCheck::kBounds) == nullptr);
  const size_t vsum_at = 128 + 8;  // "bob" padded to 8
  for (size_t at : {size_t{24}, size_t{36}, size_t{128}, vsum_at, vsum_at + 15}) {
    std::string head = Resealed([&] {
      std::string b = bytes;
      b[at] = static_cast<char>(b[at] ^ 4);
      return b;
    }());  // the file's checksum recomputed: only the header's can tell
    write(head);
    CHECK(!Lexicon::ReadMeta(path, &back, &why, &err) && err == 0);
    CHECK(ParseAs(head, LexCheck::kBounds) == nullptr);
  }
  // Format 2 (no header checksum) is still read: ReadMeta checks the whole file then.
  std::string v2 = bytes;
  Put32(&v2, 8, 2);
  Put32(&v2, 112, 0);
  v2 = Resealed(v2);
  write(v2);
  CHECK(Lexicon::ReadMeta(path, &back, &why, &err) && back.vector_sum == meta.vector_sum);
  CHECK(ParseAs(v2, LexCheck::kFull) != nullptr);
  v2[v2.size() - 1] = static_cast<char>(v2[v2.size() - 1] ^ 1);
  write(v2);
  CHECK(!Lexicon::ReadMeta(path, &back, &why, &err) && why == "checksum mismatch");
  std::remove(path.c_str());
  CHECK(!Lexicon::ReadMeta(path, &back, &why, &err) && err == ENOENT);
  ::rmdir(dir);
}

TEST(renumbering_and_sweeping_a_bounds_checked_damaged_snapshot_stay_in_bounds) {
  // 1,300 memories; one field changed at random behind a resealed checksum (a memory's term
  // id, an id- or label-order entry, a label, a posting's tf): in range, so the bounds check
  // may accept it, and whatever it accepts goes through the removal of every memory (past
  // 1,024 removals the index renumbers; overlay postings are swept), adds, Top and Serialize.
  // ASan and UBSan runs of this test (.ci/native-checks) are the check that every access
  // stays in bounds; here, that the calls complete.
  Lexicon lex(kK1, kB);
  const uint32_t n = 1300;
  for (uint32_t i = 0; i < n; ++i) {
    lex.Add(i + 1, "id" + std::to_string(i), i,
            {"t" + std::to_string(i % 17), "t" + std::to_string(i % 5), "common"});
  }
  LexSnapshotMeta meta;
  meta.user = "u";
  meta.covered_seq = n + 10;
  const std::string good = lex.Serialize(meta);
  const Sections at(good);
  const uint32_t nterms = at.nterms;
  const uint64_t entries = at.entries;
  const size_t postings_at = at.postings_at, docs_at = at.docs_at;
  const size_t doc_terms_at = at.doc_terms_at, by_id_at = at.by_id_at;
  const size_t by_label_at = at.by_label_at;
  uint64_t state = 7;
  auto next = [&state](uint64_t below) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (state >> 33) % below;
  };
  int accepted = 0;
  for (int trial = 0; trial < 60; ++trial) {
    std::string bad = good;
    switch (trial % 5) {
      case 0:  // a memory's term id
        Put32(&bad, doc_terms_at + 8 * next(entries), static_cast<uint32_t>(next(nterms)));
        break;
      case 1:
        Put32(&bad, by_id_at + 4 * next(n), static_cast<uint32_t>(next(n)));
        break;
      case 2:
        Put32(&bad, by_label_at + 4 * next(n), static_cast<uint32_t>(next(n)));
        break;
      case 3: {  // a label (u64), another memory's or a new one
        const uint64_t label = 1 + next(n + 10);
        std::memcpy(&bad[docs_at + 40 * next(n)], &label, 8);
        break;
      }
      default:  // a posting's tf
        Put32(&bad, postings_at + 8 * next(entries) + 4, static_cast<uint32_t>(1 + next(3)));
    }
    std::unique_ptr<Lexicon> loose = ParseAs(Resealed(bad), LexCheck::kBounds);
    if (!loose) continue;
    ++accepted;
    for (uint32_t i = 0; i < n; ++i) {
      loose->RemoveLabel(i + 1);
      if (i % 97 == 0) {
        loose->Add(n + 20 + i, "new" + std::to_string(i), 0, {"common", "t3"});
        loose->Top({"common", "t3"}, 5, 200);
        loose->RemoveId("id" + std::to_string(i + 1));
      }
    }
    loose->Top({"common", "t4", "t9"}, 5, 2000);
    loose->Scores({"common"}, {"id1", "new0"});
    LexSnapshotMeta after = meta;
    after.covered_seq = 3 * n;
    CHECK(!loose->Serialize(after).empty());
  }
  CHECK(accepted >= 40);  // most single in-range changes pass the bounds check
}

}  // namespace

int main() {
  const int tests = headroom_test::RunAll();
  std::printf("lexicon tests: %d tests, %d checks, %d failed\n", tests, headroom_test::g_checks,
              headroom_test::g_failures);
  return headroom_test::g_failures ? 1 : 0;
}
