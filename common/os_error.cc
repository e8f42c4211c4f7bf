#include "common/os_error.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace spark {

namespace {

StatusCode CodeForErrno(int err) {
  switch (err) {
    case ENOENT:
      return StatusCode::kNotFound;
    case EACCES:
    case EPERM:
      return StatusCode::kPermissionDenied;
    case EEXIST:
      return StatusCode::kAlreadyExists;
    case EAGAIN:
    case EBUSY:
      return StatusCode::kUnavailable;
    case EINVAL:
      return StatusCode::kInvalidArgument;
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      return StatusCode::kResourceExhausted;
    default:
      return StatusCode::kInternal;
  }
}

}  // namespace

Status OsError(int err, std::string_view what) {
  char buf[256];
  // GNU strerror_r returns a pointer to the message (maybe not buf).
  const char* text = ::strerror_r(err, buf, sizeof(buf));
  std::string message(what);
  message += ": ";
  message += text;
  return Status(CodeForErrno(err), std::move(message));
}

}  // namespace spark
