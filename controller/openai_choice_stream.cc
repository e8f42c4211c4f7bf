#include "controller/openai_choice_stream.h"

#include <utility>

#include "engine/text/utf8.h"

namespace spark::controller {
namespace {

void Append(engine::chat::ChatDelta& into, engine::chat::ChatDelta&& from) {
  into.reasoning_content += from.reasoning_content;
  into.content += from.content;
  for (auto& call : from.tool_calls) into.tool_calls.push_back(std::move(call));
}

}  // namespace

ChoiceStream::ChoiceStream(const ModelText* model, std::vector<std::string> stop,
                           std::optional<engine::chat::ChatOutputOptions> chat, bool want_logprobs)
    : model_(model),
      detokenizer_(model->tokenizer.get(), /*skip_special=*/true),
      stop_(std::move(stop)),
      want_logprobs_(want_logprobs) {
  if (chat) chat_.emplace(std::move(*chat));
}

TokenLogprobInfo ChoiceStream::Describe(int32_t token_id, std::optional<float> logprob) const {
  TokenLogprobInfo info;
  model_->tokenizer->AppendTokenBytes(token_id, &info.bytes).IgnoreError();
  engine::text::AppendUtf8Lossy(info.bytes, &info.token);
  info.logprob = logprob;
  return info;
}

void ChoiceStream::Emit(const std::string& safe, ChoicePiece* out) {
  if (safe.empty()) return;
  if (!chat_) {
    out->text += safe;
    return;
  }
  engine::chat::ChatDelta delta = chat_->Feed(safe);
  Append(out->delta, std::move(delta));
}

ChoicePiece ChoiceStream::Feed(const spark::v1::TokenChunk& chunk) {
  ChoicePiece out;
  if (finished_ || stop_.stopped()) return out;
  for (int i = 0; i < chunk.token_ids_size(); ++i) {
    const int32_t id = chunk.token_ids(i);
    ++tokens_;
    if (want_logprobs_ && i < chunk.logprobs_size()) {
      const spark::v1::TokenLogprob& lp = chunk.logprobs(i);
      TokenLogprobInfo info = Describe(id, lp.logprob());
      for (const spark::v1::TopLogprob& top : lp.top_logprobs()) {
        TokenLogprobInfo alt = Describe(top.token_id(), top.logprob());
        info.top.push_back({std::move(alt.token), std::move(alt.bytes), top.logprob()});
      }
      out.logprobs.push_back(std::move(info));
    }
    Result<std::string> text = detokenizer_.Feed(id);
    const size_t answer_before = out.delta.content.size() + out.delta.tool_calls.size();
    const size_t reasoning_before = out.delta.reasoning_content.size();
    if (text.ok() && !text->empty()) {
      engine::chat::StopStringMatcher::Output safe = stop_.Feed(*text);
      Emit(safe.text, &out);
    }
    if (chat_) {
      // Tokens are reasoning tokens once reasoning text came out of them (or of later ones),
      // until the first content or tool call.
      if (!saw_answer_) ++unassigned_tokens_;
      if (!saw_answer_ && out.delta.reasoning_content.size() > reasoning_before) {
        reasoning_tokens_ += unassigned_tokens_;
        unassigned_tokens_ = 0;
      }
      if (out.delta.content.size() + out.delta.tool_calls.size() > answer_before) {
        saw_answer_ = true;
      }
      if (!out.delta.tool_calls.empty()) saw_tool_call_ = true;
    }
    if (stop_.stopped()) break;
  }
  return out;
}

ChoicePiece ChoiceStream::Finish() {
  ChoicePiece out;
  if (finished_) return out;
  finished_ = true;
  if (!stop_.stopped()) {
    std::string tail = detokenizer_.Flush();
    engine::chat::StopStringMatcher::Output safe = stop_.Feed(tail);
    std::string rest = safe.text;
    if (!stop_.stopped()) rest += stop_.Finish();
    Emit(rest, &out);
  }
  if (chat_) {
    Append(out.delta, chat_->Finish());
    if (!out.delta.tool_calls.empty()) saw_tool_call_ = true;
    if (!saw_answer_ && !out.delta.reasoning_content.empty()) {
      reasoning_tokens_ += unassigned_tokens_;
      unassigned_tokens_ = 0;
    }
  }
  return out;
}

}  // namespace spark::controller
