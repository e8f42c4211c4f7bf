#include "common/fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "common/os_error.h"

namespace spark {

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0 && fd_ != fd) {
    // close() may return EINTR after the descriptor is already released (Linux): never retry.
    ::close(fd_);
  }
  fd_ = fd;
}

Result<EventFd> EventFd::Create() {
  int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return OsError(errno, "eventfd()");
  return EventFd(UniqueFd(fd));
}

Status EventFd::Notify() {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = ::write(fd_.get(), &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
  // EAGAIN means the counter is at its maximum: the fd is readable already, which is all we need.
  if (n < 0 && errno != EAGAIN) return OsError(errno, "writing to an eventfd");
  return Status::Ok();
}

Result<uint64_t> EventFd::Drain() {
  uint64_t count = 0;
  ssize_t n;
  do {
    n = ::read(fd_.get(), &count, sizeof(count));
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return uint64_t{0};
    return OsError(errno, "reading an eventfd");
  }
  return count;
}

}  // namespace spark
