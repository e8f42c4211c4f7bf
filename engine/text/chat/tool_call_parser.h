// Tool-call parsers for the GLM-4.5/4.6 (`glm45`) and GLM-4.7 (`glm47`) output formats, streaming
// or all at once, producing OpenAI tool_calls (and their streaming deltas).
//
//   glm45:
//   <tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n</tool_call>
//   glm47: <tool_call>get_weather<arg_key>city</arg_key><arg_value>北京</arg_value></tool_call>
//
// Rules (the same for every way the output is cut into deltas; Parse() = Feed(all) + Finish()):
//   * Name: the text after <tool_call> up to the first newline (glm45 also accepts a literal
//     backslash-n), <arg_key> or </tool_call>, whitespace-trimmed. A name longer than 128 bytes
//     means the <tool_call> was not a tool call: it stays in the text. An empty name drops the
//     call.
//   * Arguments: <arg_key>K</arg_key> (whitespace) <arg_value>V</arg_value> pairs; the key is
//     trimmed, the value is not. Text between the tags is ignored. The value is typed by the
//     tool's schema (tool_schema.h): string values are the raw text; others become JSON. A value
//     cut short by </tool_call> ends there.
//   * `arguments` is the JSON text of the object: {"k": v, ...} with ", " and ": " (json.dumps
//     style, non-ASCII kept), always valid JSON once the call is complete; "{}" without
//     arguments. A call still open when the output ends is closed by Finish().
//   * Calls get ids from the generator ("call_" + 24 random alphanumerics by default) and indexes
//     0, 1, ... in order. Calls naming a tool that the request did not define are still reported
//     (their values are typed as auto).
//   * Text outside tool calls is the normal text; a stray </tool_call> is removed from it, and
//     whitespace at its start, at its end and next to tool calls is dropped.
//   * Streaming: the first delta of a call carries index, id and name (arguments ""); later ones
//     carry argument JSON fragments: `{"key": ` once the value starts, string values character by
//     character (escaped, holding back what could be the start of </arg_value>), other values
//     whole at </arg_value>, and `}` at </tool_call>. Text that could be the start of a tag is
//     held back.
//
// Thread safety: not thread-safe (one parser per stream).
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text/chat/chat_message.h"
#include "engine/text/chat/tool_schema.h"

namespace spark::engine::chat {

enum class ToolCallFormat { kGlm45, kGlm47 };

// "glm45", "glm47" (SGLang's --tool-call-parser names).
std::string_view ToolCallFormatName(ToolCallFormat format);

// One streaming piece of a tool call (OpenAI delta.tool_calls[i]).
struct ToolCallDelta {
  int index = 0;
  std::string id;         // first delta of a call only
  std::string name;       // first delta of a call only
  std::string arguments;  // JSON text fragment
};

// A complete tool call (OpenAI message.tool_calls[i]).
struct ParsedToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON object text
};

struct ToolParseDelta {
  std::string text;                  // normal text
  std::vector<ToolCallDelta> calls;  // in order; one entry per call touched by this delta
};

struct ToolParseResult {
  std::string text;
  std::vector<ParsedToolCall> calls;
};

// Returns a fresh tool-call id.
using ToolCallIdGenerator = std::function<std::string()>;

// "call_" + 24 random characters of [A-Za-z0-9] (thread-safe).
std::string RandomToolCallId();

class GlmToolParser {
 public:
  // `tools` are the request's tools (their schemas type the argument values); `ids` defaults to
  // RandomToolCallId.
  GlmToolParser(ToolCallFormat format, std::vector<ChatTool> tools, ToolCallIdGenerator ids = {});
  virtual ~GlmToolParser() = default;
  GlmToolParser(const GlmToolParser&) = delete;
  GlmToolParser& operator=(const GlmToolParser&) = delete;

  // Adds a piece of normal text (output of the reasoning parser); returns what can be emitted.
  ToolParseDelta Feed(std::string_view delta);

  // Ends the stream: flushes held-back text and closes an open call. The parser is spent.
  ToolParseDelta Finish();

  // The calls seen so far, arguments as emitted so far (complete after Finish).
  const std::vector<ParsedToolCall>& calls() const { return calls_; }

  // Non-streaming parse of a whole output.
  static ToolParseResult Parse(ToolCallFormat format, std::string_view output,
                               std::vector<ChatTool> tools, ToolCallIdGenerator ids = {});

 private:
  enum class State { kText, kName, kBetween, kKey, kWaitValue, kValue, kSkipCall };

  void Process(bool at_end, ToolParseDelta* out);
  void EmitText(std::string_view s, ToolParseDelta* out);
  void StartCall(std::string name, ToolParseDelta* out);
  void EmitArguments(std::string_view s, ToolParseDelta* out);
  void CloseValue(std::string_view last_chunk, ToolParseDelta* out);
  void FinishCall(ToolParseDelta* out);

  ToolCallFormat format_;
  std::vector<ChatTool> tools_;
  ToolCallIdGenerator ids_;
  State state_ = State::kText;
  std::string buffer_;  // input not processed yet
  bool finished_ = false;

  // Normal text.
  bool text_segment_start_ = true;  // drop leading whitespace
  std::string pending_space_;       // trailing whitespace, held back

  // The open call.
  const ChatTool* tool_ = nullptr;
  bool object_open_ = false;  // "{" emitted
  std::string key_;
  ArgType value_type_ = ArgType::kAuto;
  std::string value_;  // raw text of a non-string value

  std::vector<ParsedToolCall> calls_;
};

class Glm45ToolParser final : public GlmToolParser {
 public:
  explicit Glm45ToolParser(std::vector<ChatTool> tools, ToolCallIdGenerator ids = {})
      : GlmToolParser(ToolCallFormat::kGlm45, std::move(tools), std::move(ids)) {}
};

class Glm47ToolParser final : public GlmToolParser {
 public:
  explicit Glm47ToolParser(std::vector<ChatTool> tools, ToolCallIdGenerator ids = {})
      : GlmToolParser(ToolCallFormat::kGlm47, std::move(tools), std::move(ids)) {}
};

}  // namespace spark::engine::chat
