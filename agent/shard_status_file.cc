#include "agent/shard_status_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "common/os_error.h"

namespace spark::agent {

Status WriteShardStatusFile(const std::string& path, const spark::v1::ShardStatus& status) {
  std::string bytes;
  if (!status.SerializeToString(&bytes)) return Internal("cannot serialize a ShardStatus");
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return OsError(errno, "creating " + tmp);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return OsError(err, "writing " + tmp);
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return OsError(err, "renaming " + tmp + " to " + path);
  }
  return Status::Ok();
}

Result<spark::v1::ShardStatus> ReadShardStatusFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("no shard status file " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  spark::v1::ShardStatus status;
  if (!status.ParseFromString(buffer.str())) {
    return DataLoss("shard status file " + path + " does not hold a ShardStatus");
  }
  return status;
}

}  // namespace spark::agent
