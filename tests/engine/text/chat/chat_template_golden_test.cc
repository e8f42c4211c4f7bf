// Golden test of the native chat-template renderers: every conversation of
// tests/data/chat/conversations.json, rendered by transformers' apply_chat_template with the real
// templates (tests/reference/chat_golden.py), must come out byte for byte the same. A template
// that refused a conversation must make RenderChat fail too. The golden directory can be
// overridden with SPARK_CHAT_GOLDEN_DIR (for provisional renders during development).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>

#include "engine/text/chat/chat_message.h"
#include "engine/text/chat/chat_template.h"

namespace spark::engine::chat {
namespace {

struct GoldenFile {
  const char* name;  // <name>.jsonl
  ChatTemplateKind kind;
  bool llama_dated_system;
  bool llama_always_generation_prompt;
};

constexpr GoldenFile kGoldenFiles[] = {
    {"glm46", ChatTemplateKind::kGlm45, true, false},
    {"glm47", ChatTemplateKind::kGlm47, true, false},
    {"qwen3", ChatTemplateKind::kChatMl, true, false},
    {"llama31", ChatTemplateKind::kLlama3, true, false},
    {"llama3", ChatTemplateKind::kLlama3, false, true},
};

void PrintTo(const GoldenFile& golden, std::ostream* os) { *os << golden.name; }

std::filesystem::path GoldenDir() {
  if (const char* dir = std::getenv("SPARK_CHAT_GOLDEN_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  return std::filesystem::path(SPARK_SOURCE_DIR) / "tests/data/chat";
}

// Offset of the first differing byte, with some context of both strings.
std::string FirstDifference(const std::string& want, const std::string& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  const size_t from = i > 40 ? i - 40 : 0;
  std::ostringstream out;
  out << "first difference at byte " << i << "\n  want: ..."
      << ::testing::PrintToString(want.substr(from, 100)) << "\n  got:  ..."
      << ::testing::PrintToString(got.substr(from, 100));
  return out.str();
}

class ChatTemplateGoldenTest : public ::testing::TestWithParam<GoldenFile> {};

TEST_P(ChatTemplateGoldenTest, RendersLikeTransformers) {
  const GoldenFile& golden = GetParam();
  const std::filesystem::path path = GoldenDir() / (std::string(golden.name) + ".jsonl");
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path
                         << " is missing: run tests/reference/chat_golden.py on the GPU machine "
                            "(see its docstring) and commit the .jsonl files";
  ChatTemplate tmpl = DefaultChatTemplate(golden.kind);
  tmpl.llama_dated_system = golden.llama_dated_system;
  tmpl.llama_always_generation_prompt = golden.llama_always_generation_prompt;

  std::string line;
  int renders = 0;
  int refusals = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const Json record = Json::parse(line, nullptr, false);
    ASSERT_FALSE(record.is_discarded()) << path << ": bad JSON line";
    const std::string where = std::string(golden.name) + "/" +
                              record["conversation"].get<std::string>() + "#" +
                              std::to_string(record["variant"].get<int>());
    auto messages = ParseChatMessages(record["messages"]);
    ASSERT_TRUE(messages.ok()) << where << ": " << messages.status().ToString();
    auto tools = ParseChatTools(record["tools"]);
    ASSERT_TRUE(tools.ok()) << where << ": " << tools.status().ToString();
    auto kwargs = ParseChatTemplateKwargs(record["kwargs"]);
    ASSERT_TRUE(kwargs.ok()) << where << ": " << kwargs.status().ToString();
    auto rendered =
        RenderChat(tmpl, *messages, *tools, *kwargs, record["add_generation_prompt"].get<bool>());
    if (record.contains("error")) {
      ++refusals;
      EXPECT_FALSE(rendered.ok()) << where << ": the template refused the conversation ("
                                  << record["error"].get<std::string>()
                                  << ") but RenderChat rendered it";
      if (!rendered.ok()) {
        // The template's own message is kept ("TemplateError: <message>" in the golden).
        EXPECT_NE(record["error"].get<std::string>().find(rendered.status().message()),
                  std::string::npos)
            << where << ": " << rendered.status().ToString();
      }
      continue;
    }
    ++renders;
    ASSERT_TRUE(rendered.ok()) << where << ": " << rendered.status().ToString();
    const std::string want = record["rendered"].get<std::string>();
    EXPECT_EQ(*rendered, want) << where << ": " << FirstDifference(want, *rendered);
  }
  EXPECT_GE(renders, 30) << path << ": too few golden renders";
  if (golden.kind == ChatTemplateKind::kLlama3 && golden.llama_dated_system) {
    EXPECT_GE(refusals, 1) << path << ": expected the parallel tool-call refusal";
  }
}

INSTANTIATE_TEST_SUITE_P(Templates, ChatTemplateGoldenTest, ::testing::ValuesIn(kGoldenFiles),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace spark::engine::chat

namespace spark::engine::chat {
namespace {

std::vector<ChatMessage> Messages(const char* json) {
  auto messages = ParseChatMessages(Json::parse(json));
  EXPECT_TRUE(messages.ok()) << messages.status().ToString();
  return messages.ok() ? *messages : std::vector<ChatMessage>();
}

// Refusals of the Llama-3.1 template that the golden conversations do not reach.
TEST(ChatTemplateRenderTest, LlamaRefusals) {
  auto tools = ParseChatTools(
      Json::parse(R"([{"type": "function", "function": {"name": "f", "parameters": {}}}])"));
  ASSERT_TRUE(tools.ok());
  auto no_user = RenderChat(ChatTemplateKind::kLlama3,
                            Messages(R"([{"role": "system", "content": "s"}])"), *tools, {}, true);
  ASSERT_FALSE(no_user.ok());
  EXPECT_NE(no_user.status().message().find("no first user message"), std::string::npos);
  ChatTemplateKwargs builtin;
  builtin.extra["builtin_tools"] = Json::array({"brave_search"});
  auto unsupported =
      RenderChat(ChatTemplateKind::kLlama3, Messages(R"([{"role": "user", "content": "u"}])"), {},
                 builtin, true);
  ASSERT_FALSE(unsupported.ok());
  EXPECT_EQ(unsupported.status().code(), StatusCode::kUnimplemented);
}

// Keyword arguments that only some templates read.
TEST(ChatTemplateRenderTest, LlamaToolsInSystemMessageAndDate) {
  auto tools = ParseChatTools(
      Json::parse(R"([{"type": "function", "function": {"name": "f", "parameters": {}}}])"));
  ASSERT_TRUE(tools.ok());
  ChatTemplateKwargs kwargs;
  kwargs.tools_in_user_message = false;
  kwargs.date_string = "02 Jan 2025";
  auto text =
      RenderChat(ChatTemplateKind::kLlama3, Messages(R"([{"role": "user", "content": " q "}])"),
                 *tools, kwargs, false);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(
      *text,
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
      "Cutting Knowledge Date: December 2023\nToday Date: 02 Jan 2025\n\nYou have access to "
      "the following functions. To call a function, please respond with JSON for a function "
      "call.Respond in the format {\"name\": function name, \"parameters\": dictionary of "
      "argument name and its value}.Do not use variables.\n\n{\n    \"type\": \"function\",\n"
      "    \"function\": {\n        \"name\": \"f\",\n        \"parameters\": {}\n    }\n}\n\n"
      "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>");
}

}  // namespace
}  // namespace spark::engine::chat
