// The one error type of byoi-agent.
//
// A Status carries a code, the user-facing `message` (one sentence of the catalogue in
// docs/status.md, or empty when the level that failed cannot know it) and a technical `detail`
// chain (errno text, HTTP status, libfdisk error) that grows with context on the way up: "reading
// L2 table at 0x30000: offset past end of image". Lower levels return errors and never log them;
// the runner reports once.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace byoi {

enum class Code {
  kOk = 0,
  kInvalid,      // bad input from outside: manifest, image, request, command line
  kNotFound,     // a disk, a file, a boot loader that should exist does not
  kIo,           // a system call or a transfer failed
  kUnsupported,  // valid input we deliberately do not handle (qcow2 backing file, encryption)
  kBusy,         // a resource is in use (mounted disk, job already running)
  kTooBig,       // over a size budget (RAM, disk)
  kCancelled,    // stopped on request
  kInternal,     // a bug
};

// "ok", "invalid", "not_found", "io", "unsupported", "busy", "too_big", "cancelled", "internal":
// the status's `code` (docs/status.md).
std::string_view CodeName(Code code);
// The Code of a CodeName; nullopt for any other text.
std::optional<Code> CodeFromName(std::string_view name);

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }

  // `detail` is the technical cause; `message` the catalogue sentence, if known here.
  static Status Error(Code code, std::string detail, std::string message = {}) {
    assert(code != Code::kOk);
    Status s;
    s.code_ = code;
    s.detail_ = std::move(detail);
    s.message_ = std::move(message);
    return s;
  }
  // An errno failure, with the object named: "opening /dev/sda: Device or resource busy".
  static Status FromErrno(std::string_view context, int err, Code code = Code::kIo);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  const std::string& detail() const { return detail_; }

  // Prepends a lower-case phrase naming what was being done: "writing extent at 0x100000".
  Status& Context(std::string_view what) &;
  Status&& Context(std::string_view what) && { return std::move(Context(what)); }
  // Sets the catalogue message unless a more specific one is already set.
  Status& DefaultMessage(std::string_view message) &;
  Status&& DefaultMessage(std::string_view message) && {
    return std::move(DefaultMessage(message));
  }

  // "message (detail)" or whichever is present; for logs and stderr.
  std::string ToString() const;

  // So that Status and Result<T> can be unwrapped alike by the macros below.
  const Status& status() const& { return *this; }
  Status status() && { return std::move(*this); }

 private:
  Code code_ = Code::kOk;
  std::string message_;
  std::string detail_;
};

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design, like absl::StatusOr
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    assert(!std::get<Status>(v_).ok());
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // REQUIRES: !ok()
  const Status& status() const& { return std::get<Status>(v_); }
  Status status() && { return ok() ? Status() : std::move(std::get<Status>(v_)); }

  // REQUIRES: ok()
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace byoi

// Early return of a failed Status or Result from a function returning Status or Result<U>.
#define BYOI_RETURN_IF_ERROR(expr)                         \
  do {                                                     \
    auto byoi_s_ = (expr);                                 \
    if (!byoi_s_.ok()) return std::move(byoi_s_).status(); \
  } while (0)

#define BYOI_CONCAT_INNER_(a, b) a##b
#define BYOI_CONCAT_(a, b) BYOI_CONCAT_INNER_(a, b)
// `BYOI_ASSIGN_OR_RETURN(auto x, Foo());` declares x from a Result, or returns its Status.
#define BYOI_ASSIGN_OR_RETURN(decl, expr) \
  BYOI_ASSIGN_OR_RETURN_(BYOI_CONCAT_(byoi_r_, __LINE__), decl, expr)
#define BYOI_ASSIGN_OR_RETURN_(tmp, decl, expr)  \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return std::move(tmp).status(); \
  decl = std::move(tmp).value()
