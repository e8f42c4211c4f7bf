#include "engine/text/chat/reasoning_parser.h"

#include "common/check.h"
#include "engine/text/chat/tag_scan.h"

namespace spark::engine::chat {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kToolCallOpen = "<tool_call>";

}  // namespace

using internal::FindFirstTag;
using internal::kAsciiSpace;
using internal::PartialTagSuffix;

ReasoningParser::ReasoningParser(ReasoningParserOptions options)
    : state_(options.force_reasoning ? State::kReasoning : State::kStart) {}

ReasoningDelta ReasoningParser::Feed(std::string_view delta) {
  SPARK_CHECK(!finished_) << "ReasoningParser::Feed after Finish";
  ReasoningDelta out;
  buffer_.append(delta);
  Process(/*at_end=*/false, &out);
  return out;
}

ReasoningDelta ReasoningParser::Finish() {
  SPARK_CHECK(!finished_) << "ReasoningParser::Finish called twice";
  ReasoningDelta out;
  Process(/*at_end=*/true, &out);
  finished_ = true;
  return out;
}

ReasoningDelta ReasoningParser::Parse(std::string_view output, ReasoningParserOptions options) {
  ReasoningParser parser(options);
  ReasoningDelta out = parser.Feed(output);
  ReasoningDelta tail = parser.Finish();
  out.reasoning += tail.reasoning;
  out.text += tail.text;
  return out;
}

void ReasoningParser::EmitReasoning(std::string_view s, ReasoningDelta* out) {
  if (!reasoning_started_) {
    const size_t start = s.find_first_not_of(kAsciiSpace);
    if (start == std::string_view::npos) return;
    s = s.substr(start);
    reasoning_started_ = true;
  }
  const size_t last = s.find_last_not_of(kAsciiSpace);
  if (last == std::string_view::npos) {
    pending_space_.append(s);
    return;
  }
  out->reasoning += pending_space_;
  pending_space_.clear();
  out->reasoning.append(s.substr(0, last + 1));
  pending_space_.assign(s.substr(last + 1));
}

void ReasoningParser::EmitText(std::string_view s, ReasoningDelta* out) {
  if (strip_text_start_) {
    const size_t start = s.find_first_not_of(kAsciiSpace);
    if (start == std::string_view::npos) return;
    s = s.substr(start);
    strip_text_start_ = false;
  }
  out->text.append(s);
}

void ReasoningParser::Process(bool at_end, ReasoningDelta* out) {
  while (true) {
    switch (state_) {
      case State::kStart: {
        const size_t start = buffer_.find_first_not_of(kAsciiSpace);
        if (start == std::string::npos) {
          if (!at_end) return;
          state_ = State::kText;
          continue;
        }
        const std::string_view rest = std::string_view(buffer_).substr(start);
        if (rest.substr(0, kThinkOpen.size()) == kThinkOpen) {
          buffer_.erase(0, start + kThinkOpen.size());
          state_ = State::kReasoning;
          continue;
        }
        if (!at_end && rest.size() < kThinkOpen.size() &&
            kThinkOpen.substr(0, rest.size()) == rest) {
          return;  // may still become "<think>"
        }
        state_ = State::kText;
        continue;
      }
      case State::kReasoning: {
        const internal::TagHit hit =
            FindFirstTag(buffer_, {kThinkOpen, kThinkClose, kToolCallOpen});
        if (hit.found()) {
          EmitReasoning(std::string_view(buffer_).substr(0, hit.pos), out);
          if (hit.tag == 0) {  // a stray <think>: dropped
            buffer_.erase(0, hit.pos + hit.length);
            continue;
          }
          pending_space_.clear();
          state_ = State::kText;
          if (hit.tag == 1) {  // </think>
            buffer_.erase(0, hit.pos + hit.length);
            strip_text_start_ = true;
          } else {  // <tool_call>: kept for the tool-call parser
            buffer_.erase(0, hit.pos);
          }
          continue;
        }
        const size_t keep =
            at_end ? 0 : PartialTagSuffix(buffer_, {kThinkOpen, kThinkClose, kToolCallOpen});
        EmitReasoning(std::string_view(buffer_).substr(0, buffer_.size() - keep), out);
        buffer_.erase(0, buffer_.size() - keep);
        if (at_end) pending_space_.clear();
        return;
      }
      case State::kText:
        EmitText(buffer_, out);
        buffer_.clear();
        return;
    }
  }
}

}  // namespace spark::engine::chat
