#include "common/log.h"

#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace spark {

namespace internal {
std::atomic<int> g_min_log_level{static_cast<int>(LogLevel::kInfo)};
}  // namespace internal

namespace {

#ifndef SPARK_SOURCE_ROOT
#define SPARK_SOURCE_ROOT ""
#endif

std::mutex g_sink_mu;
std::shared_ptr<LogSink>& SinkSlot() {
  static auto* slot = new std::shared_ptr<LogSink>(std::make_shared<FdLogSink>(STDERR_FILENO));
  return *slot;
}

std::string_view TrimSourceRoot(std::string_view file) {
  constexpr std::string_view kRoot = SPARK_SOURCE_ROOT;
  if (!kRoot.empty() && file.substr(0, kRoot.size()) == kRoot) file.remove_prefix(kRoot.size());
  return file;
}

char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = AsciiLower(c);
  return out;
}

bool NeedsQuotes(std::string_view value) {
  if (value.empty()) return true;
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
      return true;
    }
  }
  return false;
}

void AppendFieldValue(std::string& out, std::string_view value) {
  if (!NeedsQuotes(value)) {
    out += value;
    return;
  }
  out += '"';
  for (char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // Nowhere left to report a failing log sink.
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

int JournalPriority(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return 7;  // LOG_DEBUG
    case LogLevel::kInfo:
      return 6;  // LOG_INFO
    case LogLevel::kWarn:
      return 4;  // LOG_WARNING
    case LogLevel::kError:
      return 3;  // LOG_ERR
  }
  return 6;
}

std::string JournalKey(std::string_view key) {
  std::string name = "SPARK_";
  for (char c : key) {
    if (c >= 'a' && c <= 'z') {
      name += static_cast<char>(c - 'a' + 'A');
    } else if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') {
      name += c;
    } else {
      name += '_';
    }
  }
  if (name.size() > 64) name.resize(64);
  return name;
}

}  // namespace

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

Result<LogLevel> ParseLogLevel(std::string_view name) {
  const std::string lower = Lower(name);
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warn" || lower == "warning") return LogLevel::kWarn;
  if (lower == "error") return LogLevel::kError;
  return InvalidArgument("unknown log level \"" + std::string(name) +
                         "\"; use one of debug, info, warn, error");
}

const std::string* LogRecord::FindField(std::string_view key) const {
  for (const LogField& f : fields) {
    if (f.key == key) return &f.value;
  }
  return nullptr;
}

std::string FormatLogLine(const LogRecord& record) {
  using std::chrono::duration_cast;
  using std::chrono::microseconds;
  using std::chrono::system_clock;
  const auto since_epoch_us = duration_cast<microseconds>(record.time.time_since_epoch()).count();
  std::time_t seconds = static_cast<std::time_t>(since_epoch_us / 1000000);
  long micros = static_cast<long>(since_epoch_us % 1000000);
  if (micros < 0) {
    micros += 1000000;
    seconds -= 1;
  }
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char head[64];
  std::snprintf(head, sizeof(head), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, micros);

  static constexpr const char* kLevelTags[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
  std::string line = head;
  line += kLevelTags[static_cast<int>(record.level)];
  line += ' ';
  line += record.file;
  line += ':';
  line += std::to_string(record.line);
  line += "] ";
  line += record.message;
  for (const LogField& f : record.fields) {
    line += ' ';
    line += f.key;
    line += '=';
    AppendFieldValue(line, f.value);
  }
  line += '\n';
  return line;
}

void FdLogSink::Write(const LogRecord& record) {
  const std::string line = FormatLogLine(record);
  std::lock_guard<std::mutex> lock(mu_);
  WriteAll(fd_, line);
}

std::vector<std::string> JournalFields(const LogRecord& record) {
  std::vector<std::string> fields;
  fields.reserve(6 + record.fields.size());
  fields.push_back("MESSAGE=" + record.message);
  fields.push_back("PRIORITY=" + std::to_string(JournalPriority(record.level)));
  fields.push_back("CODE_FILE=" + std::string(record.file));
  fields.push_back("CODE_LINE=" + std::to_string(record.line));
  if (!record.function.empty()) fields.push_back("CODE_FUNC=" + std::string(record.function));
  fields.push_back(std::string("SYSLOG_IDENTIFIER=") + program_invocation_short_name);
  for (const LogField& f : record.fields) fields.push_back(JournalKey(f.key) + "=" + f.value);
  return fields;
}

void JournaldLogSink::Write(const LogRecord& record) {
  const std::vector<std::string> fields = JournalFields(record);
  std::vector<iovec> iov(fields.size());
  for (size_t i = 0; i < fields.size(); ++i) {
    iov[i].iov_base = const_cast<char*>(fields[i].data());
    iov[i].iov_len = fields[i].size();
  }
  // sd_journal_sendv is thread-safe and sends one datagram per record.
  if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) < 0) {
    WriteAll(STDERR_FILENO, FormatLogLine(record));
  }
}

void CaptureLogSink::Write(const LogRecord& record) {
  std::lock_guard<std::mutex> lock(mu_);
  records_.push_back(record);
}

std::vector<LogRecord> CaptureLogSink::records() const {
  std::lock_guard<std::mutex> lock(mu_);
  return records_;
}

bool CaptureLogSink::Contains(std::string_view substring) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const LogRecord& r : records_) {
    if (r.message.find(substring) != std::string::npos) return true;
  }
  return false;
}

void CaptureLogSink::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  records_.clear();
}

std::shared_ptr<LogSink> SetLogSink(std::shared_ptr<LogSink> sink) {
  if (sink == nullptr) sink = std::make_shared<FdLogSink>(STDERR_FILENO);
  std::lock_guard<std::mutex> lock(g_sink_mu);
  std::swap(SinkSlot(), sink);
  return sink;
}

std::shared_ptr<LogSink> GetLogSink() {
  std::lock_guard<std::mutex> lock(g_sink_mu);
  return SinkSlot();
}

void SetMinLogLevel(LogLevel level) {
  internal::g_min_log_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

LogLevel MinLogLevel() {
  return static_cast<LogLevel>(internal::g_min_log_level.load(std::memory_order_relaxed));
}

Result<LogSinkKind> ParseLogSinkKind(std::string_view name) {
  const std::string lower = Lower(name);
  if (lower == "stderr") return LogSinkKind::kStderr;
  if (lower == "journald") return LogSinkKind::kJournald;
  if (lower == "auto") return LogSinkKind::kAuto;
  return InvalidArgument("unknown log sink \"" + std::string(name) +
                         "\"; use one of stderr, journald, auto");
}

bool StderrIsJournal() {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (env == nullptr || *env == '\0') return false;
  char* end = nullptr;
  errno = 0;
  const unsigned long long dev = std::strtoull(env, &end, 10);
  if (errno != 0 || end == env || *end != ':') return false;
  const char* inode_text = end + 1;
  const unsigned long long inode = std::strtoull(inode_text, &end, 10);
  if (errno != 0 || end == inode_text || *end != '\0') return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev &&
         static_cast<unsigned long long>(st.st_ino) == inode;
}

LogSinkKind InitLogging(LogSinkKind kind, LogLevel min_level) {
  if (kind == LogSinkKind::kAuto) {
    kind = StderrIsJournal() ? LogSinkKind::kJournald : LogSinkKind::kStderr;
  }
  if (kind == LogSinkKind::kJournald) {
    SetLogSink(std::make_shared<JournaldLogSink>());
  } else {
    SetLogSink(std::make_shared<FdLogSink>(STDERR_FILENO));
  }
  SetMinLogLevel(min_level);
  return kind;
}

void Log(LogLevel level, std::string_view message, LogFields fields,
         std::source_location location) {
  if (!IsLogEnabled(level)) return;
  LogRecord record;
  record.level = level;
  record.time = std::chrono::system_clock::now();
  record.file = TrimSourceRoot(location.file_name());
  record.line = static_cast<int>(location.line());
  record.function = location.function_name();
  record.message = std::string(message);
  record.fields = std::move(fields);
  GetLogSink()->Write(record);
}

ScopedLogCapture::ScopedLogCapture(LogLevel min_level)
    : sink_(std::make_shared<CaptureLogSink>()), previous_level_(MinLogLevel()) {
  previous_sink_ = SetLogSink(sink_);
  SetMinLogLevel(min_level);
}

ScopedLogCapture::~ScopedLogCapture() {
  SetLogSink(previous_sink_);
  SetMinLogLevel(previous_level_);
}

namespace internal {

LogMessage::~LogMessage() { Log(level_, stream_.str(), std::move(fields_), location_); }

}  // namespace internal
}  // namespace spark
