// Child processes: spawning, signalling, waiting, and exit notification through a pidfd.
//
//   RealProcessLauncher launcher;
//   SpawnOptions options;
//   options.args = {"/usr/bin/spark-shard", "--rank=1"};
//   options.env = {{"CUDA_VISIBLE_DEVICES", "0"}};
//   options.unset_env = {"NOTIFY_SOCKET"};
//   options.stdout_path = options.stderr_path = "/var/log/spark/shard-1.log";
//   SPARK_ASSIGN_OR_RETURN(std::unique_ptr<Process> shard, launcher.Spawn(options));
//   poller.AddFd(shard->pidfd(), [&] { OnShardExit(); });   // readable once the child exits
//   ...
//   SPARK_ASSIGN_OR_RETURN(ExitInfo info, shard->Terminate(std::chrono::seconds(10)));
//
// ProcessLauncher is the seam that tests replace: FakeProcessLauncher (common/fake_process.h)
// records spawns and lets the test make a fake process exit.
//
// RealProcessLauncher forks and execs: stdin is /dev/null; stdout/stderr are inherited or
// appended to files; every other descriptor is closed in the child; signal dispositions are reset
// to default and the signal mask cleared (a parent that blocks SIGTERM for a signalfd does not pass
// that on); by default the child leads a new process group, and Kill/Terminate then signal the
// whole group so helpers it started die with it. A program name without '/' is looked up in the
// child's PATH before forking; every failure to start (program not found, cwd missing, log file
// not writable, exec refused) is a Status from Spawn, never a child that silently exits 127.
//
// Reaping and lifetime (the policy): a Process owns its child. The child is reaped only through
// its handle (TryWait, WaitFor, Wait, Terminate), never by anyone else: do not call waitpid(-1) or
// set SIGCHLD to SIG_IGN elsewhere in a process that uses this. Because an unreaped child's pid and
// process group cannot be reused, Kill never hits a stranger. Destroying the handle of a child that
// is still running kills it (SIGKILL, to its group) and reaps it, waiting up to 10 s; a child that
// does not die in that time (uninterruptible sleep) is handed to a background reaper thread, so no
// zombie is left behind. To let a child outlive its handle, call Detach(): the child keeps
// running and a background thread reaps it when it exits.
//
// Thread safety: Process methods may be called concurrently from several threads (internally
// synchronised); pidfd() may be polled from any thread while the handle exists. Launchers are
// thread-safe. Spawn is safe in a multi-threaded program (only async-signal-safe calls run between
// fork and exec).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace spark {

// How a child ended: an exit code, or the signal that killed it.
struct ExitInfo {
  int exit_code = 0;  // meaningful when signal == 0
  int signal = 0;     // terminating signal; 0 when the process called exit()
  bool core_dumped = false;

  bool exited() const { return signal == 0; }
  bool success() const { return signal == 0 && exit_code == 0; }
  // "exit code 3", "killed by signal 9 (SIGKILL)", "killed by signal 11 (SIGSEGV), core dumped".
  std::string ToString() const;
  // From a waitpid() status word.
  static ExitInfo FromWaitStatus(int wait_status);
  static ExitInfo Code(int code) { return ExitInfo{code, 0, false}; }
  static ExitInfo Signal(int signal) { return ExitInfo{0, signal, false}; }

  friend bool operator==(const ExitInfo& a, const ExitInfo& b) {
    return a.exit_code == b.exit_code && a.signal == b.signal && a.core_dumped == b.core_dumped;
  }
};

struct SpawnOptions {
  // args[0] is the program: a path, or a name looked up in the child's PATH.
  std::vector<std::string> args{};
  // The child's environment: this process's environment (when inherit_env), minus unset_env,
  // plus env (which overrides inherited values).
  bool inherit_env = true;
  std::map<std::string, std::string> env{};
  std::vector<std::string> unset_env{};
  // Working directory of the child; empty: this process's.
  std::string cwd{};
  // Empty: inherited. Otherwise the file is opened with O_APPEND | O_CREAT (mode 0644). When both
  // name the same path, stdout and stderr share one descriptor (lines interleave in order).
  std::string stdout_path{};
  std::string stderr_path{};
  // The child leads a new process group (pgid == pid); Kill and Terminate signal the group.
  bool new_process_group = true;
  // PR_SET_PDEATHSIG(SIGKILL): the kernel kills the child when the *thread* that spawned it
  // exits, so spawn from a thread that lives as long as the child should.
  bool kill_on_parent_death = false;
};

class Process {
 public:
  virtual ~Process() = default;

  virtual pid_t pid() const = 0;
  // A descriptor that becomes readable (POLLIN) when the child exits; owned by the handle.
  virtual int pidfd() const = 0;

  // Sends `signal` to the child (to its process group when it leads one). A no-op returning OK
  // once the child has been reaped.
  virtual Status Kill(int signal) = 0;
  // Reaps the child if it has exited; nullopt while it runs. Returns the same ExitInfo again on
  // later calls.
  virtual Result<std::optional<ExitInfo>> TryWait() = 0;
  // Waits up to `timeout` for the child to exit and reaps it; nullopt on timeout.
  virtual Result<std::optional<ExitInfo>> WaitFor(std::chrono::milliseconds timeout) = 0;
  // Waits without limit.
  virtual Result<ExitInfo> Wait() = 0;
  // SIGTERM, wait up to `grace`, then SIGKILL; reaps the child and returns how it ended. Members
  // of its process group still alive when the leader exits are SIGKILLed too. DeadlineExceeded if
  // the child survives SIGKILL for 10 s (uninterruptible sleep in a driver).
  virtual Result<ExitInfo> Terminate(std::chrono::milliseconds grace) = 0;
  // Gives up ownership: the child keeps running, a background thread reaps it, and the handle
  // becomes inert (Kill/TryWait/... return FailedPrecondition, the destructor does nothing).
  virtual void Detach() = 0;
};

class ProcessLauncher {
 public:
  virtual ~ProcessLauncher() = default;
  virtual Result<std::unique_ptr<Process>> Spawn(const SpawnOptions& options) = 0;
};

// Spawns real children with fork + execve.
class RealProcessLauncher : public ProcessLauncher {
 public:
  Result<std::unique_ptr<Process>> Spawn(const SpawnOptions& options) override;
};

// "SIGKILL" for 9, "signal 64" for names it does not know.
std::string SignalName(int signal);

}  // namespace spark
