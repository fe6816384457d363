// The thin pybind11 binding of the compiled core: module headroom.memory._native.
// Converts arguments, releases the GIL around every I/O and scan, and maps the core's error
// kinds onto the classes of headroom.memory.errors in one place (TranslateError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>

#include "crc32c.h"
#include "dot.h"
#include "errors.h"
#include "fileio.h"
#include "lexicon.h"
#include "log.h"

namespace py = pybind11;
using headroom::Error;
using headroom::ErrorKind;

namespace {

// --- errors: the one place where core errors become Python classes -----------------------

py::object* g_errors = nullptr;  // the module headroom.memory.errors (leaked on purpose)

PyObject* ErrorClass(ErrorKind kind) {
  const char* name = "StoreError";
  switch (kind) {
    case ErrorKind::kInvalidInput: name = "InvalidInputError"; break;
    case ErrorKind::kInvalidVector: name = "InvalidVectorError"; break;
    case ErrorKind::kNotFound: name = "MemoryNotFoundError"; break;
    case ErrorKind::kFailed: name = "StoreFailedError"; break;
    case ErrorKind::kClosed: name = "StoreClosedError"; break;
    case ErrorKind::kVersion: name = "StoreVersionError"; break;
    case ErrorKind::kCorruption: name = "StoreCorruptionError"; break;
    case ErrorKind::kIo: name = "StoreError"; break;
  }
  return g_errors->attr(name).ptr();
}

void TranslateError(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const Error& e) {
    PyErr_SetString(ErrorClass(e.kind()), e.what());
  }
}

[[noreturn]] void Bad(ErrorKind kind, const std::string& msg) { throw Error(kind, msg); }

// --- argument conversion -------------------------------------------------------------------

std::string Str(py::handle h, const char* what) {
  if (!PyUnicode_Check(h.ptr())) Bad(ErrorKind::kInvalidInput, std::string(what) + " must be a str");
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(h.ptr(), &n);
  if (!s) {
    PyErr_Clear();
    Bad(ErrorKind::kInvalidInput, std::string(what) + " is not valid UTF-8 text");
  }
  return std::string(s, static_cast<size_t>(n));
}

int64_t Int(py::handle h, const char* what) {
  if (!PyLong_Check(h.ptr())) Bad(ErrorKind::kInvalidInput, std::string(what) + " must be an int");
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
  if (overflow || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    Bad(ErrorKind::kInvalidInput, std::string(what) + " is out of range");
  }
  return static_cast<int64_t>(v);
}

uint8_t Code(py::handle h, const char* what) {
  int64_t v = Int(h, what);
  if (v < 0 || v > 255) Bad(ErrorKind::kInvalidInput, std::string(what) + " is out of range");
  return static_cast<uint8_t>(v);
}

// A 1-D C-contiguous float32 numpy array (native byte order) -> its values.
std::vector<float> Vector(py::handle h, const char* what) {
  if (!py::isinstance<py::array>(h))
    Bad(ErrorKind::kInvalidVector, std::string(what) + " must be a float32 numpy array");
  auto arr = py::reinterpret_borrow<py::array>(h);
  py::dtype dt = arr.dtype();
  if (dt.kind() != 'f' || dt.itemsize() != 4 || dt.byteorder() == '>')
    Bad(ErrorKind::kInvalidVector,
        std::string(what) + " must have dtype float32; got " + std::string(py::str(dt)));
  if (arr.ndim() != 1)
    Bad(ErrorKind::kInvalidVector, std::string(what) + " must be 1-D; got " +
                                       std::to_string(arr.ndim()) + " dimensions");
  if (!(arr.flags() & py::array::c_style))
    Bad(ErrorKind::kInvalidVector, std::string(what) + " must be C-contiguous");
  const auto* p = static_cast<const float*>(arr.data());
  return std::vector<float>(p, p + arr.shape(0));
}

headroom::EntryIn ToEntry(py::handle item) {
  if (!PyTuple_Check(item.ptr()))
    Bad(ErrorKind::kInvalidInput, "each entry must be a tuple");
  auto t = py::reinterpret_borrow<py::tuple>(item);
  if (t.size() != 10 && t.size() != 11)
    Bad(ErrorKind::kInvalidInput,
        "an entry is (op, user, memory_id, category, source, created_at_us, text, "
        "metadata_json, model_id, vector[, ts_us]); got " + std::to_string(t.size()) + " items");
  headroom::EntryIn e;
  e.op = Code(t[0], "op");
  if (e.op < 1 || e.op > headroom::kMaxOp)
    Bad(ErrorKind::kInvalidInput, "op must be 1..9; got " + std::to_string(e.op));
  e.user = Str(t[1], "user");
  e.id = Str(t[2], "memory_id");
  e.category = Code(t[3], "category");
  e.source = Code(t[4], "source");
  e.created_at = Int(t[5], "created_at_us");
  e.text = Str(t[6], "text");
  e.meta = Str(t[7], "metadata_json");
  e.model = Str(t[8], "model_id");
  if (!t[9].is_none()) {
    e.vec = Vector(t[9], "vector");
    e.has_vec = true;
  }
  if (t.size() == 11) e.ts = Int(t[10], "ts_us");
  return e;
}

// --- results ---------------------------------------------------------------------------------

py::dict MemDict(const headroom::MemOut& m, bool with_op) {
  py::dict d;
  d["id"] = m.id;
  d["user"] = m.user;
  d["text"] = m.text;
  d["category"] = m.category;
  d["source"] = m.source;
  d["created_at"] = m.created_at;
  d["updated_at"] = m.updated_at;
  d["metadata"] = m.meta;
  d["model"] = m.model;
  d["seq"] = m.seq;
  d["version"] = m.version;
  if (with_op) d["op"] = headroom::OpName(m.op);
  return d;
}

template <class T>
py::array_t<T> Owned(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

headroom::SyncMode ParseSync(const std::string& s) {
  if (s == "always") return headroom::SyncMode::kAlways;
  if (s == "interval") return headroom::SyncMode::kInterval;
  if (s == "off") return headroom::SyncMode::kOff;
  Bad(ErrorKind::kInvalidInput, "sync must be \"always\", \"interval\" or \"off\"; got \"" + s + "\"");
}

using Log = headroom::Log;
using Lexicon = headroom::Lexicon;
using Tokens = std::vector<std::string>;
using GilRelease = py::gil_scoped_release;

headroom::LexCheck Check(bool full) {
  return full ? headroom::LexCheck::kFull : headroom::LexCheck::kBounds;
}

struct Records {
  std::unique_ptr<headroom::RecordReader> reader;
};

// A snapshot's header as Python sees it.
py::dict HeaderDict(headroom::LexSnapshotMeta meta) {
  py::dict d;
  d["user"] = meta.user;
  d["covered_seq"] = meta.covered_seq;
  d["generation"] = meta.generation;
  if (meta.vector_sum.empty()) {
    d["vector_sum"] = py::none();
  } else {
    py::ssize_t dim = static_cast<py::ssize_t>(meta.vector_sum.size());
    d["vector_sum"] = Owned<double>(std::move(meta.vector_sum), {dim});
  }
  d["vector_count"] = meta.vector_count;
  d["vector_seq"] = meta.vector_seq;
  return d;
}

// A loaded snapshot as Python sees it: (Lexicon, header dict).
py::tuple LexiconAndHeader(std::unique_ptr<Lexicon> lex, headroom::LexSnapshotMeta meta) {
  return py::make_tuple(py::cast(std::move(lex)), HeaderDict(std::move(meta)));
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "The compiled core of headroom.memory: the append-only log, replay, live state and "
            "exact search. The contract is docs/architecture.md, the file format "
            "docs/log-format.md.";
  g_errors = new py::object(py::module_::import("headroom.memory.errors"));
  py::register_exception_translator(&TranslateError);

  m.attr("FORMAT_VERSION") = headroom::kFormatVersion;
  m.attr("INT64_MIN") = static_cast<int64_t>(INT64_MIN);
  m.attr("INT64_MAX") = static_cast<int64_t>(INT64_MAX);
  const char* ops[] = {"ADD", "UPDATE", "DELETE", "CLEAR", "PURGE", "PENDING", "DONE", "CONFIG",
                       "REVECTOR"};
  for (int i = 0; i < 9; ++i) m.attr(ops[i]) = i + 1;
  m.def("crc32c", [](py::bytes b) {
    std::string s = b;
    return headroom::Crc32c(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }, "CRC32C of bytes (unmasked).");
  m.def("crc32c_file", [](const std::string& path) {
    uint32_t crc = 0;
    int err = 0;
    {
      GilRelease nogil;
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        err = errno;
      } else {
        std::vector<uint8_t> buf(1u << 20);
        for (;;) {
          const ssize_t got = ::read(fd, buf.data(), buf.size());
          if (got < 0 && errno == EINTR) continue;
          if (got < 0) err = errno;
          if (got <= 0) break;
          crc = headroom::Crc32cExtend(crc, buf.data(), static_cast<size_t>(got));
        }
        ::close(fd);
      }
    }
    if (err) {
      errno = err;
      PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
      throw py::error_already_set();
    }
    return crc;
  }, py::arg("path"), "CRC32C (unmasked) of a file's bytes, read with the GIL released.");
  m.def("kernels", [] {
    py::dict d;
    d["crc32c"] = headroom::Crc32cIsHardware() ? "sse4.2" : "portable";
    d["dot"] = headroom::DotKernelName();
    return d;
  }, "The kernels in use: the SIMD ones chosen at run time for this CPU, or \"portable\" "
     "(no SIMD CPU, HEADROOM_PORTABLE_KERNELS=1 at load, or _force_portable_kernels).");
  m.def("_force_portable_kernels", [](bool portable) {
    headroom::Crc32cForcePortable(portable);
    headroom::DotForcePortable(portable);
  }, py::arg("portable"),
     "Tests only: use the portable CRC32C and dot kernels (True) or the CPU's best (False).");

  // --- a simulated power loss (tests only; see fileio.h and tests/test_log_powerloss.py) ---
  m.def("_powerloss_enable", [](const std::string& root) { headroom::powerloss::Enable(root); },
        py::arg("root"),
        "Tests only: track every file the I/O layer touches under `root` (an existing "
        "directory) for a simulated power loss; forgets what was tracked before.");
  m.def("_powerloss_disable", [] { headroom::powerloss::Disable(); },
        "Tests only: stop tracking and forget everything.");
  m.def("_powerloss_enabled", [] { return headroom::powerloss::Enabled(); });
  m.def("_powerloss_crash_at", [](uint64_t step) { headroom::powerloss::CrashAt(step); },
        py::arg("step"),
        "Tests only: the `step`-th next tracked I/O call (create, write, fsync, truncate, "
        "rename, unlink, directory fsync, mkdir) crashes: it and every tracked call after it "
        "fail with EIO and change nothing. 0 disarms.");
  m.def("_powerloss_crash", [] { headroom::powerloss::CrashNow(); },
        "Tests only: crash now (every later tracked I/O call fails with EIO).");
  m.def("_powerloss_crashed", [] { return headroom::powerloss::Crashed(); });
  m.def("_powerloss_steps", [] { return headroom::powerloss::Steps(); },
        "Tests only: tracked I/O calls counted since tracking began.");
  m.def("_powerloss_last_sync", [] { return headroom::powerloss::LastFileSyncStep(); },
        "Tests only: the step of the last successful file fsync (0: none); every tracked "
        "write before it is in its file's synced content.");
  m.def("_powerloss_image", [](const std::string& dir, const std::string& out,
                               const std::string& mode, uint64_t seed) {
        headroom::powerloss::Mode md;
        if (mode == "drop") {
          md = headroom::powerloss::Mode::kDrop;
        } else if (mode == "torn") {
          md = headroom::powerloss::Mode::kTorn;
        } else if (mode == "zero") {
          md = headroom::powerloss::Mode::kZero;
        } else if (mode == "keep") {
          md = headroom::powerloss::Mode::kKeep;
        } else {
          Bad(ErrorKind::kInvalidInput, "mode must be drop, torn, zero or keep");
        }
        GilRelease nogil;
        return headroom::powerloss::Image(dir, out, md, seed);
      }, py::arg("dir"), py::arg("out") = "", py::arg("mode") = "drop", py::arg("seed") = 0,
      "Tests only: write what `dir` would hold after a power loss now into `out` (a new "
      "directory), or rewrite `dir` in place when `out` is empty. Drop the Log first "
      "(abandon). Modes: drop (unsynced bytes lost), torn (a random prefix of each file's "
      "unsynced appended bytes survives), zero (they read as zeros), keep (a process crash: "
      "everything written survives). False when the directory itself would be gone.");

  py::class_<Records>(m, "Records")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", [](Records& r) -> py::dict {
        headroom::EntryOwned e;
        bool more;
        {
          GilRelease nogil;
          more = r.reader->Next(&e);
        }
        if (!more) throw py::stop_iteration();
        py::dict d;
        d["seq"] = e.seq;
        d["ts"] = e.ts;
        d["op"] = e.op;
        d["user"] = e.user;
        d["id"] = e.id;
        d["category"] = e.category;
        d["source"] = e.source;
        d["created_at"] = e.created_at;
        d["text"] = e.text;
        d["metadata"] = e.meta;
        d["model"] = e.model;
        if (e.has_vec) {
          py::ssize_t n = static_cast<py::ssize_t>(e.vec.size());
          d["vector"] = Owned<float>(std::move(e.vec), {n});
        } else {
          d["vector"] = py::none();
        }
        return d;
      });

  py::class_<Lexicon>(m, "Lexicon",
      "One user's BM25 index over pre-tokenized memories (native/src/lexicon.h); scores equal "
      "ranking.LexicalIndex's to the bit. Not thread-safe: the caller holds a lock.")
      .def(py::init([](double k1, double b) {
             if (!(k1 >= 0) || !(b >= 0 && b <= 1))
               Bad(ErrorKind::kInvalidInput, "BM25 needs k1 >= 0 and 0 <= b <= 1");
             return std::make_unique<Lexicon>(k1, b);
           }),
           py::arg("k1") = 1.2, py::arg("b") = 0.3)
      .def_property_readonly("k1", &Lexicon::k1)
      .def_property_readonly("b", &Lexicon::b)
      .def_property_readonly("total_length", &Lexicon::total_length)
      .def_property_readonly("vocabulary", &Lexicon::vocabulary)
      .def_property_readonly("in_place", &Lexicon::has_base,
                             "Whether a snapshot's bytes serve as the index's base (read in "
                             "place; the writes since are an in-memory overlay).")
      .def("__len__", &Lexicon::size)
      .def("__contains__", [](const Lexicon& x, py::handle id) {
        return PyUnicode_Check(id.ptr()) && x.Contains(Str(id, "memory_id"));
      })
      .def("add", [](Lexicon& x, uint64_t label, const std::string& id, int64_t created,
                     const Tokens& tokens) { x.Add(label, id, created, tokens); },
           py::arg("label"), py::arg("memory_id"), py::arg("created_us"), py::arg("tokens"))
      .def("remove", &Lexicon::RemoveLabel, py::arg("label"))
      .def("remove_id", [](Lexicon& x, const std::string& id) { return x.RemoveId(id); },
           py::arg("memory_id"))
      .def("created_at", [](const Lexicon& x, const std::string& id) -> py::object {
        std::optional<int64_t> c = x.Created(id);
        if (!c) return py::none();
        return py::int_(*c);
      }, py::arg("memory_id"))
      .def("created_many", [](const Lexicon& x, const Tokens& ids) {
        py::list out(ids.size());
        for (size_t i = 0; i < ids.size(); ++i) {
          std::optional<int64_t> c = x.Created(ids[i]);
          out[i] = c ? py::object(py::int_(*c)) : py::object(py::none());
        }
        return out;
      }, py::arg("memory_ids"))
      .def("id_of", [](const Lexicon& x, uint64_t label) -> py::object {
        std::optional<std::string> id = x.IdOfLabel(label);
        if (!id) return py::none();
        return py::str(*id);
      }, py::arg("label"))
      // scores and group_scores keep the GIL: they take microseconds, and handing the GIL to
      // another thread and back costs more than that on a busy machine.
      .def("scores", [](const Lexicon& x, const Tokens& query, const Tokens& keys) {
        return x.Scores(query, keys);
      }, py::arg("tokens"), py::arg("keys"))
      .def("group_scores", [](const Lexicon& x, const Tokens& query,
                              const std::vector<Tokens>& groups) {
        return x.GroupScores(query, groups);
      }, py::arg("tokens"), py::arg("groups"))
      .def("top", [](const Lexicon& x, const Tokens& query, int64_t k, int64_t budget) {
        if (k < 0 || budget < 0) Bad(ErrorKind::kInvalidInput, "k and budget must be >= 0");
        GilRelease nogil;
        return x.Top(query, static_cast<size_t>(k), static_cast<size_t>(budget));
      }, py::arg("tokens"), py::arg("k"), py::arg("budget"))
      .def("to_bytes", [](const Lexicon& x, const std::string& user, uint64_t covered_seq,
                          uint32_t generation, py::object vector_sum, uint64_t vector_count,
                          uint64_t vector_seq) {
        headroom::LexSnapshotMeta meta;
        meta.user = user;
        meta.covered_seq = covered_seq;
        meta.generation = generation;
        if (!vector_sum.is_none()) {
          auto arr = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(
              vector_sum);
          if (!arr || arr.ndim() != 1) Bad(ErrorKind::kInvalidInput, "vector_sum must be 1-D");
          meta.vector_sum.assign(arr.data(), arr.data() + arr.shape(0));
        }
        meta.vector_count = vector_count;
        meta.vector_seq = vector_seq;
        std::string out;
        {
          GilRelease nogil;
          out = x.Serialize(meta);
        }
        return py::bytes(out);
      }, py::arg("user"), py::arg("covered_seq"), py::arg("generation"),
         py::arg("vector_sum") = py::none(), py::arg("vector_count") = 0,
         py::arg("vector_seq") = 0,
         "The snapshot bytes (docs/lexicon-snapshot.md).")
      .def_static("from_bytes", [](py::buffer data, bool full) {
        py::buffer_info info = data.request();
        if (info.ndim != 1 || info.itemsize != 1)
          Bad(ErrorKind::kInvalidInput, "data must be a 1-D byte buffer");
        headroom::LexSnapshotMeta meta;
        std::string why;
        std::unique_ptr<Lexicon> lex;
        {
          GilRelease nogil;
          lex = Lexicon::Parse(static_cast<const uint8_t*>(info.ptr),
                               static_cast<size_t>(info.size), &meta, &why, Check(full));
        }
        if (!lex) Bad(ErrorKind::kCorruption, "not an intact lexicon snapshot: " + why);
        return LexiconAndHeader(std::move(lex), std::move(meta));
      }, py::arg("data"), py::arg("full") = true,
         "Parses snapshot bytes into an index over a private copy of them: (Lexicon, header "
         "dict); StoreCorruptionError when they are not intact (bad magic, version, checksum "
         "or structure). full=False checks only what keeps every read in bounds (LexCheck in "
         "native/src/lexicon.h).")
      .def_static("from_file", [](const std::string& path, bool full) {
        headroom::LexSnapshotMeta meta;
        std::string why;
        int err = 0;
        std::unique_ptr<Lexicon> lex;
        {
          GilRelease nogil;
          lex = Lexicon::MapFile(path, &meta, &why, &err, Check(full));
        }
        if (err) {
          errno = err;
          PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
          throw py::error_already_set();
        }
        if (!lex) Bad(ErrorKind::kCorruption, "not an intact lexicon snapshot: " + why);
        return LexiconAndHeader(std::move(lex), std::move(meta));
      }, py::arg("path"), py::arg("full") = true,
         "The snapshot file at path, mapped read-only and served in place (page cache shared "
         "by every process that maps it): (Lexicon, header dict). OSError when it cannot be "
         "opened, StoreCorruptionError when it is not intact (full=False: only what keeps "
         "every read in bounds is checked, as from_bytes). The file must never be rewritten in "
         "place (snapshots are replaced by rename).")
      .def_static("read_header", [](const std::string& path) {
        headroom::LexSnapshotMeta meta;
        std::string why;
        int err = 0;
        bool ok;
        {
          GilRelease nogil;
          ok = Lexicon::ReadMeta(path, &meta, &why, &err);
        }
        if (err) {
          errno = err;
          PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
          throw py::error_already_set();
        }
        if (!ok) Bad(ErrorKind::kCorruption, "not an intact lexicon snapshot: " + why);
        return HeaderDict(std::move(meta));
      }, py::arg("path"),
         "The header dict of the snapshot file at path (what from_file returns beside the "
         "index): version 3 reads the header, user id and vector sum alone and checks them "
         "against their own checksum and the file's size; version 2, the whole file's "
         "checksum. No index is built. OSError when it cannot be opened, StoreCorruptionError "
         "when it is not intact.");

  py::class_<Log>(m, "Log")
      .def(py::init([](const std::string& path, const std::string& sync, int sync_interval_ms,
                       uint64_t segment_bytes) {
             headroom::SyncMode mode = ParseSync(sync);
             GilRelease nogil;
             return std::make_unique<Log>(path, mode, sync_interval_ms, segment_bytes);
           }),
           py::arg("path"), py::arg("sync") = "interval", py::arg("sync_interval_ms") = 100,
           py::arg("segment_bytes") = static_cast<uint64_t>(64) << 20)
      .def("append", [](Log& log, py::list entries) {
        std::vector<headroom::EntryIn> in;
        in.reserve(entries.size());
        for (py::handle item : entries) in.push_back(ToEntry(item));
        GilRelease nogil;
        return log.Append(std::move(in));
      }, py::arg("entries"))
      .def("refresh", [](Log& log) {
        GilRelease nogil;
        return log.Refresh();
      })
      .def("get", [](Log& log, const std::string& user, const std::string& id) -> py::object {
        std::optional<headroom::MemOut> r;
        {
          GilRelease nogil;
          r = log.Read([&](const headroom::State& s) { return s.Get(user, id); });
        }
        if (!r) return py::none();
        return MemDict(*r, false);
      }, py::arg("user"), py::arg("memory_id"))
      .def("list", [](Log& log, const std::string& user, uint32_t categories, int64_t t_min,
                      int64_t t_max) {
        std::vector<headroom::MemOut> r;
        {
          GilRelease nogil;
          r = log.Read([&](const headroom::State& s) { return s.List(user, categories, t_min, t_max); });
        }
        py::list out;
        for (const auto& x : r) out.append(MemDict(x, false));
        return out;
      }, py::arg("user"), py::arg("categories") = 0, py::arg("t_min") = INT64_MIN,
         py::arg("t_max") = INT64_MAX)
      .def("history", [](Log& log, const std::string& user, const std::string& id) {
        std::vector<headroom::MemOut> r;
        {
          GilRelease nogil;
          r = log.Read([&](const headroom::State& s) { return s.History(user, id); });
        }
        py::list out;
        for (const auto& x : r) out.append(MemDict(x, true));
        return out;
      }, py::arg("user"), py::arg("memory_id"))
      .def("count", [](Log& log, const std::string& user) {
        GilRelease nogil;
        return log.Read([&](const headroom::State& s) -> size_t {
          const headroom::User* u = s.FindUser(user);
          return u ? u->live : 0;
        });
      }, py::arg("user"))
      .def("users", [](Log& log) {
        GilRelease nogil;
        return log.Read([](const headroom::State& s) { return s.Users(); });
      })
      .def("user_seq", [](Log& log, const std::string& user) {
        GilRelease nogil;
        return log.Read([&](const headroom::State& s) -> uint64_t {
          const headroom::User* u = s.FindUser(user);
          return u ? u->last_seq : 0;
        });
      }, py::arg("user"))
      .def_property_readonly("last_seq", [](Log& log) {
        GilRelease nogil;
        return log.last_seq();
      })
      .def_property_readonly("generation", [](Log& log) {
        GilRelease nogil;
        return log.generation();
      })
      .def("search", [](Log& log, const std::string& user, py::handle query, int64_t k,
                        uint32_t categories, int64_t t_min, int64_t t_max, bool pack) {
        std::vector<float> q = Vector(query, "query");
        if (k < 0) Bad(ErrorKind::kInvalidInput, "k must be >= 0");
        std::vector<headroom::Hit> hits;
        {
          GilRelease nogil;
          auto scan = [&](const headroom::State& s) {
            return s.Search(user, q.data(), static_cast<uint32_t>(q.size()),
                            static_cast<size_t>(k), categories, t_min, t_max);
          };
          hits = pack ? log.ReadPacked(user, scan) : log.Read(scan);
        }
        py::list out;
        for (const auto& h : hits) out.append(py::make_tuple(h.id, h.score));
        return out;
      }, py::arg("user"), py::arg("query"), py::arg("k"), py::arg("categories") = 0,
         py::arg("t_min") = INT64_MIN, py::arg("t_max") = INT64_MAX, py::arg("pack") = true)
      .def("vectors", [](Log& log, const std::string& user) {
        std::vector<uint64_t> labels;
        std::vector<float> vecs;
        uint32_t dim;
        {
          GilRelease nogil;
          dim = log.Read([&](const headroom::State& s) { return s.Vectors(user, &labels, &vecs); });
        }
        py::ssize_t n = static_cast<py::ssize_t>(labels.size());
        return py::make_tuple(Owned<uint64_t>(std::move(labels), {n}),
                              Owned<float>(std::move(vecs), {n, static_cast<py::ssize_t>(dim)}));
      }, py::arg("user"))
      .def("vector_sum", [](Log& log, const std::string& user) {
        std::vector<double> sum;
        size_t count;
        uint64_t seq;
        {
          GilRelease nogil;
          count = log.Read([&](const headroom::State& s) { return s.VectorSum(user, &sum, &seq); });
        }
        py::ssize_t d = static_cast<py::ssize_t>(sum.size());
        return py::make_tuple(Owned<double>(std::move(sum), {d}), count, seq);
      }, py::arg("user"))
      .def("changes", [](Log& log, const std::string& user, uint64_t since) {
        std::vector<uint64_t> removed, added;
        std::vector<float> vecs;
        uint32_t dim;
        {
          GilRelease nogil;
          dim = log.Read([&](const headroom::State& s) {
            return s.Changes(user, since, &removed, &added, &vecs);
          });
        }
        py::ssize_t nr = static_cast<py::ssize_t>(removed.size());
        py::ssize_t na = static_cast<py::ssize_t>(added.size());
        return py::make_tuple(Owned<uint64_t>(std::move(removed), {nr}),
                              Owned<uint64_t>(std::move(added), {na}),
                              Owned<float>(std::move(vecs), {na, static_cast<py::ssize_t>(dim)}));
      }, py::arg("user"), py::arg("since_seq"))
      .def("resolve", [](Log& log, const std::string& user, py::handle labels_obj) {
        // Any sequence of non-negative ints; a uint64 numpy array is read without a loop.
        auto arr = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(
            labels_obj);
        if (!arr || arr.ndim() != 1)
          Bad(ErrorKind::kInvalidInput, "labels must be a 1-D sequence of non-negative ints");
        std::vector<uint64_t> labels(arr.data(), arr.data() + arr.shape(0));
        std::vector<std::optional<std::tuple<std::string, uint8_t, int64_t>>> r;
        {
          GilRelease nogil;
          r = log.Read([&](const headroom::State& s) { return s.Resolve(user, labels); });
        }
        py::list out;
        for (const auto& x : r) {
          if (x) {
            out.append(py::make_tuple(std::get<0>(*x), std::get<1>(*x), std::get<2>(*x)));
          } else {
            out.append(py::none());
          }
        }
        return out;
      }, py::arg("user"), py::arg("labels"))
      .def("pending", [](Log& log) {
        std::vector<headroom::Job> jobs;
        {
          GilRelease nogil;
          jobs = log.Read([](const headroom::State& s) { return s.Pending(); });
        }
        py::list out;
        for (const auto& j : jobs) {
          py::dict d;
          d["id"] = j.id;
          d["user"] = j.user;
          d["text"] = j.text;
          d["created_at"] = j.created_at;
          d["seq"] = j.seq;
          out.append(d);
        }
        return out;
      })
      .def("config", [](Log& log) {
        GilRelease nogil;
        return log.Read([](const headroom::State& s) { return s.Config(); });
      })
      .def("records", [](Log& log) {
        Records r;
        GilRelease nogil;
        r.reader = std::make_unique<headroom::RecordReader>(log.LiveSegmentPaths());
        return r;
      })
      .def("compact", [](Log& log) {
        headroom::CompactResult c;
        {
          GilRelease nogil;
          c = log.Compact();
        }
        py::dict d;
        d["bytes_before"] = c.bytes_before;
        d["bytes_after"] = c.bytes_after;
        d["records_before"] = c.records_before;
        d["records_after"] = c.records_after;
        d["entries_before"] = c.entries_before;
        d["entries_after"] = c.entries_after;
        return d;
      })
      .def("flush", [](Log& log) {
        GilRelease nogil;
        log.Flush();
      })
      .def_property_readonly("recovery", [](Log& log) {
        headroom::Recovery r = log.recovery();
        py::dict d;
        d["torn_tail_bytes"] = r.torn_tail_bytes;
        d["corrupt_bytes"] = r.corrupt_bytes;
        d["corrupt_records"] = r.corrupt_records;
        d["segments"] = r.segments;
        d["damaged_segments"] = r.damaged_segments;
        return d;
      })
      .def("stats", [](Log& log) {
        headroom::LogStats s;
        {
          GilRelease nogil;
          s = log.Stats();
        }
        py::dict d;
        d["users"] = s.users;
        d["memories"] = s.memories;
        d["pending"] = s.pending;
        d["entries"] = s.entries;
        d["records"] = s.records;
        d["skipped_entries"] = s.skipped_entries;
        d["bytes"] = s.bytes;
        d["segments"] = s.segments;
        d["last_seq"] = s.last_seq;
        d["generation"] = s.generation;
        d["fsyncs"] = s.fsyncs;
        return d;
      })
      .def_property_readonly("failed", &Log::failed)
      .def_property_readonly("closed", &Log::closed)
      .def("close", [](Log& log) {
        GilRelease nogil;
        log.Close();
      })
      .def("abandon", &Log::Abandon)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](Log& log, py::args) {
        GilRelease nogil;
        log.Close();
        return false;
      })
      .def("_set_fault", [](Log& log, const std::string& op, int countdown, int err) {
        headroom::IoOp o;
        if (op == "write") {
          o = headroom::IoOp::kWrite;
        } else if (op == "fsync") {
          o = headroom::IoOp::kFsync;
        } else if (op == "truncate") {
          o = headroom::IoOp::kTruncate;
        } else {
          Bad(ErrorKind::kInvalidInput, "fault op must be write, fsync or truncate");
        }
        if (countdown < 0) Bad(ErrorKind::kInvalidInput, "countdown must be >= 0");
        log.SetFault(o, countdown, err);
      }, py::arg("op"), py::arg("countdown"), py::arg("errno"));
}
