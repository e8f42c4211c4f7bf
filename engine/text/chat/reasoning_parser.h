// ReasoningParser: splits model output into reasoning_content and normal text, following SGLang's
// `glm45` reasoning parser (<think>...</think>, a tool call may start before </think>), streaming
// or all at once with the same result for every way the output is cut into deltas.
//
// Rules:
//   * force_reasoning (the prompt already opened the think block, e.g. GLM-4.7 with thinking on,
//     or thinking is on by default): the output starts inside reasoning. Otherwise reasoning is
//     recognised only when the output starts with "<think>" (leading whitespace allowed); any
//     other output is normal text, untouched.
//   * Inside reasoning, "<think>" tags are dropped; "</think>" ends the reasoning; "<tool_call>"
//     ends it too and is passed on, tag included, as normal text (GLM may call a tool without
//     closing the think block). There is one reasoning block: after it everything is normal text.
//   * Reasoning loses its leading and trailing whitespace; the normal text after "</think>" loses
//     its leading whitespace. Whitespace is ASCII (space, \t, \n, \v, \f, \r).
//   * Streaming holds back a tail that could be the start of a tag, and trailing whitespace of
//     the reasoning (emitted once more reasoning follows). Finish() flushes: an output cut short
//     inside reasoning leaves it all as reasoning.
// Within one delta the reasoning always precedes the normal text.
//
// Thread safety: not thread-safe (one parser per stream).
#pragma once

#include <string>
#include <string_view>

namespace spark::engine::chat {

struct ReasoningParserOptions {
  bool force_reasoning = false;  // the output starts inside the think block
};

struct ReasoningDelta {
  std::string reasoning;  // reasoning_content
  std::string text;       // normal text (goes on to the tool-call parser)
};

class ReasoningParser {
 public:
  explicit ReasoningParser(ReasoningParserOptions options = {});

  // Adds a piece of output; returns what can be emitted now.
  ReasoningDelta Feed(std::string_view delta);

  // Ends the stream and returns everything held back. The parser is spent afterwards.
  ReasoningDelta Finish();

  // Non-streaming: the whole output at once.
  static ReasoningDelta Parse(std::string_view output, ReasoningParserOptions options = {});

  // True while the parser is (or may still be) inside the reasoning block.
  bool in_reasoning() const { return state_ != State::kText; }

 private:
  enum class State { kStart, kReasoning, kText };

  void Process(bool at_end, ReasoningDelta* out);
  void EmitReasoning(std::string_view s, ReasoningDelta* out);
  void EmitText(std::string_view s, ReasoningDelta* out);

  State state_;
  std::string buffer_;              // input not processed yet
  bool reasoning_started_ = false;  // leading whitespace of the reasoning already dropped
  std::string pending_space_;       // trailing whitespace of the reasoning, held back
  bool strip_text_start_ = false;   // drop leading whitespace of the text after </think>
  bool finished_ = false;
};

}  // namespace spark::engine::chat
