#include "agent/shard_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/os_error.h"

namespace spark::agent {

std::string ShardStem(std::string_view deployment, uint64_t generation, uint32_t rank) {
  std::string stem;
  for (char c : deployment) {
    const bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '_' || c == '-';
    stem += keep ? c : '_';
  }
  if (stem.empty() || stem[0] == '.') stem.insert(stem.begin(), '_');
  return stem + "-" + std::to_string(generation) + "-" + std::to_string(rank);
}

std::string ShardsDir(const std::string& state_dir) {
  return (std::filesystem::path(state_dir) / "shards").string();
}

std::string LogsDir(const std::string& state_dir) {
  return (std::filesystem::path(state_dir) / "logs").string();
}

ShardPaths ShardPathsFor(const std::string& state_dir, const std::string& stem) {
  const std::string shards = ShardsDir(state_dir) + "/" + stem;
  return ShardPaths{shards + ".pb", shards + ".pid", shards + ".status",
                    LogsDir(state_dir) + "/" + stem + ".log"};
}

Status WriteFileAtomically(const std::string& path, std::string_view content, int mode) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return OsError(errno, "creating " + tmp);
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return OsError(err, "writing " + tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return OsError(err, "closing " + tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return OsError(err, "renaming " + tmp + " to " + path);
  }
  return Status::Ok();
}

Status WritePidFile(const std::string& path, const PidRecord& record) {
  std::ostringstream s;
  s << "pid=" << record.pid << "\nstart_ticks=" << record.start_ticks
    << "\nboot_id=" << record.boot_id << "\n";
  return WriteFileAtomically(path, s.str());
}

Result<PidRecord> ReadPidFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("cannot read pid file " + path);
  PidRecord record;
  std::string line;
  bool have_pid = false;
  while (std::getline(in, line)) {
    const size_t eq = line.find('=');
    const std::string key = eq == std::string::npos ? "pid" : line.substr(0, eq);
    const std::string value = eq == std::string::npos ? line : line.substr(eq + 1);
    try {
      if (key == "pid" && !value.empty()) {
        record.pid = static_cast<pid_t>(std::stol(value));
        have_pid = true;
      } else if (key == "start_ticks" && !value.empty()) {
        record.start_ticks = std::stoull(value);
      } else if (key == "boot_id") {
        record.boot_id = value;
      }
    } catch (const std::exception&) {
      return DataLoss("pid file " + path + " has a bad line: " + line);
    }
  }
  if (!have_pid || record.pid <= 1) return DataLoss("pid file " + path + " holds no usable pid");
  return record;
}

namespace {

// The fields of /proc/<pid>/stat after the parenthesised command name (field 3 onwards).
Result<std::vector<std::string>> StatFieldsAfterComm(pid_t pid, const std::string& proc_dir) {
  std::ifstream in(proc_dir + "/" + std::to_string(pid) + "/stat");
  if (!in) return NotFound("no process " + std::to_string(pid));
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = content.rfind(')');
  if (close == std::string::npos) return DataLoss("unexpected /proc/<pid>/stat format");
  std::istringstream rest(content.substr(close + 1));
  std::vector<std::string> fields;
  std::string field;
  while (rest >> field) fields.push_back(field);
  return fields;
}

}  // namespace

Result<uint64_t> ProcessStartTicks(pid_t pid, const std::string& proc_dir) {
  SPARK_ASSIGN_OR_RETURN(std::vector<std::string> fields, StatFieldsAfterComm(pid, proc_dir));
  // fields[0] is field 3 (state); starttime is field 22.
  if (fields.size() < 20) return DataLoss("short /proc/<pid>/stat");
  try {
    return static_cast<uint64_t>(std::stoull(fields[19]));
  } catch (const std::exception&) {
    return DataLoss("bad starttime in /proc/<pid>/stat");
  }
}

Result<char> ProcessState(pid_t pid, const std::string& proc_dir) {
  SPARK_ASSIGN_OR_RETURN(std::vector<std::string> fields, StatFieldsAfterComm(pid, proc_dir));
  if (fields.empty() || fields[0].empty()) return DataLoss("short /proc/<pid>/stat");
  return fields[0][0];
}

Result<std::vector<std::string>> ProcessCmdline(pid_t pid, const std::string& proc_dir) {
  std::ifstream in(proc_dir + "/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  if (!in) return NotFound("no process " + std::to_string(pid));
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  size_t start = 0;
  while (start < content.size()) {
    size_t end = content.find('\0', start);
    if (end == std::string::npos) end = content.size();
    args.push_back(content.substr(start, end - start));
    start = end + 1;
  }
  return args;
}

}  // namespace spark::agent
