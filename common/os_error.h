// OsError: turns an errno value into a Status whose message names the failed operation.
//
// OsError(ENOENT, "opening /etc/spark/agent.toml") gives
// not_found "opening /etc/spark/agent.toml: No such file or directory". Codes: ENOENT -> kNotFound,
// EACCES/EPERM -> kPermissionDenied, EEXIST -> kAlreadyExists, EAGAIN/EWOULDBLOCK/EBUSY ->
// kUnavailable, EINVAL -> kInvalidArgument, ENOSPC/ENOMEM/EMFILE/ENFILE -> kResourceExhausted,
// anything else -> kInternal.
//
// Thread safety: pure function (uses strerror_r).
#pragma once

#include <string_view>

#include "common/status.h"

namespace spark {

Status OsError(int err, std::string_view what);

}  // namespace spark
