// The OpenAI request model (messages, tools, chat_template_kwargs: normalisation and errors) and
// chat-template detection / loading from a checkpoint directory.
#include "engine/text/chat/chat_message.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/text/chat/chat_template.h"

namespace spark::engine::chat {
namespace {

Json J(const char* text) { return Json::parse(text); }

TEST(ChatMessageTest, NormalisesContentAndToolCalls) {
  auto messages = ParseChatMessages(J(R"([
    {"role": "system", "content": [{"type": "text", "text": "A "}, {"type": "text", "text": "B"}]},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": null, "reasoning_content": "r",
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "f", "arguments": "{\"b\": 2, \"a\": [1]}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "ok"}
  ])"));
  ASSERT_TRUE(messages.ok()) << messages.status().ToString();
  ASSERT_EQ(messages->size(), 4u);
  EXPECT_EQ((*messages)[0].role, ChatRole::kSystem);
  EXPECT_EQ((*messages)[0].content, "A B");
  EXPECT_EQ((*messages)[2].content, "");
  EXPECT_EQ((*messages)[2].reasoning_content, "r");
  ASSERT_EQ((*messages)[2].tool_calls.size(), 1u);
  const ChatToolCall& call = (*messages)[2].tool_calls[0];
  EXPECT_EQ(call.id, "call_1");
  EXPECT_EQ(call.name, "f");
  EXPECT_EQ(call.arguments, "{\"b\": 2, \"a\": [1]}");
  EXPECT_EQ(PyJsonDumps(call.arguments_object), "{\"b\": 2, \"a\": [1]}");  // order kept
  EXPECT_EQ((*messages)[3].tool_call_id, "call_1");
  EXPECT_FALSE((*messages)[1].reasoning_content.has_value());
}

TEST(ChatMessageTest, ErrorsNameTheField) {
  struct Case {
    const char* json;
    StatusCode code;
    const char* needle;
  };
  const Case cases[] = {
      {R"({"role": "user"})", StatusCode::kInvalidArgument, "messages: expected an array"},
      {R"([])", StatusCode::kInvalidArgument, "messages: empty"},
      {R"([{"content": "x"}])", StatusCode::kInvalidArgument, "messages[0].role: missing"},
      {R"([{"role": "developer", "content": "x"}])", StatusCode::kInvalidArgument,
       "messages[0].role: \"developer\""},
      {R"([{"role": "user", "content": 5}])", StatusCode::kInvalidArgument,
       "messages[0].content: expected a string"},
      {R"([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])",
       StatusCode::kUnimplemented, "messages[0].content[0]: content part type \"image_url\""},
      {R"([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{"function":
         {"name": "f", "arguments": "[1]"}}]}])",
       StatusCode::kInvalidArgument,
       "messages[1].tool_calls[0].function.arguments: not a JSON object"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}])",
       StatusCode::kInvalidArgument, "invalid JSON"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}])",
       StatusCode::kInvalidArgument, "function.name: expected a non-empty string"},
      {R"([{"role": "user", "content": "a", "tool_calls": [{"function": {"name": "f"}}]}])",
       StatusCode::kInvalidArgument, "only assistant messages carry tool calls"},
      {R"([{"role": "user", "content": "a", "reasoning_content": 3}])",
       StatusCode::kInvalidArgument, "messages[0].reasoning_content: expected a string"},
  };
  for (const Case& c : cases) {
    auto parsed = ParseChatMessages(J(c.json));
    ASSERT_FALSE(parsed.ok()) << c.json;
    EXPECT_EQ(parsed.status().code(), c.code) << c.json;
    EXPECT_NE(parsed.status().message().find(c.needle), std::string::npos)
        << parsed.status().message();
  }
}

TEST(ChatMessageTest, ArgumentsObjectAndMissingArgumentsAreAccepted) {
  auto messages = ParseChatMessages(J(R"([{"role": "assistant", "tool_calls": [
    {"function": {"name": "f", "arguments": {"x": 1}}}, {"function": {"name": "g"}}]}])"));
  ASSERT_TRUE(messages.ok()) << messages.status().ToString();
  EXPECT_EQ((*messages)[0].tool_calls[0].arguments, "{\"x\": 1}");
  EXPECT_EQ((*messages)[0].tool_calls[1].arguments, "{}");
}

TEST(ChatMessageTest, ArgumentsKeepBigIntegersExact) {
  // Python's json.loads keeps integers of any size; the templates print them back unchanged.
  auto messages = ParseChatMessages(J(R"([{"role": "assistant", "tool_calls": [{"function":
    {"name": "f", "arguments": "{\"id\": 123456789012345678901234567890, \"n\": 1.0}"}}]}])"));
  ASSERT_TRUE(messages.ok()) << messages.status().ToString();
  EXPECT_EQ(PyJsonDumps((*messages)[0].tool_calls[0].arguments_object),
            R"({"id": 123456789012345678901234567890, "n": 1.0})");
}

TEST(ChatMessageTest, ParsesToolsAndKwargs) {
  auto tools = ParseChatTools(J(R"([{"type": "function", "function": {"name": "f",
    "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "g"}}])"));
  ASSERT_TRUE(tools.ok()) << tools.status().ToString();
  ASSERT_EQ(tools->size(), 2u);
  EXPECT_EQ((*tools)[0].name, "f");
  EXPECT_TRUE((*tools)[0].parameters.contains("properties"));
  EXPECT_EQ((*tools)[1].parameters, Json::object());
  EXPECT_EQ(FindTool(*tools, "g"), &(*tools)[1]);
  EXPECT_EQ(FindTool(*tools, "h"), nullptr);
  EXPECT_TRUE(ParseChatTools(Json()).ok());
  EXPECT_FALSE(ParseChatTools(J(R"([{"type": "retrieval"}])")).ok());
  EXPECT_FALSE(ParseChatTools(J(R"([{"type": "function", "function": {"name": ""}}])")).ok());

  auto kwargs = ParseChatTemplateKwargs(
      J(R"({"enable_thinking": false, "clear_thinking": true, "date_string": "1 Jan 2025",
           "custom": [1]})"));
  ASSERT_TRUE(kwargs.ok()) << kwargs.status().ToString();
  EXPECT_EQ(kwargs->enable_thinking, false);
  EXPECT_EQ(kwargs->clear_thinking, true);
  EXPECT_EQ(kwargs->date_string, "1 Jan 2025");
  EXPECT_FALSE(kwargs->tools_in_user_message.has_value());
  EXPECT_EQ(kwargs->extra, J(R"({"custom": [1]})"));
  auto bad = ParseChatTemplateKwargs(J(R"({"enable_thinking": "no"})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("chat_template_kwargs.enable_thinking"), std::string::npos);
}

TEST(ChatTemplateDetectTest, RecognisesTheFamiliesByMarkers) {
  auto glm45 = DetectChatTemplate(
      "[gMASK]<sop>{% if tools %}<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>"
      "{% endif %}<|assistant|>",
      "a.jinja");
  ASSERT_TRUE(glm45.ok());
  EXPECT_EQ(glm45->kind, ChatTemplateKind::kGlm45);
  auto glm47 = DetectChatTemplate(
      "[gMASK]<sop><tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><|assistant|>", "b");
  ASSERT_TRUE(glm47.ok());
  EXPECT_EQ(glm47->kind, ChatTemplateKind::kGlm47);
  auto qwen = DetectChatTemplate(
      "{%- set ns = namespace(multi_step_tool=true) %}<|im_start|><tool_call></think>", "c");
  ASSERT_TRUE(qwen.ok());
  EXPECT_EQ(qwen->kind, ChatTemplateKind::kChatMl);
  auto llama31 = DetectChatTemplate(
      "<|start_header_id|>Cutting Knowledge Date{% if add_generation_prompt %}<|eot_id|>", "d");
  ASSERT_TRUE(llama31.ok());
  EXPECT_EQ(llama31->kind, ChatTemplateKind::kLlama3);
  EXPECT_TRUE(llama31->llama_dated_system);
  EXPECT_FALSE(llama31->llama_date_from_clock);
  auto llama32 = DetectChatTemplate(
      "<|start_header_id|>Cutting Knowledge Date strftime_now<|eot_id|>add_generation_prompt", "e");
  ASSERT_TRUE(llama32.ok());
  EXPECT_TRUE(llama32->llama_date_from_clock);
  auto llama30 = DetectChatTemplate("<|start_header_id|>{{ message['role'] }}<|eot_id|>", "f");
  ASSERT_TRUE(llama30.ok());
  EXPECT_FALSE(llama30->llama_dated_system);
  EXPECT_TRUE(llama30->llama_always_generation_prompt);

  for (const char* unsupported : {"[gMASK]<sop><|user|>{{ m }}<|assistant|>",
                                  "<|im_start|>{{ m }}<|im_end|>", "[INST] {{ m }} [/INST]"}) {
    auto t = DetectChatTemplate(unsupported, "model/chat_template.jinja");
    ASSERT_FALSE(t.ok()) << unsupported;
    EXPECT_EQ(t.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(t.status().message().find("model/chat_template.jinja"), std::string::npos);
    EXPECT_NE(t.status().message().find("not supported yet"), std::string::npos);
  }
}

class LoadChatTemplateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("spark_chat_template_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const char* name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  std::filesystem::path dir_;
};

TEST_F(LoadChatTemplateTest, PrefersChatTemplateJinja) {
  Write("chat_template.jinja", "[gMASK]<sop><tool_call>{function-name}<arg_key><|assistant|>");
  Write("tokenizer_config.json", R"({"chat_template": "<|im_start|>"})");
  auto t = LoadChatTemplate(dir_);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->kind, ChatTemplateKind::kGlm47);
  EXPECT_NE(t->source.find("chat_template.jinja"), std::string::npos);
}

TEST_F(LoadChatTemplateTest, ReadsTokenizerConfigAndBosToken) {
  Write("tokenizer_config.json",
        R"({"bos_token": {"content": "<s>"}, "chat_template": [{"name": "tool_use",
            "template": "x"}, {"name": "default",
            "template": "<|start_header_id|>Cutting Knowledge Date<|eot_id|>"}]})");
  auto t = LoadChatTemplate(dir_);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->kind, ChatTemplateKind::kLlama3);
  EXPECT_EQ(t->bos_token, "<s>");
}

TEST_F(LoadChatTemplateTest, MissingTemplateIsNotFound) {
  Write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  auto t = LoadChatTemplate(dir_);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_NE(t.status().message().find("chat_template.jinja"), std::string::npos);
  Write("tokenizer_config.json", "{not json");
  EXPECT_EQ(LoadChatTemplate(dir_).status().code(), StatusCode::kDataLoss);
}

// The real templates, when scripts/fetch-test-data and the template cache are present.
TEST(ChatTemplateDetectTest, RealTemplatesWhenCached) {
  const std::filesystem::path root(SPARK_SOURCE_DIR);
  struct Case {
    std::filesystem::path path;
    ChatTemplateKind kind;
    bool dated;
  };
  const Case cases[] = {
      {root / ".cache/templates/glm46.jinja", ChatTemplateKind::kGlm45, true},
      {root / ".cache/templates/glm47.jinja", ChatTemplateKind::kGlm47, true},
      {root / ".cache/templates/llama31.jinja", ChatTemplateKind::kLlama3, true},
  };
  int checked = 0;
  for (const Case& c : cases) {
    if (!std::filesystem::exists(c.path)) continue;
    std::ifstream in(c.path);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto t = DetectChatTemplate(text, c.path.string());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->kind, c.kind) << c.path;
    EXPECT_EQ(t->llama_dated_system, c.dated) << c.path;
    ++checked;
  }
  for (const char* model : {"qwen3", "llama3"}) {
    const std::filesystem::path dir = root / ".cache/testdata" / model;
    if (!std::filesystem::exists(dir / "tokenizer_config.json")) continue;
    auto t = LoadChatTemplate(dir);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    if (std::string(model) == "qwen3") {
      EXPECT_EQ(t->kind, ChatTemplateKind::kChatMl);
    } else {
      EXPECT_EQ(t->kind, ChatTemplateKind::kLlama3);
      EXPECT_FALSE(t->llama_dated_system);
      EXPECT_TRUE(t->llama_always_generation_prompt);
      EXPECT_EQ(t->bos_token, "<|begin_of_text|>");
    }
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no cached templates (.cache/templates, .cache/testdata)";
}

}  // namespace
}  // namespace spark::engine::chat
