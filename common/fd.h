// File descriptor ownership: UniqueFd (closes on destruction) and EventFd (a counter fd that
// wakes a poll loop from another thread).
//
// UniqueFd owns one descriptor, like std::unique_ptr owns memory: move-only, closes in its
// destructor, Release() gives the descriptor up. EventFd owns an eventfd(2) created with
// EFD_CLOEXEC | EFD_NONBLOCK: Notify() makes fd() readable (POLLIN) until Drain().
//
// Thread safety: a UniqueFd is a value, not synchronised. EventFd::Notify() and Drain() may be
// called from any thread concurrently (the kernel serialises them); Create and destruction are not
// synchronised with other calls.
#pragma once

#include <cstdint>
#include <utility>

#include "common/status.h"

namespace spark {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }

  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  // Returns the descriptor and stops owning it.
  int Release() { return std::exchange(fd_, -1); }
  // Closes the owned descriptor (if any) and takes `fd`.
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

class EventFd {
 public:
  // Creates a non-blocking, close-on-exec eventfd with counter 0.
  static Result<EventFd> Create();

  int fd() const { return fd_.get(); }

  // Adds 1 to the counter: fd() becomes readable. Never blocks.
  Status Notify();
  // Reads and resets the counter; returns the number of Notify() calls since the last Drain()
  // (0 when none). Never blocks.
  Result<uint64_t> Drain();

 private:
  explicit EventFd(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace spark
