// Service manager notifications (sd_notify): READY=1 once registered, WATCHDOG=1 from the event
// loop, STATUS= lines, STOPPING=1 on shutdown.
//
// SystemdNotifier sends to $NOTIFY_SOCKET through libsystemd (a no-op when the variable is not
// set, as outside systemd); WatchdogInterval() is $WATCHDOG_USEC when the watchdog is enabled for
// this process (sd_watchdog_enabled), zero otherwise. Tests bind a datagram socket and point
// NOTIFY_SOCKET at it.
//
// Thread safety: Notify may be called from any thread.
#pragma once

#include <chrono>
#include <string_view>

namespace spark::agent {

class Notifier {
 public:
  virtual ~Notifier() = default;
  // One or more newline-separated "KEY=value" assignments.
  virtual void Notify(std::string_view state) = 0;
  // How often the service manager wants WATCHDOG=1; zero when it does not.
  virtual std::chrono::microseconds WatchdogInterval() = 0;
};

class SystemdNotifier : public Notifier {
 public:
  void Notify(std::string_view state) override;
  std::chrono::microseconds WatchdogInterval() override;
};

}  // namespace spark::agent
