#include "common/log.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.h"

namespace spark {
namespace {

LogRecord MakeRecord(LogLevel level, std::string message, LogFields fields) {
  LogRecord r;
  r.level = level;
  // 2025-01-02T03:04:05.123456Z
  r.time = std::chrono::system_clock::time_point(std::chrono::microseconds(1735787045123456));
  r.file = "agent/supervisor.cc";
  r.line = 42;
  r.function = "void Supervisor::OnExit()";
  r.message = std::move(message);
  r.fields = std::move(fields);
  return r;
}

TEST(LogTest, MacroCapturesMessageFieldsAndLocation) {
  ScopedLogCapture capture(LogLevel::kDebug);
  const int expected_line = __LINE__ + 1;
  SPARK_LOG(WARN).With("rank", 1).With("status", 137).With("clean", false)
      << "shard " << 3 << " exited";
  const std::vector<LogRecord> records = capture.records();
  ASSERT_EQ(records.size(), 1u);
  const LogRecord& r = records[0];
  EXPECT_EQ(r.level, LogLevel::kWarn);
  EXPECT_EQ(r.message, "shard 3 exited");
  ASSERT_EQ(r.fields.size(), 3u);
  EXPECT_EQ(*r.FindField("rank"), "1");
  EXPECT_EQ(*r.FindField("status"), "137");
  EXPECT_EQ(*r.FindField("clean"), "false");
  EXPECT_EQ(r.FindField("missing"), nullptr);
  EXPECT_EQ(r.line, expected_line);
  // Relative to the source root, not an absolute path.
  EXPECT_EQ(r.file, "tests/common/log_test.cc");
}

TEST(LogTest, MacroNestsInUnbracedIfElse) {
  ScopedLogCapture capture;
  for (int i = 0; i < 2; ++i) {
    if (i == 0)
      SPARK_LOG(INFO) << "then " << i;
    else
      SPARK_LOG(INFO) << "else " << i;
  }
  const auto records = capture.records();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].message, "then 0");
  EXPECT_EQ(records[1].message, "else 1");
}

TEST(LogTest, FunctionFormWithFieldList) {
  ScopedLogCapture capture;
  Log(LogLevel::kInfo, "shard exited", {{"rank", "1"}, {"status", "137"}});
  const auto records = capture.records();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].message, "shard exited");
  EXPECT_EQ(*records[0].FindField("status"), "137");
  EXPECT_TRUE(capture.Contains("exited"));
  EXPECT_FALSE(capture.Contains("started"));
}

TEST(LogTest, StatusFieldUsesToString) {
  ScopedLogCapture capture;
  SPARK_LOG(ERROR).With("error", NotFound("no model")) << "load failed";
  ASSERT_EQ(capture.records().size(), 1u);
  EXPECT_EQ(*capture.records()[0].FindField("error"), "not_found: no model");
}

TEST(LogTest, MinimumLevelDropsAndDoesNotEvaluate) {
  ScopedLogCapture capture(LogLevel::kWarn);
  int evaluated = 0;
  auto count = [&] { return ++evaluated; };
  SPARK_LOG(DEBUG) << count();
  SPARK_LOG(INFO) << count();
  Log(LogLevel::kInfo, "dropped");
  SPARK_LOG(WARN) << count();
  SPARK_LOG(ERROR) << count();
  EXPECT_EQ(evaluated, 2);
  const auto records = capture.records();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].message, "1");
  EXPECT_EQ(records[1].level, LogLevel::kError);
}

TEST(LogTest, ScopedCaptureRestoresSinkAndLevel) {
  SetMinLogLevel(LogLevel::kError);
  auto outer = std::make_shared<CaptureLogSink>();
  auto previous = SetLogSink(outer);
  {
    ScopedLogCapture inner(LogLevel::kDebug);
    EXPECT_EQ(MinLogLevel(), LogLevel::kDebug);
    SPARK_LOG(INFO) << "inside";
  }
  EXPECT_EQ(MinLogLevel(), LogLevel::kError);
  EXPECT_EQ(GetLogSink(), outer);
  SPARK_LOG(ERROR) << "outside";
  EXPECT_FALSE(outer->Contains("inside"));
  EXPECT_TRUE(outer->Contains("outside"));
  SetLogSink(previous);
  SetMinLogLevel(LogLevel::kInfo);
}

TEST(LogTest, FormatLogLineIsExact) {
  const LogRecord r =
      MakeRecord(LogLevel::kWarn, "shard exited",
                 {{"rank", "1"}, {"reason", "out of memory"}, {"empty", ""}, {"quote", "a\"b\nc"}});
  EXPECT_EQ(FormatLogLine(r),
            "2025-01-02T03:04:05.123456Z WARN  agent/supervisor.cc:42] shard exited rank=1 "
            "reason=\"out of memory\" empty=\"\" quote=\"a\\\"b\\nc\"\n");
  EXPECT_EQ(FormatLogLine(MakeRecord(LogLevel::kError, "x", {})),
            "2025-01-02T03:04:05.123456Z ERROR agent/supervisor.cc:42] x\n");
}

TEST(LogTest, FdSinkWritesWholeLines) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);
  FdLogSink sink(write_end.get());
  sink.Write(MakeRecord(LogLevel::kInfo, "hello", {{"k", "v"}}));
  write_end.Reset();
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = ::read(read_end.get(), buf, sizeof(buf))) > 0) out.append(buf, n);
  EXPECT_EQ(out, "2025-01-02T03:04:05.123456Z INFO  agent/supervisor.cc:42] hello k=v\n");
}

TEST(LogTest, JournalFieldsNameEverything) {
  const LogRecord r =
      MakeRecord(LogLevel::kWarn, "shard exited", {{"rank", "1"}, {"exit-code.v2", "137"}});
  const std::vector<std::string> fields = JournalFields(r);
  const std::vector<std::string> expected = {
      "MESSAGE=shard exited",
      "PRIORITY=4",
      "CODE_FILE=agent/supervisor.cc",
      "CODE_LINE=42",
      "CODE_FUNC=void Supervisor::OnExit()",
      std::string("SYSLOG_IDENTIFIER=") + program_invocation_short_name,
      "SPARK_RANK=1",
      "SPARK_EXIT_CODE_V2=137",
  };
  EXPECT_EQ(fields, expected);
  EXPECT_EQ(JournalFields(MakeRecord(LogLevel::kDebug, "", {}))[1], "PRIORITY=7");
  EXPECT_EQ(JournalFields(MakeRecord(LogLevel::kInfo, "", {}))[1], "PRIORITY=6");
  EXPECT_EQ(JournalFields(MakeRecord(LogLevel::kError, "", {}))[1], "PRIORITY=3");
  const std::string long_key(100, 'k');
  const auto long_fields = JournalFields(MakeRecord(LogLevel::kInfo, "", {{long_key, "v"}}));
  EXPECT_EQ(long_fields.back(), "SPARK_" + std::string(58, 'K') + "=v");
}

TEST(LogTest, ParseLevelsAndSinks) {
  EXPECT_EQ(*ParseLogLevel("DEBUG"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarn);
  EXPECT_EQ(*ParseLogLevel("error"), LogLevel::kError);
  Result<LogLevel> bad = ParseLogLevel("verbose");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("debug, info, warn, error"), std::string::npos);
  EXPECT_EQ(LogLevelName(LogLevel::kWarn), "warn");
  EXPECT_EQ(*ParseLogSinkKind("journald"), LogSinkKind::kJournald);
  EXPECT_EQ(*ParseLogSinkKind("Auto"), LogSinkKind::kAuto);
  EXPECT_FALSE(ParseLogSinkKind("syslog").ok());
}

class JournalStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* old = std::getenv("JOURNAL_STREAM");
    if (old != nullptr) saved_ = old;
  }
  void TearDown() override {
    if (saved_.has_value()) {
      ::setenv("JOURNAL_STREAM", saved_->c_str(), 1);
    } else {
      ::unsetenv("JOURNAL_STREAM");
    }
  }
  std::optional<std::string> saved_;
};

TEST_F(JournalStreamTest, AutoPicksJournalOnlyWhenStderrIsTheStream) {
  struct stat st {};
  ASSERT_EQ(::fstat(STDERR_FILENO, &st), 0);
  const std::string matching = std::to_string(static_cast<unsigned long long>(st.st_dev)) + ":" +
                               std::to_string(static_cast<unsigned long long>(st.st_ino));

  ::unsetenv("JOURNAL_STREAM");
  EXPECT_FALSE(StderrIsJournal());
  ::setenv("JOURNAL_STREAM", matching.c_str(), 1);
  EXPECT_TRUE(StderrIsJournal());
  const std::string other_inode = std::to_string(static_cast<unsigned long long>(st.st_dev)) + ":" +
                                  std::to_string(static_cast<unsigned long long>(st.st_ino) + 1);
  ::setenv("JOURNAL_STREAM", other_inode.c_str(), 1);
  EXPECT_FALSE(StderrIsJournal());
  ::setenv("JOURNAL_STREAM", "garbage", 1);
  EXPECT_FALSE(StderrIsJournal());

  auto previous = GetLogSink();
  const LogLevel previous_level = MinLogLevel();
  ::setenv("JOURNAL_STREAM", matching.c_str(), 1);
  EXPECT_EQ(InitLogging(LogSinkKind::kAuto, LogLevel::kDebug), LogSinkKind::kJournald);
  EXPECT_NE(dynamic_cast<JournaldLogSink*>(GetLogSink().get()), nullptr);
  EXPECT_EQ(MinLogLevel(), LogLevel::kDebug);
  ::unsetenv("JOURNAL_STREAM");
  EXPECT_EQ(InitLogging(LogSinkKind::kAuto, LogLevel::kInfo), LogSinkKind::kStderr);
  EXPECT_NE(dynamic_cast<FdLogSink*>(GetLogSink().get()), nullptr);
  EXPECT_EQ(InitLogging(LogSinkKind::kJournald, LogLevel::kInfo), LogSinkKind::kJournald);
  SetLogSink(previous);
  SetMinLogLevel(previous_level);
}

TEST(LogTest, ConcurrentLoggingKeepsEveryRecordIntact) {
  ScopedLogCapture capture;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kPerThread; ++i) SPARK_LOG(INFO).With("t", t).With("i", i) << "m";
    });
  }
  for (auto& th : threads) th.join();
  const auto records = capture.records();
  ASSERT_EQ(records.size(), static_cast<size_t>(kThreads * kPerThread));
  std::vector<int> next(kThreads, 0);
  for (const LogRecord& r : records) {
    const int t = std::stoi(*r.FindField("t"));
    // Each thread's records arrive in its own order.
    EXPECT_EQ(std::stoi(*r.FindField("i")), next[t]++);
  }
}

TEST(LogTest, FdSinkLinesDoNotInterleave) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);
  auto sink = std::make_shared<FdLogSink>(write_end.get());
  std::string out;
  std::thread reader([&] {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(read_end.get(), buf, sizeof(buf))) > 0) out.append(buf, n);
  });
  std::vector<std::thread> writers;
  const std::string payload(300, 'x');
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&] {
      for (int i = 0; i < 100; ++i) sink->Write(MakeRecord(LogLevel::kInfo, payload, {}));
    });
  }
  for (auto& w : writers) w.join();
  write_end.Reset();
  reader.join();
  const std::string line = FormatLogLine(MakeRecord(LogLevel::kInfo, payload, {}));
  ASSERT_EQ(out.size(), line.size() * 400);
  for (size_t pos = 0; pos < out.size(); pos += line.size()) {
    ASSERT_EQ(out.compare(pos, line.size(), line), 0) << "at byte " << pos;
  }
}

}  // namespace
}  // namespace spark
