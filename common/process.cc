#include "common/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <thread>

#include "common/fd.h"
#include "common/os_error.h"

extern char** environ;

namespace spark {

namespace {

constexpr std::chrono::milliseconds kKillWaitLimit{10000};

// What the child reports through the error pipe when it cannot exec.
enum class ChildStep : int { kDup = 1, kChdir, kSetpgid, kPdeathsig, kExec };

struct ChildError {
  ChildStep step;
  int err;
};

const char* StepName(ChildStep step) {
  switch (step) {
    case ChildStep::kDup:
      return "redirecting stdin/stdout/stderr";
    case ChildStep::kChdir:
      return "changing to the working directory";
    case ChildStep::kSetpgid:
      return "creating a process group";
    case ChildStep::kPdeathsig:
      return "setting the parent-death signal";
    case ChildStep::kExec:
      return "exec";
  }
  return "starting";
}

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

int PidfdSendSignal(int pidfd, int signal) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0));
}

// Waits until `fd` is readable or `timeout` passes (negative: forever). True when readable.
Result<bool> PollReadable(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int wait_ms = -1;
    if (timeout.count() >= 0) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      wait_ms = static_cast<int>(std::clamp<int64_t>(left.count(), 0, INT_MAX));
    }
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, wait_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return OsError(errno, "poll on a pidfd");
    }
    if (n > 0) return true;
    if (wait_ms == 0 || std::chrono::steady_clock::now() >= deadline) return false;
  }
}

void ReapInBackground(pid_t pid) {
  std::thread([pid] {
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }).detach();
}

class RealProcess : public Process {
 public:
  RealProcess(pid_t pid, UniqueFd pidfd, bool group)
      : pid_(pid), pidfd_(std::move(pidfd)), group_(group) {}

  ~RealProcess() override {
    std::unique_lock<std::mutex> lock(mu_);
    if (detached_ || exit_.has_value()) return;
    KillLocked(SIGKILL).IgnoreError();
    lock.unlock();
    Result<bool> exited = PollReadable(pidfd_.get(), kKillWaitLimit);
    lock.lock();
    if (exited.ok() && *exited) {
      ReapLocked(/*block=*/true).status().IgnoreError();
    } else {
      detached_ = true;
      ReapInBackground(pid_);
    }
  }

  pid_t pid() const override { return pid_; }
  int pidfd() const override { return pidfd_.get(); }

  Status Kill(int signal) override {
    std::lock_guard<std::mutex> lock(mu_);
    return KillLocked(signal);
  }

  Result<std::optional<ExitInfo>> TryWait() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (detached_) return Detached();
    return ReapLocked(/*block=*/false);
  }

  Result<std::optional<ExitInfo>> WaitFor(std::chrono::milliseconds timeout) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (detached_) return Detached();
      if (exit_.has_value()) return exit_;
    }
    SPARK_ASSIGN_OR_RETURN(bool exited, PollReadable(pidfd_.get(), timeout));
    if (!exited) return std::optional<ExitInfo>();
    std::lock_guard<std::mutex> lock(mu_);
    if (detached_) return Detached();
    return ReapLocked(/*block=*/true);
  }

  Result<ExitInfo> Wait() override {
    SPARK_ASSIGN_OR_RETURN(std::optional<ExitInfo> info, WaitFor(std::chrono::milliseconds(-1)));
    if (!info.has_value())
      return Internal("process " + std::to_string(pid_) + ": wait ended early");
    return *info;
  }

  Result<ExitInfo> Terminate(std::chrono::milliseconds grace) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (detached_) return Detached();
      if (exit_.has_value()) return *exit_;
      SPARK_RETURN_IF_ERROR(KillLocked(SIGTERM));
    }
    SPARK_ASSIGN_OR_RETURN(bool exited, PollReadable(pidfd_.get(), grace));
    {
      // SIGKILL either the whole group (leader already gone: kill its leftovers) or the child that
      // ignored SIGTERM for the grace period.
      std::lock_guard<std::mutex> lock(mu_);
      if (exit_.has_value()) return *exit_;
      SPARK_RETURN_IF_ERROR(KillLocked(SIGKILL));
    }
    if (!exited) {
      SPARK_ASSIGN_OR_RETURN(exited, PollReadable(pidfd_.get(), kKillWaitLimit));
      if (!exited) {
        return DeadlineExceeded("process " + std::to_string(pid_) +
                                " survived SIGKILL for 10 s (stuck in uninterruptible sleep?); "
                                "see /proc/" +
                                std::to_string(pid_) + "/stack");
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    SPARK_ASSIGN_OR_RETURN(std::optional<ExitInfo> info, ReapLocked(/*block=*/true));
    return *info;
  }

  void Detach() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (detached_ || exit_.has_value()) return;
    detached_ = true;
    ReapInBackground(pid_);
  }

 private:
  Status Detached() const {
    return FailedPrecondition("process " + std::to_string(pid_) +
                              " was detached; its handle can no longer wait or signal");
  }

  Status KillLocked(int signal) {
    if (detached_) return Detached();
    if (exit_.has_value()) return Status::Ok();
    // The child is not reaped yet, so neither its pid nor its process group can be reused.
    const int rc = group_ ? ::kill(-pid_, signal) : PidfdSendSignal(pidfd_.get(), signal);
    if (rc < 0 && errno != ESRCH) {
      return OsError(errno,
                     "sending " + SignalName(signal) + " to process " + std::to_string(pid_));
    }
    return Status::Ok();
  }

  Result<std::optional<ExitInfo>> ReapLocked(bool block) {
    if (exit_.has_value()) return exit_;
    int status = 0;
    pid_t r;
    do {
      r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      return OsError(errno, "waitpid for process " + std::to_string(pid_) +
                                " (was it reaped elsewhere? do not waitpid(-1) or ignore SIGCHLD)");
    }
    if (r == 0) return std::optional<ExitInfo>();
    exit_ = ExitInfo::FromWaitStatus(status);
    return exit_;
  }

  const pid_t pid_;
  const UniqueFd pidfd_;
  const bool group_;
  std::mutex mu_;
  std::optional<ExitInfo> exit_;
  bool detached_ = false;
};

// The child's environment as "KEY=VALUE" strings.
std::vector<std::string> BuildEnvironment(const SpawnOptions& options) {
  std::map<std::string, std::string> env;
  if (options.inherit_env && environ != nullptr) {
    for (char** e = environ; *e != nullptr; ++e) {
      const char* eq = std::strchr(*e, '=');
      if (eq == nullptr) continue;
      env.emplace(std::string(*e, static_cast<size_t>(eq - *e)), std::string(eq + 1));
    }
  }
  for (const std::string& name : options.unset_env) env.erase(name);
  for (const auto& [name, value] : options.env) env[name] = value;
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [name, value] : env) out.push_back(name + "=" + value);
  return out;
}

// Resolves args[0] against the child's PATH.
Result<std::string> ResolveProgram(const std::string& program,
                                   const std::vector<std::string>& child_env) {
  if (program.find('/') != std::string::npos) return program;
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  for (const std::string& e : child_env) {
    if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
  }
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find(':', begin);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(begin, end - begin);
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/" + program;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    begin = end + 1;
  }
  return NotFound("program '" + program + "' not found in PATH (" + path +
                  "); install it or give its full path");
}

Result<UniqueFd> OpenOutput(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    return OsError(errno,
                   "opening log file " + path +
                       " for a child's output (does its directory exist and is it writable?)");
  }
  return UniqueFd(fd);
}

// In the child: duplicates `fd` (>= 3) onto `target`; dup2 clears close-on-exec on the copy.
bool MoveFd(int fd, int target) { return ::dup2(fd, target) == target; }

[[noreturn]] void ChildFail(int error_fd, ChildStep step) {
  ChildError e{step, errno};
  ssize_t ignored = ::write(error_fd, &e, sizeof(e));
  (void)ignored;
  ::_exit(127);
}

}  // namespace

std::string SignalName(int signal) {
  const char* abbrev = ::sigabbrev_np(signal);
  if (abbrev == nullptr) return "signal " + std::to_string(signal);
  return std::string("SIG") + abbrev;
}

std::string ExitInfo::ToString() const {
  if (signal == 0) return "exit code " + std::to_string(exit_code);
  std::string s = "killed by signal " + std::to_string(signal) + " (" + SignalName(signal) + ")";
  if (core_dumped) s += ", core dumped";
  return s;
}

ExitInfo ExitInfo::FromWaitStatus(int wait_status) {
  ExitInfo info;
  if (WIFEXITED(wait_status)) {
    info.exit_code = WEXITSTATUS(wait_status);
  } else if (WIFSIGNALED(wait_status)) {
    info.signal = WTERMSIG(wait_status);
    info.core_dumped = WCOREDUMP(wait_status);
  }
  return info;
}

Result<std::unique_ptr<Process>> RealProcessLauncher::Spawn(const SpawnOptions& options) {
  if (options.args.empty() || options.args[0].empty()) {
    return InvalidArgument("SpawnOptions.args is empty; args[0] must name the program to run");
  }
  const std::vector<std::string> env_strings = BuildEnvironment(options);
  SPARK_ASSIGN_OR_RETURN(const std::string program, ResolveProgram(options.args[0], env_strings));

  // Everything the child needs is prepared here: between fork and exec only async-signal-safe
  // calls are allowed (no allocation).
  std::vector<char*> argv;
  for (const std::string& a : options.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  const int null_fd_raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd_raw < 0) return OsError(errno, "opening /dev/null");
  UniqueFd null_fd(null_fd_raw);
  UniqueFd out_fd, err_fd;
  if (!options.stdout_path.empty()) {
    SPARK_ASSIGN_OR_RETURN(out_fd, OpenOutput(options.stdout_path));
  }
  if (!options.stderr_path.empty() && options.stderr_path != options.stdout_path) {
    SPARK_ASSIGN_OR_RETURN(err_fd, OpenOutput(options.stderr_path));
  }
  const int child_out = out_fd.valid() ? out_fd.get() : -1;
  const int child_err =
      err_fd.valid() ? err_fd.get() : (!options.stderr_path.empty() ? out_fd.get() : -1);

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) < 0) return OsError(errno, "creating the exec status pipe");
  UniqueFd error_read(pipe_fds[0]);
  UniqueFd error_write(pipe_fds[1]);

  const long open_max = ::sysconf(_SC_OPEN_MAX);
  const int max_fd = open_max > 0 && open_max < INT_MAX ? static_cast<int>(open_max) : 65536;
  const pid_t parent_pid = ::getpid();
  const char* cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();
  const bool group = options.new_process_group;
  const bool pdeathsig = options.kill_on_parent_death;

  // Block every signal across fork so the child cannot run one of the parent's handlers before it
  // resets them.
  sigset_t all, old_mask;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old_mask);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int efd = error_write.get();
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
    }
    if (group && ::setpgid(0, 0) < 0) ChildFail(efd, ChildStep::kSetpgid);
    if (pdeathsig) {
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) ChildFail(efd, ChildStep::kPdeathsig);
      if (::getppid() != parent_pid) ::_exit(127);  // the parent died before prctl
    }
    // Lift sources that sit on 0-2 (a parent that closed its stdio) above 2 first, so that
    // moving one onto its target cannot clobber another.
    int in = null_fd.get(), out = child_out, err = child_err;
    if (in < 3) in = ::fcntl(in, F_DUPFD_CLOEXEC, 3);
    if (out >= 0 && out < 3) {
      const int lifted = ::fcntl(out, F_DUPFD_CLOEXEC, 3);
      if (err == out) err = lifted;
      out = lifted;
    }
    if (err >= 0 && err < 3) err = ::fcntl(err, F_DUPFD_CLOEXEC, 3);
    if ((child_out >= 0 && out < 0) || (child_err >= 0 && err < 0)) {
      ChildFail(efd, ChildStep::kDup);
    }
    if (in < 0 || !MoveFd(in, 0)) ChildFail(efd, ChildStep::kDup);
    if (out >= 0 && !MoveFd(out, 1)) ChildFail(efd, ChildStep::kDup);
    if (err >= 0 && !MoveFd(err, 2)) ChildFail(efd, ChildStep::kDup);
    if (cwd != nullptr && ::chdir(cwd) < 0) ChildFail(efd, ChildStep::kChdir);
    // Close every descriptor but 0-2 and the error pipe (close-on-exec).
    if (efd > 3) ::syscall(SYS_close_range, 3u, static_cast<unsigned>(efd - 1), 0u);
    if (::syscall(SYS_close_range, static_cast<unsigned>(efd + 1), ~0u, 0u) < 0) {
      for (int fd = 3; fd < max_fd; ++fd) {
        if (fd != efd) ::close(fd);
      }
    }
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(program.c_str(), argv.data(), envp.data());
    ChildFail(efd, ChildStep::kExec);
  }
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (pid < 0) return OsError(fork_errno, "fork for " + program);
  error_write.Reset();
  if (group) ::setpgid(pid, pid);  // also from the parent, so the group exists when Spawn returns

  ChildError child_error{};
  ssize_t n;
  do {
    n = ::read(error_read.get(), &child_error, sizeof(child_error));
  } while (n < 0 && errno == EINTR);
  if (n != 0) {
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (n != static_cast<ssize_t>(sizeof(child_error))) {
      return Internal("starting " + program + ": the child died before exec");
    }
    std::string what = "starting " + program + ": " + StepName(child_error.step);
    if (child_error.step == ChildStep::kChdir) what += " " + options.cwd;
    return OsError(child_error.err, what);
  }

  const int pidfd = PidfdOpen(pid);
  if (pidfd < 0) {
    const int err = errno;
    ::kill(group ? -pid : pid, SIGKILL);
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return OsError(err, "pidfd_open for process " + std::to_string(pid) + " (needs Linux 5.3+)");
  }
  return std::unique_ptr<Process>(std::make_unique<RealProcess>(pid, UniqueFd(pidfd), group));
}

}  // namespace spark
