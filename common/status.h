// Status and Result<T>: the error model of every spark library.
//
// A Status is either OK or carries an error code and a human-readable message that names the
// problem and, where possible, the fix ("tensor model.norm.weight: expected shape [256], got
// [128]; the checkpoint does not match its config.json"). Result<T> holds a T or a non-OK
// Status. Recoverable failures are returned as values; broken invariants crash through
// SPARK_CHECK (common/check.h). No exceptions cross a library boundary.
//
// Thread safety: values; safe to copy and move between threads. Not synchronised.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace spark {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad input from a caller or a user (config, request, command line)
  kNotFound,         // a file, tensor, model, node... that does not exist
  kAlreadyExists,
  kFailedPrecondition,  // the system is not in a state that allows the call
  kOutOfRange,
  kUnimplemented,  // a valid request that spark does not support yet
  kUnavailable,    // transient: retry later (peer down, model recovering)
  kDeadlineExceeded,
  kCancelled,
  kResourceExhausted,  // memory, queue space, KV blocks
  kDataLoss,           // corrupt or truncated data (checkpoint, frame, database)
  kPermissionDenied,
  kInternal,
};

// Stable lower-case name of a code ("invalid_argument"), used in logs and error bodies.
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "invalid_argument: <message>", or "ok".
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context` ("loading layer 3: ...").
  Status WithContext(std::string_view context) const;

  // Marks a status as deliberately ignored.
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

Status InvalidArgument(std::string message);
Status NotFound(std::string message);
Status AlreadyExists(std::string message);
Status FailedPrecondition(std::string message);
Status OutOfRange(std::string message);
Status Unimplemented(std::string message);
Status Unavailable(std::string message);
Status DeadlineExceeded(std::string message);
Status Cancelled(std::string message);
Status ResourceExhausted(std::string message);
Status DataLoss(std::string message);
Status PermissionDenied(std::string message);
Status Internal(std::string message);

// Result<T>: a T or a non-OK Status. Constructing a Result from an OK Status is a bug.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(v_).ok() && "Result constructed from an OK Status");
    if (std::get<Status>(v_).ok()) v_ = Status(StatusCode::kInternal, "Result from OK Status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const& {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  Status status() && { return ok() ? Status() : std::get<Status>(std::move(v_)); }

  // Access the value; calling these on an error is a broken invariant (aborts in debug builds).
  T& value() & { return CheckedValue(); }
  const T& value() const& { return const_cast<Result*>(this)->CheckedValue(); }
  T&& value() && { return std::move(CheckedValue()); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  T value_or(T fallback) const& { return ok() ? std::get<T>(v_) : std::move(fallback); }

 private:
  T& CheckedValue();
  std::variant<T, Status> v_;
};

[[noreturn]] void DieOnBadResultAccess(const Status& status);

template <typename T>
T& Result<T>::CheckedValue() {
  if (!ok()) DieOnBadResultAccess(std::get<Status>(v_));
  return std::get<T>(v_);
}

}  // namespace spark

#define SPARK_STATUS_CONCAT_INNER_(a, b) a##b
#define SPARK_STATUS_CONCAT_(a, b) SPARK_STATUS_CONCAT_INNER_(a, b)

// Returns the Status from the enclosing function if `expr` (a Status) is not OK.
#define SPARK_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::spark::Status spark_status_ = (expr);        \
    if (!spark_status_.ok()) return spark_status_; \
  } while (0)

// SPARK_ASSIGN_OR_RETURN(auto x, MakeX()); declares/assigns x or returns the error.
#define SPARK_ASSIGN_OR_RETURN(lhs, expr) \
  SPARK_ASSIGN_OR_RETURN_IMPL_(SPARK_STATUS_CONCAT_(spark_result_, __LINE__), lhs, expr)
#define SPARK_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()
