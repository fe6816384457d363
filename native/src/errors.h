// Error kinds raised by the core. The binding maps each kind onto one class of
// headroom.memory.errors, in one place.
#pragma once
#include <stdexcept>
#include <string>

namespace headroom {

enum class ErrorKind {
  kInvalidInput,   // InvalidInputError
  kInvalidVector,  // InvalidVectorError
  kNotFound,       // MemoryNotFoundError
  kFailed,         // StoreFailedError
  kClosed,         // StoreClosedError
  kVersion,        // StoreVersionError
  kCorruption,     // StoreCorruptionError
  kIo,             // StoreError
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void Fail(ErrorKind kind, const std::string& message) {
  throw Error(kind, message);
}

}  // namespace headroom
