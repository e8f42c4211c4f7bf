// Endpoint helpers of a shard: which local address peers can reach it on, and the data-plane
// endpoints to bind and to advertise.
//
// Endpoints are ZMQ TCP endpoints "tcp://HOST:PORT" (IPv6 hosts in brackets). A data listen
// address may also be given without the scheme ("HOST:PORT"); port 0 means any free port.
//
// Thread safety: pure functions (LocalAddressToward opens and closes one UDP socket).
#pragma once

#include <string>

#include "common/status.h"

namespace spark::shard {

struct HostPort {
  std::string host;  // without brackets
  std::string port;  // digits, or "*"
};

// Splits "tcp://HOST:PORT" or "HOST:PORT". InvalidArgument naming the text and the expected form.
Result<HostPort> ParseTcpEndpoint(const std::string& endpoint);

// The local IP address this host uses to reach `endpoint`'s host (the source address the kernel
// routes through, found by connecting a UDP socket; nothing is sent). This is the address of the
// shard that peers on the same network as the controller can reach. Errors name the endpoint.
Result<std::string> LocalAddressToward(const std::string& endpoint);

// The endpoint to bind the rank-0 data plane on: `data_listen_address` ("HOST:PORT",
// "tcp://HOST:PORT"; port 0 -> any), or "tcp://<advertise_host>:*" when empty.
Result<std::string> DataBindEndpoint(const std::string& data_listen_address,
                                     const std::string& advertise_host);

// The endpoint to report for a bound endpoint (ZMQ's last endpoint, "tcp://0.0.0.0:40123"): a
// wildcard host (0.0.0.0, ::, *) becomes `advertise_host`.
Result<std::string> AdvertisedEndpoint(const std::string& bound_endpoint,
                                       const std::string& advertise_host);

// "tcp://HOST:PORT", bracketing an IPv6 host.
std::string FormatTcpEndpoint(const std::string& host, const std::string& port);

}  // namespace spark::shard
