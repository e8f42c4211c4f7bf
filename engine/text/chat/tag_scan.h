// Internal helpers of the streaming parsers: finding the first of several tags in a buffer and
// measuring how much of a buffer's tail could still become a tag once more text arrives.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <string_view>

namespace spark::engine::chat::internal {

struct TagHit {
  size_t pos = std::string_view::npos;  // npos: none of the tags occurs
  size_t tag = 0;                       // index into the tag list
  size_t length = 0;                    // length of that tag
  bool found() const { return pos != std::string_view::npos; }
};

// The earliest complete occurrence of any tag (ties: the earlier tag in the list).
TagHit FindFirstTag(std::string_view text, std::initializer_list<std::string_view> tags);

// Length of the longest suffix of `text` that is a proper prefix of one of the tags: the bytes a
// streaming parser must hold back because they may be the start of a tag.
size_t PartialTagSuffix(std::string_view text, std::initializer_list<std::string_view> tags);

// ASCII whitespace: space, \t, \n, \v, \f, \r.
constexpr std::string_view kAsciiSpace = " \t\n\v\f\r";

}  // namespace spark::engine::chat::internal
