// The last lines of a shard log, for the ShardStatus an agent sends when a shard exits.
//
// Reads at most `max_bytes` from the end of the file (a partial first line is dropped), strips
// trailing '\r', drops empty trailing lines, and cuts each line to 1000 bytes.
//
// Thread safety: pure function over the file system.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace spark::agent {

std::vector<std::string> ReadLogTail(const std::string& path, size_t lines,
                                     size_t max_bytes = 64 * 1024);

}  // namespace spark::agent
