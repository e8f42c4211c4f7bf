// Shared pieces of the chat-parser fuzz targets: the input layout (one flag byte, then the model
// output), a cut schedule derived from the input, and the invariant check.
//
// Each target checks that feeding the output in the derived pieces gives exactly the
// non-streaming result, plus target-specific invariants; a violation aborts with a message.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace spark::engine::chat::fuzz {

#define SPARK_FUZZ_CHECK(cond, what)                                                             \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "fuzz invariant failed: %s (%s:%d): %s\n", #cond, __FILE__, __LINE__, \
                   std::string(what).c_str());                                                   \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)

struct FuzzInput {
  uint8_t flags = 0;
  std::string_view text;
  std::vector<std::string_view> pieces;  // text cut into deltas (some empty)
};

inline FuzzInput SplitFuzzInput(const uint8_t* data, size_t size) {
  FuzzInput in;
  if (size == 0) return in;
  in.flags = data[0];
  in.text = std::string_view(reinterpret_cast<const char*>(data + 1), size - 1);
  uint64_t state = 0x9E3779B97F4A7C15ull ^ (uint64_t{in.flags} << 32) ^ size;
  size_t pos = 0;
  while (pos < in.text.size()) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const size_t len = state % 17;  // 0..16 bytes
    in.pieces.push_back(in.text.substr(pos, len));
    pos += len;
  }
  return in;
}

}  // namespace spark::engine::chat::fuzz
