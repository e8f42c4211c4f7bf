#include "common/process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/fake_process.h"
#include "common/fd.h"

namespace spark {
namespace {

using std::chrono::milliseconds;

// A fresh directory per test, removed afterwards.
class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("process_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static SpawnOptions Shell(const std::string& script) {
    SpawnOptions options;
    options.args = {"/bin/sh", "-c", script};
    return options;
  }

  static std::string ReadFile(const std::filesystem::path& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  // A FIFO the child writes to; the test reads it to know the child reached a point.
  struct Fifo {
    std::filesystem::path path;
    UniqueFd read_end;
    // Waits (bounded) until `text` has arrived.
    bool WaitFor(const std::string& text, milliseconds timeout) {
      std::string got;
      const auto deadline = std::chrono::steady_clock::now() + timeout;
      while (got.find(text) == std::string::npos) {
        const auto left =
            std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        pollfd p{read_end.get(), POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
        char buf[256];
        const ssize_t n = ::read(read_end.get(), buf, sizeof(buf));
        if (n > 0) got.append(buf, static_cast<size_t>(n));
      }
      return true;
    }
  };
  Fifo MakeFifo(const std::string& name) {
    Fifo fifo;
    fifo.path = dir_ / name;
    EXPECT_EQ(::mkfifo(fifo.path.c_str(), 0600), 0);
    fifo.read_end.Reset(::open(fifo.path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    EXPECT_TRUE(fifo.read_end.valid());
    return fifo;
  }

  RealProcessLauncher launcher_;
  std::filesystem::path dir_;
};

TEST_F(ProcessTest, ExitCodeIsReported) {
  auto process = launcher_.Spawn(Shell("exit 3"));
  ASSERT_TRUE(process.ok()) << process.status().ToString();
  EXPECT_GT((*process)->pid(), 0);
  Result<ExitInfo> info = (*process)->Wait();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(*info, ExitInfo::Code(3));
  EXPECT_EQ(info->ToString(), "exit code 3");
  // Reaped once; the same answer afterwards.
  auto again = (*process)->TryWait();
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(again->has_value());
  EXPECT_EQ(**again, ExitInfo::Code(3));
  EXPECT_TRUE((*process)->Kill(SIGKILL).ok());  // no-op after reaping
}

TEST_F(ProcessTest, SignalDeathIsReported) {
  auto process = launcher_.Spawn(Shell("kill -KILL $$"));
  ASSERT_TRUE(process.ok());
  Result<ExitInfo> info = (*process)->Wait();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->signal, SIGKILL);
  EXPECT_FALSE(info->exited());
  EXPECT_EQ(info->ToString(), "killed by signal 9 (SIGKILL)");
}

TEST_F(ProcessTest, PidfdBecomesReadableOnExitWithinMilliseconds) {
  Fifo fifo = MakeFifo("ready");
  SpawnOptions options = Shell("echo ready > " + fifo.path.string() + "; exec sleep 30");
  auto process = launcher_.Spawn(options);
  ASSERT_TRUE(process.ok());
  ASSERT_TRUE(fifo.WaitFor("ready", milliseconds(5000)));
  pollfd p{(*process)->pidfd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0) << "pidfd readable while the child runs";
  auto still = (*process)->TryWait();
  ASSERT_TRUE(still.ok());
  EXPECT_FALSE(still->has_value());

  const auto killed_at = std::chrono::steady_clock::now();
  ASSERT_TRUE((*process)->Kill(SIGKILL).ok());
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  const auto latency = std::chrono::steady_clock::now() - killed_at;
  EXPECT_TRUE(p.revents & POLLIN);
  EXPECT_LT(latency, milliseconds(500));
  auto info = (*process)->TryWait();
  ASSERT_TRUE(info.ok());
  ASSERT_TRUE(info->has_value());
  EXPECT_EQ((*info)->signal, SIGKILL);
}

TEST_F(ProcessTest, TerminateEndsACooperativeChildWithSigterm) {
  Fifo fifo = MakeFifo("ready");
  auto process = launcher_.Spawn(Shell("echo ready > " + fifo.path.string() + "; exec sleep 30"));
  ASSERT_TRUE(process.ok());
  ASSERT_TRUE(fifo.WaitFor("ready", milliseconds(5000)));
  const auto start = std::chrono::steady_clock::now();
  Result<ExitInfo> info = (*process)->Terminate(milliseconds(5000));
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->signal, SIGTERM);
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2000));
}

TEST_F(ProcessTest, TerminateKillsAChildThatIgnoresSigtermAfterGrace) {
  Fifo fifo = MakeFifo("ready");
  // The shell ignores TERM and only then says it is ready, so the signal cannot arrive early.
  auto process = launcher_.Spawn(
      Shell("trap '' TERM; echo ready > " + fifo.path.string() + "; while :; do sleep 1; done"));
  ASSERT_TRUE(process.ok());
  ASSERT_TRUE(fifo.WaitFor("ready", milliseconds(5000)));
  const auto start = std::chrono::steady_clock::now();
  Result<ExitInfo> info = (*process)->Terminate(milliseconds(300));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->signal, SIGKILL);
  EXPECT_GE(took, milliseconds(300));
  EXPECT_LT(took, milliseconds(3000));
}

TEST_F(ProcessTest, TerminateKillsTheWholeProcessGroup) {
  Fifo fifo = MakeFifo("ready");
  const std::filesystem::path grandchild_pid = dir_ / "grandchild.pid";
  // The grandchild ignores TERM; the leader exits on TERM. Terminate must not leave it behind.
  auto process = launcher_.Spawn(Shell("sh -c 'trap \"\" TERM; echo $$ > " +
                                       grandchild_pid.string() + "; echo ready > " +
                                       fifo.path.string() + "; while :; do sleep 1; done' & wait"));
  ASSERT_TRUE(process.ok());
  ASSERT_TRUE(fifo.WaitFor("ready", milliseconds(5000)));
  const pid_t grandchild = std::stoi(ReadFile(grandchild_pid));
  ASSERT_EQ(::kill(grandchild, 0), 0);
  ASSERT_TRUE((*process)->Terminate(milliseconds(2000)).ok());
  // The grandchild was SIGKILLed; once init reaps it, kill(pid, 0) fails. Bounded wait.
  const auto deadline = std::chrono::steady_clock::now() + milliseconds(5000);
  bool gone = false;
  while (!gone && std::chrono::steady_clock::now() < deadline) {
    gone = ::kill(grandchild, 0) != 0;
    if (!gone) {
      // A zombie awaiting its reaper still answers kill(0); check its state instead.
      std::ifstream stat("/proc/" + std::to_string(grandchild) + "/stat");
      std::string pid_field, comm, state;
      gone = !(stat >> pid_field >> comm >> state) || state == "Z";
    }
    if (!gone) std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_TRUE(gone) << "grandchild " << grandchild << " survived Terminate";
}

TEST_F(ProcessTest, EnvironmentAdditionsOverridesAndRemovals) {
  ::setenv("SPARK_PROCESS_TEST_INHERITED", "from-parent", 1);
  ::setenv("SPARK_PROCESS_TEST_REMOVED", "gone", 1);
  const std::filesystem::path out = dir_ / "env.txt";
  SpawnOptions options = Shell(
      "echo \"$SPARK_PROCESS_TEST_INHERITED|$SPARK_PROCESS_TEST_ADDED|"
      "${SPARK_PROCESS_TEST_REMOVED-unset}\"");
  options.env = {{"SPARK_PROCESS_TEST_ADDED", "added value"}};
  options.unset_env = {"SPARK_PROCESS_TEST_REMOVED"};
  options.stdout_path = out.string();
  auto process = launcher_.Spawn(options);
  ASSERT_TRUE(process.ok());
  ASSERT_EQ(*(*process)->Wait(), ExitInfo::Code(0));
  EXPECT_EQ(ReadFile(out), "from-parent|added value|unset\n");

  // A full replacement environment.
  const std::filesystem::path out2 = dir_ / "env2.txt";
  SpawnOptions clean = Shell("echo \"$A|$B|${HOME-unset}|${SPARK_PROCESS_TEST_INHERITED-unset}\"");
  clean.inherit_env = false;
  clean.env = {{"A", "1"}, {"B", "two"}};
  clean.stdout_path = out2.string();
  auto process2 = launcher_.Spawn(clean);
  ASSERT_TRUE(process2.ok());
  ASSERT_EQ(*(*process2)->Wait(), ExitInfo::Code(0));
  EXPECT_EQ(ReadFile(out2), "1|two|unset|unset\n");
  ::unsetenv("SPARK_PROCESS_TEST_INHERITED");
  ::unsetenv("SPARK_PROCESS_TEST_REMOVED");
}

TEST_F(ProcessTest, WorkingDirectoryAndAppendedLogFile) {
  const std::filesystem::path log = dir_ / "child.log";
  {
    std::ofstream pre(log);
    pre << "previous run\n";
  }
  SpawnOptions options = Shell("pwd; echo to-stderr >&2; echo done");
  options.cwd = dir_.string();
  options.stdout_path = log.string();
  options.stderr_path = log.string();
  auto process = launcher_.Spawn(options);
  ASSERT_TRUE(process.ok());
  ASSERT_EQ(*(*process)->Wait(), ExitInfo::Code(0));
  EXPECT_EQ(ReadFile(log), "previous run\n" + dir_.string() + "\nto-stderr\ndone\n");
  struct stat st {};
  ASSERT_EQ(::stat(log.c_str(), &st), 0);
}

TEST_F(ProcessTest, SeparateStdoutAndStderrFilesAndStdinIsDevNull) {
  const std::filesystem::path out = dir_ / "out.log";
  const std::filesystem::path err = dir_ / "err.log";
  SpawnOptions options = Shell("cat; echo out; echo err >&2");
  options.stdout_path = out.string();
  options.stderr_path = err.string();
  auto process = launcher_.Spawn(options);
  ASSERT_TRUE(process.ok());
  ASSERT_EQ(*(*process)->Wait(), ExitInfo::Code(0));
  EXPECT_EQ(ReadFile(out), "out\n");
  EXPECT_EQ(ReadFile(err), "err\n");
}

TEST_F(ProcessTest, ChildGetsNoInheritedDescriptors) {
  // A descriptor without close-on-exec in the parent must still not reach the child.
  const int leaked = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaked, 0);
  const std::filesystem::path out = dir_ / "fds.txt";
  SpawnOptions options = Shell("ls /proc/self/fd | sort -n | tr '\\n' ' '");
  options.stdout_path = out.string();
  auto process = launcher_.Spawn(options);
  ::close(leaked);
  ASSERT_TRUE(process.ok());
  ASSERT_EQ(*(*process)->Wait(), ExitInfo::Code(0));
  // 0-2 plus the one `ls` opens for /proc/self/fd.
  EXPECT_EQ(ReadFile(out), "0 1 2 3 ");
}

TEST_F(ProcessTest, NewProcessGroupAndSignalMaskReset) {
  const std::filesystem::path out = dir_ / "pg.txt";
  // Block SIGTERM in this thread: the child must not inherit the mask.
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &term, &old), 0);
  SpawnOptions options = Shell("cut -d' ' -f5 /proc/$$/stat; grep SigBlk /proc/self/status");
  options.stdout_path = out.string();
  auto process = launcher_.Spawn(options);
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ASSERT_TRUE(process.ok());
  ASSERT_EQ(*(*process)->Wait(), ExitInfo::Code(0));
  const std::string text = ReadFile(out);
  EXPECT_EQ(text.substr(0, text.find('\n')), std::to_string((*process)->pid()));
  EXPECT_NE(text.find("SigBlk:\t0000000000000000"), std::string::npos) << text;
}

TEST_F(ProcessTest, SpawnErrorsAreStatuses) {
  SpawnOptions missing;
  missing.args = {"spark-no-such-program"};
  auto r1 = launcher_.Spawn(missing);
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r1.status().message().find("not found in PATH"), std::string::npos);

  SpawnOptions bad_path;
  bad_path.args = {"/nonexistent/program"};
  auto r2 = launcher_.Spawn(bad_path);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r2.status().message().find("exec"), std::string::npos) << r2.status().message();

  SpawnOptions bad_cwd = Shell("true");
  bad_cwd.cwd = (dir_ / "missing").string();
  auto r3 = launcher_.Spawn(bad_cwd);
  ASSERT_FALSE(r3.ok());
  EXPECT_NE(r3.status().message().find("working directory " + bad_cwd.cwd), std::string::npos)
      << r3.status().message();

  SpawnOptions bad_log = Shell("true");
  bad_log.stdout_path = (dir_ / "missing" / "x.log").string();
  auto r4 = launcher_.Spawn(bad_log);
  ASSERT_FALSE(r4.ok());
  EXPECT_NE(r4.status().message().find("x.log"), std::string::npos);

  SpawnOptions empty;
  EXPECT_EQ(launcher_.Spawn(empty).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(ProcessTest, PathLookupUsesChildPath) {
  auto process = launcher_.Spawn(SpawnOptions{.args = {"sh", "-c", "exit 7"}});
  ASSERT_TRUE(process.ok()) << process.status().ToString();
  EXPECT_EQ(*(*process)->Wait(), ExitInfo::Code(7));
}

TEST_F(ProcessTest, DestroyingAHandleKillsAndReapsTheChild) {
  Fifo fifo = MakeFifo("ready");
  pid_t pid;
  {
    auto process = launcher_.Spawn(Shell("echo ready > " + fifo.path.string() + "; exec sleep 30"));
    ASSERT_TRUE(process.ok());
    ASSERT_TRUE(fifo.WaitFor("ready", milliseconds(5000)));
    pid = (*process)->pid();
  }
  // Reaped: no such child any more (not even a zombie).
  EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
  EXPECT_EQ(::kill(pid, 0), -1);
}

TEST_F(ProcessTest, DetachLeavesTheChildRunning) {
  Fifo fifo = MakeFifo("ready");
  pid_t pid;
  {
    auto process = launcher_.Spawn(Shell("echo ready > " + fifo.path.string() + "; exec sleep 30"));
    ASSERT_TRUE(process.ok());
    ASSERT_TRUE(fifo.WaitFor("ready", milliseconds(5000)));
    pid = (*process)->pid();
    (*process)->Detach();
    EXPECT_EQ((*process)->Kill(SIGTERM).code(), StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(::kill(pid, 0), 0) << "a detached child must survive its handle";
  ::kill(-pid, SIGKILL);  // the background reaper collects it
}

TEST_F(ProcessTest, WaitForTimesOut) {
  auto process = launcher_.Spawn(Shell("exec sleep 30"));
  ASSERT_TRUE(process.ok());
  const auto start = std::chrono::steady_clock::now();
  auto r = (*process)->WaitFor(milliseconds(50));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(50));
}

TEST(ExitInfoTest, StringsAndWaitStatus) {
  EXPECT_EQ(ExitInfo::FromWaitStatus(3 << 8), ExitInfo::Code(3));
  EXPECT_EQ(ExitInfo::FromWaitStatus(SIGSEGV | 0x80),
            (ExitInfo{.exit_code = 0, .signal = SIGSEGV, .core_dumped = true}));
  EXPECT_EQ((ExitInfo{0, SIGSEGV, true}).ToString(), "killed by signal 11 (SIGSEGV), core dumped");
  EXPECT_TRUE(ExitInfo::Code(0).success());
  EXPECT_FALSE(ExitInfo::Code(1).success());
  EXPECT_EQ(SignalName(SIGTERM), "SIGTERM");
}

// ---- FakeProcessLauncher

TEST(FakeProcessTest, RecordsSpawnsAndExitsOnCommand) {
  FakeProcessLauncher launcher;
  SpawnOptions options;
  options.args = {"spark-shard", "--rank=1"};
  auto process = launcher.Spawn(options);
  ASSERT_TRUE(process.ok());
  ASSERT_EQ(launcher.spawn_count(), 1);
  auto control = launcher.process(0);
  ASSERT_NE(control, nullptr);
  EXPECT_EQ(control->options().args, options.args);
  EXPECT_EQ(control->pid(), (*process)->pid());
  EXPECT_EQ(launcher.process(1), nullptr);

  pollfd p{(*process)->pidfd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  EXPECT_FALSE((*process)->TryWait()->has_value());
  control->Exit(ExitInfo::Signal(SIGSEGV));
  EXPECT_EQ(::poll(&p, 1, 0), 1);
  EXPECT_EQ(**(*process)->TryWait(), ExitInfo::Signal(SIGSEGV));
  EXPECT_TRUE(control->reaped());
}

TEST(FakeProcessTest, TerminateEscalatesWhenSigtermIsIgnored) {
  FakeProcessLauncher launcher;
  auto cooperative = launcher.Spawn(SpawnOptions{.args = {"a"}});
  auto stubborn = launcher.Spawn(SpawnOptions{.args = {"b"}});
  ASSERT_TRUE(cooperative.ok() && stubborn.ok());
  launcher.process(1)->set_ignores_sigterm(true);
  EXPECT_EQ(*(*cooperative)->Terminate(milliseconds(100)), ExitInfo::Signal(SIGTERM));
  EXPECT_EQ(*(*stubborn)->Terminate(milliseconds(100)), ExitInfo::Signal(SIGKILL));
  EXPECT_EQ(launcher.process(0)->signals(), std::vector<int>{SIGTERM});
  EXPECT_EQ(launcher.process(1)->signals(), (std::vector<int>{SIGTERM, SIGKILL}));
}

TEST(FakeProcessTest, OtherSignalsAreRecordedOnly) {
  FakeProcessLauncher launcher;
  auto process = launcher.Spawn(SpawnOptions{.args = {"a"}});
  ASSERT_TRUE(process.ok());
  ASSERT_TRUE((*process)->Kill(SIGUSR1).ok());
  EXPECT_FALSE(launcher.process(0)->exited());
  EXPECT_EQ(launcher.process(0)->signals(), std::vector<int>{SIGUSR1});
}

TEST(FakeProcessTest, FailNextSpawnAndWaitAcrossThreads) {
  FakeProcessLauncher launcher;
  launcher.FailNextSpawn(ResourceExhausted("no GPU"));
  EXPECT_EQ(launcher.Spawn(SpawnOptions{.args = {"a"}}).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(launcher.spawn_count(), 0);

  std::unique_ptr<Process> handle;
  std::thread spawner([&] { handle = *launcher.Spawn(SpawnOptions{.args = {"a"}}); });
  ASSERT_TRUE(launcher.WaitForSpawns(1, milliseconds(5000)));
  spawner.join();
  std::thread exiter([&] { launcher.process(0)->Exit(ExitInfo::Code(2)); });
  EXPECT_EQ(*handle->Wait(), ExitInfo::Code(2));
  exiter.join();
  EXPECT_FALSE(launcher.WaitForSpawns(2, milliseconds(1)));
}

TEST(FakeProcessTest, DestroyingARunningHandleKillsIt) {
  FakeProcessLauncher launcher;
  {
    auto process = launcher.Spawn(SpawnOptions{.args = {"a"}});
    ASSERT_TRUE(process.ok());
  }
  auto control = launcher.process(0);
  EXPECT_TRUE(control->handle_destroyed());
  EXPECT_EQ(control->exit_info(), ExitInfo::Signal(SIGKILL));
  EXPECT_TRUE(control->reaped());
}

}  // namespace
}  // namespace spark
