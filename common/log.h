// Logging: levels, structured key=value fields, and one process-wide sink chosen at start.
//
//   SPARK_LOG(INFO) << "loaded " << n << " tensors";
//   SPARK_LOG(WARN).With("rank", rank).With("status", 137) << "shard exited";
//   Log(LogLevel::kInfo, "shard exited", {{"rank", "1"}, {"status", "137"}});
//
// Levels: DEBUG < INFO < WARN < ERROR; records below the minimum level (default INFO) are dropped
// before their message is even formatted. Sinks:
//   - stderr:   one human-readable line per record (FormatLogLine):
//               2025-01-02T03:04:05.123456Z WARN  agent/supervisor.cc:42] shard exited rank=1
//   - journald: sd_journal_sendv with PRIORITY, MESSAGE, CODE_FILE, CODE_LINE, CODE_FUNC,
//               SYSLOG_IDENTIFIER and one SPARK_<KEY>= field per structured field (JournalFields);
//               if journald refuses the record it is written to stderr instead, never lost.
//   - auto:     journald when stderr is the journal stream systemd gave us (JOURNAL_STREAM names
//               the device:inode of fd 2, see StderrIsJournal), stderr otherwise. A child whose
//               stderr was redirected to a file thus logs to that file even though it inherited
//               JOURNAL_STREAM.
// Tests install a CaptureLogSink, most simply through ScopedLogCapture.
//
// Thread safety: every function and macro here may be called from any thread. Sinks must be
// thread-safe (the ones here are: each record is written whole, never interleaved with another).
// Ownership: the process-wide sink is a shared_ptr; replacing it while other threads log is safe,
// a record in flight finishes on the sink it started on.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <ostream>
#include <source_location>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/status.h"

namespace spark {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// "debug", "info", "warn", "error".
std::string_view LogLevelName(LogLevel level);
// Accepts the names above (any case) and "warning"; the error lists the accepted names.
Result<LogLevel> ParseLogLevel(std::string_view name);

struct LogField {
  std::string key;
  std::string value;
};
using LogFields = std::vector<LogField>;

struct LogRecord {
  LogLevel level = LogLevel::kInfo;
  std::chrono::system_clock::time_point time;
  // Source file, relative to the spark source tree when it lies inside it. Points at static
  // storage (the compiler's file name), so a copied record stays valid.
  std::string_view file;
  int line = 0;
  std::string_view function;  // static storage, like file
  std::string message;
  LogFields fields;

  // The value of the first field named `key`, or nullptr.
  const std::string* FindField(std::string_view key) const;
};

class LogSink {
 public:
  virtual ~LogSink() = default;
  // Called from any thread, possibly concurrently; must not call back into logging.
  virtual void Write(const LogRecord& record) = 0;
};

// "<UTC time> <LEVEL> <file>:<line>] <message> key=value ...\n". Values that are empty or hold
// spaces, quotes, '=' or control characters are double-quoted with \" \\ \n \t escapes.
std::string FormatLogLine(const LogRecord& record);

// Writes FormatLogLine(record) to a file descriptor (default: stderr) with one write per record.
// Does not own the descriptor.
class FdLogSink : public LogSink {
 public:
  explicit FdLogSink(int fd = 2) : fd_(fd) {}
  void Write(const LogRecord& record) override;

 private:
  int fd_;
  std::mutex mu_;
};

// The fields sd_journal_sendv receives for `record`, each "NAME=value". Structured keys become
// SPARK_<KEY>: upper-cased, every character outside [A-Z0-9_] replaced by '_', at most 64 bytes.
std::vector<std::string> JournalFields(const LogRecord& record);

class JournaldLogSink : public LogSink {
 public:
  void Write(const LogRecord& record) override;
};

// Keeps every record in memory, for tests.
class CaptureLogSink : public LogSink {
 public:
  void Write(const LogRecord& record) override;
  std::vector<LogRecord> records() const;
  // True when some record's message contains `substring`.
  bool Contains(std::string_view substring) const;
  void Clear();

 private:
  mutable std::mutex mu_;
  std::vector<LogRecord> records_;
};

// Installs `sink` process-wide (nullptr restores the stderr sink); returns the previous sink.
std::shared_ptr<LogSink> SetLogSink(std::shared_ptr<LogSink> sink);
std::shared_ptr<LogSink> GetLogSink();

void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();

namespace internal {
extern std::atomic<int> g_min_log_level;
}  // namespace internal

inline bool IsLogEnabled(LogLevel level) {
  return static_cast<int>(level) >= internal::g_min_log_level.load(std::memory_order_relaxed);
}

enum class LogSinkKind { kStderr, kJournald, kAuto };
// "stderr", "journald" or "auto".
Result<LogSinkKind> ParseLogSinkKind(std::string_view name);

// True when the JOURNAL_STREAM environment variable ("<device>:<inode>") names the file that fd 2
// refers to, which is how systemd says "your stderr goes to the journal".
bool StderrIsJournal();

// Installs the sink of `kind` (kAuto resolved as described above) and the minimum level; returns
// the kind installed (kStderr or kJournald). Call once at start, before starting threads.
LogSinkKind InitLogging(LogSinkKind kind, LogLevel min_level);

// Emits one record (if `level` is enabled).
void Log(LogLevel level, std::string_view message, LogFields fields = {},
         std::source_location location = std::source_location::current());

// Installs a CaptureLogSink and a minimum level for the lifetime of the object and restores the
// previous sink and level on destruction. For tests; not meant to be nested across threads.
class ScopedLogCapture {
 public:
  explicit ScopedLogCapture(LogLevel min_level = LogLevel::kDebug);
  ~ScopedLogCapture();
  ScopedLogCapture(const ScopedLogCapture&) = delete;
  ScopedLogCapture& operator=(const ScopedLogCapture&) = delete;

  CaptureLogSink& sink() { return *sink_; }
  std::vector<LogRecord> records() const { return sink_->records(); }
  bool Contains(std::string_view substring) const { return sink_->Contains(substring); }

 private:
  std::shared_ptr<CaptureLogSink> sink_;
  std::shared_ptr<LogSink> previous_sink_;
  LogLevel previous_level_;
};

namespace internal {

// One record under construction; emitted by the destructor. Use through SPARK_LOG.
class LogMessage {
 public:
  explicit LogMessage(LogLevel level,
                      std::source_location location = std::source_location::current())
      : level_(level), location_(location) {}
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;

  template <typename T>
  LogMessage& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }
  LogMessage& operator<<(std::ostream& (*manipulator)(std::ostream&)) {
    stream_ << manipulator;
    return *this;
  }

  // Attaches a key=value field. Strings are kept as they are, bools become "true"/"false", a
  // Status becomes its ToString(), anything else is formatted with operator<<.
  template <typename T>
  LogMessage& With(std::string key, const T& value) {
    fields_.push_back({std::move(key), FieldValue(value)});
    return *this;
  }

 private:
  template <typename T>
  static std::string FieldValue(const T& value) {
    if constexpr (std::is_convertible_v<const T&, std::string_view>) {
      return std::string(std::string_view(value));
    } else if constexpr (std::is_same_v<T, bool>) {
      return value ? "true" : "false";
    } else if constexpr (std::is_same_v<T, Status>) {
      return value.ToString();
    } else {
      std::ostringstream s;
      s << value;
      return s.str();
    }
  }

  LogLevel level_;
  std::source_location location_;
  std::ostringstream stream_;
  LogFields fields_;
};

inline constexpr LogLevel kLogLevel_DEBUG = LogLevel::kDebug;
inline constexpr LogLevel kLogLevel_INFO = LogLevel::kInfo;
inline constexpr LogLevel kLogLevel_WARN = LogLevel::kWarn;
inline constexpr LogLevel kLogLevel_WARNING = LogLevel::kWarn;
inline constexpr LogLevel kLogLevel_ERROR = LogLevel::kError;

}  // namespace internal
}  // namespace spark

// SPARK_LOG(DEBUG|INFO|WARN|ERROR) << ...;  The stream expressions are not evaluated when the
// level is disabled. (A one-shot for loop rather than if/else, so that the macro nests inside an
// unbraced if/else without a dangling-else.)
#define SPARK_LOG(severity)                                                                      \
  for (bool spark_log_enabled_ = ::spark::IsLogEnabled(::spark::internal::kLogLevel_##severity); \
       spark_log_enabled_; spark_log_enabled_ = false)                                           \
  ::spark::internal::LogMessage(::spark::internal::kLogLevel_##severity)
