// ChatOutputParser: reasoning then tool calls in SGLang's order, for the template families; a
// GLM-4.7 tool call that starts inside the reasoning; the same result for every chunking.
#include "engine/text/chat/chat_output_parser.h"

#include <gtest/gtest.h>

#include "tests/engine/text/chat/chunkings.h"

namespace spark::engine::chat {
namespace {

std::vector<ChatTool> WeatherTool() {
  auto tools = ParseChatTools(Json::parse(R"([{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}])"));
  EXPECT_TRUE(tools.ok());
  return *tools;
}

ChatTemplateKwargs ThinkingOff() {
  ChatTemplateKwargs kwargs;
  kwargs.enable_thinking = false;
  return kwargs;
}

ChatOutputOptions Options(ChatTemplateKind kind, ChatTemplateKwargs kwargs = {}) {
  ChatOutputOptions options = ChatOutputOptionsFor(kind, kwargs, WeatherTool());
  options.tool_call_ids = [] { return std::string("call_fixed"); };
  return options;
}

ChatOutput StreamAll(const ChatOutputOptions& options, const std::vector<std::string>& pieces) {
  ChatOutputParser parser(options);
  ChatOutput out;
  auto add = [&out](const ChatDelta& d) {
    out.reasoning_content += d.reasoning_content;
    out.content += d.content;
    for (const ToolCallDelta& c : d.tool_calls) {
      if (static_cast<size_t>(c.index) == out.tool_calls.size()) {
        out.tool_calls.push_back({c.id, c.name, ""});
      }
      out.tool_calls.at(c.index).arguments += c.arguments;
    }
  };
  for (const std::string& piece : pieces) add(parser.Feed(piece));
  add(parser.Finish());
  return out;
}

struct Case {
  ChatTemplateKind kind;
  ChatTemplateKwargs kwargs;
  std::string output;
  std::string reasoning;
  std::string content;
  std::string arguments;  // of the single call; empty: no call
};

TEST(ChatOutputParserTest, PipelinesForTheTemplateFamilies) {
  const Case cases[] = {
      // GLM-4.7, thinking on: the prompt opened <think>; the tool call starts before </think>.
      {ChatTemplateKind::kGlm47,
       {},
       "I need the weather.<tool_call>get_weather<arg_key>city"
       "</arg_key><arg_value>Paris</arg_value><arg_key>days</arg_key><arg_value>3</arg_value>"
       "</tool_call>",
       "I need the weather.",
       "",
       R"({"city": "Paris", "days": 3})"},
      {ChatTemplateKind::kGlm47, {}, "Easy.</think>Hello!", "Easy.", "Hello!", ""},
      // GLM-4.5/4.6, thinking on: the model opens <think> itself.
      {ChatTemplateKind::kGlm45,
       {},
       "\n<think>Need tool.</think>\nChecking.\n<tool_call>"
       "get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>",
       "Need tool.",
       "Checking.",
       R"({"city": "Paris"})"},
      // Thinking off: no reasoning, the text is content.
      {ChatTemplateKind::kGlm45, ThinkingOff(), "Hi <b>there</b>", "", "Hi <b>there</b>", ""},
      // Qwen3: reasoning, tool calls stay in the content (no Qwen3 tool parser).
      {ChatTemplateKind::kChatMl,
       {},
       "<think>\nhmm\n</think>\n\n<tool_call>\n{}\n</tool_call>",
       "hmm",
       "<tool_call>\n{}\n</tool_call>",
       ""},
      // Llama-3: everything is content.
      {ChatTemplateKind::kLlama3, {}, "<think>x</think>", "", "<think>x</think>", ""},
  };
  for (const Case& c : cases) {
    const ChatOutputOptions options = Options(c.kind, c.kwargs);
    const ChatOutput whole = ChatOutputParser::Parse(c.output, options);
    EXPECT_EQ(whole.reasoning_content, c.reasoning) << c.output;
    EXPECT_EQ(whole.content, c.content) << c.output;
    if (c.arguments.empty()) {
      EXPECT_TRUE(whole.tool_calls.empty()) << c.output;
    } else {
      ASSERT_EQ(whole.tool_calls.size(), 1u) << c.output;
      EXPECT_EQ(whole.tool_calls[0].id, "call_fixed");
      EXPECT_EQ(whole.tool_calls[0].name, "get_weather");
      EXPECT_EQ(whole.tool_calls[0].arguments, c.arguments);
    }
    for (const auto& pieces : testing::Chunkings(c.output, 20)) {
      const ChatOutput streamed = StreamAll(options, pieces);
      ASSERT_EQ(streamed.reasoning_content, whole.reasoning_content) << c.output;
      ASSERT_EQ(streamed.content, whole.content) << c.output;
      ASSERT_EQ(streamed.tool_calls.size(), whole.tool_calls.size()) << c.output;
      for (size_t i = 0; i < whole.tool_calls.size(); ++i) {
        ASSERT_EQ(streamed.tool_calls[i].arguments, whole.tool_calls[i].arguments);
      }
    }
  }
}

TEST(ChatOutputParserTest, OptionsForTemplates) {
  ChatOutputOptions o = ChatOutputOptionsFor(ChatTemplateKind::kGlm47, {}, WeatherTool());
  EXPECT_TRUE(o.parse_reasoning);
  EXPECT_TRUE(o.force_reasoning);
  EXPECT_EQ(o.tool_call_format, ToolCallFormat::kGlm47);
  o = ChatOutputOptionsFor(ChatTemplateKind::kGlm45, ThinkingOff(), {});
  EXPECT_TRUE(o.parse_reasoning);
  EXPECT_FALSE(o.force_reasoning);
  EXPECT_FALSE(o.tool_call_format.has_value());  // no tools in the request
  o = ChatOutputOptionsFor(ChatTemplateKind::kLlama3, {}, WeatherTool());
  EXPECT_FALSE(o.parse_reasoning);
  EXPECT_FALSE(o.tool_call_format.has_value());
}

}  // namespace
}  // namespace spark::engine::chat
