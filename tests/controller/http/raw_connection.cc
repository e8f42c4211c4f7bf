#include "tests/controller/http/raw_connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

namespace spark::http::testing {

RawConnection::RawConnection(uint16_t port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd_);
    fd_ = -1;
    return;
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

RawConnection::~RawConnection() { Close(); }

void RawConnection::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool RawConnection::Send(std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

void RawConnection::ShutdownWrite() { ::shutdown(fd_, SHUT_WR); }

bool RawConnection::Fill(std::chrono::steady_clock::time_point deadline) {
  if (eof_ || fd_ < 0) return false;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    buffer_.append(buf, static_cast<size_t>(n));
    return true;
  }
}

std::string RawConnection::ReadUntil(std::string_view marker, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    size_t pos = buffer_.find(marker);
    if (pos != std::string::npos) {
      std::string out = buffer_.substr(0, pos + marker.size());
      buffer_.erase(0, pos + marker.size());
      return out;
    }
    if (!Fill(deadline)) return "";
  }
}

std::string RawConnection::ReadAll(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Fill(deadline)) {
  }
  std::string out = std::move(buffer_);
  buffer_.clear();
  return out;
}

bool RawConnection::Readable(std::chrono::milliseconds timeout) {
  if (!buffer_.empty() || eof_) return true;
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLIN, 0};
  int r = 0;
  do {
    r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  } while (r < 0 && errno == EINTR);
  return r > 0;
}

bool RawConnection::WaitClosed(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Fill(deadline)) {
  }
  return eof_;
}

RawResponse RawConnection::ReadResponse(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  RawResponse response;
  std::string head = ReadUntil("\r\n\r\n", timeout);
  if (head.empty()) {
    response.closed = eof_;
    return response;
  }
  head.resize(head.size() - 4);
  response.head = head;
  if (head.size() > 12 && head.starts_with("HTTP/1.")) {
    response.status = std::atoi(head.substr(9, 3).c_str());
  }
  std::string lower = head;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t cl = lower.find("\r\ncontent-length:");
  bool chunked = lower.find("\r\ntransfer-encoding: chunked") != std::string::npos;
  if (cl != std::string::npos) {
    size_t length = std::strtoul(lower.c_str() + cl + 17, nullptr, 10);
    while (buffer_.size() < length && Fill(deadline)) {
    }
    response.body = buffer_.substr(0, length);
    buffer_.erase(0, std::min(length, buffer_.size()));
  } else if (chunked) {
    while (true) {
      std::string size_line = ReadUntil("\r\n", timeout);
      if (size_line.empty()) break;
      size_t size = std::strtoul(size_line.c_str(), nullptr, 16);
      while (buffer_.size() < size + 2 && Fill(deadline)) {
      }
      if (buffer_.size() < size + 2) break;
      response.body += buffer_.substr(0, size);
      buffer_.erase(0, size + 2);
      if (size == 0) break;
    }
  } else if (response.status >= 200 && response.status != 204 && response.status != 304) {
    response.body = ReadAll(timeout);
  }
  response.closed = lower.find("\r\nconnection: close") != std::string::npos;
  return response;
}

}  // namespace spark::http::testing
