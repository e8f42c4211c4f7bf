// PyJsonDumps / PyFloatRepr / PyStrip against outputs of CPython 3.11 (json.dumps, repr,
// str.strip), which the chat templates' `tojson` and `.strip()` produce.
#include "engine/text/chat/py_json.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace spark::engine::chat {
namespace {

TEST(PyJsonTest, FloatReprMatchesPython) {
  const std::pair<double, const char*> cases[] = {
      {0.5, "0.5"},
      {100.0, "100.0"},
      {1e16, "1e+16"},
      {1e15, "1000000000000000.0"},
      {1e-4, "0.0001"},
      {1e-5, "1e-05"},
      {2.5e-7, "2.5e-07"},
      {0.1, "0.1"},
      {1.0 / 3.0, "0.3333333333333333"},
      {123456789.123, "123456789.123"},
      {-0.0, "-0.0"},
      {1.7976931348623157e308, "1.7976931348623157e+308"},
      {5e-324, "5e-324"},
      {1234567890123456789.0, "1.2345678901234568e+18"},
      {9007199254740993.0, "9007199254740992.0"},
      {-1.5e-10, "-1.5e-10"},
      {1e22, "1e+22"},
      {123.456e5, "12345600.0"},
  };
  for (const auto& [value, want] : cases) EXPECT_EQ(PyFloatRepr(value), want) << want;
  EXPECT_EQ(PyFloatRepr(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(PyFloatRepr(std::nan("")), "nan");
}

TEST(PyJsonTest, DumpsLikeJsonDumps) {
  const Json value = Json::parse(
      R"({"a": [1, {"b": null, "c": []}, {}], "é": "é\n\t\"\\ \u0001\u007f", "z": true})");
  EXPECT_EQ(PyJsonDumps(value),
            "{\"a\": [1, {\"b\": null, \"c\": []}, {}], \"é\": \"é\\n\\t\\\"\\\\ \\u0001\x7f\", "
            "\"z\": true}");
  const Json ascii = Json::parse(R"({"a": [1, {"b": null, "c": []}, {}], "é": "é😀", "z": true})");
  EXPECT_EQ(PyJsonDumps(ascii, PyJsonOptions{.ensure_ascii = true, .indent = -1}),
            R"({"a": [1, {"b": null, "c": []}, {}], "\u00e9": "\u00e9\ud83d\ude00", "z": true})");
}

TEST(PyJsonTest, DumpsWithIndent) {
  const Json value = Json::parse(R"({"a": [1, {"b": null, "c": []}, {}], "k": "v"})");
  EXPECT_EQ(PyJsonDumps(value, PyJsonOptions{.ensure_ascii = false, .indent = 4}),
            "{\n    \"a\": [\n        1,\n        {\n            \"b\": null,\n            \"c\": "
            "[]\n        },\n        {}\n    ],\n    \"k\": \"v\"\n}");
}

TEST(PyJsonTest, KeepsKeyOrderAndNumberKinds) {
  const Json value = Json::parse(R"({"z": 1, "a": -2, "m": 1e3, "big": 18446744073709551615})");
  EXPECT_EQ(PyJsonDumps(value), R"({"z": 1, "a": -2, "m": 1000.0, "big": 18446744073709551615})");
}

TEST(PyJsonTest, LoadsKeepsBigIntegersExactLikePython) {
  // json.dumps(json.loads(text)) in CPython 3.11.
  const Json value =
      PyJsonLoads(R"({"a": 123456789012345678901234567890, "b": -12345678901234567890, "c": )"
                  R"([18446744073709551616, 18446744073709551615, -9223372036854775808, )"
                  R"(-9223372036854775809], "d": 1e2, "e": 10000000000000000000000.0})");
  ASSERT_FALSE(value.is_discarded());
  EXPECT_TRUE(IsPyBigInt(value["a"]));
  EXPECT_FALSE(IsPyBigInt(value["c"][1]));  // fits 64 bits: an ordinary number
  EXPECT_EQ(PyJsonDumps(value),
            R"({"a": 123456789012345678901234567890, "b": -12345678901234567890, "c": )"
            R"([18446744073709551616, 18446744073709551615, -9223372036854775808, )"
            R"(-9223372036854775809], "d": 100.0, "e": 1e+22})");
  EXPECT_EQ(PyJsonDumps(value, PyJsonOptions{.ensure_ascii = false, .indent = 1}),
            "{\n \"a\": 123456789012345678901234567890,\n \"b\": -12345678901234567890,\n \"c\": "
            "[\n  18446744073709551616,\n  18446744073709551615,\n  -9223372036854775808,\n  "
            "-9223372036854775809\n ],\n \"d\": 100.0,\n \"e\": 1e+22\n}");
}

TEST(PyJsonTest, LoadsRepeatedKeysAndRejectsInvalidJson) {
  // A repeated key keeps its first position and its last value, as a Python dict does.
  EXPECT_EQ(PyJsonDumps(PyJsonLoads(R"({"a": 1, "b": {"x": [true, null]}, "a": 3})")),
            R"({"a": 3, "b": {"x": [true, null]}})");
  EXPECT_EQ(PyJsonDumps(PyJsonLoads(R"("s")")), R"("s")");
  EXPECT_EQ(PyJsonDumps(PyJsonLoads("[]")), "[]");
  EXPECT_TRUE(PyJsonLoads("{\"a\": }").is_discarded());
  EXPECT_TRUE(PyJsonLoads("{} x").is_discarded());
  EXPECT_TRUE(PyJsonLoads("").is_discarded());
}

TEST(PyJsonTest, EscapingPiecesEqualsEscapingTheWhole) {
  const std::string s = "a\"b\\c\nd\xe4\xbd\xa0\x01";
  std::string whole;
  AppendPyJsonEscaped(s, false, &whole);
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    std::string pieces;
    AppendPyJsonEscaped(std::string_view(s).substr(0, cut), false, &pieces);
    AppendPyJsonEscaped(std::string_view(s).substr(cut), false, &pieces);
    EXPECT_EQ(pieces, whole) << cut;
  }
}

TEST(PyJsonTest, StripUsesPythonWhitespace) {
  EXPECT_EQ(PyStrip("  \u3000x\u00a0\x1c y\u2028 "), "x\u00a0\x1c y");
  EXPECT_EQ(PyStrip("\u200bx\u200b"), "\u200bx\u200b");  // zero-width space is not whitespace
  EXPECT_EQ(PyStrip("\u0085a\x1f"), "a");
  EXPECT_EQ(PyLStrip(" \t a b "), "a b ");
  EXPECT_EQ(PyRStrip(" a b \n"), " a b");
  EXPECT_EQ(PyStrip(" \n "), "");
  EXPECT_EQ(PyStripChars("\n\na\n b\n", "\n"), "a\n b");
  EXPECT_EQ(PyLStripChars("\n\n", "\n"), "");
}

}  // namespace
}  // namespace spark::engine::chat
