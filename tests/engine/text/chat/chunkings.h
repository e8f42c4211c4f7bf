// Ways to cut a text into streaming deltas for the parser tests: every single split point, one
// byte at a time, and seeded random cuts (including empty deltas).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace spark::engine::chat::testing {

inline std::vector<std::vector<std::string>> Chunkings(const std::string& s, int random_cuts = 50,
                                                       uint32_t seed = 1234) {
  std::vector<std::vector<std::string>> out;
  for (size_t cut = 0; cut <= s.size(); ++cut) out.push_back({s.substr(0, cut), s.substr(cut)});
  std::vector<std::string> bytes;
  for (const char c : s) bytes.emplace_back(1, c);
  out.push_back(bytes);
  std::mt19937 rng(seed);
  for (int r = 0; r < random_cuts; ++r) {
    std::vector<std::string> pieces;
    size_t pos = 0;
    while (pos < s.size()) {
      const size_t len = std::uniform_int_distribution<size_t>(0, 7)(rng);
      pieces.push_back(s.substr(pos, len));
      pos += len;
    }
    pieces.emplace_back();
    out.push_back(pieces);
  }
  return out;
}

}  // namespace spark::engine::chat::testing
