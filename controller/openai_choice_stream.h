// ChoiceStream: the generated tokens of one choice turned into OpenAI output, chunk by chunk:
// token ids -> incremental detokenizer (special tokens skipped) -> stop strings (never leaked,
// also when split across tokens; engine/text/chat/stop_string_matcher.h) -> for chat, the output
// pipeline (reasoning_content, content, tool_calls; engine/text/chat/chat_output_parser.h) or, for
// text completions, plain text. Logprobs of the tokens come along with the token strings and
// bytes.
//
// Counting: tokens() counts every token fed up to and including the one that completed a stop
// string. reasoning_tokens() counts the tokens up to the last one that produced reasoning text
// before any content or tool call appeared (what usage.completion_tokens_details reports; zero
// exactly when there is no reasoning_content).
//
// Thread safety: not thread-safe (one stream per choice). Keeps a pointer to the ModelText, which
// must outlive it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "controller/openai_model.h"
#include "engine/text/chat/chat_output_parser.h"
#include "engine/text/chat/stop_string_matcher.h"
#include "engine/text/detokenizer.h"
#include "spark.pb.h"

namespace spark::controller {

// One token of a logprobs answer.
struct TokenLogprobInfo {
  std::string token;             // the token's text (invalid UTF-8 replaced)
  std::string bytes;             // the token's raw bytes
  std::optional<float> logprob;  // nullopt for echoed prompt tokens
  struct Alternative {
    std::string token;
    std::string bytes;
    float logprob = 0;
  };
  std::vector<Alternative> top;
};

struct ChoicePiece {
  std::string text;               // completions: text safe to emit
  engine::chat::ChatDelta delta;  // chat: the pieces safe to emit
  std::vector<TokenLogprobInfo> logprobs;
  bool empty() const { return text.empty() && delta.empty() && logprobs.empty(); }
};

class ChoiceStream {
 public:
  // `chat`: the output pipeline options for a chat completion; nullopt for text completions.
  ChoiceStream(const ModelText* model, std::vector<std::string> stop,
               std::optional<engine::chat::ChatOutputOptions> chat, bool want_logprobs);

  // Adds the tokens of a chunk (and their logprobs when asked). After a stop string matched the
  // rest is ignored.
  ChoicePiece Feed(const spark::v1::TokenChunk& chunk);
  // Ends the output: flushes held-back text and closes the parsers.
  ChoicePiece Finish();

  // The logprob entry of a token (also used for echoed prompt tokens).
  TokenLogprobInfo Describe(int32_t token_id, std::optional<float> logprob) const;

  bool stopped() const { return stop_.stopped(); }
  uint32_t tokens() const { return tokens_; }
  uint32_t reasoning_tokens() const { return reasoning_tokens_; }
  bool saw_tool_call() const { return saw_tool_call_; }

 private:
  void Emit(const std::string& safe, ChoicePiece* out);

  const ModelText* model_;
  engine::Detokenizer detokenizer_;
  engine::chat::StopStringMatcher stop_;
  std::optional<engine::chat::ChatOutputParser> chat_;
  bool want_logprobs_;
  bool finished_ = false;
  uint32_t tokens_ = 0;
  uint32_t reasoning_tokens_ = 0;
  uint32_t unassigned_tokens_ = 0;  // fed since the last reasoning text, before any answer
  bool saw_answer_ = false;         // content or a tool call
  bool saw_tool_call_ = false;
};

}  // namespace spark::controller
