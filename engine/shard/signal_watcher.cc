#include "engine/shard/signal_watcher.h"

#include <pthread.h>

#include <cerrno>
#include <ctime>
#include <utility>

#include "common/check.h"

namespace spark::shard {

SignalWatcher::SignalWatcher(std::function<void(int)> on_signal)
    : on_signal_(std::move(on_signal)) {
  sigemptyset(&watched_);
  sigaddset(&watched_, SIGTERM);
  sigaddset(&watched_, SIGINT);
  SPARK_CHECK(pthread_sigmask(SIG_BLOCK, &watched_, &previous_) == 0);
  thread_ = std::thread([this] { Run(); });
}

SignalWatcher::~SignalWatcher() {
  stop_.store(true);
  thread_.join();
  pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
}

void SignalWatcher::Run() {
  const timespec slice{0, 100 * 1000 * 1000};
  while (!stop_.load()) {
    const int signo = sigtimedwait(&watched_, nullptr, &slice);
    if (signo > 0) on_signal_(signo);
  }
}

}  // namespace spark::shard
