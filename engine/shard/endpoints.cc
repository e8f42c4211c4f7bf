#include "engine/shard/endpoints.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace spark::shard {
namespace {

bool IsWildcard(const std::string& host) {
  return host == "*" || host == "0.0.0.0" || host == "::" || host.empty();
}

Status BadEndpoint(const std::string& text) {
  return InvalidArgument("'" + text +
                         "' is not a TCP endpoint; write tcp://HOST:PORT or HOST:PORT (port 0 or * "
                         "for any free port)");
}

}  // namespace

Result<HostPort> ParseTcpEndpoint(const std::string& endpoint) {
  std::string rest = endpoint;
  if (rest.rfind("tcp://", 0) == 0) {
    rest = rest.substr(6);
  } else if (rest.find("://") != std::string::npos) {
    return BadEndpoint(endpoint);
  }
  HostPort out;
  size_t colon = std::string::npos;
  if (!rest.empty() && rest.front() == '[') {
    const size_t close = rest.find(']');
    if (close == std::string::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      return BadEndpoint(endpoint);
    }
    out.host = rest.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = rest.rfind(':');
    if (colon == std::string::npos) return BadEndpoint(endpoint);
    out.host = rest.substr(0, colon);
    if (out.host.find(':') != std::string::npos) return BadEndpoint(endpoint);
  }
  out.port = rest.substr(colon + 1);
  const bool digits =
      !out.port.empty() && std::all_of(out.port.begin(), out.port.end(),
                                       [](unsigned char c) { return std::isdigit(c); });
  if (out.host.empty() || (!digits && out.port != "*")) return BadEndpoint(endpoint);
  if (digits && (out.port.size() > 5 || std::stoi(out.port) > 65535)) return BadEndpoint(endpoint);
  return out;
}

std::string FormatTcpEndpoint(const std::string& host, const std::string& port) {
  if (host.find(':') != std::string::npos) return "tcp://[" + host + "]:" + port;
  return "tcp://" + host + ":" + port;
}

Result<std::string> LocalAddressToward(const std::string& endpoint) {
  SPARK_ASSIGN_OR_RETURN(HostPort target, ParseTcpEndpoint(endpoint));
  if (target.port == "*" || IsWildcard(target.host)) {
    return InvalidArgument("controller endpoint '" + endpoint +
                           "' names no concrete host and port; pass --controller tcp://HOST:PORT");
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(target.host.c_str(), target.port.c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    return Unavailable("cannot resolve the controller host '" + target.host + "' (" +
                       gai_strerror(rc) + "); check --controller or pass --advertise-host");
  }
  std::string error = "no address";
  std::string address;
  for (addrinfo* ai = found; ai != nullptr && address.empty(); ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char text[INET6_ADDRSTRLEN] = {};
      const void* raw =
          local.ss_family == AF_INET
              ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
              : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
      if (inet_ntop(local.ss_family, raw, text, sizeof(text)) != nullptr) address = text;
    } else {
      error = std::strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(found);
  if (address.empty()) {
    return Unavailable("no local route to the controller at " + endpoint + " (" + error +
                       "); check the network or pass --advertise-host");
  }
  return address;
}

Result<std::string> DataBindEndpoint(const std::string& data_listen_address,
                                     const std::string& advertise_host) {
  if (data_listen_address.empty()) return FormatTcpEndpoint(advertise_host, "*");
  SPARK_ASSIGN_OR_RETURN(HostPort hp, ParseTcpEndpoint(data_listen_address));
  if (hp.port == "0") hp.port = "*";
  if (hp.host == "*") hp.host = "0.0.0.0";
  return FormatTcpEndpoint(hp.host, hp.port);
}

Result<std::string> AdvertisedEndpoint(const std::string& bound_endpoint,
                                       const std::string& advertise_host) {
  SPARK_ASSIGN_OR_RETURN(HostPort hp, ParseTcpEndpoint(bound_endpoint));
  if (IsWildcard(hp.host)) hp.host = advertise_host;
  return FormatTcpEndpoint(hp.host, hp.port);
}

}  // namespace spark::shard
