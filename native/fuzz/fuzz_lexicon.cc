// libFuzzer target: the lexical snapshot parser (Lexicon::Parse) on untrusted bytes.
// The first byte steers:
//   even: the rest is parsed as snapshot bytes; a snapshot that parses (full check) must
//         serialize back to the same bytes and answer a query without fault; one that passes
//         the bounds check only (what searches map) must answer and change without fault;
//   odd:  the rest is a script of adds and removals (labels, ids and tokens drawn from it)
//         applied to a Lexicon, which is serialized; the last two bytes pick a byte of the
//         snapshot to change. The intact snapshot must parse and give the same answers; the
//         changed one must be refused (CRC32C) or, where the change is a no-op, equal.
// So the fuzzer reaches the structural checks behind the checksum from both sides without
// binary seed files. Built by .ci/native-checks with clang -fsanitize=fuzzer,address,undefined
// (CMake option HEADROOM_FUZZ).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "crc32c.h"
#include "lexicon.h"

namespace {

using headroom::LexSnapshotMeta;
using headroom::Lexicon;

void Require(bool ok) {
  if (!ok) abort();
}

const std::vector<std::string> kQuery = {"a", "b", "ab", "c"};

std::unique_ptr<Lexicon> Parse(const std::string& s, LexSnapshotMeta* meta) {
  std::string why;
  return Lexicon::Parse(reinterpret_cast<const uint8_t*>(s.data()), s.size(), meta, &why);
}

// Parses `bytes` with the bounds check only (what searches map) and, when accepted, runs every
// query and write on the index: none may read or write outside its memory (ASan/UBSan).
// The full check accepts nothing the bounds check refuses.
void Exercise(const std::string& bytes) {
  LexSnapshotMeta meta;
  std::string why;
  std::unique_ptr<Lexicon> loose =
      Lexicon::Parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &meta, &why,
                     headroom::LexCheck::kBounds);
  if (!loose) {
    LexSnapshotMeta m;
    Require(Parse(bytes, &m) == nullptr);
    return;
  }
  loose->Top(kQuery, 3, 2);
  loose->Scores(kQuery, {"id1", "x"});
  loose->GroupScores(kQuery, {{"id1", "y"}});
  loose->Created("id1");
  loose->IdOfLabel(1);
  loose->RemoveLabel(1);
  loose->RemoveId("id2");
  loose->Add(meta.covered_seq + 1, "new", 0, kQuery);
  loose->Serialize(meta);
}

void Script(const uint8_t* p, size_t n) {
  Lexicon lex(1.2, 0.3);
  size_t i = 0;
  uint64_t label = 0;
  while (i + 2 <= n) {
    const uint8_t op = p[i], len = p[i + 1] % 8;
    i += 2;
    if (op % 4 == 0) {
      lex.RemoveLabel(op / 4);
      continue;
    }
    std::vector<std::string> tokens;
    for (size_t j = 0; j < len && i < n; ++j, ++i) {
      tokens.push_back(std::string(1 + p[i] % 2, static_cast<char>('a' + p[i] % 3)));
    }
    lex.Add(++label, "id" + std::to_string(op % 16), static_cast<int64_t>(op), tokens);
  }
  LexSnapshotMeta meta;
  meta.user = "u";
  meta.covered_seq = label;
  const std::string bytes = lex.Serialize(meta);
  LexSnapshotMeta back;
  std::unique_ptr<Lexicon> loaded = Parse(bytes, &back);
  Require(loaded != nullptr);
  Require(loaded->Serialize(meta) == bytes);
  Require(loaded->Top(kQuery, 5, 3) == lex.Top(kQuery, 5, 3));
  Require(loaded->Scores(kQuery, {"id1", "id2"}) == lex.Scores(kQuery, {"id1", "id2"}));
  if (n >= 2) {
    std::string bad = bytes;
    const size_t at = (static_cast<size_t>(p[n - 2]) << 8 | p[n - 1]) % bad.size();
    bad[at] = static_cast<char>(bad[at] ^ (1 + p[n - 1] % 255));
    LexSnapshotMeta m;
    Require(Parse(bad, &m) == nullptr);
    // The same change behind a valid checksum: only the structural checks stand. Whatever
    // the bounds check lets through must answer and change without fault.
    const uint32_t crc = headroom::MaskCrc(
        headroom::Crc32c(reinterpret_cast<const uint8_t*>(bad.data()) + 16, bad.size() - 16));
    if (bad.size() >= 16) std::memcpy(&bad[12], &crc, 4);
    Exercise(bad);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] % 2 == 1) {
    Script(data + 1, size - 1);
    return 0;
  }
  std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  LexSnapshotMeta meta;
  std::unique_ptr<Lexicon> lex = Parse(bytes, &meta);
  if (lex) {
    Require(lex->Serialize(meta) == bytes);
    lex->Top(kQuery, 3, 2);
    lex->GroupScores(kQuery, {{"x", "y"}});
    lex->Add(meta.covered_seq + 1, "new", 0, kQuery);
  }
  Exercise(bytes);
  return 0;
}
