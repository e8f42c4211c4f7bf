#include "agent/log_tail.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "common/fd.h"

namespace spark::agent {

std::vector<std::string> ReadLogTail(const std::string& path, size_t lines, size_t max_bytes) {
  std::vector<std::string> out;
  if (lines == 0) return out;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return out;
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return out;
  const off_t size = st.st_size;
  const off_t start =
      size > static_cast<off_t>(max_bytes) ? size - static_cast<off_t>(max_bytes) : 0;
  std::string data(static_cast<size_t>(size - start), '\0');
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n =
        ::pread(fd.get(), data.data() + done, data.size() - done, start + static_cast<off_t>(done));
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  data.resize(done);
  size_t begin = 0;
  if (start > 0) {
    const size_t newline = data.find('\n');
    begin = newline == std::string::npos ? data.size() : newline + 1;
  }
  std::vector<std::string> all;
  while (begin < data.size()) {
    size_t end = data.find('\n', begin);
    if (end == std::string::npos) end = data.size();
    std::string line = data.substr(begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > 1000) line.resize(1000);
    all.push_back(std::move(line));
    begin = end + 1;
  }
  while (!all.empty() && all.back().empty()) all.pop_back();
  const size_t from = all.size() > lines ? all.size() - lines : 0;
  out.assign(all.begin() + static_cast<std::ptrdiff_t>(from), all.end());
  return out;
}

}  // namespace spark::agent
