// SignalWatcher: turns SIGTERM and SIGINT into a callback on a thread of its own.
//
// The constructor blocks both signals in the calling thread, so create the watcher in main()
// before any other thread starts (threads inherit the mask; then no thread is interrupted and
// the signals wait for the watcher). Its thread takes them with sigtimedwait and calls
// `on_signal(signo)` for each. The previous mask is restored by the destructor.
//
// Thread safety: the handler runs on the watcher thread and may block (the shard waits there for
// a graceful stop). Ownership: RAII; the destructor stops and joins the thread.
#pragma once

#include <signal.h>

#include <atomic>
#include <functional>
#include <thread>

namespace spark::shard {

class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int signo)> on_signal);
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

 private:
  void Run();

  std::function<void(int)> on_signal_;
  sigset_t watched_;
  sigset_t previous_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace spark::shard
