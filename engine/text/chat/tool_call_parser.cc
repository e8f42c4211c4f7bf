#include "engine/text/chat/tool_call_parser.h"

#include <random>
#include <utility>

#include "common/check.h"
#include "engine/text/chat/tag_scan.h"

namespace spark::engine::chat {
namespace {

using internal::FindFirstTag;
using internal::kAsciiSpace;
using internal::PartialTagSuffix;
using internal::TagHit;

constexpr std::string_view kCallOpen = "<tool_call>";
constexpr std::string_view kCallClose = "</tool_call>";
constexpr std::string_view kKeyOpen = "<arg_key>";
constexpr std::string_view kKeyClose = "</arg_key>";
constexpr std::string_view kValueOpen = "<arg_value>";
constexpr std::string_view kValueClose = "</arg_value>";
constexpr std::string_view kNewline = "\n";
constexpr std::string_view kLiteralNewline = "\\n";  // GLM-4.5 sometimes writes "\n" escaped
constexpr size_t kMaxNameBytes = 128;
constexpr size_t kLongestNameTerminator = 12;  // </tool_call>

std::string_view TrimAscii(std::string_view s) {
  const size_t start = s.find_first_not_of(kAsciiSpace);
  if (start == std::string_view::npos) return {};
  const size_t end = s.find_last_not_of(kAsciiSpace);
  return s.substr(start, end - start + 1);
}

}  // namespace

std::string_view ToolCallFormatName(ToolCallFormat format) {
  switch (format) {
    case ToolCallFormat::kGlm45:
      return "glm45";
    case ToolCallFormat::kGlm47:
      return "glm47";
  }
  return "unknown";
}

std::string RandomToolCallId() {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<size_t> pick(0, sizeof(kAlphabet) - 2);
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id.push_back(kAlphabet[pick(rng)]);
  return id;
}

GlmToolParser::GlmToolParser(ToolCallFormat format, std::vector<ChatTool> tools,
                             ToolCallIdGenerator ids)
    : format_(format), tools_(std::move(tools)), ids_(std::move(ids)) {
  if (!ids_) ids_ = RandomToolCallId;
}

ToolParseDelta GlmToolParser::Feed(std::string_view delta) {
  SPARK_CHECK(!finished_) << "GlmToolParser::Feed after Finish";
  ToolParseDelta out;
  buffer_.append(delta);
  Process(/*at_end=*/false, &out);
  return out;
}

ToolParseDelta GlmToolParser::Finish() {
  SPARK_CHECK(!finished_) << "GlmToolParser::Finish called twice";
  ToolParseDelta out;
  Process(/*at_end=*/true, &out);
  pending_space_.clear();
  finished_ = true;
  return out;
}

ToolParseResult GlmToolParser::Parse(ToolCallFormat format, std::string_view output,
                                     std::vector<ChatTool> tools, ToolCallIdGenerator ids) {
  GlmToolParser parser(format, std::move(tools), std::move(ids));
  ToolParseResult result;
  result.text = parser.Feed(output).text;
  result.text += parser.Finish().text;
  result.calls = parser.calls();
  return result;
}

void GlmToolParser::EmitText(std::string_view s, ToolParseDelta* out) {
  if (text_segment_start_) {
    const size_t start = s.find_first_not_of(kAsciiSpace);
    if (start == std::string_view::npos) return;
    s = s.substr(start);
    text_segment_start_ = false;
  }
  const size_t last = s.find_last_not_of(kAsciiSpace);
  if (last == std::string_view::npos) {
    pending_space_.append(s);
    return;
  }
  out->text += pending_space_;
  pending_space_.clear();
  out->text.append(s.substr(0, last + 1));
  pending_space_.assign(s.substr(last + 1));
}

void GlmToolParser::StartCall(std::string name, ToolParseDelta* out) {
  pending_space_.clear();  // whitespace before a tool call is dropped
  ParsedToolCall call;
  call.id = ids_();
  call.name = std::move(name);
  tool_ = FindTool(tools_, call.name);
  object_open_ = false;
  key_.clear();
  value_.clear();
  ToolCallDelta delta;
  delta.index = static_cast<int>(calls_.size());
  delta.id = call.id;
  delta.name = call.name;
  out->calls.push_back(std::move(delta));
  calls_.push_back(std::move(call));
}

void GlmToolParser::EmitArguments(std::string_view s, ToolParseDelta* out) {
  if (s.empty()) return;
  const int index = static_cast<int>(calls_.size()) - 1;
  calls_.back().arguments.append(s);
  if (out->calls.empty() || out->calls.back().index != index) {
    ToolCallDelta delta;
    delta.index = index;
    out->calls.push_back(std::move(delta));
  }
  out->calls.back().arguments.append(s);
}

void GlmToolParser::CloseValue(std::string_view last_chunk, ToolParseDelta* out) {
  if (value_type_ == ArgType::kString) {
    std::string escaped;
    AppendPyJsonEscaped(last_chunk, /*ensure_ascii=*/false, &escaped);
    escaped.push_back('"');
    EmitArguments(escaped, out);
  } else {
    value_.append(last_chunk);
    EmitArguments(PyJsonDumps(TypeArgumentValue(value_, value_type_)), out);
  }
  value_.clear();
}

void GlmToolParser::FinishCall(ToolParseDelta* out) {
  EmitArguments(object_open_ ? "}" : "{}", out);
  state_ = State::kText;
  text_segment_start_ = true;
  tool_ = nullptr;
  object_open_ = false;
}

void GlmToolParser::Process(bool at_end, ToolParseDelta* out) {
  while (true) {
    switch (state_) {
      case State::kText: {
        const TagHit hit = FindFirstTag(buffer_, {kCallOpen, kCallClose});
        if (hit.found()) {
          EmitText(std::string_view(buffer_).substr(0, hit.pos), out);
          buffer_.erase(0, hit.pos + hit.length);
          if (hit.tag == 0) state_ = State::kName;  // a stray </tool_call> is just dropped
          continue;
        }
        const size_t keep = at_end ? 0 : PartialTagSuffix(buffer_, {kCallOpen, kCallClose});
        EmitText(std::string_view(buffer_).substr(0, buffer_.size() - keep), out);
        buffer_.erase(0, buffer_.size() - keep);
        return;
      }
      case State::kName: {
        buffer_.erase(0, std::min(buffer_.size(), buffer_.find_first_not_of(kAsciiSpace)));
        const TagHit hit =
            format_ == ToolCallFormat::kGlm45
                ? FindFirstTag(buffer_, {kNewline, kLiteralNewline, kKeyOpen, kCallClose})
                : FindFirstTag(buffer_, {kNewline, kKeyOpen, kCallClose});
        if (hit.found() && hit.pos <= kMaxNameBytes) {
          std::string name(TrimAscii(std::string_view(buffer_).substr(0, hit.pos)));
          const bool is_newline = hit.length <= kLiteralNewline.size();
          buffer_.erase(0, is_newline ? hit.pos + hit.length : hit.pos);
          if (name.empty()) {
            state_ = State::kSkipCall;
          } else {
            StartCall(std::move(name), out);
            state_ = State::kBetween;
          }
          continue;
        }
        if (hit.found() || buffer_.size() >= kMaxNameBytes + kLongestNameTerminator || at_end) {
          // Not a tool call after all: the tag is text, and the rest is scanned again as text.
          EmitText(kCallOpen, out);
          state_ = State::kText;
          continue;
        }
        return;
      }
      case State::kBetween: {
        const TagHit hit = FindFirstTag(buffer_, {kKeyOpen, kCallClose});
        if (hit.found()) {
          buffer_.erase(0, hit.pos + hit.length);
          if (hit.tag == 0) {
            key_.clear();
            state_ = State::kKey;
          } else {
            FinishCall(out);
          }
          continue;
        }
        if (at_end) {
          buffer_.clear();
          FinishCall(out);
          continue;
        }
        buffer_.erase(0, buffer_.size() - PartialTagSuffix(buffer_, {kKeyOpen, kCallClose}));
        return;
      }
      case State::kKey: {
        const TagHit hit = FindFirstTag(buffer_, {kKeyClose, kCallClose});
        if (hit.found()) {
          if (hit.tag == 0) {
            key_ = std::string(TrimAscii(std::string_view(buffer_).substr(0, hit.pos)));
            state_ = State::kWaitValue;
          } else {
            FinishCall(out);  // a key without a value is dropped
          }
          buffer_.erase(0, hit.pos + hit.length);
          continue;
        }
        if (at_end) {
          buffer_.clear();
          FinishCall(out);
          continue;
        }
        return;
      }
      case State::kWaitValue: {
        const TagHit hit = FindFirstTag(buffer_, {kValueOpen, kKeyOpen, kCallClose});
        if (hit.found()) {
          buffer_.erase(0, hit.pos + hit.length);
          if (hit.tag == 0) {
            value_type_ = ResolveArgumentType(tool_ != nullptr ? tool_->parameters : Json(), key_);
            std::string head = object_open_ ? ", " : "{";
            head += PyJsonQuote(key_);
            head += ": ";
            if (value_type_ == ArgType::kString) head.push_back('"');
            object_open_ = true;
            EmitArguments(head, out);
            value_.clear();
            state_ = State::kValue;
          } else if (hit.tag == 1) {
            key_.clear();
            state_ = State::kKey;
          } else {
            FinishCall(out);
          }
          continue;
        }
        if (at_end) {
          buffer_.clear();
          FinishCall(out);
          continue;
        }
        buffer_.erase(
            0, buffer_.size() - PartialTagSuffix(buffer_, {kValueOpen, kKeyOpen, kCallClose}));
        return;
      }
      case State::kValue: {
        const TagHit hit = FindFirstTag(buffer_, {kValueClose, kCallClose});
        if (hit.found()) {
          CloseValue(std::string_view(buffer_).substr(0, hit.pos), out);
          // </arg_value> is consumed; </tool_call> is left for kBetween to close the call.
          buffer_.erase(0, hit.tag == 0 ? hit.pos + hit.length : hit.pos);
          state_ = State::kBetween;
          continue;
        }
        if (at_end) {
          CloseValue(buffer_, out);
          buffer_.clear();
          state_ = State::kBetween;
          continue;
        }
        const size_t keep = PartialTagSuffix(buffer_, {kValueClose, kCallClose});
        const std::string_view chunk = std::string_view(buffer_).substr(0, buffer_.size() - keep);
        if (value_type_ == ArgType::kString) {
          std::string escaped;
          AppendPyJsonEscaped(chunk, /*ensure_ascii=*/false, &escaped);
          EmitArguments(escaped, out);
        } else {
          value_.append(chunk);
        }
        buffer_.erase(0, buffer_.size() - keep);
        return;
      }
      case State::kSkipCall: {
        const TagHit hit = FindFirstTag(buffer_, {kCallClose});
        if (hit.found()) {
          buffer_.erase(0, hit.pos + hit.length);
          state_ = State::kText;
          text_segment_start_ = true;
          continue;
        }
        if (at_end) {
          buffer_.clear();
          state_ = State::kText;
          continue;
        }
        buffer_.erase(0, buffer_.size() - PartialTagSuffix(buffer_, {kCallClose}));
        return;
      }
    }
  }
}

}  // namespace spark::engine::chat
