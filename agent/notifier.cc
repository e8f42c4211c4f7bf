#include "agent/notifier.h"

#include <systemd/sd-daemon.h>

#include <cstdint>
#include <string>

#include "common/log.h"

namespace spark::agent {

void SystemdNotifier::Notify(std::string_view state) {
  const std::string text(state);
  const int rc = sd_notify(0, text.c_str());
  if (rc < 0) {
    SPARK_LOG(DEBUG).With("errno", -rc) << "sd_notify failed";
  }
}

std::chrono::microseconds SystemdNotifier::WatchdogInterval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0) return std::chrono::microseconds(0);
  return std::chrono::microseconds(usec);
}

}  // namespace spark::agent
