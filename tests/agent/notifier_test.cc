#include "agent/notifier.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>

#include "common/fd.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

TEST(SystemdNotifierTest, SendsToNotifySocketAndReadsTheWatchdog) {
  testing::TempDir dir;
  const std::string path = dir.File("notify");
  UniqueFd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(sock.valid());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "2000000", 1);
  ::unsetenv("WATCHDOG_PID");
  SystemdNotifier notifier;
  notifier.Notify("READY=1\nSTATUS=registered");
  EXPECT_EQ(notifier.WatchdogInterval(), std::chrono::microseconds(2000000));
  char buffer[256] = {};
  const ssize_t n = ::recv(sock.get(), buffer, sizeof(buffer) - 1, MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buffer, static_cast<size_t>(n)), "READY=1\nSTATUS=registered");
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");
  EXPECT_EQ(notifier.WatchdogInterval(), std::chrono::microseconds(0));
  notifier.Notify("WATCHDOG=1");  // no socket: a no-op
}

}  // namespace
}  // namespace spark::agent
