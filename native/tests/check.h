// The C++ unit tests' harness: CHECK and CHECK_THROWS count and report without aborting (they
// survive NDEBUG), TEST registers a test, RunAll runs every registered one. Shared by
// native_tests.cc and lexicon_tests.cc.
#pragma once
#include <cstdio>
#include <exception>
#include <functional>
#include <utility>
#include <vector>

#include "errors.h"

namespace headroom_test {

inline int g_checks = 0;
inline int g_failures = 0;

inline std::vector<std::pair<const char*, std::function<void()>>>& Registry() {
  static std::vector<std::pair<const char*, std::function<void()>>> r;
  return r;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { Registry().emplace_back(name, fn); }
};

// Runs every registered test in order, printing "ok" or "FAIL" and its name for each (an
// exception out of a test is a failure); returns how many ran.
inline int RunAll() {
  int tests = 0;
  for (auto& [name, fn] : Registry()) {
    const int before = g_failures;
    try {
      fn();
    } catch (const std::exception& e) {
      ++g_failures;
      std::fprintf(stderr, "%s: unexpected exception: %s\n", name, e.what());
    }
    std::printf("%s %s\n", g_failures == before ? "ok  " : "FAIL", name);
    ++tests;
  }
  return tests;
}

}  // namespace headroom_test

#define CHECK(cond)                                                                  \
  do {                                                                               \
    ++headroom_test::g_checks;                                                       \
    if (!(cond)) {                                                                   \
      ++headroom_test::g_failures;                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                                \
  } while (0)

#define CHECK_THROWS(want, expr)                       \
  do {                                                 \
    bool threw = false;                                \
    try {                                              \
      expr;                                            \
    } catch (const headroom::Error& err) {             \
      threw = err.kind() == headroom::ErrorKind::want; \
    }                                                  \
    CHECK(threw && #want);                             \
  } while (0)

#define TEST(name)                                        \
  void name();                                            \
  const headroom_test::Registrar reg_##name(#name, name); \
  void name()
