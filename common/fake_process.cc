#include "common/fake_process.h"

#include <signal.h>

#include "common/check.h"

namespace spark {

namespace {

class FakeProcess : public Process {
 public:
  explicit FakeProcess(std::shared_ptr<FakeProcessControl> control)
      : control_(std::move(control)) {}
  ~FakeProcess() override {
    if (!control_->detached() && !control_->exited()) control_->Signal(SIGKILL).IgnoreError();
    if (!control_->detached()) control_->Reap();
    control_->MarkHandleDestroyed();
  }

  pid_t pid() const override { return control_->pid(); }
  int pidfd() const override { return control_->pidfd(); }

  Status Kill(int signal) override {
    SPARK_RETURN_IF_ERROR(CheckAttached());
    if (control_->reaped()) return Status::Ok();
    return control_->Signal(signal);
  }

  Result<std::optional<ExitInfo>> TryWait() override {
    SPARK_RETURN_IF_ERROR(CheckAttached());
    return control_->Reap();
  }

  Result<std::optional<ExitInfo>> WaitFor(std::chrono::milliseconds timeout) override {
    SPARK_RETURN_IF_ERROR(CheckAttached());
    if (!control_->WaitExited(timeout)) return std::optional<ExitInfo>();
    return control_->Reap();
  }

  Result<ExitInfo> Wait() override {
    SPARK_RETURN_IF_ERROR(CheckAttached());
    control_->WaitExited(std::nullopt);
    return *control_->Reap();
  }

  Result<ExitInfo> Terminate(std::chrono::milliseconds grace) override {
    SPARK_RETURN_IF_ERROR(CheckAttached());
    if (!control_->exited()) {
      SPARK_RETURN_IF_ERROR(control_->Signal(SIGTERM));
      if (!control_->exited()) SPARK_RETURN_IF_ERROR(control_->Signal(SIGKILL));
    }
    return *control_->Reap();
  }

  void Detach() override { control_->MarkDetached(); }

 private:
  Status CheckAttached() const {
    if (!control_->detached()) return Status::Ok();
    return FailedPrecondition("fake process " + std::to_string(control_->pid()) +
                              " was detached; its handle can no longer wait or signal");
  }

  std::shared_ptr<FakeProcessControl> control_;
};

}  // namespace

FakeProcessControl::FakeProcessControl(SpawnOptions options, pid_t pid, EventFd exit_fd)
    : options_(std::move(options)), pid_(pid), exit_fd_(std::move(exit_fd)) {}

void FakeProcessControl::Exit(ExitInfo info) {
  std::lock_guard<std::mutex> lock(mu_);
  ExitLocked(info);
}

void FakeProcessControl::ExitLocked(ExitInfo info) {
  if (exit_.has_value()) return;
  exit_ = info;
  SPARK_CHECK(exit_fd_.Notify().ok()) << "eventfd write failed";
  exited_cv_.notify_all();
}

void FakeProcessControl::set_ignores_sigterm(bool ignores) {
  std::lock_guard<std::mutex> lock(mu_);
  ignores_sigterm_ = ignores;
}

bool FakeProcessControl::exited() const {
  std::lock_guard<std::mutex> lock(mu_);
  return exit_.has_value();
}

bool FakeProcessControl::reaped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reaped_;
}

bool FakeProcessControl::detached() const {
  std::lock_guard<std::mutex> lock(mu_);
  return detached_;
}

bool FakeProcessControl::handle_destroyed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return handle_destroyed_;
}

std::optional<ExitInfo> FakeProcessControl::exit_info() const {
  std::lock_guard<std::mutex> lock(mu_);
  return exit_;
}

std::vector<int> FakeProcessControl::signals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return signals_;
}

Status FakeProcessControl::Signal(int signal) {
  std::lock_guard<std::mutex> lock(mu_);
  signals_.push_back(signal);
  if (signal == SIGKILL || (signal == SIGTERM && !ignores_sigterm_)) {
    ExitLocked(ExitInfo::Signal(signal));
  }
  return Status::Ok();
}

std::optional<ExitInfo> FakeProcessControl::Reap() {
  std::lock_guard<std::mutex> lock(mu_);
  if (exit_.has_value()) reaped_ = true;
  return exit_;
}

bool FakeProcessControl::WaitExited(std::optional<std::chrono::milliseconds> timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!timeout.has_value()) {
    exited_cv_.wait(lock, [&] { return exit_.has_value(); });
    return true;
  }
  return exited_cv_.wait_for(lock, *timeout, [&] { return exit_.has_value(); });
}

void FakeProcessControl::MarkDetached() {
  std::lock_guard<std::mutex> lock(mu_);
  detached_ = true;
}

void FakeProcessControl::MarkHandleDestroyed() {
  std::lock_guard<std::mutex> lock(mu_);
  handle_destroyed_ = true;
}

Result<std::unique_ptr<Process>> FakeProcessLauncher::Spawn(const SpawnOptions& options) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fail_next_.has_value()) {
    Status status = std::move(*fail_next_);
    fail_next_.reset();
    return status;
  }
  if (options.args.empty() || options.args[0].empty()) {
    return InvalidArgument("SpawnOptions.args is empty; args[0] must name the program to run");
  }
  SPARK_ASSIGN_OR_RETURN(EventFd exit_fd, EventFd::Create());
  auto control = std::make_shared<FakeProcessControl>(options, next_pid_++, std::move(exit_fd));
  processes_.push_back(control);
  spawned_cv_.notify_all();
  return std::unique_ptr<Process>(std::make_unique<FakeProcess>(std::move(control)));
}

void FakeProcessLauncher::FailNextSpawn(Status status) {
  SPARK_CHECK(!status.ok()) << "FailNextSpawn needs an error status";
  std::lock_guard<std::mutex> lock(mu_);
  fail_next_ = std::move(status);
}

int FakeProcessLauncher::spawn_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(processes_.size());
}

std::shared_ptr<FakeProcessControl> FakeProcessLauncher::process(int index) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (index < 0 || index >= static_cast<int>(processes_.size())) return nullptr;
  return processes_[static_cast<size_t>(index)];
}

bool FakeProcessLauncher::WaitForSpawns(int count, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return spawned_cv_.wait_for(lock, timeout,
                              [&] { return static_cast<int>(processes_.size()) >= count; });
}

}  // namespace spark
