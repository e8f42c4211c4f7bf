// Detokenizer: incremental decoding for streaming generation. Feed ids one at a time and get
// back only text that is complete UTF-8: a character whose bytes are spread over several
// tokens (CJK, emoji) is held back until its last byte arrives. Bytes that can never form a
// character become U+FFFD at once; Flush ends the stream and turns a cut-short tail into one
// U+FFFD. The concatenation of everything Feed and Flush return equals
// Tokenizer::Decode(all ids, skip_special).
//
// Thread safety: not thread-safe (one Detokenizer per stream). It keeps a pointer to the
// Tokenizer, which must outlive it.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "engine/text/tokenizer.h"

namespace spark::engine {

class Detokenizer {
 public:
  explicit Detokenizer(const Tokenizer* tokenizer, bool skip_special = false)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}

  // Adds one id; returns the text that became complete (often empty for a partial character).
  // kInvalidArgument for an id the tokenizer does not know (the stream state is unchanged).
  Result<std::string> Feed(int32_t id);

  // Ends the stream: returns the held-back bytes (as U+FFFD when they are not a complete
  // character) and resets the detokenizer for a new stream.
  std::string Flush();

  // Drops any held-back bytes and starts a new stream.
  void Reset();

  // Bytes held back waiting for the rest of a character (0 to 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  bool emitted_any_ = false;  // for decoders that join tokens with ' '
  std::string pending_;
};

}  // namespace spark::engine
