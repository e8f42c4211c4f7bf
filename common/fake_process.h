// FakeProcessLauncher: a ProcessLauncher for tests of components that spawn processes (the agent's
// shard supervisor). It starts nothing; it records each Spawn and hands back a fake Process whose
// life the test controls through a FakeProcessControl.
//
//   FakeProcessLauncher launcher;
//   Supervisor supervisor(&launcher, ...);          // code under test
//   ASSERT_TRUE(launcher.WaitForSpawns(1, 5s));
//   EXPECT_EQ(launcher.process(0)->options().args[0], "spark-shard");
//   launcher.process(0)->Exit(ExitInfo::Signal(SIGSEGV));   // pidfd() becomes readable
//
// Fake behaviour: pid() is a unique fake number (>= 2^30, above the kernel's largest pid_max of
// 2^22); pidfd() is an eventfd that becomes readable on Exit(). Kill(SIGKILL) exits the fake with
// signal 9; Kill(SIGTERM) exits it with signal 15 unless set_ignores_sigterm(true); other signals
// are only recorded. Terminate(grace) does not wait: SIGTERM, and if the fake ignores it, SIGKILL
// at once. Every signal is recorded in signals(). Destroying the handle of a running fake records
// SIGKILL and exits it, as the real policy does; Detach() marks it detached.
//
// Thread safety: all methods of the launcher, the controls and the fake handles are safe to call
// from any thread; the test may Exit() a fake while the code under test waits on it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "common/fd.h"
#include "common/process.h"

namespace spark {

class FakeProcessControl {
 public:
  FakeProcessControl(SpawnOptions options, pid_t pid, EventFd exit_fd);

  const SpawnOptions& options() const { return options_; }
  pid_t pid() const { return pid_; }
  int pidfd() const { return exit_fd_.fd(); }

  // The fake exits now (no-op when it already has). Its pidfd becomes readable.
  void Exit(ExitInfo info);
  void set_ignores_sigterm(bool ignores);

  bool exited() const;
  bool reaped() const;  // the code under test collected the exit (TryWait/Wait/Terminate)
  bool detached() const;
  bool handle_destroyed() const;
  std::optional<ExitInfo> exit_info() const;
  std::vector<int> signals() const;  // every signal sent, in order

  // For the fake Process handle.
  Status Signal(int signal);
  std::optional<ExitInfo> Reap();
  bool WaitExited(std::optional<std::chrono::milliseconds> timeout);
  void MarkDetached();
  void MarkHandleDestroyed();

 private:
  void ExitLocked(ExitInfo info);

  const SpawnOptions options_;
  const pid_t pid_;
  EventFd exit_fd_;
  mutable std::mutex mu_;
  std::condition_variable exited_cv_;
  std::optional<ExitInfo> exit_;
  bool reaped_ = false;
  bool detached_ = false;
  bool handle_destroyed_ = false;
  bool ignores_sigterm_ = false;
  std::vector<int> signals_;
};

class FakeProcessLauncher : public ProcessLauncher {
 public:
  Result<std::unique_ptr<Process>> Spawn(const SpawnOptions& options) override;

  // The next Spawn call fails with `status` (which must not be OK) and records nothing.
  void FailNextSpawn(Status status);

  int spawn_count() const;
  // The control of the index-th successful spawn (0-based); nullptr if there is none.
  std::shared_ptr<FakeProcessControl> process(int index) const;
  // Waits (real time, bounded) until at least `count` spawns succeeded; false on timeout.
  bool WaitForSpawns(int count, std::chrono::milliseconds timeout) const;

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable spawned_cv_;
  std::vector<std::shared_ptr<FakeProcessControl>> processes_;
  std::optional<Status> fail_next_;
  pid_t next_pid_ = 1 << 30;
};

}  // namespace spark
