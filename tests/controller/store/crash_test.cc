// Crash safety: a child process (store_crash_writer) commits transactions from several threads and
// is SIGKILLed at a random moment, N times over the same database. After each kill the database
// must open (integrity_check ok) and hold every transaction the child acknowledged, whole.
//
// SPARK_STORE_CRASH_ROUNDS (default 25) sets N; SPARK_STORE_CRASH_SEED fixes the random kill
// times (the seed in use is printed, so a failure can be replayed).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/clock.h"
#include "controller/store/store.h"
#include "tests/controller/store/test_util.h"

extern char** environ;

namespace spark::store {
namespace {

using ::spark::store::testing::TempDir;

struct ChildRun {
  std::vector<std::string> acked;  // "ROUND:SEQ" of every acknowledged transaction
  bool opened = false;             // the child reported "open"
  std::string stderr_text;
};

// Runs the writer for `kill_after` (measured from spawn), SIGKILLs it and collects its output.
ChildRun RunAndKill(const std::string& db, int round, std::chrono::milliseconds kill_after) {
  int out_pipe[2];
  int err_pipe[2];
  SPARK_CHECK(::pipe2(out_pipe, O_CLOEXEC) == 0);
  SPARK_CHECK(::pipe2(err_pipe, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);
  std::string binary = STORE_CRASH_WRITER;
  std::string round_text = std::to_string(round);
  std::string db_arg = db;
  char* argv[] = {binary.data(), db_arg.data(), round_text.data(), nullptr};
  pid_t pid = -1;
  SPARK_CHECK(posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv, environ) == 0)
      << "cannot start " << binary;
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);

  std::string out;
  std::string err;
  auto drain = [](int fd, std::string& into) {
    char buffer[65536];
    while (true) {
      ssize_t n = ::read(fd, buffer, sizeof(buffer));
      if (n <= 0) return n == 0;  // true at EOF
      into.append(buffer, static_cast<size_t>(n));
    }
  };
  ::fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
  ::fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);
  const auto deadline = std::chrono::steady_clock::now() + kill_after;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    ::poll(fds, 2, static_cast<int>(left.count()));
    drain(out_pipe[0], out);
    drain(err_pipe[0], err);
  }
  ::kill(pid, SIGKILL);
  int wait_status = 0;
  SPARK_CHECK(::waitpid(pid, &wait_status, 0) == pid);
  // Everything written before the kill is still in the pipes.
  ::fcntl(out_pipe[0], F_SETFL, 0);
  ::fcntl(err_pipe[0], F_SETFL, 0);
  drain(out_pipe[0], out);
  drain(err_pipe[0], err);
  ::close(out_pipe[0]);
  ::close(err_pipe[0]);

  ChildRun run;
  run.stderr_text = err;
  if (WIFEXITED(wait_status)) {
    run.stderr_text +=
        "\n(writer exited by itself with status " + std::to_string(WEXITSTATUS(wait_status)) + ")";
  }
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    if (lines.eof()) break;  // a last line without '\n' was cut by the kill
    if (line == "open") run.opened = true;
    if (line.rfind("ack ", 0) == 0) run.acked.push_back(line.substr(4));
  }
  return run;
}

int EnvInt(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

TEST(StoreCrashTest, KillNineAtRandomPointsLosesNoAcknowledgedWrite) {
  TempDir dir;
  const std::string db = dir.File("controller.db");
  const int rounds = EnvInt("SPARK_STORE_CRASH_ROUNDS", 25);
  const unsigned seed = static_cast<unsigned>(
      EnvInt("SPARK_STORE_CRASH_SEED", static_cast<int>(std::random_device{}() & 0x7fffffff)));
  std::printf("crash test: %d rounds, SPARK_STORE_CRASH_SEED=%u\n", rounds, seed);
  std::mt19937 random(seed);
  // Mostly while writing; sometimes during open and the first migrations.
  std::uniform_int_distribution<int> kill_ms(0, 400);

  std::set<std::string> acked_total;
  int rounds_with_acks = 0;
  for (int round = 0; round < rounds; ++round) {
    const auto delay = std::chrono::milliseconds(round == 1 ? 3 : kill_ms(random));
    ChildRun child = RunAndKill(db, round, delay);
    ASSERT_THAT(child.stderr_text, ::testing::Not(::testing::HasSubstr("failed")))
        << "round " << round << ": " << child.stderr_text;
    if (!child.acked.empty()) ++rounds_with_acks;
    acked_total.insert(child.acked.begin(), child.acked.end());

    // Reopen with a full integrity check (Open fails unless it says "ok").
    Result<std::unique_ptr<Store>> opened =
        Store::Open({.path = db, .full_integrity_check = true}, RealClock::Get());
    ASSERT_TRUE(opened.ok()) << "round " << round << " (killed after " << delay.count()
                             << " ms): " << opened.status().ToString();
    std::unique_ptr<Store> store = std::move(opened).value();
    Status check = store->Read([&](ReadTxn& txn) -> Status {
      std::set<std::string> present;
      int64_t since = 0;
      while (true) {
        SPARK_ASSIGN_OR_RETURN(std::vector<EventRecord> page, txn.ListEvents(since, 10000));
        if (page.empty()) break;
        for (const EventRecord& e : page) present.insert(e.message);
        since = page.back().id;
      }
      for (const std::string& id : acked_total) {
        if (!present.count(id)) return DataLoss("acknowledged event " + id + " is missing");
        // The deployment and run written in the same transaction are there too.
        const int64_t seq = std::stoll(id.substr(id.find(':') + 1));
        if (seq % 3 != 0) continue;
        const std::string name = "d-" + id.substr(0, id.find(':')) + "-" + std::to_string(seq);
        SPARK_ASSIGN_OR_RETURN(DeploymentRecord d, txn.GetDeployment(name));
        SPARK_ASSIGN_OR_RETURN(std::optional<RunDetail> run, txn.GetOpenRun(name));
        if (!run.has_value() || run->members.size() != 1 || d.generation != 1) {
          return DataLoss("transaction " + id + " is only partly present");
        }
      }
      // No partial transaction either: every deployment has its run.
      SPARK_ASSIGN_OR_RETURN(std::vector<DeploymentRecord> all, txn.ListDeployments());
      SPARK_ASSIGN_OR_RETURN(std::vector<RunDetail> open, txn.ListOpenRuns());
      if (all.size() != open.size()) {
        return DataLoss(std::to_string(all.size()) + " deployments but " +
                        std::to_string(open.size()) + " runs");
      }
      return Status();
    });
    ASSERT_TRUE(check.ok()) << "round " << round << " (killed after " << delay.count()
                            << " ms): " << check.ToString();
  }
  std::printf("crash test: %zu acknowledged transactions over %d rounds, all present\n",
              acked_total.size(), rounds);
  // The test must actually have killed writers in the middle of committing.
  EXPECT_GE(rounds_with_acks, rounds / 2);
  EXPECT_GT(acked_total.size(), static_cast<size_t>(rounds));
}

}  // namespace
}  // namespace spark::store
