// GLM-4.5/4.6 and GLM-4.7 tool-call parsers: representative outputs, schema typing of the values,
// malformed and truncated outputs, streaming deltas, and the same result for every way of
// streaming an output.
#include "engine/text/chat/tool_call_parser.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <regex>

#include "tests/engine/text/chat/chunkings.h"

namespace spark::engine::chat {
namespace {

std::vector<ChatTool> Tools() {
  auto tools = ParseChatTools(Json::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}, "date": {"type": "string"},
                     "unit": {"enum": ["c", "f"]}}}}},
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object",
      "properties": {"query": {"type": "string"}, "limit": {"type": "integer"},
        "ratio": {"type": "number"}, "exact": {"type": "boolean"},
        "filters": {"type": "object", "properties": {"lang": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "cursor": {"type": ["string", "null"]},
        "mode": {"$ref": "#/$defs/mode"},
        "size": {"anyOf": [{"type": "integer"}, {"type": "number"}]},
        "either": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        "both": {"allOf": [{"type": ["integer", "string"]}, {"type": "integer"}]}},
      "$defs": {"mode": {"type": "string", "enum": ["fast", "exact"]}}}}},
    {"type": "function", "function": {"name": "get_time"}}
  ])"));
  EXPECT_TRUE(tools.ok());
  return *tools;
}

ToolCallIdGenerator CountingIds() {
  auto next = std::make_shared<int>(0);
  return [next] { return "call_" + std::to_string((*next)++); };
}

struct Expected {
  std::string text;
  std::vector<std::pair<std::string, std::string>> calls;  // name, arguments
};

void ExpectParse(ToolCallFormat format, const std::string& output, const Expected& want) {
  const ToolParseResult got = GlmToolParser::Parse(format, output, Tools(), CountingIds());
  EXPECT_EQ(got.text, want.text) << output;
  ASSERT_EQ(got.calls.size(), want.calls.size()) << output;
  for (size_t i = 0; i < want.calls.size(); ++i) {
    EXPECT_EQ(got.calls[i].id, "call_" + std::to_string(i));
    EXPECT_EQ(got.calls[i].name, want.calls[i].first) << output;
    EXPECT_EQ(got.calls[i].arguments, want.calls[i].second) << output;
  }
}

TEST(Glm45ToolParserTest, DocumentedFormat) {
  ExpectParse(ToolCallFormat::kGlm45,
              "Let me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京"
              "</arg_value>\n<arg_key>date</arg_key>\n<arg_value>2024-06-27</arg_value>\n"
              "</tool_call>",
              {"Let me check.", {{"get_weather", R"({"city": "北京", "date": "2024-06-27"})"}}});
}

TEST(Glm45ToolParserTest, SeveralCallsAndLiteralBackslashN) {
  ExpectParse(ToolCallFormat::kGlm45,
              "<tool_call>get_weather\\n<arg_key>city</arg_key>\\n<arg_value>Paris</arg_value>\\n"
              "</tool_call>\n<tool_call>get_time\n</tool_call>",
              {"", {{"get_weather", R"({"city": "Paris"})"}, {"get_time", "{}"}}});
}

TEST(Glm47ToolParserTest, DocumentedFormatWithTextAround) {
  ExpectParse(ToolCallFormat::kGlm47,
              "Checking both. <tool_call>get_weather<arg_key>city</arg_key><arg_value>北京"
              "</arg_value><arg_key>date</arg_key><arg_value>2024-06-27</arg_value></tool_call>"
              "<tool_call>get_weather<arg_key>city</arg_key><arg_value>上海</arg_value></tool_call>"
              " Done.",
              {"Checking both.Done.",
               {{"get_weather", R"({"city": "北京", "date": "2024-06-27"})"},
                {"get_weather", R"({"city": "上海"})"}}});
}

TEST(Glm47ToolParserTest, NoArgumentCall) {
  ExpectParse(ToolCallFormat::kGlm47, "<tool_call>get_time</tool_call>",
              {"", {{"get_time", "{}"}}});
}

TEST(GlmToolParserTest, ValuesTypedBySchema) {
  ExpectParse(ToolCallFormat::kGlm47,
              "<tool_call>search"
              "<arg_key>query</arg_key><arg_value>{\"a\": [1, 2]}</arg_value>"
              "<arg_key>limit</arg_key><arg_value>10</arg_value>"
              "<arg_key>ratio</arg_key><arg_value> 0.50 </arg_value>"
              "<arg_key>exact</arg_key><arg_value>True</arg_value>"
              "<arg_key>filters</arg_key><arg_value>{\"lang\":\"en\"}</arg_value>"
              "<arg_key>tags</arg_key><arg_value>[\"x\",\"y\"]</arg_value>"
              "<arg_key>cursor</arg_key><arg_value>null</arg_value>"
              "<arg_key>mode</arg_key><arg_value>123</arg_value>"
              "<arg_key>size</arg_key><arg_value>\"7\"</arg_value>"
              "<arg_key>either</arg_key><arg_value>8</arg_value>"
              "<arg_key>both</arg_key><arg_value>9</arg_value>"
              "<arg_key>unknown_text</arg_key><arg_value>plain words</arg_value>"
              "<arg_key>unknown_json</arg_key><arg_value>[1, 2.5e3]</arg_value>"
              "<arg_key> spaced key </arg_key><arg_value> keep spaces </arg_value>"
              "</tool_call>",
              {"",
               {{"search",
                 R"({"query": "{\"a\": [1, 2]}", "limit": 10, "ratio": 0.5, "exact": true, )"
                 R"("filters": {"lang": "en"}, "tags": ["x", "y"], "cursor": null, "mode": "123", )"
                 R"("size": 7, "either": 8, "both": 9, "unknown_text": "plain words", )"
                 R"("unknown_json": [1, 2500.0], "spaced key": " keep spaces "})"}}});
}

TEST(GlmToolParserTest, SchemaTypeResolution) {
  const std::vector<ChatTool> tools = Tools();
  const Json& p = tools[1].parameters;
  EXPECT_EQ(ResolveArgumentType(p, "query"), ArgType::kString);
  EXPECT_EQ(ResolveArgumentType(p, "limit"), ArgType::kInteger);
  EXPECT_EQ(ResolveArgumentType(p, "ratio"), ArgType::kNumber);
  EXPECT_EQ(ResolveArgumentType(p, "exact"), ArgType::kBoolean);
  EXPECT_EQ(ResolveArgumentType(p, "filters"), ArgType::kObject);
  EXPECT_EQ(ResolveArgumentType(p, "tags"), ArgType::kArray);
  EXPECT_EQ(ResolveArgumentType(p, "cursor"), ArgType::kAuto);
  EXPECT_EQ(ResolveArgumentType(p, "mode"), ArgType::kString);
  EXPECT_EQ(ResolveArgumentType(p, "size"), ArgType::kNumber);
  EXPECT_EQ(ResolveArgumentType(p, "either"), ArgType::kAuto);
  EXPECT_EQ(ResolveArgumentType(p, "both"), ArgType::kInteger);
  EXPECT_EQ(ResolveArgumentType(p, "missing"), ArgType::kAuto);
  EXPECT_EQ(ResolveArgumentType(tools[0].parameters, "unit"), ArgType::kString);
  EXPECT_EQ(ResolveArgumentType(Json(), "x"), ArgType::kAuto);
  // A $ref cycle does not loop forever.
  const Json cyclic = Json::parse(R"({"properties": {"a": {"$ref": "#/properties/a"}}})");
  EXPECT_EQ(ResolveArgumentType(cyclic, "a"), ArgType::kAuto);
}

TEST(GlmToolParserTest, TypedValueFallbacks) {
  EXPECT_EQ(TypeArgumentValue("12", ArgType::kInteger), Json(12));
  EXPECT_EQ(TypeArgumentValue("twelve", ArgType::kInteger), Json("twelve"));
  EXPECT_EQ(TypeArgumentValue("{\"a\"", ArgType::kObject), Json("{\"a\""));
  EXPECT_EQ(TypeArgumentValue(" None ", ArgType::kAuto), Json());
  EXPECT_EQ(TypeArgumentValue("False", ArgType::kBoolean), Json(false));
  EXPECT_EQ(TypeArgumentValue("maybe", ArgType::kBoolean), Json("maybe"));
  EXPECT_EQ(TypeArgumentValue(" \"q\" ", ArgType::kAuto), Json("q"));
}

TEST(GlmToolParserTest, MalformedAndTruncatedOutputs) {
  const auto f45 = ToolCallFormat::kGlm45;
  const auto f47 = ToolCallFormat::kGlm47;
  // Cut short inside a string value: the call is closed with what arrived.
  ExpectParse(f45, "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par",
              {"", {{"get_weather", R"({"city": "Par"})"}}});
  // Cut short inside a typed value, after a key, inside a key.
  ExpectParse(f47, "<tool_call>search<arg_key>limit</arg_key><arg_value>4",
              {"", {{"search", R"({"limit": 4})"}}});
  ExpectParse(f47, "<tool_call>search<arg_key>limit</arg_key>", {"", {{"search", "{}"}}});
  ExpectParse(f47, "<tool_call>search<arg_key>lim", {"", {{"search", "{}"}}});
  // A value ended by </tool_call> without </arg_value>.
  ExpectParse(f47, "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</tool_call>ok",
              {"ok", {{"get_weather", R"({"city": "Oslo"})"}}});
  // A name that never ends, a bare tag, a stray close tag: plain text.
  ExpectParse(f47, "<tool_call>get_weather", {"<tool_call>get_weather", {}});
  ExpectParse(f45, "Use <tool_call>", {"Use <tool_call>", {}});
  ExpectParse(f45, "a</tool_call>b", {"ab", {}});
  ExpectParse(f47, "<tool_call>" + std::string(200, 'x') + "<arg_key>k</arg_key>",
              {"<tool_call>" + std::string(200, 'x') + "<arg_key>k</arg_key>", {}});
  // An empty name drops the call, the text goes on.
  ExpectParse(f47, "<tool_call><arg_key>k</arg_key><arg_value>v</arg_value></tool_call>after",
              {"after", {}});
  // Junk between tags is ignored; a key without a value is dropped.
  ExpectParse(f47,
              "<tool_call>get_weather\njunk<arg_key>unit</arg_key>?<arg_key>city</arg_key> x "
              "<arg_value>Rome</arg_value>zz</tool_call>",
              {"", {{"get_weather", R"({"city": "Rome"})"}}});
  // Escapes in string values, an unknown tool (values typed as auto).
  ExpectParse(
      f47,
      "<tool_call>get_weather<arg_key>city</arg_key><arg_value>a\"b\\c\nd\x01"
      "</arg_value></tool_call><tool_call>other<arg_key>n</arg_key><arg_value>5"
      "</arg_value></tool_call>",
      {"", {{"get_weather", "{\"city\": \"a\\\"b\\\\c\\nd\\u0001\"}"}, {"other", R"({"n": 5})"}}});
}

// Concatenates every delta of a streamed parse.
struct Streamed {
  std::string text;
  std::vector<ParsedToolCall> calls;
};

Streamed Stream(ToolCallFormat format, const std::vector<std::string>& pieces) {
  GlmToolParser parser(format, Tools(), CountingIds());
  Streamed out;
  auto add = [&out](const ToolParseDelta& d) {
    out.text += d.text;
    for (const ToolCallDelta& c : d.calls) {
      if (static_cast<size_t>(c.index) == out.calls.size()) {
        EXPECT_FALSE(c.id.empty()) << "first delta of a call carries its id";
        EXPECT_FALSE(c.name.empty()) << "first delta of a call carries its name";
        out.calls.push_back({c.id, c.name, ""});
      } else {
        ASSERT_LT(static_cast<size_t>(c.index), out.calls.size());
        EXPECT_TRUE(c.id.empty());
      }
      out.calls[c.index].arguments += c.arguments;
    }
  };
  for (const std::string& piece : pieces) add(parser.Feed(piece));
  add(parser.Finish());
  return out;
}

const char* const kStreamOutputs[] = {
    "Let me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京"
    "</arg_value>\n<arg_key>date</arg_key>\n<arg_value>2024-06-27</arg_value>\n</tool_call>\n"
    "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>{\"a\": 1}</arg_value>\n"
    "<arg_key>limit</arg_key>\n<arg_value>3</arg_value>\n<arg_key>filters</arg_key>\n"
    "<arg_value>{\"lang\": \"</arg_value>\"}</arg_value>\n</tool_call>",
    "Text <tool_call>get_weather<arg_key>city</arg_key><arg_value> A </arg_value></tool_call> "
    "mid <tool_call>get_time</tool_call> end </tool_call> <tool_call",
    "<tool_call>search<arg_key>exact</arg_key><arg_value>false</arg_value><arg_key>ratio"
    "</arg_key><arg_value>1e-3</arg_value><arg_key>query</arg_key><arg_value></arg_value_x"
    "</arg_value>",
    "no tools here, just < and </ and <tool and \\n",
};

TEST(GlmToolParserTest, EveryChunkingGivesTheNonStreamingResult) {
  for (const ToolCallFormat format : {ToolCallFormat::kGlm45, ToolCallFormat::kGlm47}) {
    for (const char* output : kStreamOutputs) {
      const ToolParseResult want = GlmToolParser::Parse(format, output, Tools(), CountingIds());
      for (const ParsedToolCall& call : want.calls) {
        const Json args = Json::parse(call.arguments, nullptr, false);
        EXPECT_TRUE(args.is_object()) << call.arguments;
      }
      for (const auto& pieces : testing::Chunkings(output)) {
        const Streamed got = Stream(format, pieces);
        ASSERT_EQ(got.text, want.text) << ToolCallFormatName(format) << ": " << output;
        ASSERT_EQ(got.calls.size(), want.calls.size()) << output;
        for (size_t i = 0; i < want.calls.size(); ++i) {
          ASSERT_EQ(got.calls[i].id, want.calls[i].id);
          ASSERT_EQ(got.calls[i].name, want.calls[i].name);
          ASSERT_EQ(got.calls[i].arguments, want.calls[i].arguments) << output;
        }
      }
    }
  }
  // The first output, checked in full.
  const ToolParseResult first =
      GlmToolParser::Parse(ToolCallFormat::kGlm45, kStreamOutputs[0], Tools(), CountingIds());
  EXPECT_EQ(first.text, "Let me check.");
  ASSERT_EQ(first.calls.size(), 2u);
  EXPECT_EQ(first.calls[1].arguments,
            R"({"query": "{\"a\": 1}", "limit": 3, "filters": "{\"lang\": \""})");
}

TEST(GlmToolParserTest, StreamingDeltas) {
  Glm47ToolParser parser(Tools(), CountingIds());
  ToolParseDelta d = parser.Feed("Sure. <tool_ca");
  EXPECT_EQ(d.text, "Sure.");
  EXPECT_TRUE(d.calls.empty());
  d = parser.Feed("ll>get_weather<arg_key>ci");
  EXPECT_EQ(d.text, "");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].index, 0);
  EXPECT_EQ(d.calls[0].id, "call_0");
  EXPECT_EQ(d.calls[0].name, "get_weather");
  EXPECT_EQ(d.calls[0].arguments, "");
  d = parser.Feed("ty</arg_key><arg_value>Bei");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].id, "");
  EXPECT_EQ(d.calls[0].arguments, "{\"city\": \"Bei");
  d = parser.Feed("jing</arg_val");  // a possible </arg_value> is held back
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].arguments, "jing");
  d = parser.Feed("ue></tool_call>");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].arguments, "\"}");
  ASSERT_EQ(parser.calls().size(), 1u);
  EXPECT_EQ(parser.calls()[0].arguments, R"({"city": "Beijing"})");
  d = parser.Finish();
  EXPECT_TRUE(d.calls.empty());
  EXPECT_EQ(d.text, "");
}

TEST(GlmToolParserTest, RandomIds) {
  const std::regex pattern("call_[A-Za-z0-9]{24}");
  const std::string a = RandomToolCallId();
  const std::string b = RandomToolCallId();
  EXPECT_TRUE(std::regex_match(a, pattern)) << a;
  EXPECT_TRUE(std::regex_match(b, pattern)) << b;
  EXPECT_NE(a, b);
  const ToolParseResult r =
      GlmToolParser::Parse(ToolCallFormat::kGlm47, "<tool_call>get_time</tool_call>", Tools());
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_TRUE(std::regex_match(r.calls[0].id, pattern)) << r.calls[0].id;
}

}  // namespace
}  // namespace spark::engine::chat
